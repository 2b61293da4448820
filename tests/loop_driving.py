"""Driving the server's loop by hand (``Server.run_once``) and peeking at what a client got.

For the tests that build a :class:`server.loop.Server` in the test process and
turn its loop themselves, so that they can stop it between rounds.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Callable

from helpers import RawClient

#: How long the loop may take to get somewhere on a loaded machine before a test calls it
#: stuck (a lost answer fails the test then).
PATIENCE = 60.0
#: A pause between turns that changed nothing yet, so that a client thread gets the CPU.
TURN_PAUSE = 0.01


def run_until(server, done: Callable[[], bool], patience: float = PATIENCE) -> None:
    """Turn the loop until ``done()`` (checked before each turn).

    Raises:
        AssertionError: not done within ``patience`` seconds.
    """
    give_up = time.monotonic() + patience
    while not done():
        assert time.monotonic() < give_up, "the loop never got there"
        server.run_once()
        if not done():
            time.sleep(TURN_PAUSE)


def bytes_waiting(client: RawClient, most: int = 1 << 16) -> int:
    """How many bytes (up to ``most``) the server sent that the client has not read yet
    (an EOF counts as none)."""
    client.sock.setblocking(False)
    try:
        return len(client.sock.recv(most, socket.MSG_PEEK))
    except BlockingIOError:
        return 0
    finally:
        client.sock.setblocking(True)


def answered(client: RawClient, size: int = 1) -> bool:
    """Whether the server sent at least ``size`` bytes the client has not read yet."""
    return bytes_waiting(client, size) >= size


def run_round(server, patience: float = PATIENCE) -> None:
    """One round of the loop, then its turns until the round's commit is over (its answers
    released: the commit completes in later turns).

    Raises:
        AssertionError: the commit is not over within ``patience`` seconds.
    """
    server.run_once()
    run_until(server, lambda: server._round is None, patience)
    # an abort's removal is the blob port's worker's (server/blobport.py)
    assert server.app.uploads.port.settle(patience), "the blob port's worker is stuck"


@contextlib.contextmanager
def served_in_a_thread(data_dir: Path, blobs, tune: Callable[[object], None] = lambda app: None):
    """A server on ``blobs`` and SQLite in ``data_dir``, its loop in a thread of its own
    (SQLite's connection made there), at default limits without round shares; ``tune(app)``
    before it serves. Yields (server, db); stopped at the end.
    """
    from server.app import App
    from server.limits import Limits
    from server.loop import Server, create_listener
    from server.storage.sqlite import DB_NAME, SqliteMetadata

    ready: list = []
    started = threading.Event()

    def run() -> None:
        db = SqliteMetadata.open(data_dir / DB_NAME)
        limits = Limits(requests_per_address_per_round=0, durable_files_per_address_per_round=0)
        app = App.build(db, blobs, limits)
        tune(app)
        server = Server(app, create_listener("127.0.0.1", 0))
        ready.append((server, db))
        started.set()
        try:
            server.serve_forever()
        finally:
            db.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(PATIENCE), "the server never started"
    server, db = ready[0]
    try:
        yield server, db
    finally:
        server.stop()
        thread.join(PATIENCE)
