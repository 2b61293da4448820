"""The durable write order: how a received file is installed, undone and repaired.

A file's content lives in the blob store and its row (``files``: name, path
name, Verified) in the metadata store. "Committed" below means durable: a
commit is made durable by :meth:`MetadataStore.sync`, which the loop runs
once per round before that round's answers go out (group commit). Two
stores cannot commit together, so
every write follows one order, chosen so that a crash between any two steps
leaves something start-up repair (:func:`repair`) can put right without
losing a file the client was told about:

1. **Seal.** The upload's content is synced in its temp blob, before any
   answer (:func:`seal`).
2. A name's **first upload**: the row is written with Verified false in the
   round (:func:`record_first`); once the round is durable, the temp blob is
   renamed onto its final name and the folder synced
   (:func:`install_recorded`), then 1603 goes out. The rename waits for the
   round's sync rather than syncing at once, so that a round of many first
   uploads costs one sync, not one each. If the rename fails, it is undone:
   the renamed blob (if any) and the row are removed, and a 1607 goes out
   in place of the 1603 (the session held it until then).
3. A **later upload** of a stored name is a *pending version*: it stays a
   synced temp blob, 1603 goes out, and the stored file is untouched. Only the
   900 of the client holding the same key installs it
   (:func:`install_confirmed`): the temp blob is renamed onto the stored file,
   then the row is committed with Verified true, then 1604. A 901, a 902, a
   new key or a timeout discard the temp blob.
4. **Repair**, at start-up (:func:`repair`): temp blobs are removed (their
   uploads never got an answer, or were pending versions never confirmed);
   rows whose blob is missing are removed (a first upload cut between steps
   2's commit and rename: the client got no 1603 and sends again); blobs with
   no row, and anything the server never makes, are moved aside, never
   deleted.

5. **Deleting a client** (:func:`remove_client`, ``admin delete-client``):
   its folder moves into the trash (one rename: the decision), then every
   row of it goes in one transaction, then the trashed folder is deleted.
   Repair finishes a deletion a crash cut, first of all: a client found in
   the trash loses its rows and its folder.

So a crash leaves either the previous file with its row, or the new file with
a row that was reset to Verified false (step 2) or that the client confirmed
(step 3): never a Verified flag on content the client did not confirm.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .. import crashpoints
from ..errors import StorageFault
from .base import BlobEntry, BlobStore, MetadataStore, TempBlob

log = logging.getLogger(__name__)

_NOT_A_FILE = "is not a regular file"
_NOT_A_FOLDER = "is not a real client folder"


def seal(temp: TempBlob) -> None:
    """Step 1: the content is durable in its temp blob.

    Raises:
        StorageFault: the sync failed.
    """
    temp.sync()


@dataclass(frozen=True)
class Content:
    """What a file's row records of the content installed: checked by ``admin verify``."""

    size: int
    cksum: int


def record_first(
    metadata: MetadataStore,
    client_id: bytes,
    file_name: bytes,
    path_name: str,
    content: Content,
) -> None:
    """Step 2, first half: the row (Verified false, size, cksum), in the round.

    The blob takes its name only once this row is durable (:func:`install_recorded`).

    Raises:
        StorageFault: the row could not be written.
    """
    with metadata.transaction():
        metadata.upsert_file(client_id, file_name, path_name)
        metadata.set_content(client_id, file_name, content.size, content.cksum)


def install_recorded(
    metadata: MetadataStore,
    blobs: BlobStore,
    temp: TempBlob,
    client_id: bytes,
    file_name: bytes,
    path_name: str,
) -> None:
    """Step 2, second half, once the row is durable: the rename; undone if it fails.

    Raises:
        StorageFault: nothing of the upload is left under ``path_name``.
    """
    crashpoints.reached("upload.committed")
    try:
        temp.install(path_name)
    except StorageFault:
        if temp.installed:
            blobs.remove(path_name)
        with metadata.transaction():
            metadata.delete_file(client_id, file_name)
        raise


