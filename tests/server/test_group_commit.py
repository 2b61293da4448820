"""Group commit: one sync per loop round, and no answer before it (server/loop.py).

The loop is driven by hand (``run_once``) in this thread, so the test sees
each round: what the client had received when the round's durable commit
began (``begin_round_commit``), and what it receives when it fails. A round's
commit completes in a later ``run_once`` (SQLite's fsync runs in a worker):
:func:`_run_round` runs the loop until it is over.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time

import pytest
from helpers import (
    ANY_ID,
    Identity,
    RawClient,
    file_packets,
    packet_bytes,
    private_key,
    raw_header,
    unique_name,
)
from loop_driving import bytes_waiting, run_round, run_until

from protocol import (
    Acknowledged,
    ConnectionClosed,
    CrcOk,
    FileReceived,
    GeneralError,
    PublicKeyReceived,
    Register,
    Registered,
    SendPublicKey,
    cksum,
    crypto,
)
from protocol.codes import RequestCode
from server.app import App
from server.errors import DurabilityLost, StorageFault
from server.limits import Limits
from server.loop import Server, create_listener
from server.roundworker import RoundWorker
from server.storage.folder import RECEIVED_DIR, FolderBlobs, TempFile, client_dir_name
from server.storage.sqlite import DB_NAME, SqliteMetadata

#: A payload size the server will not read past: it answers 1607 and closes.
UNSKIPPABLE = 1 << 30
#: A packet size that sends each test file in one 828 (one request per file in a round).
WHOLE_FILE = 1 << 16


@pytest.fixture
def looped(tmp_path):
    """A server whose loop the test runs, and its metadata store.

    Every test client is on 127.0.0.1: without the per-address shares of a
    round (tested in tests/server/test_round_shares.py), one round takes the
    requests of all of them, as it would from several addresses.
    """
    limits = Limits(requests_per_address_per_round=0, durable_files_per_address_per_round=0)
    db = SqliteMetadata.open(tmp_path / DB_NAME)
    app = App.build(db, FolderBlobs(tmp_path), limits)
    server = Server(app, create_listener("127.0.0.1", 0))
    yield server, db
    server.close()
    try:
        db.close()
    except DurabilityLost:  # the test failed its fsync on purpose: nothing to make durable
        pass








def _on_durable_commit(db: SqliteMetadata, monkeypatch, action) -> None:
    """Call ``action()`` as each durable round's commit begins, before it."""
    real = db.begin_round_commit

    def begin(*, durable: bool):
        if durable:
            action()
        return real(durable=durable)

    monkeypatch.setattr(db, "begin_round_commit", begin)


def _broken_durable_commit() -> None:
    raise StorageFault("database sync: Input/output error")


def test_answers_wait_for_the_rounds_sync(looped, monkeypatch):
    server, db = looped
    clients = [RawClient(server.address[:2]) for _ in range(3)]
    run_until(server, lambda: len(server.channels) == len(clients))
    seen_at_sync = []
    _on_durable_commit(db, monkeypatch, lambda: seen_at_sync.append(
        (db.unsynced, [bytes_waiting(c) for c in clients])))
    for client in clients:
        client.send(Register(client_id=ANY_ID, name=unique_name()))
    time.sleep(0.1)  # every request in the server's socket buffers: one round takes them
    run_round(server)
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
    run_until(server, lambda: len(server.channels) == 1)
    seen_at_sync = []
    _on_durable_commit(db, monkeypatch,
                       lambda: seen_at_sync.append((db.unsynced, bytes_waiting(client))))
    # an 825, then a header whose size cannot be skipped: in one turn the 825
    # is answered, the header refused (1607) and the connection closed
    register = client.conn.send(Register(client_id=ANY_ID, name=unique_name()))
    client.send_raw(register + raw_header(RequestCode.REGISTER, UNSKIPPABLE))
    time.sleep(0.1)  # all of it in one receive
    run_until(server, lambda: bytes_waiting(client) > 0)
    assert seen_at_sync and seen_at_sync[0] == (True, 0)
    assert isinstance(client.receive(), Registered)
    assert isinstance(client.receive(), GeneralError)
    client.close()


