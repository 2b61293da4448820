"""In-process server (loop in a thread) for what needs socket tuning.

The outgoing-buffer bound (F2), which the kernel's send buffer would hide from
an outside client. Fault injection (HOSTILE.md G1, G2, G5) is in
tests/hostile/test_g_faults.py, inside the real server.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import pytest

from helpers import ANY_ID, RawClient, make_identity, unique_name
from protocol import Register, Registered
from server.app import App
from server.limits import Limits
from server.loop import Server, create_listener
from server.storage.db import Database
from server.storage.files import FileStore


class InProcess:
    """A Server running in a background thread."""

    def __init__(self, data_dir: Path, limits: Limits) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self._limits = limits
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self._ready.wait(10)
        self.address = self.server.address[:2]

    def _run(self) -> None:
        # SQLite objects belong to the thread that made them: build it all here.
        self.db = Database.open(self.data_dir / "defensive.db")
        self.app = App.build(self.db, FileStore(self.data_dir), self._limits)
        self.server = Server(self.app, create_listener("127.0.0.1", 0))
        self._ready.set()
        try:
            self.server.serve_forever()
        finally:
            self.db.close()

    def client(self) -> RawClient:
        return RawClient(self.address)

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(10)


@pytest.fixture
def inprocess(tmp_path):
    started = []

    def start(**limits) -> InProcess:
        server = InProcess(tmp_path / f"data{len(started)}", Limits(**limits))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_f2_outgoing_bound_stops_reading_then_closes(inprocess, caplog):
    caplog.set_level(logging.INFO)
    server = inprocess(max_outgoing=1024, idle_timeout=1.5)
    name = unique_name()
    with server.client() as owner:
        make_identity(owner, name)
    hog = RawClient(server.address)
    hog.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    port = hog.sock.getsockname()[1]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [c for c in list(server.server.channels) if c.peer.port == port]
        if found:
            break
        time.sleep(0.01)
    (channel,) = found
    channel.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    request = hog.conn.send(Register(client_id=ANY_ID, name=name))  # 1601 each, not an error
    hog.sock.setblocking(False)
    peak_out = peak_in = 0
    stalled_since = None
    while time.monotonic() < deadline and not channel.closed:
        peak_out = max(peak_out, len(channel._out))
        peak_in = max(peak_in, len(channel._conn._buffer))
        try:
            hog.sock.send(request * 64)
            stalled_since = None
        except BlockingIOError:
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > 0.3:
                break
            time.sleep(0.01)
        except OSError:
            break  # the server already gave up on us
    assert peak_out < 1024 + 64  # bounded: one response past the bound at most
    assert peak_in < 1100 * 1024  # at most one receive's worth plus a message
    with server.client() as other:  # others are served meanwhile
        assert isinstance(other.request(Register(client_id=ANY_ID, name=unique_name())), Registered)
    deadline = time.monotonic() + 5
    while not channel.closed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert channel.closed
    assert any("peer does not read" in r.getMessage() for r in caplog.records)
    hog.close()