def keep_pending() -> None:
    """Step 3, first half: a sealed later version waits, as it is, for its 900."""
    crashpoints.reached("upload.pending")


def install_confirmed(
    metadata: MetadataStore,
    temp: TempBlob,
    client_id: bytes,
    file_name: bytes,
    path_name: str,
    content: Content,
) -> None:
    """Step 3, at the 900: the rename onto the stored file, then the row, Verified true.

    Raises:
        StorageFault: the rename or the commit failed (``temp.installed``
            says whether the stored file is the new one already: then a
            retried 900 only sets the flag).
    """
    temp.install(path_name)
    with metadata.transaction():
        metadata.upsert_file(client_id, file_name, path_name)
        metadata.set_content(client_id, file_name, content.size, content.cksum)
        metadata.set_verified(client_id, file_name, True)


def remove_client(metadata: MetadataStore, blobs: BlobStore, client_id: bytes) -> None:
    """Step 5: trash the client's folder, delete its rows, delete the folder.

    Raises:
        StorageFault: a step failed; whatever began is finished by the next
            call or by start-up repair.
    """
    blobs.begin_removal(client_id)
    crashpoints.reached("remove.trashed")
    _finish_removal(metadata, blobs, client_id)


def _finish_removal(metadata: MetadataStore, blobs: BlobStore, client_id: bytes) -> None:
    with metadata.transaction():
        metadata.forget_client(client_id)
    metadata.sync()  # the rows are gone for good before the folder goes
    crashpoints.reached("remove.forgotten")
    blobs.finish_removal(client_id)


def finish_removals(metadata: MetadataStore, blobs: BlobStore) -> int:
    """Finish every client deletion a crash cut; return how many.

    Raises:
        StorageFault: one cannot be finished.
    """
    pending = blobs.pending_removals()
    for client_id in pending:
        log.warning("finishing the deletion of client %s", client_id.hex())
        _finish_removal(metadata, blobs, client_id)
    return len(pending)


@dataclass(frozen=True)
class RepairReport:
    """What start-up repair did."""

    temps_removed: int
    rows_removed: int
    blobs_set_aside: int
    strays_set_aside: int
    removals_finished: int = 0


def repair(metadata: MetadataStore, blobs: BlobStore) -> RepairReport:
    """Steps 4 and 5: finish deletions; remove temp blobs and rows without blobs; set aside
    blobs without rows and strays.

    Raises:
        OSError, StorageFault: the store cannot be read or changed.
    """
    removals = finish_removals(metadata, blobs)
    temps = blobs.remove_temps()
    if temps:
        log.warning("removed %d temp file(s) left by an interrupted upload", temps)
    strays = sum(
        _set_aside(blobs, stray, _NOT_A_FILE if stray.client_hex else _NOT_A_FOLDER)
        for stray in blobs.strays()
    )
    rows = metadata.file_rows()
    rows_removed = 0
    with metadata.transaction():
        for row in rows:
            if not blobs.exists(row.path_name):
                log.warning("file %s is missing; its row is removed", row.path_name)
                metadata.delete_file(row.id, row.file_name)
                rows_removed += 1
    metadata.sync()  # the repair is durable before the first request
    known = {row.path_name for row in rows}
    set_aside = sum(
        _set_aside(blobs, stored, "has no database row")
        for stored in blobs.stored()
        if stored.path_name not in known
    )
    return RepairReport(temps, rows_removed, set_aside, strays, removals)


def _set_aside(blobs: BlobStore, entry: BlobEntry, why: str) -> bool:
    """Move one entry aside and log it; False (logged) if it cannot move."""
    try:
        target = blobs.set_aside(entry)
    except StorageFault as exc:
        log.warning("%s %s; cannot move it aside (%s): left in place", entry.path_name, why, exc)
        return False
    log.warning("%s %s; moved to %s", entry.path_name, why, target)
    return True
