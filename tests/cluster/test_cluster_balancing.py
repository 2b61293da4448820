"""Clients from several addresses through HAProxy, and a node added (issue 27 point 3).

HAProxy (``balance source``, ``hash-type consistent``) keeps each client
address on one node, so a per-request client (each request on a connection
of its own: variant 7) finds its upload on the node that began it; the node
learns the address from the PROXY v2 header and logs it. A node added takes
some new addresses; every other address stays where it was.
"""

from __future__ import annotations

import os
import re

import pytest

from backends.cluster import MAINTENANCE, UP, node_name
from edition_helpers import read_stored
from helpers import ANY_ID, Identity, RawClient, file_packets, make_identity, unique_name
from protocol import (
    Acknowledged,
    ConnectionClosed,
    CrcOk,
    FileReceived,
    Register,
    Registered,
    cksum,
)

pytestmark = pytest.mark.needed_in_ci

#: Client addresses per test, each test its own range (the nodes' logs last the session).
PER_REQUEST_SOURCES = [f"127.0.0.{host}" for host in range(101, 113)]
ADDED_NODE_SOURCES = [f"127.0.0.{host}" for host in range(150, 182)]
PACKET = 1024
FILE_BYTES = 4 * PACKET + 100
#: The requests of :func:`per_request_upload` a node answers, so logs.
ANSWERED = ("825", "826", "828 (the last)", "900")


def per_request_upload(cluster, source: str, data: bytes) -> Identity:
    """Register, send a file and confirm it, each request on a new connection from ``source``."""
    with RawClient(cluster.address, source=source) as client:
        who = make_identity(client)
    packets = file_packets(who, "pr.bin", data, PACKET)
    for packet in packets[:-1]:
        with RawClient(cluster.address, source=source) as client:
            client.send(packet)
            assert isinstance(client.receive(), ConnectionClosed)  # no answer before the last
    with RawClient(cluster.address, source=source) as client:
        answer = client.request(packets[-1])
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(data), answer
    with RawClient(cluster.address, source=source) as client:
        assert isinstance(client.request(CrcOk(client_id=who.client_id, file_name="pr.bin")),
                          Acknowledged)
    return who


def serving_node(cluster, source: str) -> int:
    """The node HAProxy sends ``source`` to now: the one that logs a registration from it."""
    name = unique_name("probe")
    with RawClient(cluster.address, source=source) as client:
        assert isinstance(client.request(Register(client_id=ANY_ID, name=name)), Registered)
    node = cluster.node_that_logged(name)
    assert node is not None, f"no node logged {name}"
    return node


def test_per_request_clients_from_several_addresses_each_stay_on_one_node(cluster):
    served: dict[str, int] = {}
    for source in PER_REQUEST_SOURCES:
        data = os.urandom(FILE_BYTES)
        who = per_request_upload(cluster, source, data)
        node = cluster.node_that_logged(who.name)
        assert node is not None
        served[source] = node
        assert read_stored(cluster.as_server(), who.client_id, "pr.bin") == data
    assert set(served.values()) == set(cluster.live_nodes())  # both nodes took some
    for source, node in served.items():
        # The answered requests of the address (the PROXY v2 header's), on its node alone;
        # the packets before the last are not answered, and come to the node that answers it.
        request_from = re.compile(rf"{re.escape(source)}:\d+ (825|826|828|900) ")
        counts = {i: len(request_from.findall(cluster.nodes[i].log()))
                  for i in cluster.live_nodes()}
        assert counts[node] == len(ANSWERED) and sum(counts.values()) == counts[node], counts


def test_a_node_added_takes_new_addresses_and_the_others_keep_theirs(cluster):
    spare = next(i for i in cluster.ports if i not in cluster.live_nodes())
    before = {source: serving_node(cluster, source) for source in ADDED_NODE_SOURCES}
    cluster.start_node(spare)
    try:
        after = {source: serving_node(cluster, source) for source in ADDED_NODE_SOURCES}
        moved = [source for source in ADDED_NODE_SOURCES if after[source] != before[source]]
        assert moved, "the added node took no address"
        assert {after[source] for source in moved} == {spare}  # consistent hashing
        data = os.urandom(FILE_BYTES)
        who = per_request_upload(cluster, moved[0], data)
        assert cluster.node_that_logged(who.name) == spare
        assert read_stored(cluster.as_server(), who.client_id, "pr.bin") == data
    finally:
        cluster.retire_node(spare)
    assert {source: serving_node(cluster, source) for source in ADDED_NODE_SOURCES} == before


def test_haproxy_sees_the_running_nodes_up_and_the_spare_in_maintenance(cluster):
    spare = next(i for i in cluster.ports if i not in cluster.live_nodes())
    expected = {node_name(i): UP for i in cluster.live_nodes()} | {node_name(spare): MAINTENANCE}
    assert cluster.balancer.server_states() == expected
