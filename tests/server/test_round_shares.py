"""One address's share of a loop round (server/shares.py), under the loop driven by hand.

Many connections of one address pipeline requests; another address's request
goes in beside them. The test counts, round by round, what each address had
done: one address's connections together never get more than their shares,
every one of them gets its turns (round robin), and the other address is
answered in the round its request came in.
"""

from __future__ import annotations

import collections
import socket
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
from protocol import (
    FileReceived,
    PublicKeyReceived,
    Reconnect,
    Reconnected,
    Register,
    SendPublicKey,
    crypto,
)
from server.app import App
from server.limits import Limits
from server.loop import Server, create_listener
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


def _answered(client: RawClient) -> bool:
    """Whether the server sent something the client has not read yet."""
    client.sock.setblocking(False)
    try:
        return bool(client.sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False
    finally:
        client.sock.setblocking(True)


def _ask(server: Server, client: RawClient, request):
    client.send(request)
    for _ in range(ROUNDS):
        server.run_once()
        if _answered(client):
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
    """Requests handled per address, one Counter per round (append one before each)."""
    rounds: list[collections.Counter] = [collections.Counter()]
    real_step = Session.next_step

    def next_step(session: Session) -> Step:
        step = real_step(session)
        if step is Step.REQUEST:
            rounds[-1][session.peer.address] += 1
        return step

    monkeypatch.setattr(Session, "next_step", next_step)
    return rounds


def test_one_address_gets_its_share_of_durable_files_per_round_in_turn(looped, monkeypatch):
    server = looped
    flooders = _connect(server, CONNECTIONS, FLOODING_ADDRESS)
    (other, other_identity), = _connect(server, 1, OTHER_ADDRESS)
    sealed: list[list[bytes]] = [[]]  # client ids whose files were made durable, per round
    real_seal = commit.seal
    owner = {}

    def seal(temp):
        sealed[-1].append(owner[temp.directory.name])
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
    server.run_once()
    sealed.append([])
    assert _answered(other), "the other address waited beyond the round its request came in"
    assert isinstance(other.receive(), Reconnected)
    expected = CONNECTIONS * PIPELINED
    for _ in range(ROUNDS):
        if sum(map(len, sealed)) == expected:
            break
        server.run_once()
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
    server = looped
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
        server.run_once()
        if sum(counts[FLOODING_ADDRESS] for counts in rounds) == expected:
            break
        rounds.append(collections.Counter())
    assert rounds[0][OTHER_ADDRESS] == 1  # answered in the round it came in
    share = server.app.limits.requests_per_address_per_round
    assert max(counts[FLOODING_ADDRESS] for counts in rounds) == share
    for client, _ in flooders:
        assert all(isinstance(client.receive(), Reconnected) for _ in range(PIPELINED))
        client.close()
    other.close()
