"""A round's commit that completes later (server/loop.py, ``RoundCommit``): the loop goes on.

The metadata store here is the memory one behind a gate: a durable round's
commit is a :class:`GatedCommit` that completes only when the test says so
(or raises what the test says). While it is under way the loop accepts
connections and calls no method of the store; the round's answers go out only
once it completes; a commit that fails closes the round's connections
unanswered, and one whose durability is lost stops the server.
"""

from __future__ import annotations

import socket
import threading
import time

from helpers import ANY_ID, Identity, RawClient, file_packets, private_key, unique_name
from loop_driving import bytes_waiting, run_until

from protocol import (
    ConnectionClosed, FileReceived, Register, Registered, SendPublicKey, cksum, crypto,
)
from server.app import App
from server.errors import DurabilityLost, StorageFault
from server.limits import Limits
from server.loop import Server, create_listener
from server.storage.folder import RECEIVED_DIR, FolderBlobs, TempFile, client_dir_name
from server.storage.memory import MemoryBlobs, MemoryMetadata

ROUND_PAUSE = 0.01
#: How long the threaded test waits for the loop at most (a lost answer fails it then).
PATIENCE = 30.0


class GatedCommit:
    """A RoundCommit done when the test opens the gate (a byte on its socketpair)."""

    wants_write = False

    def __init__(self) -> None:
        self._waiting, self._opener = socket.socketpair()
        self._waiting.setblocking(False)
        #: What advance() raises once the gate opens (None: the round is durable).
        self.failure: StorageFault | None = None

    def fileno(self) -> int:
        return self._waiting.fileno()

    def open(self, failure: StorageFault | None = None) -> None:
        self.failure = failure
        self._opener.send(b"\0")

    def advance(self) -> bool:
        try:
            if not self._waiting.recv(1):
                return False
        except BlockingIOError:
            return False
        self._waiting.close()
        self._opener.close()
        if self.failure is not None:
            raise self.failure
        return True


class GatedMetadata:
    """The memory store, each durable round's commit a :class:`GatedCommit`.

    Every call made while a commit is under way is noted: there must be none.
    """

    def __init__(self) -> None:
        self._inner = MemoryMetadata()
        self.commits: list[GatedCommit] = []
        self.begun = threading.Event()
        self.in_flight = False
        self.calls_in_flight: list[str] = []

    def __getattr__(self, name: str):
        if self.in_flight:
            self.calls_in_flight.append(name)
        return getattr(self._inner, name)

    def begin_round_commit(self, *, durable: bool):
        if self.in_flight:
            self.calls_in_flight.append("begin_round_commit")
        self._inner.begin_round_commit(durable=durable)
        if not durable:
            return None
        commit = GatedCommit()
        real_advance = commit.advance

        def advance() -> bool:
            try:
                done = real_advance()
            except StorageFault:
                self.in_flight = False
                raise
            self.in_flight = not done
            return done

        commit.advance = advance  # type: ignore[method-assign]
        self.commits.append(commit)
        self.in_flight = True
        self.begun.set()
        return commit

    def finish_round(self, *, durable: bool) -> None:
        """What a tool calls; a loop that calls it waits for the commit (a failure here)."""
        raise AssertionError("the loop waited for the round's commit")


def _server(store: GatedMetadata) -> Server:
    limits = Limits(requests_per_address_per_round=0, durable_files_per_address_per_round=0)
    app = App.build(store, MemoryBlobs(), limits)  # type: ignore[arg-type]
    return Server(app, create_listener("127.0.0.1", 0))






def _wait(done) -> None:
    deadline = time.monotonic() + PATIENCE
    while not done():
        assert time.monotonic() < deadline, "the loop never got there"
        time.sleep(ROUND_PAUSE)


def test_the_loop_accepts_while_a_rounds_commit_is_under_way_and_answers_after_it():
    store = GatedMetadata()
    server = _server(store)
    loop = threading.Thread(target=server.serve_forever, daemon=True)
    loop.start()
    try:
        first = RawClient(server.address[:2])
        first.send(Register(client_id=ANY_ID, name=unique_name()))
        assert store.begun.wait(PATIENCE)  # the 825's round is committing, its gate shut
        second = RawClient(server.address[:2])
        _wait(lambda: len(server.channels) == 2)  # accepted meanwhile
        second.send(Register(client_id=ANY_ID, name=unique_name()))
        third = RawClient(server.address[:2])
        _wait(lambda: len(server.channels) == 3)  # the loop went round after the 825 came
        assert bytes_waiting(first) == 0 and bytes_waiting(second) == 0
        assert store.in_flight and store.calls_in_flight == []
        store.commits[0].open()
        assert isinstance(first.receive(), Registered)  # once the round is durable
        _wait(lambda: len(store.commits) == 2)  # the second 825 in the next round
        store.commits[1].open()
        assert isinstance(second.receive(), Registered)
        assert store.calls_in_flight == []
        for client in (first, second, third):
            client.close()
    finally:
        for commit in store.commits:
            if store.in_flight:
                commit.open()
        server.stop()
        loop.join(PATIENCE)
    assert not loop.is_alive()


