"""docs/HOSTILE.md G, operating faults: what an operator (or a slip) does to a real server.

Two servers on one data folder, SIGHUP, and entries in ``received_files/``
the server never makes (folders, symlinks, fifos, stray names). The
read-only database is with the other G2 cases in test_g_faults.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import stat
import time

import pytest

from helpers import file_packets, make_identity, reconnect, start_server, upload
from hostile_helpers import (
    LOCK_FILE,
    Guard,
    client_dir,
    normal_flow,
    start_refused,
    temp_files,
)
from protocol import FileReceived, cksum
from server.storage.lock import is_locked

PACKET = 65536
TEMP_WAIT = 5.0


def _wait_for_temp(server) -> list:
    deadline = time.monotonic() + TEMP_WAIT
    while not temp_files(server):
        assert time.monotonic() < deadline, "no temp file appeared"
        time.sleep(0.01)
    return temp_files(server)


# -- 13: one server per data folder ----------------------------------------------------------


def test_g_second_server_on_the_same_folder_refuses_to_start(server_factory, tmp_path):
    """The second server must not remove the first one's temp file (nor start at all)."""
    data_dir = tmp_path / "data"
    first = server_factory(data_dir=data_dir)
    guard = Guard(first)
    data = os.urandom(5 * PACKET)
    with first.client() as client:
        identity = make_identity(client)
        packets = file_packets(identity, "doc.bin", data, PACKET)
        for packet in packets[:2]:
            client.send(packet)
        in_progress = _wait_for_temp(first)

        second = start_refused(data_dir)
        log = second.log()
        assert second.process.returncode != 0
        assert log.count("\n") == 1 and "Traceback" not in log, log  # one line
        assert str(data_dir) in log and "another server" in log and LOCK_FILE in log, log
        assert is_locked(data_dir)  # what an admin tool reading beside it can ask

        assert temp_files(first) == in_progress  # start-up repair never ran
        for packet in packets[2:]:
            client.send(packet)
        answer = client.receive()
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(data), answer
    assert (client_dir(first, identity.client_id) / "doc.bin").read_bytes() == data
    guard.check()
    assert first.stop() == 0
    assert not is_locked(data_dir)  # released on exit: the folder serves again
    guard.server = server_factory(data_dir=data_dir)
    guard.check()


# -- 15: SIGHUP --------------------------------------------------------------------------------


