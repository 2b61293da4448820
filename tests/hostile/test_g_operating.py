"""HOSTILE.md G, operating faults: what an operator (or a slip) does to a real server.

Two servers on one data folder, and SIGHUP. The read-only database is with
the other G2 cases in test_g_faults.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import time

from helpers import file_packets, make_identity, start_server
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
