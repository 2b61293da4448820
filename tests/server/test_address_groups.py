"""IPv6: per-address limits count a /64 (``--ipv6-prefix``) as one address; key binding stays exact.

The grouping is defined once (server/peer.py ``Peer.group``); these tests check
it, each per-address limit that uses it, and a server listening on ``::1``,
``::`` and dual stack (skipped where the machine has no IPv6 loopback).
"""

from __future__ import annotations

import socket

import pytest

from helpers import ANY_ID, make_identity, unique_name
from protocol import Register, Registered, RegistrationFailed
from server import handlers
from server.app import App
from server.limits import LimitOutOfBounds, Limits
from server.loop import OpenPerGroup
from server.peer import Peer, Speaking, address_group
from server.storage.folder import FolderBlobs
from server.storage.sqlite import DB_NAME, SqliteMetadata

HOST_64 = ("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2:abcd::9")
NEXT_64 = "2001:db8:1:3::1"


def test_an_ipv6_address_counts_with_its_64():
    assert {address_group(address) for address in HOST_64} == {"2001:db8:1:2::/64"}
    assert address_group(NEXT_64) == "2001:db8:1:3::/64"
    assert address_group("2001:db8:1:2::1", 48) == "2001:db8:1::/48"
    assert len({address_group(address, 128) for address in HOST_64}) == len(HOST_64)
    assert address_group("fe80::1%eth0") == "fe80::/64"  # the scope is no part of it


def test_an_ipv4_address_is_its_own_group_mapped_or_not():
    assert address_group("127.0.2.7") == "127.0.2.7"
    assert address_group("::ffff:127.0.2.7") == "127.0.2.7"
    peer = Peer("::ffff:127.0.2.7", 5)
    assert peer.address == peer.group == "127.0.2.7"  # a dual-stack listener's IPv4 peer
    assert address_group("not an address") == "not an address"


def test_the_prefix_is_a_limit_with_bounds():
    assert Limits().ipv6_prefix == 64
    for wrong in (0, 129):
        with pytest.raises(LimitOutOfBounds):
            Limits(ipv6_prefix=wrong)


def test_connections_per_address_count_the_group():
    counts = OpenPerGroup()
    first, second = (Peer(address, 1) for address in HOST_64[:2])
    counts.opened(first)
    counts.opened(second)
    assert counts.count(Peer(HOST_64[2], 1)) == 2
    assert counts.count(Peer(NEXT_64, 1)) == 0
    counts.closed(first)
    counts.closed(second)
    assert counts.count(first) == 0


def _register(app: App, peer: Peer) -> bool:
    outcome = handlers.register(app, peer, Register(client_id=ANY_ID, name=unique_name()), Speaking())
    return isinstance(outcome.response, Registered)


@pytest.mark.parametrize("prefix", [64, 128])
def test_the_registration_rate_counts_the_group(tmp_path, prefix):
    limits = Limits(registrations_per_minute=2, ipv6_prefix=prefix)
    db = SqliteMetadata.open(tmp_path / DB_NAME)
    app = App.build(db, FolderBlobs(tmp_path), limits)
    try:
        allowed = [_register(app, Peer(address, 1, prefix)) for address in HOST_64]
        assert _register(app, Peer(NEXT_64, 1, prefix))  # the next /64 is another address
    finally:
        app.uploads.close()
        db.close()
    assert allowed == ([True, True, False] if prefix == 64 else [True, True, True])


def test_key_binding_stays_per_exact_address(tmp_path):
    limits = Limits()
    db = SqliteMetadata.open(tmp_path / DB_NAME)
    app = App.build(db, FolderBlobs(tmp_path), limits)
    try:
        registrant, neighbour = Peer(HOST_64[0], 1), Peer(HOST_64[1], 2)
        assert registrant.group == neighbour.group
        name = unique_name()
        client_id = handlers.register(app, registrant, Register(client_id=ANY_ID, name=name), Speaking()).response.client_id
        assert db.binding(client_id).address == HOST_64[0]
        # the same /64 but another address may not take over the keyless name
        outcome = handlers.register(app, neighbour, Register(client_id=ANY_ID, name=name), Speaking())
        assert isinstance(outcome.response, RegistrationFailed)
    finally:
        app.uploads.close()
        db.close()


# -- listening on IPv6 ---------------------------------------------------------------------------


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")


@needs_ipv6
@pytest.mark.parametrize("host", ["::1", "::", "[::1]"])
def test_the_server_listens_on_an_ipv6_literal(server_factory, host):
    from helpers import RawClient

    server = server_factory("--host", host)
    with RawClient(("::1", server.port)) as client:
        make_identity(client)
    assert f"listening on {host} port {server.port}" in server.log()
    assert "[::1]:" in server.log()  # the peer's address, as the log names it


@needs_ipv6
def test_dual_stack_serves_both_families_and_groups_each(server_factory):
    from helpers import RawClient

    server = server_factory("--host", "", load_flags=("--registrations-per-minute", "1"))
    with RawClient(("::1", server.port)) as six, RawClient(("127.0.0.1", server.port)) as four:
        assert isinstance(six.request(Register(client_id=ANY_ID, name=unique_name())), Registered)
        assert isinstance(four.request(Register(client_id=ANY_ID, name=unique_name())), Registered)
        # each family's loopback is its own address: both are now at their rate
        assert isinstance(six.request(Register(client_id=ANY_ID, name=unique_name())), RegistrationFailed)
        assert isinstance(four.request(Register(client_id=ANY_ID, name=unique_name())), RegistrationFailed)
    log = server.log()
    assert "127.0.0.1:" in log and "::ffff:" not in log  # an IPv4 peer is IPv4