def test_a_round_commit_that_fails_closes_its_connections_unanswered():
    store = GatedMetadata()
    server = _server(store)
    try:
        lost, other = RawClient(server.address[:2]), RawClient(server.address[:2])
        run_until(server, lambda: len(server.channels) == 2)
        lost.send(Register(client_id=ANY_ID, name=unique_name()))
        run_until(server, lambda: store.in_flight)
        other.send(Register(client_id=ANY_ID, name=unique_name()))  # waits for the next round
        store.commits[0].open(StorageFault("database: disk I/O error"))
        run_until(server, lambda: len(server.channels) == 1)
        assert isinstance(lost.receive(), ConnectionClosed)  # nothing before the close
        run_until(server, lambda: len(store.commits) == 2)
        store.commits[1].open()
        run_until(server, lambda: bytes_waiting(other) > 0)
        assert isinstance(other.receive(), Registered)  # the server serves on
        assert server.durability_lost is None
        lost.close()
        other.close()
    finally:
        server.close()


def test_a_round_commit_whose_durability_is_lost_stops_the_server():
    store = GatedMetadata()
    server = _server(store)
    try:
        client = RawClient(server.address[:2])
        client.send(Register(client_id=ANY_ID, name=unique_name()))
        run_until(server, lambda: store.in_flight)
        store.commits[0].open(DurabilityLost("database sync: Input/output error"))
        run_until(server, lambda: server.durability_lost is not None)
        server.serve_forever()  # returns at once: the loop was told to stop
        assert isinstance(client.receive(), ConnectionClosed)  # never answered
        client.close()
    finally:
        server.close()


DATA = bytes(range(256)) * 16
#: A packet size that sends the file in one 828.
WHOLE_FILE = 1 << 16


def _ask_through_the_gate(server: Server, store: GatedMetadata, client: RawClient, request):
    """A request whose round's commit the test lets through; its answer."""
    client.send(request)
    run_until(server, lambda: store.in_flight)
    store.commits[-1].open()
    run_until(server, lambda: bytes_waiting(client) > 0)
    return client.receive()


def _identity_through_the_gate(server: Server, store: GatedMetadata, client: RawClient) -> Identity:
    name = unique_name()
    registered = _ask_through_the_gate(server, store, client, Register(client_id=ANY_ID, name=name))
    key = private_key()
    public = crypto.export_public_key(key)
    answer = _ask_through_the_gate(
        server, store, client,
        SendPublicKey(client_id=registered.client_id, name=name, public_key=public),
    )
    return Identity(name, registered.client_id, key, crypto.decrypt_aes_key(key, answer.encrypted_aes_key))


def test_a_rounds_seals_run_while_its_commit_is_out_and_its_publishes_after_it(
    tmp_path, monkeypatch
):
    """A commit completing on the store's own descriptor (a database's COMMIT): the round
    worker seals the round's blobs meanwhile, off the loop thread, and publishes them once
    the commit is done, before the answer."""
    store = GatedMetadata()
    limits = Limits(requests_per_address_per_round=0, durable_files_per_address_per_round=0)
    app = App.build(store, FolderBlobs(tmp_path), limits)  # type: ignore[arg-type]
    server = Server(app, create_listener("127.0.0.1", 0))
    sealed: list[int] = []  # the threads that sealed
    real_seal = TempFile.seal
    monkeypatch.setattr(
        TempFile, "seal", lambda temp: (sealed.append(threading.get_ident()), real_seal(temp))
    )
    try:
        client = RawClient(server.address[:2])
        run_until(server, lambda: len(server.channels) == 1)
        identity = _identity_through_the_gate(server, store, client)
        (packet,) = file_packets(identity, "gated.bin", DATA, WHOLE_FILE)
        client.send(packet)
        run_until(server, lambda: store.in_flight)
        run_until(server, lambda: bool(sealed))  # while the gate is shut
        assert store.in_flight and sealed != [threading.get_ident()]
        folder = tmp_path / RECEIVED_DIR / client_dir_name(identity.client_id)
        assert [path.name for path in folder.iterdir() if not path.name.startswith(".")] == []
        assert bytes_waiting(client) == 0
        store.commits[-1].open()
        run_until(server, lambda: bytes_waiting(client) > 0)
        answer = client.receive()
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(DATA)
        assert [path.read_bytes() for path in folder.iterdir()] == [DATA]  # published
        assert store.calls_in_flight == []
        client.close()
    finally:
        for commit in store.commits:
            if store.in_flight:
                commit.open()
        server.close()
