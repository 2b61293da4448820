"""Group commit: one sync per loop round, and no answer before it (server/loop.py).

The loop is driven by hand (``run_once``) in this thread, so the test sees
each round: what the client had received when the round's sync ran, and what
it receives when the sync fails.
"""

from __future__ import annotations

import socket
import sqlite3
import time

import pytest

from helpers import ANY_ID, RawClient, raw_header, unique_name
from protocol import ConnectionClosed, GeneralError, Register, Registered
from protocol.codes import RequestCode
from server.app import App
from server.errors import StorageFault
from server.limits import Limits
from server.loop import Server, create_listener
from server.storage import commit
from server.storage.folder import FolderBlobs
from server.storage.sqlite import DB_NAME, SqliteMetadata

ROUNDS = 200
#: A payload size the server will not read past: it answers 1607 and closes.
UNSKIPPABLE = 1 << 30
#: How long a round waits at most, so that a lost answer fails the test quickly.
ROUND_PAUSE = 0.01


@pytest.fixture
def looped(tmp_path):
    """A server whose loop the test runs, and its metadata store."""
    limits = Limits()
    db = SqliteMetadata.open(tmp_path / DB_NAME, limits.busy_timeout)
    app = App.build(db, FolderBlobs(tmp_path), limits)
    server = Server(app, create_listener("127.0.0.1", 0))
    yield server, db
    server.close()
    db.close()


def _bytes_waiting(client: RawClient) -> int:
    """What the server sent that the client has not read yet (EOF counts as nothing)."""
    client.sock.setblocking(False)
    try:
        return len(client.sock.recv(1 << 16, socket.MSG_PEEK))
    except BlockingIOError:
        return 0
    finally:
        client.sock.setblocking(True)


def _run_until(server: Server, done) -> None:
    for _ in range(ROUNDS):
        server.run_once()
        if done():
            return
        time.sleep(ROUND_PAUSE)
    raise AssertionError("the loop never got there")


def test_answers_wait_for_the_rounds_sync(looped, monkeypatch):
    server, db = looped
    clients = [RawClient(server.address[:2]) for _ in range(3)]
    _run_until(server, lambda: len(server.channels) == len(clients))
    seen_at_sync = []
    real_sync = db.sync

    def sync():
        seen_at_sync.append((db.unsynced, [_bytes_waiting(c) for c in clients]))
        real_sync()

    monkeypatch.setattr(db, "sync", sync)
    for client in clients:
        client.send(Register(client_id=ANY_ID, name=unique_name()))
    time.sleep(0.1)  # every request in the server's socket buffers: one round takes them
    server.run_once()
    assert seen_at_sync, "the round's answers went out without a sync"
    unsynced, waiting = seen_at_sync[0]
    assert unsynced and waiting == [0, 0, 0]  # commits pending, nothing sent yet
    assert len(seen_at_sync) == 1  # one sync for the three registrations
    for client in clients:
        assert isinstance(client.receive(), Registered)
        client.close()


def test_an_answer_before_a_close_waits_for_the_sync_too(looped, monkeypatch):
    server, db = looped
    client = RawClient(server.address[:2])
    _run_until(server, lambda: len(server.channels) == 1)
    seen_at_sync = []
    real_sync = db.sync

    def sync():
        seen_at_sync.append((db.unsynced, _bytes_waiting(client)))
        real_sync()

    monkeypatch.setattr(db, "sync", sync)
    # an 825, then a header whose size cannot be skipped: in one turn the 825
    # is answered, the header refused (1607) and the connection closed
    register = client.conn.send(Register(client_id=ANY_ID, name=unique_name()))
    client.send_raw(register + raw_header(RequestCode.REGISTER, UNSKIPPABLE))
    time.sleep(0.1)  # all of it in one receive
    _run_until(server, lambda: _bytes_waiting(client) > 0)
    assert seen_at_sync and seen_at_sync[0] == (True, 0)
    assert isinstance(client.receive(), Registered)
    assert isinstance(client.receive(), GeneralError)
    client.close()


def test_a_failed_sync_sends_no_answer_and_the_client_may_ask_again(looped, monkeypatch):
    server, db = looped
    client = RawClient(server.address[:2])
    name = unique_name()

    def broken():
        raise StorageFault("database sync: Input/output error")

    monkeypatch.setattr(db, "sync", broken)
    client.send(Register(client_id=ANY_ID, name=name))
    _run_until(server, lambda: not server.channels and _seen_client(db, name))
    # no answer came: the connection closed with nothing before its end
    assert isinstance(client.receive(), ConnectionClosed)
    client.close()
    monkeypatch.undo()
    # The store is consistent: the keyless registration is this address's, so
    # the same client, asking again, gets its answer.
    again = RawClient(server.address[:2])
    again.send(Register(client_id=ANY_ID, name=name))
    _run_until(server, lambda: _bytes_waiting(again) > 0)
    assert isinstance(again.receive(), Registered)
    assert not db.unsynced
    again.close()


