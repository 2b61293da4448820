"""An in-process server (its loop in a thread), for what an outside client cannot see.

The exhaustion tests read a channel's outgoing buffer directly: the kernel's socket
buffers would hide the server's own bound from a client on the other side.
"""

from __future__ import annotations

import threading
from pathlib import Path

from helpers import RawClient
from server.app import App
from server.limits import Limits
from server.loop import Server, create_listener
from server.storage.folder import FolderBlobs
from server.storage.sqlite import DB_NAME, SqliteMetadata


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
        self.db = SqliteMetadata.open(self.data_dir / DB_NAME)
        self.app = App.build(self.db, FolderBlobs(self.data_dir), self._limits)
        self.server = Server(self.app, create_listener("127.0.0.1", 0))
        self._ready.set()
        try:
            self.server.serve_forever()
        finally:
            self.db.close()

    def client(self) -> RawClient:
        """A new connection to it."""
        return RawClient(self.address)

    def stop(self) -> None:
        """Stop the loop and wait for its thread."""
        self.server.stop()
        self.thread.join(10)
