"""A request reads its client once (server/reads.py): statements counted, and the cache's rules.

The counts are SQLite's own statements (``set_trace_callback`` on the store's
connection) for requests driven through a :class:`~server.session.Session`:
a count does not depend on the machine's load. The cache's rules (it never
outlives a request, a write drops what it changes) are checked on the
memory store, whose reads are counted by a subclass.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest

from helpers import parse_answers, Identity, file_packets, make_identity
from protocol import (
    ClientConnection,
    CrcOk,
    FileReceived,
    Reconnect,
    Reconnected,
    Register,
    Registered,
)
from server.app import App
from server.limits import Limits
from server.peer import Peer
from server.reads import RequestReads
from server.session import Session, Step
from server.storage.folder import FolderBlobs
from server.storage.memory import MemoryMetadata
from server.storage.sqlite import DB_NAME, SqliteMetadata

#: The statements of a single-packet 828 that stores a new file: one read of
#: the client with its binding, one of the file's row (its path name is the
#: blob store's to choose), and the request's savepoint with its writes (the
#: row, its content, the client's LastSeen and its key's LastUsed) in the
#: round's transaction.
SINGLE_PACKET_STATEMENTS = 10
#: The statements of an 827 of a keyed client: one read of the client (by
#: its id, for Rule 7; its name is the same row) with its binding, and the
#: savepoint with the new key and binding.
RECONNECT_STATEMENTS = 7
#: The tables a SELECT reads (each FROM and JOIN).
_TABLE = re.compile(r"\b(?:FROM|JOIN) (\w+)")
#: Where a request's client lives: its row and its key binding.
_CLIENT_TABLES = {"clients", "key_bindings"}


class Statements:
    """The SQL statements run on a SQLite store's connection while counting."""

    def __init__(self, db: SqliteMetadata) -> None:
        self.run: list[str] = []
        db._db.set_trace_callback(self.run.append)  # the store's own connection

    def during(self, action) -> list[str]:
        self.run.clear()
        action()
        return list(self.run)


def _selects(statements: list[str]) -> list[str]:
    return [text for text in statements if text.startswith("SELECT ")]


def reads_by_table(statements: list[str]) -> Counter:
    """How many SELECTs read each table (a join reads two)."""
    return Counter(table for text in _selects(statements) for table in set(_TABLE.findall(text)))


def client_reads(statements: list[str]) -> int:
    """How many SELECTs read the client's row or its binding."""
    return sum(1 for text in _selects(statements) if _CLIENT_TABLES & set(_TABLE.findall(text)))


class Client:
    """One persistent connection of a client, on an App over SQLite and a folder."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.session = Session(app, Peer("127.0.0.1", 40000))

    def feed(self, *requests) -> None:
        """The requests' bytes, handled (the round not ended: its commit is shared)."""
        for request in requests:
            self.session.receive_data(ClientConnection().send(request))
        while self.session.next_step() not in (Step.NEED_DATA, Step.CLOSE):
            pass

    def send(self, *requests) -> list:
        """The requests, handled in one round; their answers."""
        self.feed(*requests)
        return self.answers()

    def answers(self) -> list:
        """End the round as the loop does; the answers it released."""
        self.session.release(self.app.end_round(durable=False))
        return parse_answers(self.session.data_to_send())

    def request(self, request):
        """One request, its one answer (for helpers.make_identity)."""
        (answer,) = self.send(request)
        return answer

    def identity(self) -> Identity:
        return make_identity(self)


@pytest.fixture
def sqlite_app(tmp_path):
    db = SqliteMetadata.open(tmp_path / DB_NAME)
    app = App.build(db, FolderBlobs(tmp_path), Limits())
    yield app, Statements(db)
    app.uploads.close()
    db.close()


def test_a_single_packet_828_reads_its_client_and_binding_once(sqlite_app):
    app, statements = sqlite_app
    client = Client(app)
    who = client.identity()
    (packet,) = file_packets(who, "one.bin", b"single packet" * 10)
    run = statements.during(lambda: client.feed(packet))
    assert [type(answer) for answer in client.answers()] == [FileReceived]
    reads = reads_by_table(run)
    assert reads["clients"] == 1 and reads["key_bindings"] == 1, run
    assert client_reads(run) == 1, run  # one statement: the row with its binding
    assert len(run) <= SINGLE_PACKET_STATEMENTS, run


def test_an_827_reads_its_client_and_binding_once(sqlite_app):
    app, statements = sqlite_app
    client = Client(app)
    who = client.identity()
    run = statements.during(lambda: client.feed(Reconnect(client_id=who.client_id, name=who.name)))
    assert [type(answer) for answer in client.answers()] == [Reconnected]
    reads = reads_by_table(run)
    assert reads["clients"] == 1 and reads["key_bindings"] == 1, run
    assert client_reads(run) == 1, run  # one statement: the row with its binding
    assert len(run) <= RECONNECT_STATEMENTS, run


def test_a_verdict_reads_its_client_and_binding_once(sqlite_app):
    app, statements = sqlite_app
    client = Client(app)
    who = client.identity()
    client.send(*file_packets(who, "two.bin", b"two packets" * 200))
    run = statements.during(lambda: client.feed(CrcOk(client_id=who.client_id, file_name="two.bin")))
    reads = reads_by_table(run)
    assert reads["clients"] == 1 and reads["key_bindings"] == 1, run
    assert client_reads(run) == 1, run  # one statement: the row with its binding


