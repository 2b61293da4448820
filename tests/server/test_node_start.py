"""A node starting beside a running one (two real servers sharing PostgreSQL and one blob store).

Node a serves a client with a version waiting for its 900 and an upload
being received; node b starts, so its start-up repair runs
(server/storage/commit.py, "several nodes"); the client's 900 and the rest
of its upload, sent to a, still succeed, and the files read back intact.
Both blob stores the nodes may share: a radosgw bucket, and one folder.
"""

from __future__ import annotations

import pytest
from helpers import file_packets, make_identity, upload

from protocol import Acknowledged, CrcOk, FileReceived, cksum
from server.peer import address_group
from server.storage.factory import StoreUrls, open_stores

#: A file of several packets, so that one is in flight while the other node starts.
PACKET = 64 * 1024
IN_FLIGHT = bytes(range(256)) * (4 * PACKET // 256)


@pytest.fixture(params=[
    pytest.param("s3", marks=pytest.mark.needed_in_ci),
    pytest.param("folder", marks=pytest.mark.needed_in_ci),
])
def shared_blobs(request, tmp_path) -> str:
    """The ``--blobs`` URL every node is given."""
    if request.param == "s3":
        return request.getfixturevalue("s3_url")
    return (tmp_path / "shared").as_uri()


def _read_back(tmp_path, database: str, blobs_url: str) -> dict[bytes, bytes]:
    metadata, blobs = open_stores(StoreUrls.given(database, blobs_url, tmp_path), address_group)
    try:
        found = {}
        for row in metadata.file_rows():
            with blobs.open(row.path_name) as file:
                found[row.file_name] = file.read()
        return found
    finally:
        metadata.close()


@pytest.mark.slow
def test_a_node_starting_leaves_the_versions_and_uploads_another_node_serves(
    server_factory, postgres_url, shared_blobs, tmp_path,
):
    stores = ("--metadata", postgres_url, "--blobs", shared_blobs)
    node_a = server_factory(*stores, "--node-name", "a")
    with node_a.client() as client:
        identity = make_identity(client)
        for version in (b"first version", b"second version"):
            answer = upload(client, identity, "kept.bin", version)
            assert isinstance(answer, FileReceived) and answer.cksum == cksum(version)
            if version == b"first version":
                assert isinstance(client.request(
                    CrcOk(client_id=identity.client_id, file_name="kept.bin")), Acknowledged)
        # the second version waits for its 900; another file is half sent
        packets = file_packets(identity, "big.bin", IN_FLIGHT, PACKET)
        for packet in packets[: len(packets) // 2]:
            client.send(packet)

        node_b = server_factory(*stores, "--node-name", "b")  # its repair runs now
        assert node_b.stop() == 0

        for packet in packets[len(packets) // 2:]:
            client.send(packet)
        answer = client.receive()
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(IN_FLIGHT)
        for name in ("kept.bin", "big.bin"):
            confirmed = client.request(CrcOk(client_id=identity.client_id, file_name=name))
            assert isinstance(confirmed, Acknowledged), (name, confirmed, node_a.log())
    assert node_a.stop() == 0
    assert _read_back(tmp_path / "reader", postgres_url, shared_blobs) == {
        b"kept.bin": b"second version", b"big.bin": IN_FLIGHT,
    }