def _seen_client(db: SqliteMetadata, name: str) -> bool:
    return db.client_by_name(name) is not None


class _Recorder:
    """A metadata store and a temp blob that note the order of their steps."""

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.installed = False

    def transaction(self):
        recorder = self

        class _Transaction:
            def __enter__(self):
                recorder.steps.append("begin")

            def __exit__(self, *exc):
                recorder.steps.append("commit")

        return _Transaction()

    def upsert_file(self, *args) -> None:
        self.steps.append("row")

    def set_content(self, *args) -> None:
        self.steps.append("content")

    def sync(self) -> None:
        self.steps.append("sync")

    def install(self, path_name: str) -> None:
        self.steps.append("rename")
        self.installed = True


def test_a_first_uploads_row_is_durable_before_its_rename():
    recorder = _Recorder()
    content = commit.Content(size=1, cksum=2)
    commit.install_first(recorder, None, recorder, b"i" * 16, b"f", "p", content)  # type: ignore[arg-type]
    assert recorder.steps == ["begin", "row", "content", "commit", "sync", "rename"]


def test_an_answer_queued_while_answers_go_out_does_not_wait_in_select(looped, monkeypatch):
    server, db = looped
    client = RawClient(server.address[:2])
    _run_until(server, lambda: len(server.channels) == 1)
    (channel,) = server.channels
    real_write = type(channel)._write

    def broken_once(self, resume):
        monkeypatch.setattr(type(channel), "_write", real_write)
        raise ZeroDivisionError("a bug while sending")  # the edge answers 1607

    monkeypatch.setattr(type(channel), "_write", broken_once)
    client.send(Register(client_id=ANY_ID, name=unique_name()))
    time.sleep(0.1)
    server.run_once()  # handles the 825; sending its answer fails: a 1607 is queued
    timeouts = []
    select = server._selector.select
    monkeypatch.setattr(server._selector, "select",
                        lambda timeout=None: (timeouts.append(timeout), select(timeout))[1])
    server.run_once()
    assert timeouts == [0.0]
    # the 825's answer (durable, never sent), then the 1607 of the failure
    assert [type(client.receive()) for _ in range(2)] == [Registered, GeneralError]
    client.close()


# -- one transaction per round -------------------------------------------------------


def _names_seen_by_another_connection(path) -> set[str]:
    with sqlite3.connect(path) as other:
        return {row[0] for row in other.execute("SELECT Name FROM clients")}


def test_a_round_commits_its_requests_together_and_a_failed_one_alone_is_undone(tmp_path):
    db = SqliteMetadata.open(tmp_path / DB_NAME, Limits().busy_timeout)
    try:
        with db.transaction():
            db.insert_client(b"a" * 16, "first", 0.0, "v3")
        with pytest.raises(ZeroDivisionError):
            with db.transaction():  # a request that fails after its write
                db.insert_client(b"b" * 16, "undone", 0.0, "v3")
                raise ZeroDivisionError
        with db.transaction():
            db.insert_client(b"c" * 16, "third", 0.0, "v3")
        # inside the round, the server sees its own writes; nobody else yet
        assert db.client_by_name("first") is not None and db.client_by_name("undone") is None
        assert db.unsynced and _names_seen_by_another_connection(db.path) == set()
        db.finish_round(durable=True)
        assert not db.unsynced
        assert _names_seen_by_another_connection(db.path) == {"first", "third"}
    finally:
        db.close()


def test_a_lost_round_is_reported_to_the_loop_once(tmp_path, monkeypatch):
    db = SqliteMetadata.open(tmp_path / DB_NAME, Limits().busy_timeout)
    try:
        with db.transaction():
            db.insert_client(b"a" * 16, "lost", 0.0, "v3")
        # a commit that fails inside a request (a first upload syncs its row at once)
        real_db = db._db

        class FailingCommit:
            in_transaction = True

            def execute(self, statement, *args):
                if statement == "COMMIT":
                    raise sqlite3.OperationalError("database or disk is full")
                return real_db.execute(statement, *args)

        monkeypatch.setattr(db, "_db", FailingCommit())
        with pytest.raises(StorageFault, match="disk is full"):
            db.sync()
        monkeypatch.setattr(db, "_db", real_db)
        assert not real_db.in_transaction  # rolled back: the round's writes are gone
        # the loop learns that the round's other requests lost their writes too
        with pytest.raises(StorageFault, match="rolled back"):
            db.finish_round(durable=True)
        db.finish_round(durable=True)  # once only: the next round is a new one
        assert _names_seen_by_another_connection(db.path) == set()
    finally:
        db.close()