def test_a_failed_sync_sends_no_answer_and_the_client_may_ask_again(
    looped, monkeypatch, caplog
):
    server, db = looped
    caplog.set_level(logging.INFO, logger="server.channel")
    client = RawClient(server.address[:2])
    name = unique_name()
    _on_durable_commit(db, monkeypatch, _broken_durable_commit)
    client.send(Register(client_id=ANY_ID, name=name))
    run_until(server, lambda: not server.channels and _seen_client(db, name))
    # no answer came: the connection closed with nothing before its end
    assert isinstance(client.receive(), ConnectionClosed)
    (closed,) = [r.getMessage() for r in caplog.records if " closed: " in r.getMessage()]
    assert "answers not durable" in closed and "out 0 B" in closed  # what was sent, not queued
    client.close()
    monkeypatch.undo()
    # The store is consistent: the keyless registration is this address's, so
    # the same client, asking again, gets its answer.
    again = RawClient(server.address[:2])
    again.send(Register(client_id=ANY_ID, name=name))
    run_until(server, lambda: bytes_waiting(again) > 0)
    assert isinstance(again.receive(), Registered)
    assert not db.unsynced
    again.close()


def test_a_failed_wal_fsync_stops_the_loop_and_no_later_sync_succeeds(looped, monkeypatch):
    server, db = looped
    client = RawClient(server.address[:2])
    run_until(server, lambda: len(server.channels) == 1)
    assert isinstance(_ask(server, client, Register(client_id=ANY_ID, name=unique_name())),
                      Registered)  # the WAL is open for fsync from here on
    real_fsync = os.fsync

    def fsync(fd):
        if fd == db._wal_fd:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    client.send(Register(client_id=ANY_ID, name=unique_name()))
    time.sleep(0.1)
    run_round(server)
    assert isinstance(server.durability_lost, DurabilityLost)
    assert isinstance(client.receive(), ConnectionClosed)  # never answered
    monkeypatch.undo()
    # the fsync works again, but the pages of the failed one may be gone: no
    # sync may claim durability on this database any more
    with pytest.raises(DurabilityLost, match="failed earlier"):
        db.sync()
    server.serve_forever()  # returns at once: the loop was told to stop
    client.close()


def _seen_client(db: SqliteMetadata, name: str) -> bool:
    return db.client_by_name(name) is not None


# -- first uploads: the rename waits for the round's sync ----------------------------


def _ask(server: Server, client: RawClient, request):
    """Send a request and run the loop until its answer is in."""
    client.send(request)
    run_until(server, lambda: bytes_waiting(client) > 0)
    return client.receive()


def _identity(server: Server, client: RawClient) -> Identity:
    name = unique_name()
    registered = _ask(server, client, Register(client_id=ANY_ID, name=name))
    key = private_key()
    public = crypto.export_public_key(key)
    answer = _ask(server, client, SendPublicKey(client_id=registered.client_id, name=name, public_key=public))
    aes_key = crypto.decrypt_aes_key(key, answer.encrypted_aes_key)
    return Identity(name, registered.client_id, key, aes_key)


#: The idle timeout of the test's server (s, on its own clock).
IDLE = 1.0


