"""The files of a run, over one connection or several at once (``--jobs N``).

Each connection is its own :class:`~client.upload.Client` on its own
:class:`~client.session.Session`, in its own thread, so each file is its own
CBC stream; all share the client's identity and its AES key, and stream at
once unless the server refuses it, as :mod:`client.turns` says. Workers take
the next file from one queue. A file that fails is reported in its outcome and the worker goes on
with the next; only a bug stops the run.

With one connection the files go in order, in the caller's thread, each after
the first under a fresh key (827), as they always did.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .config import Identity
from .errors import ClientError
from .upload import Client, FileResult

log = logging.getLogger(__name__)

#: Seconds between two checks of the workers while the main thread waits
#: (short, so that Ctrl-C is seen at once).
JOIN_INTERVAL = 0.2


@dataclass(frozen=True)
class FileOutcome:
    """How one file of the run went: its result, or the error that stopped it."""

    path: Path
    result: FileResult | None = None
    error: ClientError | None = None

    @property
    def verified(self) -> bool:
        """Whether the server holds the file and confirmed its cksum."""
        return self.result is not None and self.result.verified


#: Makes the client of one more connection, logged in as ``identity``.
NewWorker = Callable[[Identity], Client]


class ParallelUpload:
    """``jobs`` connections uploading ``files``, each file once (in order with one)."""

    def __init__(self, first: Client, new_worker: NewWorker, jobs: int) -> None:
        self._first = first
        self._new_worker = new_worker
        self._jobs = jobs
        self._stopping = threading.Event()
        self._bug: BaseException | None = None

    def run(
        self, files: Sequence[Path], on_done: Callable[[FileOutcome], None]
    ) -> list[FileOutcome]:
        """Log in, open the other connections, upload; the outcomes in the files' order.

        ``on_done`` is called (from a worker's thread) as each file ends.

        Raises:
            ClientError: the first login failed (nothing was sent).
        """
        self._first.log_in()
        identity = self._first.identity
        assert identity is not None  # log_in registers when there was none
        workers = [self._first]
        for _ in range(min(self._jobs, len(files)) - 1):
            worker = self._new_worker(identity)
            try:
                worker.open_connection()
            except ClientError as exc:
                worker.reset()
                log.warning("could not open another connection (%s); going on with %d",
                            exc, len(workers))
                break
            workers.append(worker)
        todo: queue.SimpleQueue[tuple[int, Path]] = queue.SimpleQueue()
        for item in enumerate(files):
            todo.put(item)
        outcomes: dict[int, FileOutcome] = {}
        if len(workers) == 1:
            self._work(self._first, todo, outcomes, on_done, fresh_keys=True)
            return [outcomes[index] for index in sorted(outcomes)]
        threads = [
            threading.Thread(
                target=self._work,
                args=(worker, todo, outcomes, on_done),
                name=f"client-job-{number}",
                daemon=True,
            )
            for number, worker in enumerate(workers, start=1)
        ]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():
                    thread.join(JOIN_INTERVAL)
        finally:
            self._stopping.set()
            for worker in workers[1:]:
                worker.reset()
        if self._bug is not None:
            raise self._bug
        return [outcomes[index] for index in sorted(outcomes)]

    def _work(
        self,
        client: Client,
        todo: queue.SimpleQueue[tuple[int, Path]],
        outcomes: dict[int, FileOutcome],
        on_done: Callable[[FileOutcome], None],
        *,
        fresh_keys: bool = False,
    ) -> None:
        """Upload files from the queue until it is empty (or the run stops).

        ``fresh_keys``: each file after the first under a key of its own (827),
        which only a lone connection may ask for (client/turns.py).
        """
        while not self._stopping.is_set():
            try:
                index, path = todo.get_nowait()
            except queue.Empty:
                return
            try:
                result = client.upload(path, fresh_key=fresh_keys and index > 0)
                outcome = FileOutcome(path, result=result)
            except ClientError as exc:
                client.reset()
                outcome = FileOutcome(path, error=exc)
            except BaseException as exc:  # a bug: stop the run, raise it in the main thread
                if fresh_keys:
                    raise
                self._bug = exc
                self._stopping.set()
                return
            outcomes[index] = outcome
            on_done(outcome)
