"""One address's share of a loop round (server/shares.py), under the loop driven by hand.

Many connections of one address pipeline requests; another address's request
goes in beside them. The test counts, round by round, what each address had
done: one address's connections together never get more than their shares,
every one of them gets its turns (round robin), and the other address is
answered in the round its request came in.
"""

from __future__ import annotations

import collections
import time

import pytest
from helpers import (
    ANY_ID,
    Identity,
    RawClient,
    file_packets,
    packet_bytes,
    private_key,
    unique_name,
)
from loop_driving import answered, run_round
from wire_by_hand import name, request

from protocol import (
    FileReceived,
    PublicKeyReceived,
    Reconnect,
    Reconnected,
    Register,
    SendPublicKey,
    crypto,
)
from server import loop
from server.app import App
from server.limits import Limits
from server.loop import Server, create_listener
from server.peer import Peer, address_group
from server.session import Session, Step
from server.storage import commit
from server.storage.folder import FolderBlobs
from server.storage.sqlite import DB_NAME, SqliteMetadata

FLOODING_ADDRESS = "127.0.0.1"
OTHER_ADDRESS = "127.0.0.2"
#: Connections of the flooding address, and requests each pipelines.
CONNECTIONS = 8
PIPELINED = 4
ROUNDS = 400
#: Long enough for every pipelined request to sit in the server's socket buffers.
SETTLE = 0.2
#: The /64 whose addresses the flooding connections come from, one each (IPv6 tests).
FLOODING_64 = "2001:db8:1:2::"


@pytest.fixture
def looped(tmp_path):
    """A server at the default limits whose loop the test runs."""
    limits = Limits()
    db = SqliteMetadata.open(tmp_path / DB_NAME)
    app = App.build(db, FolderBlobs(tmp_path), limits)
    server = Server(app, create_listener(FLOODING_ADDRESS, 0))
    yield server
    server.close()
    db.close()


@pytest.fixture
def one_host_many_addresses(monkeypatch) -> str:
    """Each connection from the flooding address comes from an address of its own in one /64.

    Returns that /64, the group (server/peer.py) all of them count as.
    """
    real_peer = Peer

    def peer(address: str, port: int, ipv6_prefix: int) -> Peer:
        if address == FLOODING_ADDRESS:
            address = f"{FLOODING_64}{port:x}"
        return real_peer(address, port, ipv6_prefix)

    monkeypatch.setattr(loop, "Peer", peer)
    return address_group(FLOODING_64)






def _ask(server: Server, client: RawClient, request):
    client.send(request)
    for _ in range(ROUNDS):
        run_round(server)
        if answered(client):
            return client.receive()
    raise AssertionError("no answer")


def _identity(server: Server, client: RawClient) -> Identity:
    name = unique_name()
    registered = _ask(server, client, Register(client_id=ANY_ID, name=name))
    key = private_key()
    keyed = _ask(server, client, SendPublicKey(
        client_id=registered.client_id, name=name, public_key=crypto.export_public_key(key)))
    assert isinstance(keyed, PublicKeyReceived)
    return Identity(name, registered.client_id, key,
                    crypto.decrypt_aes_key(key, keyed.encrypted_aes_key))


def _connect(server: Server, count: int, source: str) -> list[tuple[RawClient, Identity]]:
    clients = [RawClient(server.address[:2], source=source) for _ in range(count)]
    return [(client, _identity(server, client)) for client in clients]


def _count_requests(monkeypatch) -> list[collections.Counter]:
    """Requests handled per address group, one Counter per round (append one before each)."""
    rounds: list[collections.Counter] = [collections.Counter()]
    real_step = Session.next_step

    def next_step(session: Session) -> Step:
        step = real_step(session)
        if step is Step.REQUEST:
            rounds[-1][session.peer.group] += 1
        return step

    monkeypatch.setattr(Session, "next_step", next_step)
    return rounds


def test_one_address_gets_its_share_of_durable_files_per_round_in_turn(looped, monkeypatch):
    _durable_files_per_round_in_turn(looped, monkeypatch)


def test_the_addresses_of_a_64_share_one_share_of_durable_files(
    looped, monkeypatch, one_host_many_addresses
):
    _durable_files_per_round_in_turn(looped, monkeypatch)