def test_an_825_of_a_new_name_reads_its_name_and_not_its_fresh_id(sqlite_app):
    """A fresh id is 128 random bits: the store's key refuses a taken one, unread."""
    app, statements = sqlite_app
    client = Client(app)
    run = statements.during(lambda: client.feed(Register(client_id=bytes(16), name="newcomer")))
    assert [type(answer) for answer in client.answers()] == [Registered]
    assert reads_by_table(run)["clients"] == 1, run  # by its name


@pytest.mark.needed_in_ci
def test_an_825_of_a_new_name_reads_both_client_counts_in_one_round_trip(
    tmp_path, postgres_url, monkeypatch
):
    """The cap and the address group's share are checked together: on a database server,
    each read is a round trip the loop waits for."""
    from server.storage.postgres.store import PostgresMetadata

    db = PostgresMetadata.open(postgres_url)
    app = App.build(db, FolderBlobs(tmp_path), Limits())
    trips: list[str] = []
    send = db._send

    def recorded(read):
        trips.append(";".join(text for text, _ in [*db._queue, *([read] if read else [])]))
        return send(read)

    monkeypatch.setattr(db, "_send", recorded)
    try:
        answers = Client(app).send(Register(client_id=bytes(16), name="newcomer"))
    finally:
        app.uploads.close()
        db.close()
    assert [type(answer) for answer in answers] == [Registered]
    # The counts' statement, or its prepared call (server/storage/postgres/store.py).
    assert sum("client_counts" in trip or "cd_name" in trip for trip in trips) == 1, trips


# -- the cache's rules ------------------------------------------------------------------


class CountingMetadata(MemoryMetadata):
    """The memory store, counting its reads of client rows and bindings."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter = Counter()

    def client_by_id(self, client_id):
        self.reads["client"] += 1
        return super().client_by_id(client_id)

    def client_by_name(self, name):
        self.reads["client"] += 1
        return super().client_by_name(name)

    def binding(self, client_id):
        self.reads["binding"] += 1
        return super().binding(client_id)


CLIENT_ID = b"\x01" * 16
NOW = 1000.0


@pytest.fixture
def store():
    made = CountingMetadata()
    with made.transaction():
        made.insert_client(CLIENT_ID, "alice", NOW, "v3", "127.0.2.1")
        made.set_binding(CLIENT_ID, "127.0.2.1", NOW)
        made.set_keys(CLIENT_ID, b"public", b"k" * 32, NOW)
    made.reads.clear()
    return made


def test_inside_a_request_a_client_is_read_once_by_id_or_name(store):
    reads = RequestReads(store)
    with reads.request():
        first = reads.client_by_id(CLIENT_ID)
        assert reads.client_by_id(CLIENT_ID) is first
        assert reads.client_by_name("alice") is first
        assert reads.binding(CLIENT_ID) is reads.binding(CLIENT_ID)
    assert store.reads == Counter(client=1, binding=1)


def test_nothing_is_kept_from_one_request_to_the_next(store):
    reads = RequestReads(store)
    with reads.request():
        assert reads.client_by_id(CLIENT_ID).aes_key == b"k" * 32
    with store.transaction():  # a write the cache never saw (another process's, say)
        store.set_aes_key(CLIENT_ID, b"n" * 32, NOW)
    with reads.request():
        assert reads.client_by_id(CLIENT_ID).aes_key == b"n" * 32
    reads.client_by_id(CLIENT_ID)  # outside a request: the store's
    assert store.reads["client"] == 3


def test_a_write_inside_a_request_drops_what_it_changes(store):
    reads = RequestReads(store)
    with reads.request():
        assert reads.client_by_id(CLIENT_ID).edition == "v3"
        with reads.transaction():
            reads.set_edition(CLIENT_ID, "2024A")
            reads.set_binding(CLIENT_ID, "127.0.2.9", NOW + 1)
        assert reads.client_by_id(CLIENT_ID).edition == "2024A"
        assert reads.binding(CLIENT_ID).address == "127.0.2.9"
        with reads.transaction():
            reads.delete_client(CLIENT_ID)
        assert reads.client_by_id(CLIENT_ID) is None
        assert reads.client_by_name("alice") is None


def test_a_failed_transaction_drops_what_it_wrote(store):
    reads = RequestReads(store)
    with reads.request():
        with pytest.raises(RuntimeError), reads.transaction():
            reads.set_aes_key(CLIENT_ID, b"n" * 32, NOW)
            assert reads.client_by_id(CLIENT_ID).aes_key == b"n" * 32
            raise RuntimeError
        assert reads.client_by_id(CLIENT_ID).aes_key == b"k" * 32


def test_a_noted_key_use_counts_in_the_cached_binding_as_in_the_store(store):
    reads = RequestReads(store)
    with reads.request():
        assert reads.binding(CLIENT_ID).last_used == NOW
        reads.note_key_used(CLIENT_ID, NOW + 5)
        assert reads.binding(CLIENT_ID) == store.binding(CLIENT_ID)
        assert reads.binding(CLIENT_ID).last_used == NOW + 5