class _Clock:
    """A monotonic clock the test moves (a round's commit takes what the test says)."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


def test_a_commit_slower_than_the_idle_timeout_does_not_time_out_the_client_it_kept_waiting(
    tmp_path, monkeypatch
):
    # the time a request's answer waits for the round's commit is the server's: the idle
    # timeout counts from the answer's release (server/session.py Rule 5)
    clock = _Clock()
    db = SqliteMetadata.open(tmp_path / DB_NAME)
    server = Server(App.build(db, FolderBlobs(tmp_path), Limits(idle_timeout=IDLE), clock),
                    create_listener("127.0.0.1", 0))
    client = RawClient(server.address[:2])
    try:
        run_until(server, lambda: len(server.channels) == 1)

        def slow_commit() -> None:
            clock.now += 2 * IDLE

        _on_durable_commit(db, monkeypatch, slow_commit)
        name = unique_name()
        registered = _ask(server, client, Register(client_id=ANY_ID, name=name))
        assert isinstance(registered, Registered), registered
        server.run_once()  # the timers: none is due
        assert len(server.channels) == 1, "closed as idle while it waited for its answer"
        public = crypto.export_public_key(private_key())
        answer = _ask(server, client, SendPublicKey(
            client_id=registered.client_id, name=name, public_key=public))
        assert isinstance(answer, PublicKeyReceived), answer
    finally:
        client.close()
        server.close()
        db.close()


def _rows_seen_by_another_connection(path) -> dict[bytes, tuple[str, int]]:
    """Committed file rows: FileName -> (PathName, Verified)."""
    with sqlite3.connect(path) as other:
        rows = other.execute("SELECT FileName, PathName, Verified FROM files")
        return {name.encode(): (path_name, verified) for name, path_name, verified in rows}


@pytest.fixture
def two_clients(looped):
    server, db = looped
    clients = [RawClient(server.address[:2]) for _ in range(2)]
    run_until(server, lambda: len(server.channels) == len(clients))
    identities = [_identity(server, client) for client in clients]
    yield server, db, list(zip(clients, identities))
    for client in clients:
        client.close()


@pytest.fixture
def keyed_client(looped):
    """The looped server, its store, and one client with a key on it."""
    server, db = looped
    client = RawClient(server.address[:2])
    run_until(server, lambda: len(server.channels) == 1)
    yield server, db, client, _identity(server, client)
    client.close()


def _folder(data_dir, identity: Identity):
    """The client's folder under the data folder."""
    return data_dir / RECEIVED_DIR / client_dir_name(identity.client_id)


def _send_files(pairs, data: bytes) -> None:
    """Each client sends one file, whole; the next round sees them all."""
    for client, identity in pairs:
        (packet,) = file_packets(identity, f"{identity.name}.bin", data, WHOLE_FILE)
        client.send(packet)
    time.sleep(0.1)  # every packet in the server's socket buffers: one round takes them


def test_first_uploads_in_one_round_share_its_sync_and_take_their_names_after_it(
    two_clients, monkeypatch, tmp_path
):
    server, db, pairs = two_clients
    steps = []
    real_install = FolderBlobs.publish

    def install(store, key, path_name):
        # the row is committed and synced before the blob takes its name
        rows = _rows_seen_by_another_connection(db.path)
        steps.append(("rename", path_name in {path for path, _ in rows.values()},
                      db.unsynced))
        real_install(store, key, path_name)

    _on_durable_commit(db, monkeypatch, lambda: steps.append("sync"))
    monkeypatch.setattr(FolderBlobs, "publish", install)
    data = b"first upload" * 100
    _send_files(pairs, data)
    run_round(server)
    assert steps == ["sync", ("rename", True, False), ("rename", True, False)]
    for client, identity in pairs:
        answer = client.receive()
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
        (path_name, verified), = [
            row for name, row in _rows_seen_by_another_connection(db.path).items()
            if name == f"{identity.name}.bin".encode()
        ]
        assert (tmp_path / path_name).read_bytes() == data and verified == 0