def _durable_files_per_round_in_turn(server: Server, monkeypatch) -> None:
    """The flooding connections' files are made durable one share per round, in turn."""
    flooders = _connect(server, CONNECTIONS, FLOODING_ADDRESS)
    (other, other_identity), = _connect(server, 1, OTHER_ADDRESS)
    sealed: list[list[bytes]] = [[]]  # client ids whose files were made durable, per round
    real_seal = commit.seal
    owner = {}

    def seal(temp):
        # the folder's writer is held in a BufferedWriter (server/blobport.py)
        sealed[-1].append(owner[temp.inner.directory.name])
        real_seal(temp)

    monkeypatch.setattr(commit, "seal", seal)
    for client, identity in flooders:
        owner[identity.client_id.hex()] = identity.client_id
        client.sock.sendall(b"".join(
            packet_bytes(packet)
            for number in range(PIPELINED)
            for packet in file_packets(identity, f"tiny{number}.bin", b"x")
        ))
    time.sleep(SETTLE)
    other.send(Reconnect(client_id=other_identity.client_id, name=other_identity.name))
    time.sleep(SETTLE)
    run_round(server)
    sealed.append([])
    assert answered(other), "the other address waited beyond the round its request came in"
    assert isinstance(other.receive(), Reconnected)
    expected = CONNECTIONS * PIPELINED
    for _ in range(ROUNDS):
        if sum(map(len, sealed)) == expected:
            break
        run_round(server)
        sealed.append([])
    share = server.app.limits.durable_files_per_address_per_round
    assert max(map(len, sealed)) == share  # never more in one round
    in_order = [client_id for files in sealed for client_id in files]
    assert len(in_order) == expected
    # Round robin: every connection had its first file in before any had a second.
    assert len(set(in_order[:CONNECTIONS])) == CONNECTIONS
    for client, identity in flooders:
        answers = [client.receive() for _ in range(PIPELINED)]
        assert all(isinstance(answer, FileReceived) for answer in answers)
        client.close()
    other.close()


def test_one_address_gets_its_share_of_requests_per_round(looped, monkeypatch):
    _requests_per_round(looped, monkeypatch, FLOODING_ADDRESS)


def test_the_addresses_of_a_64_share_one_share_of_requests(
    looped, monkeypatch, one_host_many_addresses
):
    _requests_per_round(looped, monkeypatch, one_host_many_addresses)


def _requests_per_round(server: Server, monkeypatch, flooding: str) -> None:
    """The flooding connections (of group ``flooding``) get one share of requests per round."""
    flooders = _connect(server, CONNECTIONS, FLOODING_ADDRESS)
    (other, other_identity), = _connect(server, 1, OTHER_ADDRESS)
    rounds = _count_requests(monkeypatch)
    for client, identity in flooders:
        client.sock.sendall(b"".join(
            client.conn.send(Reconnect(client_id=identity.client_id, name=identity.name))
            for _ in range(PIPELINED)
        ))
    time.sleep(SETTLE)
    other.send(Reconnect(client_id=other_identity.client_id, name=other_identity.name))
    time.sleep(SETTLE)
    expected = CONNECTIONS * PIPELINED
    for _ in range(ROUNDS):
        run_round(server)
        if sum(counts[flooding] for counts in rounds) == expected:
            break
        rounds.append(collections.Counter())
    assert rounds[0][OTHER_ADDRESS] == 1  # answered in the round it came in
    share = server.app.limits.requests_per_address_per_round
    assert max(counts[flooding] for counts in rounds) == share
    for client, _ in flooders:
        assert all(isinstance(client.receive(), Reconnected) for _ in range(PIPELINED))
        client.close()
    other.close()


#: Rule 6 of server/session.py: a 2024A client's first 1025 (header id 16 x '0').
FIRST_REGISTER = 1025
HEADER_SIZE = 7
#: Longer than the test's steps before the client asks again.
HOLD = 4 * SETTLE


def test_a_held_id_waits_for_the_bytes_its_deferred_connection_left_unread(tmp_path):
    # A 2024A client asks again at once after the 2100 header; its address has
    # used its round's share (another of its connections), so that round does
    # not read it. The id held must not go out as if the client had waited.
    limits = Limits(requests_per_address_per_round=1, first_register_hold=HOLD)
    db = SqliteMetadata.open(tmp_path / DB_NAME)
    app = App.build(db, FolderBlobs(tmp_path), limits)
    server = Server(app, create_listener(FLOODING_ADDRESS, 0))
    try:
        ((busy, identity),) = _connect(server, 1, FLOODING_ADDRESS)
        register = request(FIRST_REGISTER, name(unique_name().encode()), client_id=b"0" * 16)
        with RawClient(server.address[:2]) as client:
            client.send_raw(register)
            for _ in range(ROUNDS):
                if answered(client):
                    break
                run_round(server)
            head = client.sock.recv(HEADER_SIZE)
            assert int.from_bytes(head[1:3], "little") == 2100  # its payload, the id, held
            busy.sock.sendall(b"".join(
                busy.conn.send(Reconnect(client_id=identity.client_id, name=identity.name))
                for _ in range(PIPELINED)
            ))
            time.sleep(SETTLE)
            run_round(server)  # the busy connection's requests are in, one handled
            client.send_raw(register)  # at once, as a 2024A client does
            time.sleep(HOLD)  # the hold is due in the next round
            for _ in range(ROUNDS):
                run_round(server)
                if answered(client):
                    break
            version, code, size = read_header(client)
            assert (version, code, size) == (3, 1600, 16)  # not the id's bytes as a header
        busy.close()
    finally:
        server.close()
        db.close()


def read_header(client: RawClient) -> tuple[int, int, int]:
    head = b""
    while len(head) < HEADER_SIZE:
        chunk = client.sock.recv(HEADER_SIZE - len(head))
        assert chunk
        head += chunk
    return head[0], int.from_bytes(head[1:3], "little"), int.from_bytes(head[3:7], "little")
