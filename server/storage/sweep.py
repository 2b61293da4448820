"""The garbage sweeper: blobs no row points at, deleted once unreferenced for a grace period.

Garbage (server/storage/commit.py, step 4) is any unpublished blob that no
file row points at (``BlobKey`` or ``PendingKey``) and that no upload in
flight is writing or holding (on any node: the coordination's leases name
the blobs being received). A blob found so is deleted only once it has
been found so for :data:`GARBAGE_GRACE` seconds, so that a pointer written
meanwhile (or a swap not yet durable, or another node's sealed blob whose
row is not yet durable) keeps it. A single server's start-up repair finds
what a crash left, garbage at once (no upload is in flight then), and the
server hands it to :meth:`Sweeper.finish_repair` with the blobs of the
client deletions a crash cut, deleted where the sweeper's deletions go,
while the loop serves.

A sweep costs what it finds, not what is kept: the blob store lists its
unpublished blobs, those no upload holds are the candidates, and the
metadata store is asked about those keys only
(:meth:`~server.storage.base.MetadataStore.referenced_keys`, in batches of
:data:`~server.storage.base.KEYS_PER_QUERY`). With no garbage it reads no
file row at all.

The server sweeps with :meth:`Sweeper.start`: the blob store's listing goes
to one :data:`Runner` and its deletions to another, the metadata and the
coordination are asked in the loop thread, between the two. For a store
whose writes the blob port's worker does (server/blobport.py), the deletions
are that worker's too, after what it had queued, and the loop learns of
their end through its selector; a store with slow writes is listed there
too, a local folder in the loop thread (a read of the client folders where
uploads began since the last sweep, which the folder store notes in the
loop thread). :meth:`Sweeper.sweep` does all of it in the caller's thread
(tools and tests).
"""

from __future__ import annotations

import logging
from typing import AbstractSet, Callable

from ..errors import StorageFault
from .base import KEYS_PER_QUERY, BlobStore, MetadataStore, UnpublishedBlob
from .commit import RepairReport, finish_repair

log = logging.getLogger(__name__)

#: What the log line that ends start-up repair begins with (its deletions done while serving).
REPAIR_FINISHED = "start-up repair finished"
#: Seconds a blob stays unreferenced before the sweeper deletes it.
GARBAGE_GRACE = 60.0

#: What waits on a blob store call: called with its error (None: it went well).
Done = Callable[[StorageFault | None], None]
#: Runs a blob store call, then ``done`` in the loop thread (``BlobPort.run``).
Runner = Callable[[Callable[[], None], Done], None]


def run_here(action: Callable[[], None], done: Done) -> None:
    """A :data:`Runner` for a store whose calls are quick: the call, then ``done``, at once."""
    try:
        action()
    except StorageFault as exc:
        done(exc)
        return
    done(None)


class Sweeper:
    """Deletes blobs unreferenced for longer than :data:`GARBAGE_GRACE` (:meth:`start`,
    or :meth:`sweep`).

    ``list_in`` and ``delete_in``: where the blob store's listing and its
    deletions run (:func:`run_here`, or the blob port's worker:
    ``BlobPort.run``).
    """

    def __init__(
        self,
        metadata: MetadataStore,
        blobs: BlobStore,
        clock: Callable[[], float],
        live_keys: Callable[[], AbstractSet[str]],
        list_in: Runner = run_here,
        delete_in: Runner = run_here,
    ) -> None:
        self._metadata = metadata
        self._blobs = blobs
        self._clock = clock
        #: The keys of the blobs uploads in flight write or hold.
        self._live_keys = live_keys
        self._list_in = list_in
        self._delete_in = delete_in
        #: When each unreferenced blob was first found so.
        self._unreferenced_since: dict[UnpublishedBlob, float] = {}
        #: A sweep begun by :meth:`start` is not over.
        self.under_way = False

    def sweep(self) -> int:
        """Delete the blobs unreferenced for the grace period, in this thread; return how many.

        Raises:
            StorageFault: the stores cannot be read or a blob cannot be deleted.
        """
        return self._delete(self._expired(self._blobs.unpublished()))

    def start(self) -> bool:
        """Begin a sweep, unless one is under way (whether it began): the listing, then the
        deletions, run where ``list_in`` and ``delete_in`` put them; a failure is logged,
        and the next sweep tries again."""
        if self.under_way:
            return False
        self.under_way = True
        listed: list[UnpublishedBlob] = []

        def listing() -> None:
            listed.extend(self._blobs.unpublished())

        def decide(error: StorageFault | None) -> None:  # in the loop thread
            if error is not None:
                self._ended(error)
                return
            try:
                expired = self._expired(listed)
            except StorageFault as exc:
                self._ended(exc)
                return

            def deleting() -> None:
                self._delete(expired)

            self._delete_in(deleting, self._ended)

        self._list_in(listing, decide)
        return True

    def finish_repair(self, report: RepairReport) -> None:
        """Delete what start-up repair left to delete, without a grace period (the blobs of
        the client deletions a crash cut, and the garbage: server/storage/commit.py
        ``repair_pointers``), where the deletions run (``delete_in``); a failure is logged,
        and a later sweep, or the next start, finds them again. Its end is logged
        (``REPAIR_FINISHED``), at once when there is nothing to delete."""
        if not (report.removed or report.garbage):
            log.info("%s: nothing left to delete", REPAIR_FINISHED)
            return

        def deleting() -> None:
            finish_repair(self._blobs, report)

        def deleted(error: StorageFault | None) -> None:  # in the loop thread
            if error is not None:
                log.error("cannot delete what start-up repair left to delete: %s", error)
                return
            log.info(
                "%s: the blobs of %d cut client deletion(s) and %d unfinished upload(s)"
                " deleted", REPAIR_FINISHED, len(report.removed), len(report.garbage),
            )

        self._delete_in(deleting, deleted)

    def _ended(self, error: StorageFault | None) -> None:
        self.under_way = False
        if error is not None:
            log.error("cannot delete the blobs no row points at: %s", error)

    def _expired(self, unpublished: list[UnpublishedBlob]) -> list[UnpublishedBlob]:
        """Of the blobs listed, those unreferenced for the grace period (they are forgotten
        here: found again, their grace begins again)."""
        now = self._clock()
        live = self._live_keys()
        candidates = [blob for blob in unpublished if blob.key not in live]
        referenced = self._referenced([blob.key for blob in candidates])
        since = self._unreferenced_since
        self._unreferenced_since = {
            blob: since.get(blob, now) for blob in candidates if blob.key not in referenced
        }
        expired = [
            blob for blob, found in self._unreferenced_since.items() if now - found >= GARBAGE_GRACE
        ]
        for blob in expired:
            del self._unreferenced_since[blob]
        return expired

    def _delete(self, expired: list[UnpublishedBlob]) -> int:
        """Delete the blobs (the blob store's calls only); how many."""
        for blob in expired:
            self._blobs.delete_unpublished(blob)
        if expired:
            log.warning(
                "deleted %d blob(s) no row pointed at for %.0f s", len(expired), GARBAGE_GRACE
            )
        return len(expired)

    def _referenced(self, keys: list[str]) -> set[str]:
        """Those of ``keys`` a row points at, asked in batches."""
        referenced: set[str] = set()
        for start in range(0, len(keys), KEYS_PER_QUERY):
            referenced |= self._metadata.referenced_keys(keys[start:start + KEYS_PER_QUERY])
        return referenced