def _disk_calls_by_thread(monkeypatch) -> list[tuple[int, str, str]]:
    """Note each fsync and rename the server makes: (thread, call, what it names)."""
    calls: list[tuple[int, str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append((threading.get_ident(), "fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(source, target, **options) -> None:
        calls.append((threading.get_ident(), "rename", str(target)))
        real_replace(source, target, **options)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return calls


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_a_rounds_seals_sync_and_publishes_run_off_the_loop_thread_as_one_job(
    two_clients, monkeypatch, tmp_path
):
    server, db, pairs = two_clients
    calls = _disk_calls_by_thread(monkeypatch)
    jobs = []
    real_start = RoundWorker.start
    monkeypatch.setattr(
        RoundWorker, "start", lambda worker, job: (jobs.append(job), real_start(worker, job))
    )
    data = b"sealed off the loop" * 100
    _send_files(pairs, data)
    run_round(server)  # this thread is the loop's
    for client, _identity in pairs:
        answer = client.receive()
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
    received = str(tmp_path / RECEIVED_DIR)
    blob_calls = [call for call in calls if call[2].startswith(received)]
    # each file's seal, its rename into place and its folder's sync: none in the loop's
    # thread, all in one job with the database's sync, a job for the round
    assert len(blob_calls) == 3 * len(pairs), calls
    assert {thread for thread, _, _ in calls} - {threading.get_ident()} == {
        thread for thread, _, _ in calls
    }, calls
    assert len({thread for thread, _, _ in calls}) == 1 and len(jobs) == 1, (calls, jobs)
    assert any(path.endswith("-wal") for _, _, path in calls)


def test_a_first_upload_that_cannot_take_its_name_is_answered_1607_in_place_of_1603(
    two_clients, monkeypatch, tmp_path
):
    server, db, pairs = two_clients
    (failing, failing_identity), (other, other_identity) = pairs
    real_install = FolderBlobs.publish
    failing_folder = client_dir_name(failing_identity.client_id)  # in path names

    def install(store, key, path_name):
        if failing_folder in path_name:
            raise StorageFault("cannot install a received file: Input/output error")
        real_install(store, key, path_name)

    monkeypatch.setattr(FolderBlobs, "publish", install)
    data = b"x" * 5000
    _send_files(pairs, data)
    # the failing client's next requests are answered after it, in order: a
    # blind 900 for the file not stored is refused too
    file_name = f"{failing_identity.name}.bin"
    failing.send_raw(
        failing.conn.send(CrcOk(client_id=failing_identity.client_id, file_name=file_name))
        + failing.conn.send(Register(client_id=ANY_ID, name=unique_name()))
    )
    time.sleep(0.1)
    run_round(server)
    run_round(server)  # its 1607 waits for its file's removal (the blob port's worker)
    answers = [failing.receive() for _ in range(3)]
    assert [type(answer) for answer in answers] == [GeneralError, GeneralError, Registered]
    assert isinstance(other.receive(), FileReceived)
    run_round(server)  # the undone row is committed with the next round
    rows = _rows_seen_by_another_connection(db.path)
    assert f"{failing_identity.name}.bin".encode() not in rows
    assert f"{other_identity.name}.bin".encode() in rows
    assert list(_folder(tmp_path, failing_identity).iterdir()) == []  # no temp left
    # the connection goes on: the client sends the file again, and it is stored
    monkeypatch.undo()
    (packet,) = file_packets(failing_identity, f"{failing_identity.name}.bin", data, WHOLE_FILE)
    assert isinstance(_ask(server, failing, packet), FileReceived)
    assert (_folder(tmp_path, failing_identity) / f"{failing_identity.name}.bin").exists()


def _request_lines(caplog, identity: Identity) -> list[str]:
    """The request lines (server/session.py) of the client's requests."""
    return [
        record.getMessage() for record in caplog.records
        if record.name == "server.session" and f" {identity.name}/" in record.getMessage()
        and " -> " in record.getMessage()
    ]


def test_a_first_upload_answered_1607_in_place_of_1603_is_logged_with_the_1607(
    two_clients, monkeypatch, caplog
):
    server, db, pairs = two_clients
    (failing, failing_identity), (other, other_identity) = pairs
    caplog.set_level(logging.INFO, logger="server.session")
    real_install = FolderBlobs.publish
    failing_folder = client_dir_name(failing_identity.client_id)

    def install(store, key, path_name):
        if failing_folder in path_name:  # the object store went away after the round's commit
            raise StorageFault("cannot install a received file: Input/output error")
        real_install(store, key, path_name)

    monkeypatch.setattr(FolderBlobs, "publish", install)
    _send_files(pairs, b"w" * 4000)
    run_round(server)
    run_round(server)  # its 1607 waits for its file's removal (the blob port's worker)
    assert isinstance(failing.receive(), GeneralError)
    assert isinstance(other.receive(), FileReceived)
    (refused,) = _request_lines(caplog, failing_identity)
    assert "-> 1607 refused" in refused and "could not be stored" in refused, refused
    assert "1603" not in refused
    (stored,) = _request_lines(caplog, other_identity)
    assert "-> 1603" in stored, stored


def test_the_requests_of_a_lost_round_are_logged_unanswered(two_clients, monkeypatch, caplog):
    server, db, pairs = two_clients
    caplog.set_level(logging.INFO, logger="server.session")
    _on_durable_commit(db, monkeypatch, _broken_durable_commit)
    _send_files(pairs, b"v" * 3000)
    run_until(server, lambda: not server.channels)  # each closed unanswered
    for client, identity in pairs:
        assert isinstance(client.receive(), ConnectionClosed)
        (line,) = _request_lines(caplog, identity)
        assert "-> (closed unanswered)" in line and "1603" not in line, line


def test_answers_held_for_a_first_upload_go_out_before_the_connection_closes(
    keyed_client, tmp_path
):
    server, db, client, identity = keyed_client
    data = b"then a bad header" * 40
    (packet,) = file_packets(identity, "last.bin", data, WHOLE_FILE)
    # in one turn: the file (its 1603 held), then a header the server refuses
    # and closes on (its 1607 held behind it)
    client.send_raw(packet_bytes(packet) + raw_header(RequestCode.REGISTER, UNSKIPPABLE))
    time.sleep(0.1)
    run_until(server, lambda: not server.channels)
    answer = client.receive()
    assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
    assert isinstance(client.receive(), GeneralError)
    assert isinstance(client.receive(), ConnectionClosed)
    assert (_folder(tmp_path, identity) / "last.bin").read_bytes() == data


def test_a_stop_before_the_round_ends_stores_none_of_its_waiting_first_uploads(
    two_clients, monkeypatch, tmp_path
):
    server, db, pairs = two_clients
    monkeypatch.setattr(server, "_end_round", lambda: None)  # the stop comes first
    _send_files(pairs, b"z" * 2000)
    server.run_once()
    server.close()
    db.finish_round(durable=True)  # what closing the database commits
    assert _rows_seen_by_another_connection(db.path) == {}
    for _, identity in pairs:
        assert list(_folder(tmp_path, identity).iterdir()) == []  # neither a temp nor a file


def test_a_sync_inside_a_lost_round_fails_and_leaves_the_report_to_the_loop(tmp_path):
    db = SqliteMetadata.open(tmp_path / DB_NAME)
    try:
        db._round_lost = "database or disk is full"  # SQLite rolled the round back
        with pytest.raises(StorageFault, match="rolled back"):
            db.sync()  # a request's sync: no file may take its name on it
        with pytest.raises(StorageFault, match="rolled back"):
            db.finish_round(durable=True)
        db.finish_round(durable=True)
    finally:
        db.close()


def test_a_lost_round_stores_none_of_its_first_uploads(two_clients, monkeypatch, tmp_path):
    server, db, pairs = two_clients
    _on_durable_commit(db, monkeypatch, _broken_durable_commit)
    data = b"y" * 3000
    _send_files(pairs, data)
    run_round(server)
    for client, identity in pairs:
        assert isinstance(client.receive(), ConnectionClosed)
        assert list(_folder(tmp_path, identity).iterdir()) == []  # neither a temp nor a file
    monkeypatch.undo()
    run_round(server)  # the rows that reached the database are removed with this round
    assert _rows_seen_by_another_connection(db.path) == {}


def test_a_version_confirmed_in_the_round_of_the_names_first_upload_is_the_one_stored(
    keyed_client, tmp_path, monkeypatch
):
    server, db, client, identity = keyed_client
    syncs = []
    _on_durable_commit(db, monkeypatch, lambda: syncs.append("sync"))
    first, second = b"version one " * 50, b"version two " * 60
    burst = b"".join(
        packet_bytes(packet)
        for data in (first, second)
        for packet in file_packets(identity, "same.bin", data, WHOLE_FILE)
    )
    burst += client.conn.send(CrcOk(client_id=identity.client_id, file_name="same.bin"))
    client.send_raw(burst)  # v1, v2 of the same name and the 900, in one round
    time.sleep(0.1)
    run_round(server)
    # one sync, the round's: v1 then v2 are published after it, in order
    assert syncs == ["sync"]
    answers = [client.receive() for _ in range(3)]
    assert [type(answer) for answer in answers] == [FileReceived, FileReceived, Acknowledged]
    run_round(server)
    ((path_name, verified),) = _rows_seen_by_another_connection(db.path).values()
    assert (tmp_path / path_name).read_bytes() == second and verified == 1


def test_a_version_confirmed_in_the_round_that_completed_it_is_sealed_before_its_swap(
    keyed_client, tmp_path, monkeypatch
):
    """A round's blobs are sealed at its end, but a pending version's 900 in the same
    round swaps the row's pointers to it before that: it is sealed first, at once."""
    server, db, client, identity = keyed_client
    first, second = b"version one " * 50, b"version two " * 60
    for packet in file_packets(identity, "same.bin", first, WHOLE_FILE):
        client.send(packet)
    run_until(server, lambda: bytes_waiting(client) > 0)
    assert isinstance(client.receive(), FileReceived)  # v1 stored, v2 will be pending
    steps = []
    real_seal, real_promote = TempFile.seal, db.promote_pending
    monkeypatch.setattr(TempFile, "seal", lambda temp: (steps.append("seal"), real_seal(temp)))
    monkeypatch.setattr(db, "promote_pending", lambda *row: (
        steps.append("swap"), real_promote(*row)))
    burst = b"".join(
        packet_bytes(packet) for packet in file_packets(identity, "same.bin", second, WHOLE_FILE)
    )
    burst += client.conn.send(CrcOk(client_id=identity.client_id, file_name="same.bin"))
    client.send_raw(burst)  # v2 and its 900, in one round
    time.sleep(0.1)
    run_round(server)
    assert steps == ["seal", "swap"]
    answers = [client.receive() for _ in range(2)]
    assert [type(answer) for answer in answers] == [FileReceived, Acknowledged]
    run_round(server)
    ((path_name, verified),) = _rows_seen_by_another_connection(db.path).values()
    assert (tmp_path / path_name).read_bytes() == second and verified == 1


def test_an_answer_queued_while_answers_go_out_does_not_wait_in_select(looped, monkeypatch):
    server, db = looped
    client = RawClient(server.address[:2])
    run_until(server, lambda: len(server.channels) == 1)
    (channel,) = server.channels
    real_write = type(channel)._write

    def broken_once(self, resume):
        monkeypatch.setattr(type(channel), "_write", real_write)
        raise ZeroDivisionError("a bug while sending")  # the edge answers 1607

    monkeypatch.setattr(type(channel), "_write", broken_once)
    client.send(Register(client_id=ANY_ID, name=unique_name()))
    time.sleep(0.1)
    run_round(server)  # handles the 825; sending its answer fails: a 1607 is queued
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
    db = SqliteMetadata.open(tmp_path / DB_NAME)
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
    db = SqliteMetadata.open(tmp_path / DB_NAME)
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