@contextlib.contextmanager
def _sighup(disposition):
    """Start servers meanwhile with SIGHUP at this disposition (they inherit it)."""
    previous = signal.signal(signal.SIGHUP, disposition)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_g_sighup_stops_cleanly_during_an_upload(tmp_path):
    with _sighup(signal.SIG_DFL):
        server = start_server(tmp_path / "data")
    try:
        with server.client() as client:
            identity = make_identity(client)
            packets = file_packets(identity, "half.bin", os.urandom(3 * PACKET), PACKET)
            client.send(packets[0])
            _wait_for_temp(server)
            assert server.stop(signal.SIGHUP) == 0
    finally:
        server.kill()
    log = server.log()
    assert "stopped" in log and "Traceback" not in log, log
    assert temp_files(server) == []
    assert list(client_dir(server, identity.client_id).iterdir()) == []
    with sqlite3.connect(server.data_dir / "defensive.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert not is_locked(server.data_dir)


def test_g_sighup_ignored_at_start_stays_ignored(tmp_path):
    """Started under nohup (SIGHUP ignored): a hangup does not stop it."""
    with _sighup(signal.SIG_IGN):
        server = start_server(tmp_path / "data")
    try:
        server.process.send_signal(signal.SIGHUP)
        normal_flow(server)
        assert server.process.poll() is None
        assert server.stop() == 0
    finally:
        server.kill()
    assert "stopped" in server.log()


# -- 15: entries the server never makes, found at start-up ----------------------------------


def _make_dir(path, outside) -> None:
    path.mkdir()
    (path / "inside").write_bytes(b"inside")


def _make_symlink(path, outside) -> None:
    path.symlink_to(outside / "secret")


def _make_dir_symlink(path, outside) -> None:
    path.symlink_to(outside, target_is_directory=True)


def _make_fifo(path, outside) -> None:
    os.mkfifo(path)


def _make_file(path, outside) -> None:
    path.write_bytes(b"not a folder")


def _same_kind(path, maker) -> bool:
    """Whether a moved entry is still what was planted (content kept, link not followed)."""
    if maker is _make_dir:
        return path.is_dir() and not path.is_symlink() and (path / "inside").read_bytes() == b"inside"
    if maker in (_make_symlink, _make_dir_symlink):
        return path.is_symlink()
    if maker is _make_fifo:
        return stat.S_ISFIFO(path.lstat().st_mode)
    return path.is_file() and path.read_bytes() == b"not a folder"


# kind: (where, name, maker); where is "owner" (a client's folder), "root"
# (received_files/), or "newcomer" (received_files/<a client's id that has no folder yet>)
ENTRIES = {
    "tmp-folder": ("owner", ".tmp-x", _make_dir),
    "tmp-symlink": ("owner", ".tmp-link", _make_symlink),
    "tmp-fifo": ("owner", ".tmp-fifo", _make_fifo),
    "folder": ("owner", "doc.bin", _make_dir),
    "symlink": ("owner", "doc.bin", _make_symlink),
    "folder-symlink": ("owner", "sub", _make_dir_symlink),
    "fifo": ("owner", "pipe.bin", _make_fifo),
    "client-folder-is-a-file": ("newcomer", None, _make_file),
    "client-folder-is-a-symlink": ("newcomer", None, _make_dir_symlink),
    "client-folder-is-a-fifo": ("newcomer", None, _make_fifo),
    "non-hex-file": ("root", "notes.txt", _make_file),
    "non-hex-folder": ("root", "NOT-A-CLIENT", _make_dir),
    "uppercase-hex-folder": ("root", "A" * 32, _make_dir),
}


@pytest.mark.parametrize("kind", list(ENTRIES))
def test_g_start_up_handles_every_kind_of_entry(server_factory, tmp_path, kind):
    """Start-up goes on; strays move to .orphaned/ as they are; other names stay."""
    where, name, maker = ENTRIES[kind]
    outside = tmp_path / "outside"  # made before the Guard: not a write beside the data
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    data_dir = tmp_path / "data"
    server = server_factory(data_dir=data_dir)
    guard = Guard(server)
    with server.client() as client:
        owner = make_identity(client)
        assert isinstance(upload(client, owner, "keep.bin", b"keep"), FileReceived)
    with server.client() as client:
        newcomer = make_identity(client)  # keys, but no file yet: no folder
    assert server.stop() == 0

    received = data_dir / "received_files"
    if where == "owner":  # the planted name itself, where a client can send it
        upload_name = "after.bin" if name.startswith(".") else name
        parent, uploader = received / owner.client_id.hex(), owner
    elif where == "newcomer":
        parent, uploader, upload_name = received, newcomer, "first.bin"
        name = newcomer.client_id.hex()
    else:
        parent, uploader, upload_name = received, owner, "after.bin"
    planted = parent / name
    maker(planted, outside)

    restarted = server_factory(data_dir=data_dir)  # a fifo must not block it
    guard.server = restarted
    log = restarted.log()
    assert "Traceback" not in log
    if where == "root":  # not the server's: left alone, and said so
        assert _same_kind(planted, maker)
        assert f"{planted} is not a client folder; left alone" in log, log
        allowed = (planted,)
    else:  # moved aside as it is, never followed, opened or deleted
        assert not os.path.lexists(planted)
        aside = received / ".orphaned" / (owner.client_id.hex() if where == "owner" else "")
        [moved] = [p for p in aside.iterdir() if p.name.startswith(f"{name}.")]
        assert _same_kind(moved, maker)
        assert "moved to" in log and name in log, log
        allowed = ()
    assert (received / owner.client_id.hex() / "keep.bin").read_bytes() == b"keep"
    assert sorted(os.listdir(outside)) == ["secret"] and (outside / "secret").read_bytes() == b"secret"

    with restarted.client() as client:  # the name (or client folder) is usable again
        reconnect(client, uploader)
        data = os.urandom(3000)
        answer = upload(client, uploader, upload_name, data)
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(data), answer
    assert (client_dir(restarted, uploader.client_id) / upload_name).read_bytes() == data
    guard.check(allowed=allowed)


# -- a disk smaller than --min-free-disk ---------------------------------------------------------

#: A disk smaller than the default --min-free-disk (64 MiB), as issue 24 found it.
SMALL_DISK = "20m"
#: Lines one address may log here: fewer than the test's requests.
DISK_LOG_BUDGET = 5
DISK_REFUSALS = 5  # below --max-errors: one connection


def test_g_a_disk_below_min_free_disk_warns_at_start_and_at_each_refusal(
    server_factory, tmpfs, tmp_path,
):
    """The operator hears of it at start-up, and each refusal says why, at WARNING (in budget)."""
    data_dir = tmp_path / "data"
    flags = ("--log-lines-per-address", str(DISK_LOG_BUDGET), "--log-rate-interval", "3600")
    if not tmpfs.mount(data_dir, SMALL_DISK):  # no mount rights: the flag makes the disk small
        flags += ("--min-free-disk", str(2**60))
    server = server_factory(*flags, data_dir=data_dir)
    log = server.log()
    assert "WARNING only " in log and "below --min-free-disk" in log, log
    assert log.index("below --min-free-disk") < log.index("listening on")
    with server.client() as client:
        identity = make_identity(client)
        for number in range(DISK_REFUSALS):
            assert not isinstance(upload(client, identity, f"{number}.bin", b"x" * 100), FileReceived)
    assert server.stop() == 0
    lines = server.log().splitlines()
    refusals = [line for line in lines if "-> 1607 refused" in line]
    warned = [line for line in refusals if " WARNING 127.0.0.1:" in line]
    assert warned, refusals
    for line in warned:
        assert "not enough disk space for this file: it may need" in line
        assert "--min-free-disk" in line
    assert len(warned) <= DISK_LOG_BUDGET  # a full disk's refusals are within the budget too
    summary = [line for line in lines if "lines suppressed for 127.0.0.1" in line]
    assert summary and " WARNING " in summary[0], lines  # the level of what it counts
