"""docs/HOSTILE.md G: faults, crashes, restart, on the real server.

Faults are real where this host allows it: a 2 MiB tmpfs fills up (ENOSPC),
another process locks the database, a peer resets with SO_LINGER 0, SIGKILL
hits the process. The rest is injected inside the real server process by
inject/sitecustomize.py (EIO, ENOSPC on fsync or rename, a read-only
database connection, an exception in a handler); SIGKILL at an exact point
uses the server's test-only crash points (server/crashpoints.py).
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from helpers import (
    ANY_ID,
    file_packets,
    make_identity,
    reconnect,
    server_env,
    start_server,
    unique_name,
    upload,
)
from hostile_helpers import (
    LOCK_FILE,
    Guard,
    flood_until_stalled,
    small_window_client,
    check_tree,
    client_dir,
    client_files,
    db_rows,
    file_count,
    normal_flow,
    sentinel,
    start_refused,
    verified_upload,
    temp_files,
    temp_files_gone,
)
from protocol import (
    Acknowledged,
    ConnectionClosed,
    CrcOk,
    FileReceived,
    GeneralError,
    Reconnect,
    Reconnected,
    Register,
    Registered,
    RegistrationFailed,
    cksum,
)
from protocol.crypto import decrypt_aes_key
from server.__main__ import EXIT_DURABILITY_LOST
from server.storage.sqlite import DEFAULT_BUSY_TIMEOUT
from timing_helpers import round_trip, timer_bound

DEFAULT_PORT = 1256
#: The steps of installing a file (a rename and the folder's sync after it).
INSTALL_STEPS = ("replace", "fsync_dir")
#: How long a server that must stop on its own may take.
WAIT_FOR_EXIT = 15.0


def _only_one_error(client) -> None:
    replies = sentinel(client)
    assert [type(r) for r in replies] == [GeneralError], replies


def _send_all(client, packets) -> None:
    for packet in packets:
        client.send(packet)


# -- G1: disk full, I/O errors ------------------------------------------------------------


def test_g1_disk_full_during_temp_write(faults, tmpfs, tmp_path):
    """ENOSPC from a full 2 MiB tmpfs (injected only if this host cannot mount one)."""
    data_dir = tmp_path / "data"
    root = data_dir / "received_files"
    real = tmpfs.mount(root, "2m")
    server = faults.start("--min-free-disk", "0", data_dir=data_dir)
    guard = Guard(server)
    data = os.urandom(1_500_000)
    filler = root / "filler"
    with server.client() as client:
        identity = make_identity(client)
        packets = file_packets(identity, "big.bin", data, 65536)
        client.send(packets[0])
        client.send(packets[1])
        deadline = time.monotonic() + 5
        while not temp_files(server):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        if real:
            _fill(filler)
        else:
            faults.arm(write={"errno": errno.ENOSPC, "after": 3 * 65536})
        _send_all(client, packets[2:])
        _only_one_error(client)  # one 1607 for the attempt, the rest dropped quietly
        assert temp_files_gone(server)
        assert client_files(server, identity.client_id) == []
        assert file_count(server, identity.client_id) == 0
        if real:
            filler.unlink()
        faults.disarm()
        answer = upload(client, identity, "big.bin", data, 65536)  # space again: served
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
    assert "No space left on device" in server.log()
    guard.check()


def _fill(path) -> None:
    """Take every byte left on path's file system."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        for size in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\xff" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_g1_disk_full_for_the_database(server_factory, tmpfs, tmp_path):
    """The whole data folder on a full tmpfs: the database cannot grow either."""
    data_dir = tmp_path / "data"
    if not tmpfs.mount(data_dir, "4m"):
        # SQLite writes below Python, where inject/ cannot reach; the other G1
        # tests cover the file steps. Runs wherever the tests run as root.
        pytest.skip("needs mount rights for a tmpfs: SQLITE_FULL cannot be injected from Python")
    server = server_factory("--min-free-disk", "0", data_dir=data_dir)
    guard = Guard(server)
    filler = data_dir / "received_files" / "filler"
    with server.client() as client:
        identity = make_identity(client)
    _fill(filler)
    clients_before = db_rows(server, "SELECT COUNT(*) FROM clients")
    # A round's writes commit together (group commit): when the commit fails,
    # no answer of that round goes out and its connections close unanswered;
    # a failure inside the request (a first upload syncs its row at once)
    # may also come back as 1607 when the round has nothing else to lose.
    unanswered = (GeneralError, ConnectionClosed)
    for _ in range(2):
        with server.client() as client:
            answer = client.request(Register(client_id=ANY_ID, name=unique_name("x" * 150)))
            assert isinstance(answer, (Registered, *unanswered)), answer
        with server.client() as client:
            answer = client.request(Reconnect(client_id=identity.client_id, name=identity.name))
            assert isinstance(answer, (Reconnected, *unanswered)), answer
            if isinstance(answer, Reconnected):  # its new key's commit may have passed
                identity.aes_key = decrypt_aes_key(identity.private_key, answer.encrypted_aes_key)
                assert isinstance(upload(client, identity, "f.bin", os.urandom(20_000)), unanswered)
    assert temp_files_gone(server) and client_files(server, identity.client_id) == []
    assert file_count(server, identity.client_id) == 0
    filler.unlink()
    with sqlite3.connect(data_dir / "defensive.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    data = os.urandom(20_000)
    with server.client() as client:  # the server serves on
        reconnect(client, identity)
        answer = upload(client, identity, "f.bin", data)
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
    assert db_rows(server, "SELECT COUNT(*) FROM clients")[0][0] >= clients_before[0][0]
    log = server.log()
    assert "database or disk is full" in log  # the real cause is logged, not hidden
    assert "cannot rollback" not in log
    guard.check()


@pytest.mark.parametrize(
    "step, code",
    [
        ("write", errno.EIO),
        ("fsync", errno.EIO),
        ("fsync", errno.ENOSPC),
        ("replace", errno.EIO),
        ("replace", errno.ENOSPC),
        ("fsync_dir", errno.EIO),
    ],
)
def test_g1_io_error_during_write_fsync_or_rename(faults, step, code):
    """A fault while a file is written or installed: 1607, nothing half done."""
    server = faults.start()
    guard = Guard(server)
    old, new = os.urandom(5000), os.urandom(9000)
    doc = lambda: (client_dir(server, identity.client_id) / "doc.bin").read_bytes()  # noqa: E731
    rows = lambda: db_rows(server, "SELECT FileName, Verified FROM files WHERE ID = ?", identity.client_id)  # noqa: E731
    with server.client() as client:
        identity = make_identity(client)
        verified_upload(client, identity, "doc.bin", old)
        faults.arm(**{step: {"errno": code}})
        verify = CrcOk(client_id=identity.client_id, file_name="doc.bin")
        if step in INSTALL_STEPS:
            # a new version of a verified file waits as a pending version: it
            # is installed at its 900, where the fault strikes
            assert isinstance(upload(client, identity, "doc.bin", new), FileReceived)
            assert isinstance(client.request(verify), GeneralError)
            # replace: nothing moved; fsync_dir: renamed before the folder sync failed
            assert doc() == (new if step == "fsync_dir" else old)
        else:
            _send_all(client, file_packets(identity, "doc.bin", new))
            _only_one_error(client)
            assert doc() == old
        assert rows() == [("doc.bin", 1)]  # the verified row is intact
        # a new file: its first upload is installed at once, and fails there
        _send_all(client, file_packets(identity, "fresh.bin", new))
        _only_one_error(client)
        faults.disarm()
        if step in INSTALL_STEPS:  # the client's retry of the 900 completes it
            assert isinstance(client.request(verify), Acknowledged)
            assert (doc(), rows()) == (new, [("doc.bin", 1)])
        assert temp_files_gone(server)
        assert client_files(server, identity.client_id) == ["doc.bin"]  # nothing under fresh.bin
        # the server keeps serving: the same client, same connection
        verified_upload(client, identity, "doc.bin", old)
        assert doc() == old
    assert os.strerror(code) in server.log()
    guard.check()


def test_g1_failed_database_fsync_stops_the_server_and_a_restart_serves(faults):
    """A failed fsync of the WAL: no answer rests on it, later ones neither; exit 3."""
    server = faults.start()
    guard = Guard(server)
    with server.client() as client:
        identity = make_identity(client)  # durable before the fault
        faults.arm(wal_fsync={"errno": errno.EIO})
        client.send(Register(client_id=ANY_ID, name=unique_name()))
        assert isinstance(client.receive(), ConnectionClosed)  # never answered
    # Linux may drop the pages of a failed fsync, so a later fsync that works
    # proves nothing: the server does not wait for one, it stops
    assert server.process.wait(timeout=WAIT_FOR_EXIT) == EXIT_DURABILITY_LOST
    log = server.log()
    assert "CRITICAL" in log and os.strerror(errno.EIO) in log
    assert "Traceback" not in log
    faults.disarm()
    restarted = faults.start(data_dir=server.data_dir)
    with restarted.client() as client:
        reconnect(client, identity)  # what was answered before the fault is there
    guard.server = restarted
    guard.check()


# -- G2: locked or read-only database -------------------------------------------------


LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
db.execute("ROLLBACK")
"""


def _database_writes_fail(server, guard, client, identity) -> None:
    """900, 825 and a complete upload each get 1607 and change nothing."""
    before = db_rows(server, "SELECT * FROM files ORDER BY FileName")
    clients_before = db_rows(server, "SELECT COUNT(*) FROM clients")
    assert isinstance(client.request(CrcOk(client_id=identity.client_id, file_name="a.bin")), GeneralError)
    assert isinstance(client.request(Register(client_id=ANY_ID, name=unique_name())), GeneralError)
    assert isinstance(upload(client, identity, "b.bin", os.urandom(3000)), GeneralError)
    # what needs no write is still served, to this client and to others
    with server.client() as other:
        taken = other.request(Register(client_id=ANY_ID, name=guard.identity.name))
        assert isinstance(taken, RegistrationFailed)
    assert db_rows(server, "SELECT * FROM files ORDER BY FileName") == before
    assert db_rows(server, "SELECT COUNT(*) FROM clients") == clients_before
    assert temp_files_gone(server)
    assert client_files(server, identity.client_id) == ["a.bin"]


def _database_writes_work(server, client, identity) -> None:
    assert isinstance(client.request(CrcOk(client_id=identity.client_id, file_name="a.bin")), Acknowledged)
    assert isinstance(upload(client, identity, "b.bin", b"after"), FileReceived)
    assert db_rows(server, "SELECT FileName, Verified FROM files WHERE ID = ? ORDER BY FileName",
                   identity.client_id) == [("a.bin", 1), ("b.bin", 0)]


def test_g2_database_locked_by_another_process(server):
    """Default busy timeout: the single-threaded loop must not hang for everyone."""
    guard = Guard(server)
    baseline = round_trip(server)
    with server.client() as client, server.client() as other:
        identity = make_identity(client)
        assert isinstance(upload(client, identity, "a.bin", b"first"), FileReceived)
        locker = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(server.data_dir / "defensive.db")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        try:
            assert locker.stdout.readline().strip() == "locked"
            # a write stuck on the lock and, meanwhile, another client's read
            started = time.monotonic()
            client.send(CrcOk(client_id=identity.client_id, file_name="a.bin"))
            taken = other.request(Register(client_id=ANY_ID, name=guard.identity.name))
            assert isinstance(taken, RegistrationFailed)
            # the loop waits DEFAULT_BUSY_TIMEOUT (0.25 s) at most, not SQLite's usual 5 s
            bound = timer_bound(DEFAULT_BUSY_TIMEOUT, baseline)
            assert time.monotonic() - started <= bound, "the whole server waited for the lock"
            assert isinstance(client.receive(), GeneralError)
            assert time.monotonic() - started <= bound
            _database_writes_fail(server, guard, client, identity)
        finally:
            locker.stdin.close()
            assert locker.wait(10) == 0
        _database_writes_work(server, client, identity)
    assert "database is locked" in server.log()
    guard.check()


def test_g2_database_turns_read_only_while_serving(faults):
    """Read-only after start (the connection swapped for a ``mode=ro`` one): 1607 per write."""
    server = faults.start()
    guard = Guard(server)
    with server.client() as client:
        identity = make_identity(client)
        assert isinstance(upload(client, identity, "a.bin", b"first"), FileReceived)
        faults.arm(db="readonly")
        _database_writes_fail(server, guard, client, identity)
        faults.disarm()
        _database_writes_work(server, client, identity)
    assert "readonly database" in server.log()
    guard.check()


#: SQLite's header byte "file format write version" (1 legacy, 2 WAL): a value
#: it does not know makes SQLite open the database read-only, for root too.
WRITE_VERSION_OFFSET = 18
UNKNOWN_WRITE_VERSION = 3


def _set_write_version(db_path, version: int) -> None:
    with open(db_path, "r+b") as file:
        file.seek(WRITE_VERSION_OFFSET)
        file.write(bytes([version]))


def _read_only(how, data_dir, tmpfs):
    """Make the stopped server's database (or folder) read-only; what to look for, and the undo.

    Skips where this host cannot (mount rights, chattr).
    """
    db_path = data_dir / "defensive.db"
    if how == "sqlite-header":
        _set_write_version(db_path, UNKNOWN_WRITE_VERSION)
        return "readonly database", lambda: _set_write_version(db_path, 2)
    if how == "read-only-file-mount":
        if not tmpfs.bind_read_only(db_path):
            pytest.skip("needs mount rights for a read-only bind mount")
        return "Read-only file system", tmpfs.unmount_all
    if how == "immutable-file":
        if subprocess.run(["chattr", "+i", str(db_path)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available here")
        return "Operation not permitted", lambda: subprocess.run(["chattr", "-i", str(db_path)], check=True)
    assert how == "read-only-folder"  # the folder is a tmpfs the test mounted
    if not tmpfs.remount(data_dir, "ro"):
        pytest.skip("needs mount rights to remount a tmpfs read-only")
    return "Read-only file system", lambda: tmpfs.remount(data_dir, "rw")


@pytest.mark.parametrize(
    "how", ["sqlite-header", "read-only-file-mount", "immutable-file", "read-only-folder"]
)
def test_g2_read_only_database(server_factory, tmpfs, tmp_path, how):
    """Read-only before start: a clear refusal, not a server that answers 1607 to everything.

    Real read-only states that stop root too (root ignores permission bits).
    """
    data_dir = tmp_path / "data"
    flags = ("--min-free-disk", "0")  # the tmpfs of "read-only-folder" is small
    if how == "read-only-folder" and not tmpfs.mount(data_dir, "4m"):
        pytest.skip("needs mount rights for a tmpfs")
    server = server_factory(*flags, data_dir=data_dir)
    with server.client() as client:
        identity = make_identity(client)
        assert isinstance(upload(client, identity, "a.bin", b"first"), FileReceived)
    assert server.stop() == 0
    db_path = data_dir / "defensive.db"
    before = hashlib.sha256(db_path.read_bytes()).hexdigest()
    reason, undo = _read_only(how, data_dir, tmpfs)
    try:
        refused = start_refused(data_dir)
    finally:
        undo()
    log = refused.log()
    assert refused.process.returncode != 0 and "Traceback" not in log
    [line] = [line for line in log.splitlines() if "cannot start" in line]
    folder = how == "read-only-folder"
    assert str(data_dir if folder else db_path) in line and reason in line, line
    assert ("not writable" if folder else str(db_path)) in line, line
    assert hashlib.sha256(db_path.read_bytes()).hexdigest() == before  # untouched
    # writable again: the same data is served
    restarted = server_factory(*flags, data_dir=data_dir)
    guard = Guard(restarted)
    assert db_rows(restarted, "SELECT FileName FROM files WHERE ID = ?", identity.client_id) == [("a.bin",)]
    with restarted.client() as client:
        reconnect(client, identity)
        verified_upload(client, identity, "a.bin", b"second")
    assert (client_dir(restarted, identity.client_id) / "a.bin").read_bytes() == b"second"
    guard.check()


def test_g2_permission_bits_do_not_stop_root(server_factory, tmp_path):
    """chmod 0444 stops an ordinary user (refused at start) but not root (served)."""
    data_dir = tmp_path / "data"
    server = server_factory(data_dir=data_dir)
    server.stop()
    db_path = data_dir / "defensive.db"
    db_path.chmod(0o444)
    if os.geteuid() != 0:
        refused = start_refused(data_dir)
        assert "Permission denied" in refused.log() and "Traceback" not in refused.log()
        db_path.chmod(0o644)
    restarted = server_factory(data_dir=data_dir)
    normal_flow(restarted)  # root really can write: no false refusal


# -- G3: kill -9 and restart ----------------------------------------------------------------


def _restart_and_upload_again(server_factory, data_dir, guard, identity, name: str, keep: bytes):
    """Restart on the same folder: 827 → 1605, the same name again → one row."""
    restarted = server_factory(data_dir=data_dir)
    guard.server = restarted
    check_tree(restarted)
    with sqlite3.connect(data_dir / "defensive.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    # the earlier verified file and its row are intact
    assert (client_dir(restarted, identity.client_id) / "keep.bin").read_bytes() == keep
    assert db_rows(restarted, "SELECT Verified FROM files WHERE ID = ? AND FileName = 'keep.bin'",
                   identity.client_id) == [(1,)]
    for row in db_rows(restarted, "SELECT PathName FROM files"):
        assert (data_dir / row[0]).is_file()  # no row without its file
    with restarted.client() as client:
        reconnect(client, identity)
        data = os.urandom(3000)
        answer = upload(client, identity, name, data)
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
        assert isinstance(client.request(CrcOk(client_id=identity.client_id, file_name=name)), Acknowledged)
    assert db_rows(restarted, "SELECT COUNT(*), Verified FROM files WHERE ID = ? AND FileName = ?",
                   identity.client_id, name) == [(1, 1)]
    assert (client_dir(restarted, identity.client_id) / name).read_bytes() == data
    guard.check()
    return restarted


def test_g3_kill_9_during_upload(server_factory, tmp_path):
    data_dir = tmp_path / "data"
    server = server_factory(data_dir=data_dir)
    guard = Guard(server)
    keep, verified = os.urandom(10_000), os.urandom(10_000)
    with server.client() as client:
        identity = make_identity(client)
        verified_upload(client, identity, "keep.bin", keep)
        verified_upload(client, identity, "doc.bin", verified)
        _send_all(client, file_packets(identity, "doc.bin", os.urandom(2_000_000), 65536)[:10])
        folder = client_dir(server, identity.client_id)
        deadline = time.monotonic() + 5
        while not any(p.name.startswith(".tmp-") for p in folder.iterdir()):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        server.kill()
    assert (folder / "doc.bin").read_bytes() == verified
    restarted = _restart_and_upload_again(server_factory, data_dir, guard, identity, "doc.bin", keep)
    assert "1 unfinished upload(s) deleted" in restarted.log()


def _crash_at(point, server_factory, monkeypatch, data_dir, identity, name: str, data: bytes,
              verify: bool = False):
    """Restart with a crash point (server/crashpoints.py), upload, get killed there.

    With ``verify``, the upload gets its 1603 and the kill comes during its 900.
    """
    with monkeypatch.context() as env:
        env.setenv("CIPHERDROP_CRASH_AT", point)
        server = server_factory(data_dir=data_dir)
    with server.client() as client:
        reconnect(client, identity)
        _send_all(client, file_packets(identity, name, data))
        if verify:
            assert isinstance(client.receive(), FileReceived)
            client.send(CrcOk(client_id=identity.client_id, file_name=name))
        assert isinstance(client.receive(), ConnectionClosed)  # no 1603 (or 1604)
    assert server.process.wait(10) == -signal.SIGKILL


def _two_verified_files(server_factory, data_dir):
    server = server_factory(data_dir=data_dir)
    guard = Guard(server)
    keep, old = os.urandom(5000), os.urandom(5000)
    with server.client() as client:
        identity = make_identity(client)
        verified_upload(client, identity, "keep.bin", keep)
        verified_upload(client, identity, "doc.bin", old)
    server.stop()
    return guard, identity, keep, old


def _doc_and_rows(server, identity) -> tuple[bytes, list]:
    rows = db_rows(server, "SELECT FileName, Verified FROM files WHERE ID = ? ORDER BY FileName",
                   identity.client_id)
    return (client_dir(server, identity.client_id) / "doc.bin").read_bytes(), rows


def test_g3_kill_9_between_commit_and_rename_of_a_first_upload(server_factory, monkeypatch, tmp_path):
    # A name's first upload commits its row (Verified 0) before the rename: this
    # order has no window "between os.replace and the commit"; tests/crash/
    # kills the server at every other point of a session.
    data_dir = tmp_path / "data"
    server = server_factory(data_dir=data_dir)
    guard = Guard(server)
    keep = os.urandom(5000)
    with server.client() as client:
        identity = make_identity(client)
        verified_upload(client, identity, "keep.bin", keep)
    server.stop()
    _crash_at("upload.committed", server_factory, monkeypatch, data_dir, identity, "doc.bin", os.urandom(7000))
    restarted = server_factory(data_dir=data_dir)
    log = restarted.log()
    assert "1 unfinished upload(s) deleted" in log
    assert db_rows(restarted, "SELECT FileName, Verified FROM files WHERE ID = ?",
                   identity.client_id) == [("keep.bin", 1)]  # the row without a file is gone
    assert "is missing; its row is removed" in log
    restarted.stop()
    _restart_and_upload_again(server_factory, data_dir, guard, identity, "doc.bin", keep)


def test_g3_kill_9_with_a_pending_version(server_factory, monkeypatch, tmp_path):
    """A new version of a verified file, killed before its 1603: the verified file is intact."""
    data_dir = tmp_path / "data"
    guard, identity, keep, old = _two_verified_files(server_factory, data_dir)
    _crash_at("upload.pending", server_factory, monkeypatch, data_dir, identity, "doc.bin", os.urandom(7000))
    restarted = server_factory(data_dir=data_dir)
    assert "1 unfinished upload(s) deleted" in restarted.log()
    assert _doc_and_rows(restarted, identity) == (old, [("doc.bin", 1), ("keep.bin", 1)])
    restarted.stop()
    _restart_and_upload_again(server_factory, data_dir, guard, identity, "doc.bin", keep)


@pytest.mark.parametrize("point", ["publish.placed", "publish.durable"])
def test_g3_kill_9_between_rename_and_1604(server_factory, monkeypatch, tmp_path, point):
    """The 900 of a pending version, killed after its rename: the confirmed file, one row."""
    data_dir = tmp_path / "data"
    guard, identity, keep, old = _two_verified_files(server_factory, data_dir)
    new = os.urandom(7000)
    _crash_at(point, server_factory, monkeypatch, data_dir, identity, "doc.bin", new, verify=True)
    restarted = server_factory(data_dir=data_dir)
    # the client sent 900 for this content: it is the stored file now, verified
    assert _doc_and_rows(restarted, identity) == (new, [("doc.bin", 1), ("keep.bin", 1)])
    restarted.stop()
    _restart_and_upload_again(server_factory, data_dir, guard, identity, "doc.bin", keep)


def test_g3_kill_9_between_rename_and_1603_of_a_first_upload(server_factory, monkeypatch, tmp_path):
    data_dir = tmp_path / "data"
    server = server_factory(data_dir=data_dir)
    guard = Guard(server)
    keep, new = os.urandom(5000), os.urandom(7000)
    with server.client() as client:
        identity = make_identity(client)
        verified_upload(client, identity, "keep.bin", keep)
    server.stop()
    _crash_at("publish.durable", server_factory, monkeypatch, data_dir, identity, "doc.bin", new)
    restarted = server_factory(data_dir=data_dir)
    # the new file is complete and its row says unverified: consistent
    assert _doc_and_rows(restarted, identity) == (new, [("doc.bin", 0), ("keep.bin", 1)])
    restarted.stop()
    _restart_and_upload_again(server_factory, data_dir, guard, identity, "doc.bin", keep)


def test_g3_start_up_repairs_rows_without_files_and_files_without_rows(server_factory, tmp_path):
    data_dir = tmp_path / "data"
    server = server_factory(data_dir=data_dir)
    guard = Guard(server)
    with server.client() as client:
        identity = make_identity(client)
        upload(client, identity, "a.bin", b"a")
        upload(client, identity, "b.bin", b"b")
    server.stop()
    folder = client_dir(server, identity.client_id)
    (folder / "a.bin").unlink()
    (folder / "stray.bin").write_bytes(b"?")
    (folder / ".tmp-deadbeef").write_bytes(b"partial")
    restarted = server_factory(data_dir=data_dir)
    guard.server = restarted
    assert db_rows(restarted, "SELECT FileName FROM files WHERE ID = ?", identity.client_id) == [("b.bin",)]
    assert sorted(p.name for p in folder.iterdir()) == ["b.bin"]
    assert "no database row" in restarted.log()
    quarantined = list((data_dir / "received_files" / ".orphaned").rglob("stray.bin*"))
    assert len(quarantined) == 1 and quarantined[0].read_bytes() == b"?"
    guard.check()


# -- G4: start-up faults --------------------------------------------------------------------


def run_server(data_dir, *args, timeout=15):
    return subprocess.run(
        [sys.executable, "-m", "server", "--host", "127.0.0.1", "--data-dir", str(data_dir), *args],
        env=server_env(), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("content", [None, "", "abc", "70000", "0", "-5", "12 34", "\xff\xfe"])
def test_g4_port_info_missing_garbage_or_out_of_range(tmp_path, content):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if content is not None:
        (data_dir / "port.info").write_bytes(content.encode("latin-1"))
    if not _port_free(DEFAULT_PORT):
        # someone else holds 1256 here: the warning and a clean refusal still show
        result = run_server(data_dir)
        assert result.returncode != 0 and "cannot listen" in result.stderr
        log = result.stderr
    else:
        server = start_server(data_dir, port=None)
        try:
            assert server.port == DEFAULT_PORT
            log = server.log()
            normal_flow(server)
        finally:
            assert server.stop() == 0
    assert "WARNING" in log and "port.info" in log and "1256" in log
    assert "Traceback" not in log


@pytest.mark.parametrize(
    "content",
    [b"this is not a database at all" * 100, b"SQLite format 3\0" + os.urandom(8192), b"\0" * 4096],
    ids=["text", "sqlite-header-garbage-pages", "zeros"],
)
def test_g4_database_not_sqlite_or_corrupt(tmp_path, content):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    db = data_dir / "defensive.db"
    db.write_bytes(content)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    result = run_server(data_dir, "--port", "0")
    assert result.returncode != 0
    assert "defensive.db" in result.stderr and "Traceback" not in result.stderr
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in data_dir.iterdir()) == [LOCK_FILE, "defensive.db"]


def test_g4_database_and_received_files_missing_are_created(server_factory, tmp_path):
    data_dir = tmp_path / "data"
    server = server_factory(data_dir=data_dir)
    assert (data_dir / "defensive.db").is_file() and (data_dir / "received_files").is_dir()
    tables = {name for (name,) in db_rows(server, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"clients", "files"} <= tables
    guard = Guard(server)
    server.stop()
    # received_files/ removed while the server was down: created again, rows repaired
    for path in sorted((data_dir / "received_files").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (data_dir / "received_files").rmdir()
    restarted = server_factory(data_dir=data_dir)
    assert (data_dir / "received_files").is_dir()
    assert db_rows(restarted, "SELECT COUNT(*) FROM files") == [(0,)]
    assert "Traceback" not in restarted.log()
    normal_flow(restarted)
    assert guard.identity.name in {n for (n,) in db_rows(restarted, "SELECT Name FROM clients")}


def test_g4_received_files_unusable_or_data_dir_missing(tmp_path, tmpfs):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "received_files").write_text("not a folder")
    result = run_server(data_dir, "--port", "0")
    assert result.returncode != 0 and "received_files" in result.stderr
    assert "Traceback" not in result.stderr
    assert (data_dir / "received_files").read_text() == "not a folder"
    # a missing data folder is created (issue 14); one that cannot be is refused
    (tmp_path / "a-file").write_text("")
    result = run_server(tmp_path / "a-file" / "missing", "--port", "0")
    assert result.returncode != 0 and "cannot create data folder" in result.stderr
    assert "Traceback" not in result.stderr
    # unwritable: a read-only file system (root ignores permission bits)
    read_only = tmp_path / "ro"
    if tmpfs.mount(read_only / "received_files", "1m", "ro"):
        result = run_server(read_only, "--port", "0")
        assert result.returncode != 0 and "not writable" in result.stderr
        assert "Traceback" not in result.stderr
    else:
        # Without mount rights only non-root permission bits can make it
        # unwritable, and as root they do not; the folder-is-a-file case above
        # stands in for it.
        assert os.geteuid() != 0 or not os.access("/", os.W_OK)


# -- G5: peer reset, an exception in one handler -------------------------------------------


def test_g5_peer_resets_while_the_server_writes(server_factory):
    # the flood is of refusals (1601): lift the error budget that would close it first
    server = server_factory("--max-outgoing", "4096", "--max-errors", "1000000")
    guard = Guard(server)
    with server.client() as owner:
        identity = make_identity(owner)
    data = os.urandom(5000)
    packets = file_packets(identity, "f.bin", data)
    hog = small_window_client(server)
    reconnect(hog, identity)  # a one-connection client (variant 7)
    packets = file_packets(identity, "f.bin", data)
    hog.send(packets[0])  # holds an upload, then floods: 825 of a taken name is 1601 each
    taken = hog.conn.send(Register(client_id=ANY_ID, name=guard.identity.name))
    flood_until_stalled(hog, taken)
    port = hog.sock.getsockname()[1]
    hog.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, (1).to_bytes(4, "little") + bytes(4))
    hog.sock.close()  # RST while the server has replies waiting
    found = server.wait_log(rf"127\.0\.0\.1:{port} \S+ closed: (send|receive) failed: (Connection reset by peer|Broken pipe)")
    assert found
    # the upload it held is released: the owner sends the file anew
    with server.client() as owner:
        reconnect(owner, identity)
        answer = upload(owner, identity, "f.bin", data)
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
    guard.check()


def test_g5_exception_in_one_handler(faults):
    server = faults.start()
    guard = Guard(server)
    with server.client() as bystander, server.client() as victim:
        identity = make_identity(victim)
        assert isinstance(upload(victim, identity, "f.bin", b"data"), FileReceived)
        faults.arm(**{"raise": 900})
        assert isinstance(victim.request(CrcOk(client_id=identity.client_id, file_name="f.bin")), GeneralError)
        assert isinstance(victim.receive(), ConnectionClosed)
        # the connection opened before is served meanwhile
        assert type(bystander.request(Register(client_id=ANY_ID, name=unique_name()))).__name__ == "Registered"
        faults.disarm()
    assert db_rows(server, "SELECT Verified FROM files WHERE ID = ?", identity.client_id) == [(0,)]
    log = server.log()
    assert "ZeroDivisionError: injected into the 900 handler" in log
    assert f"900 {identity.client_id.hex()}: unexpected error" in log  # logged with context
    with server.client() as client:
        # the verdict went with the connection: a new one uploads again, then verifies
        assert isinstance(client.request(CrcOk(client_id=identity.client_id, file_name="f.bin")), GeneralError)
        assert isinstance(upload(client, identity, "f.bin", b"data"), FileReceived)
        assert isinstance(client.request(CrcOk(client_id=identity.client_id, file_name="f.bin")), Acknowledged)
    guard.check(tracebacks=1)


def test_g5_exception_inside_the_upload_transaction(faults):
    server = faults.start()
    guard = Guard(server)
    data = os.urandom(6000)
    with server.client() as client:
        identity = make_identity(client)
        faults.arm(**{"raise": 828})
        _send_all(client, file_packets(identity, "f.bin", data))
        assert isinstance(client.receive(), GeneralError)
        assert isinstance(client.receive(), ConnectionClosed)
        faults.disarm()
    assert temp_files_gone(server) and client_files(server, identity.client_id) == []
    assert file_count(server, identity.client_id) == 0
    # no transaction or upload left held: the same client uploads from a new connection
    with server.client() as client:
        reconnect(client, identity)
        answer = upload(client, identity, "f.bin", data)
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
    assert "injected into the 828 handler's transaction" in server.log()
    guard.check(tracebacks=1)
