"""The garbage sweeper: blobs no row points at, deleted once unreferenced for a grace period.

Garbage (server/storage/commit.py, step 4) is any unpublished blob that no
file row points at (``BlobKey`` or ``PendingKey``) and that no upload in
flight is writing or holding. A blob found so is deleted only once it has
been found so for :data:`GARBAGE_GRACE` seconds, so that a pointer written
meanwhile (or a swap not yet durable) keeps it. Start-up repair deletes
what a crash left at once: no upload is in flight then.

A sweep costs what it finds, not what is kept: the blob store lists its
unpublished blobs, those no upload holds are the candidates, and the
metadata store is asked about those keys only
(:meth:`~server.storage.base.MetadataStore.referenced_keys`, in batches of
:data:`~server.storage.base.KEYS_PER_QUERY`). With no garbage it reads no
file row at all.
"""

from __future__ import annotations

import logging
from typing import AbstractSet, Callable

from .base import KEYS_PER_QUERY, BlobStore, MetadataStore, UnpublishedBlob

log = logging.getLogger(__name__)

#: Seconds a blob stays unreferenced before the sweeper deletes it.
GARBAGE_GRACE = 60.0


class Sweeper:
    """Deletes blobs unreferenced for longer than :data:`GARBAGE_GRACE` (call :meth:`sweep`)."""

    def __init__(
        self,
        metadata: MetadataStore,
        blobs: BlobStore,
        clock: Callable[[], float],
        live_keys: Callable[[], AbstractSet[str]],
    ) -> None:
        self._metadata = metadata
        self._blobs = blobs
        self._clock = clock
        #: The keys of the blobs uploads in flight write or hold.
        self._live_keys = live_keys
        #: When each unreferenced blob was first found so.
        self._unreferenced_since: dict[UnpublishedBlob, float] = {}

    def sweep(self) -> int:
        """Delete the blobs unreferenced for the grace period; return how many.

        Raises:
            StorageFault: the stores cannot be read or a blob cannot be deleted.
        """
        now = self._clock()
        live = self._live_keys()
        candidates = [blob for blob in self._blobs.unpublished() if blob.key not in live]
        referenced = self._referenced([blob.key for blob in candidates])
        since = self._unreferenced_since
        self._unreferenced_since = {
            blob: since.get(blob, now) for blob in candidates if blob.key not in referenced
        }
        expired = [
            blob for blob, found in self._unreferenced_since.items() if now - found >= GARBAGE_GRACE
        ]
        for blob in expired:
            self._blobs.delete_unpublished(blob)
            del self._unreferenced_since[blob]
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
