"""The round worker: the blocking storage work of a loop round, in one thread, one job a round.

At a round's end, what must wait for the disk runs here as one job
(server/installs.py composes it, in the order of server/storage/commit.py):
the round's blob seals, the metadata store's durable step (a sync of its
log: :class:`~server.storage.base.DurableStep`), then the round's
publishes. The job's end is signalled once, through a socketpair the loop
waits on in its selector, so that a round costs one handoff, however many
files it stores. One job is under way at a time: the loop calls no store
until it is over.

The thread starts with the first job; :meth:`RoundWorker.close`, or the
worker's end, stops it.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import weakref
from typing import Callable

log = logging.getLogger(__name__)

#: Bytes read off the wake-up socket at once.
_WAKE_READ = 64


class _Shared:
    """What the thread and the loop share (the thread never holds the worker itself,
    so that a worker nobody uses any more is collected and its thread stops)."""

    def __init__(self) -> None:
        #: A job to run; None ends the thread.
        self.jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.finished = threading.Event()
        self.thread: threading.Thread | None = None
        self.closed = False

    def stop(self) -> None:
        """End the thread after the job under way; close the sockets."""
        if self.closed:
            return
        self.closed = True
        thread = self.thread
        if thread is not None:
            self.jobs.put(None)
            if thread is not threading.current_thread():
                thread.join()
        self.wake_r.close()
        self.wake_w.close()


def _run(job: Callable[[], None]) -> None:
    try:
        job()
    except Exception:  # a bug: the job's own outcome says what is left undone
        log.exception("unexpected error in a round's storage job")


def _work(shared: _Shared) -> None:
    while True:
        job = shared.jobs.get()
        if job is None:
            return
        _run(job)
        try:
            shared.wake_w.send(b"\0")
        except OSError:  # closed meanwhile: nobody waits any more
            pass
        shared.finished.set()  # after the byte: finished() finds it to read off


class RoundWorker:
    """One thread for the rounds' blocking storage jobs, and the socketpair it signals on."""

    def __init__(self) -> None:
        self._shared = _Shared()
        weakref.finalize(self, self._shared.stop)

    def fileno(self) -> int:
        """Readable once the job asked by :meth:`start` is done."""
        return self._shared.wake_r.fileno()

    def start(self, job: Callable[[], None]) -> None:
        """Run ``job`` in the thread (the one before it is done: :meth:`finished`).

        ``job`` keeps its own outcome; an exception it lets out is logged.
        After :meth:`close`, the job runs here, at once.
        """
        shared = self._shared
        shared.finished.clear()
        if shared.closed:
            _run(job)
            shared.finished.set()
            return
        if shared.thread is None:
            shared.thread = threading.Thread(
                target=_work, args=(shared,), name="round-storage", daemon=True
            )
            shared.thread.start()
        shared.jobs.put(job)

    def finished(self) -> bool:
        """Whether the job started last is done (then its wake-up byte, sent before, is read
        off: one system call, none while it is not done)."""
        shared = self._shared
        if not shared.finished.is_set():
            return False
        if shared.closed:
            return True
        try:
            shared.wake_r.recv(_WAKE_READ)
        except (BlockingIOError, InterruptedError):
            pass
        return True

    def close(self) -> None:
        """End the thread (after the job under way) and close the socketpair."""
        self._shared.stop()
