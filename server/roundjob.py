"""A round's commit and its blob work, as one :class:`~server.storage.base.RoundCommit` for the
loop: what waits for the disk runs in the round worker (server/roundworker.py).

The order is server/storage/commit.py's: the round's blobs are sealed and the
metadata made durable before any of them is published. How many handoffs a
round costs depends on how the metadata store completes its commit:

* a :class:`~server.storage.base.DurableStep` (a sync of the store's log), or
  nothing to wait for: one job, seals, the step, publishes (none if the step
  failed): the one handoff the step alone would cost;
* a commit completing on the store's own descriptor (a database's socket):
  the seals go to the worker while it is out, and the publishes once it is
  done and the seals too: a second job.

The job keeps each blob's outcome (:attr:`RoundJob.seal_failures`,
:attr:`RoundJob.publish_failures`); the loop thread acts on them once the
job is over (server/installs.py), the stores free.
"""

from __future__ import annotations

import logging
from typing import Callable, Generic, Protocol, Sequence, TypeVar

from .errors import StorageFault
from .roundworker import RoundWorker
from .storage import BlobStore, BlobWriter, RoundCommit, commit
from .storage.base import DurableStep

log = logging.getLogger(__name__)


class Publishing(Protocol):
    """A blob to publish once the round is durable (server/installs.py)."""

    @property
    def writer(self) -> BlobWriter: ...
    @property
    def path_name(self) -> str: ...
    @property
    def first(self) -> bool:
        """A name's first upload (undone if it cannot be published), or a confirmed version."""
        ...


_P = TypeVar("_P", bound=Publishing)


class RoundJob(Generic[_P]):
    """The round's commit and its blobs' seals and publishes: done once :meth:`advance`
    says so (a :class:`RoundCommit`)."""

    def __init__(
        self,
        worker: RoundWorker,
        blobs: BlobStore,
        metadata_commit: RoundCommit | DurableStep | None,
        seals: Sequence[BlobWriter],
        publishes: Sequence[_P],
    ) -> None:
        self._worker = worker
        self._blobs = blobs
        self.seals = list(seals)
        self.publishes = list(publishes)
        #: The blobs whose seal failed, and why (the worker's, then the loop's to read).
        self.seal_failures: dict[BlobWriter, StorageFault] = {}
        #: The publishes that failed, and why.
        self.publish_failures: dict[_P, StorageFault] = {}
        #: The path names whose first upload was undone in this round.
        self.undone: set[str] = set()
        #: Why the round is lost, once known (raised when the worker is done too).
        self._failure: StorageFault | None = None
        self._step: DurableStep | None = None
        #: The store's commit under way on its own descriptor, if any.
        self._commit: RoundCommit | None = None
        self._busy = False
        if metadata_commit is None or isinstance(metadata_commit, DurableStep):
            self._step = metadata_commit
            self._publishes_begun = True
            self._start(self._seal_sync_publish)
        else:
            self._commit = metadata_commit
            self._publishes_begun = not self.publishes
            if self.seals:
                self._start(self._seal_all)

    def fileno(self) -> int:
        """The store's descriptor while its commit is under way, else the worker's."""
        return self._commit.fileno() if self._commit is not None else self._worker.fileno()

    @property
    def wants_write(self) -> bool:
        """As the store's commit, while it is under way; else the worker's end is read."""
        return self._commit is not None and self._commit.wants_write

    def advance(self) -> bool:
        """Do what can be done without waiting; True once the round is durable and its
        blobs sealed and published (or failed: :attr:`publish_failures`).

        Raises:
            StorageFault: the round is lost (raised once the worker is done with it).
            DurabilityLost: the metadata store's durability failed for good.
        """
        if self._commit is not None:
            try:
                if self._commit.advance():
                    self._commit = None
            except StorageFault as exc:
                self._commit = None
                self._failure = exc
        if self._busy:
            if not self._worker.finished():
                return False
            self._busy = False
            step, self._step = self._step, None
            if step is not None:
                step.finish()
        if self._commit is not None:
            return False
        if self._failure is not None:
            raise self._failure
        if not self._publishes_begun:
            self._publishes_begun = True
            self._start(self._publish_all)
            return False
        return True

    def _start(self, job: Callable[[], None]) -> None:
        self._busy = True
        self._worker.start(job)

    # -- in the worker -------------------------------------------------------------

    def _seal_sync_publish(self) -> None:
        """One job: the seals, the metadata's durable step, then (if it held) the publishes."""
        self._seal_all()
        if self._step is not None:
            try:
                durable = self._step.run()
            except Exception as exc:  # a store's bug: the round is lost
                log.exception("unexpected error making a round durable")
                self._failure = StorageFault(f"database: {exc}")
                return
            if not durable:
                return  # finish() says why; nothing is published
        self._publish_all()

    def _seal_all(self) -> None:
        for writer in self.seals:
            try:
                commit.seal(writer)
            except StorageFault as exc:
                self.seal_failures[writer] = exc
            except Exception as exc:  # a store's bug: that file fails, the server goes on
                log.exception("unexpected error sealing a blob")
                self.seal_failures[writer] = StorageFault(f"blob store: {exc}")

    def _publish_all(self) -> None:
        """Publish each blob, in order (a name's first upload before a later version of it)."""
        for entry in self.publishes:
            try:
                self._publish(entry)
            except StorageFault as exc:
                self.publish_failures[entry] = exc
            except Exception as exc:  # a store's bug: that file fails, the server goes on
                log.exception("unexpected error publishing a blob")
                self.publish_failures[entry] = StorageFault(f"blob store: {exc}")
                if entry.first:
                    self.undone.add(entry.path_name)

    def _publish(self, entry: _P) -> None:
        """Raises StorageFault: not published (a first upload's name then reads nothing)."""
        sealing = self.seal_failures.get(entry.writer)
        if entry.first:
            try:
                if sealing is not None:
                    raise sealing
                commit.publish_first_blob(self._blobs, entry.writer, entry.path_name)
            except StorageFault:
                self.undone.add(entry.path_name)
                raise
        elif sealing is not None:
            raise sealing
        elif entry.path_name in self.undone:
            raise StorageFault("its name's first upload could not be stored")
        else:
            commit.publish_confirmed(self._blobs, entry.writer, entry.path_name)
