"""The durable write order: how a received file is published, undone and repaired.

A file's content lives in the blob store, written once under a key of its
own (the upload's blob key), and its row (``files``: name, path name,
Verified, ``BlobKey``, ``PendingKey``) in the metadata store, pointing at
it. Nothing is ever renamed at this level: a blob is *published* as what its
path name reads (:meth:`BlobStore.publish`; the folder store renames it into
place, a store that reads by key has nothing to move), and publishing is
idempotent. "Durable" below means the metadata commit is: the loop makes
each round's writes durable once, at the round's end, before that round's
answers go out (group commit). Two stores cannot commit together, so every
write follows one order, chosen so that a crash between any two steps
leaves something start-up repair (:func:`repair`) can put right without
losing a file the client was told about:

1. **Seal.** The upload's content is durable under its key before any
   answer, and before any publish (:func:`seal`). It is sealed beside the
   round that writes its row: at the round's end, in the loop's round
   worker, before the metadata's sync (server/installs.py,
   server/roundjob.py), or, for a blob store with slow writes, in the blob
   port's worker, queued after its writes (server/blobport.py); the answer
   waits for it, and so do the blob's publish and a later version's 1603.
   A version confirmed in the round that completed it is sealed before its
   swap. A crash between the round's commit and the seal leaves a row whose
   blob was never published (a first upload's: repair removes it, its
   client got no 1603) or a pending pointer (repair clears it; with several
   nodes, the repair of the node that set it): never a row that outlives
   repair pointing at content not durable. A seal that fails is never
   published: a first upload is undone (step 2), a pending version
   discarded (step 3), and the answer is 1607.
2. A name's **first upload**: its row, pointing at the key, is written with
   Verified false in the round (:func:`record_first`); once the round is
   durable the blob is published under the path name (:func:`publish_first`),
   then 1603 goes out. A round of many first uploads costs one metadata sync.
   If the publish fails it is undone (whatever the path name reads, and the
   row, go) and a 1607 goes out in place of the 1603 (held until then).
3. A **later upload** of a stored name is a *pending version*: the row's
   second pointer, ``PendingKey``, names its sealed blob (:func:`keep_pending`),
   1603 goes out, and the stored file is untouched. Only the 900 of the
   client holding the same key swaps the pointers, in one metadata
   transaction with the content and Verified true (:func:`confirm_pending`);
   once the round is durable the blob is published (:func:`publish_confirmed`,
   after any first upload of the name in the same round), then 1604. A
   publish that fails answers 1607 and stays owed: it is published again on a
   timer (server/installs.py) or at the client's next 900, until it is.
   A 901, a 902, a new key or a timeout clear the pending pointer, in the
   round, and abort its blob (:func:`discard_pending`).
4. **Garbage** is any blob no row points at: an aborted upload, a pending
   version never confirmed, an owed version a later one replaced (its
   replacement's swap perhaps not yet durable), an upload a crash cut. An
   aborted blob is never published: the store deletes it at once where that
   is cheap (a local file) or leaves it to the sweeper
   (:meth:`BlobWriter.abort`); where the blob port's worker deletes it, the
   1607 that reports the upload's failure waits for that (server/installs.py),
   and no other answer waits for it. The sweeper
   (server/storage/sweep.py) deletes what no row and no upload in flight
   points at, once a grace period has passed; start-up repair
   (:func:`repair`) sweeps what a crash left: it publishes each blob a
   durable row points at but that was
   never published under a name that reads the previous version (a crash
   between step 3's swap and publish: rolled forward; a first upload cut
   between step 2's commit and publish is rolled back, its row removed: its
   client got no 1603 and sends again), clears pending pointers, removes
   rows whose blob is missing, deletes unpublished blobs no row points at (no upload is in
   flight at start-up: no grace period is needed), and moves aside, never
   deletes, published blobs with no row and anything the server never makes.
   All but that deletion decides what a row points at and is done before
   the server serves (:func:`repair_pointers`); the deletion of the garbage
   found goes where the sweeper's deletions go (the blob port's worker, for
   a folder or a store with slow writes) while the server serves
   (:func:`finish_repair`, ``Sweeper.finish_repair``): a new upload's key
   is new, and no row will point at a key no upload writes.

5. **Deleting a client** (:func:`remove_client`, ``admin delete-client``):
   its blobs are taken out of the store (one atomic step: the decision),
   then every row of it goes in one transaction, then the blobs are deleted.
   Repair finishes a deletion a crash cut, first of all: a client found
   taken out loses its rows, durably, before anything else is repaired
   (:func:`forget_removals`: none of its blobs is then set aside), and its
   blobs while the server serves, as the garbage is (:func:`finish_repair`):
   a client without rows begins no upload.

So a crash leaves either the previous file with its row, or the new file with
a row that was reset to Verified false (step 2) or that the client confirmed
(step 3): never a Verified flag on content the client did not confirm.

With **several nodes** sharing both stores (a metadata store in PostgreSQL
and one blob store: a bucket, or one folder of one host), a node starting
is not alone: the others keep receiving, publishing and waiting for 900s
while it repairs. Its repair (:func:`repair` given its ``node``) touches
only what it may have left itself, thing by thing:

* an **unpublished blob** is never deleted by repair (another node may be
  receiving it, or have sealed it for a row not yet durable): the sweeper
  deletes it once no row and no lease names it, after its grace period;
* a **pending pointer** is cleared only if this node set it (a row's
  ``node``): another node's client may still confirm it with a 900;
* a **row whose path name reads nothing** is removed, and a confirmed
  version's publish rolled forward, only if this node last pointed the row
  at a blob: another node's publish may be in flight (it is owed by that
  node, which finishes it, or repairs it when it starts again);
* a **published name without a row** is looked up in the rows read after
  the store was listed (a first upload's row is durable before its name is
  published), so another node's fresh file is never taken for an orphan;
* a deletion a crash cut is finished, as a single server does (finishing it
  again changes nothing).

A single server (no ``node``) owns everything it finds, as above. The
sweep, with several nodes, is one node's at a time (the purge leader's,
server/app.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Sequence

from .. import crashpoints
from ..errors import StorageFault
from .base import BlobEntry, BlobStore, BlobWriter, FileRow, MetadataStore, UnpublishedBlob

log = logging.getLogger(__name__)

_NOT_A_FILE = "is not a regular file"
_NOT_A_FOLDER = "is not a real client folder"


def seal(writer: BlobWriter) -> None:
    """Step 1: the content is durable under its key.

    Raises:
        StorageFault: the sync failed.
    """
    writer.seal()


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
    blob_key: str,
    content: Content,
) -> None:
    """Step 2, first half: the row (pointing at ``blob_key``, Verified false, size, cksum).

    The blob is published only once this row is durable (:func:`publish_first`).

    Raises:
        StorageFault: the row could not be written.
    """
    with metadata.transaction():
        metadata.upsert_file(client_id, file_name, path_name, blob_key)
        metadata.set_content(client_id, file_name, content.size, content.cksum)


def publish_first(
    metadata: MetadataStore,
    blobs: BlobStore,
    writer: BlobWriter,
    client_id: bytes,
    file_name: bytes,
    path_name: str,
) -> None:
    """Step 2, second half, once the row is durable: publish; undone if it fails.

    Raises:
        StorageFault: nothing of the upload is left under ``path_name``.
    """
    try:
        publish_first_blob(blobs, writer, path_name)
    except StorageFault:
        undo_first(metadata, client_id, file_name)
        raise


def publish_first_blob(blobs: BlobStore, writer: BlobWriter, path_name: str) -> None:
    """Step 2, second half, the blob store's part (a worker's, for a store with slow writes):
    publish; if that fails, nothing of the upload is left under ``path_name``, and the
    row goes next (:func:`undo_first`).

    Raises:
        StorageFault: the publish failed.
    """
    crashpoints.reached("upload.committed")
    try:
        blobs.publish(writer.key, path_name)
    except StorageFault:
        blobs.delete(path_name)  # a first upload's name read nothing before
        writer.abort()
        raise


def undo_first(metadata: MetadataStore, client_id: bytes, file_name: bytes) -> None:
    """Step 2 undone, the metadata's part: the row of a first upload never published goes.

    Raises:
        StorageFault: it could not (start-up repair removes a row whose blob is missing).
    """
    with metadata.transaction():
        metadata.delete_file(client_id, file_name)


def keep_pending(
    metadata: MetadataStore, client_id: bytes, file_name: bytes, blob_key: str
) -> None:
    """Step 3, first half: a sealed later version waits for its 900, the row's second pointer.

    Raises:
        StorageFault: the pointer could not be written.
    """
    with metadata.transaction():
        metadata.set_pending(client_id, file_name, blob_key)
    crashpoints.reached("upload.pending")


def confirm_pending(
    metadata: MetadataStore,
    client_id: bytes,
    file_name: bytes,
    blob_key: str,
    content: Content,
) -> None:
    """Step 3, at the 900: swap the pointers, record the content, Verified true: one transaction.

    The blob is published once the round is durable (:func:`publish_confirmed`).

    Raises:
        StorageFault: the transaction failed (nothing of it is kept).
    """
    with metadata.transaction():
        metadata.promote_pending(client_id, file_name, blob_key)
        metadata.set_content(client_id, file_name, content.size, content.cksum)
        metadata.set_verified(client_id, file_name, True)


def publish_confirmed(blobs: BlobStore, writer: BlobWriter, path_name: str) -> None:
    """Step 3, once the swap is durable: the confirmed version is what ``path_name`` reads.

    Raises:
        StorageFault: it is not yet (publishing again finishes it; so does repair).
    """
    crashpoints.reached("upload.confirmed")
    blobs.publish(writer.key, path_name)


def discard_pending(
    metadata: MetadataStore, writer: BlobWriter, client_id: bytes, file_name: bytes
) -> None:
    """Step 3 undone (901, 902, a new key, a timeout): no pointer at the pending blob; it goes.

    The pointer is cleared only if it still names this blob (a newer
    version's may have replaced it); the blob is aborted whatever happens.

    Raises:
        StorageFault: the pointer could not be cleared (the blob is gone;
            repair clears the pointer).
    """
    try:
        with metadata.transaction():
            row = metadata.file_row(client_id, file_name)
            if row is not None and row.pending_key == writer.key:
                metadata.set_pending(client_id, file_name, None)
    finally:
        writer.abort()


def remove_client(metadata: MetadataStore, blobs: BlobStore, client_id: bytes) -> None:
    """Step 5: take the client's blobs out, delete its rows, delete the blobs.

    Raises:
        StorageFault: a step failed; whatever began is finished by the next
            call or by start-up repair.
    """
    blobs.begin_removal(client_id)
    crashpoints.reached("remove.begun")
    _finish_removal(metadata, blobs, client_id)


def _finish_removal(metadata: MetadataStore, blobs: BlobStore, client_id: bytes) -> None:
    _forget_removed(metadata, client_id)
    blobs.finish_removal(client_id)


def _forget_removed(metadata: MetadataStore, client_id: bytes) -> None:
    """Delete the rows of a client whose blobs are taken out, durably."""
    with metadata.transaction():
        metadata.forget_client(client_id)
    metadata.sync()  # the rows are gone for good before the blobs go
    crashpoints.reached("remove.forgotten")


def finish_removals(metadata: MetadataStore, blobs: BlobStore) -> int:
    """Finish every client deletion a crash cut; return how many.

    Raises:
        StorageFault: one cannot be finished.
    """
    removed = forget_removals(metadata, blobs)
    delete_removed(blobs, removed)
    return len(removed)


def forget_removals(metadata: MetadataStore, blobs: BlobStore) -> tuple[bytes, ...]:
    """The rows of every client deletion a crash cut, deleted durably; return those clients,
    whose blobs are left to :func:`delete_removed` (no row points at them any more, and
    no upload of a client without rows begins).

    Raises:
        StorageFault: a deletion cannot be read or its rows deleted.
    """
    removed = tuple(blobs.pending_removals())
    for client_id in removed:
        log.warning("finishing the deletion of client %s", client_id.hex())
        _forget_removed(metadata, client_id)
    return removed


def delete_removed(blobs: BlobStore, removed: Sequence[bytes]) -> None:
    """Delete the blobs of the clients whose rows :func:`forget_removals` deleted.

    Raises:
        StorageFault: one client's blobs cannot be deleted (finished at the next start).
    """
    for client_id in removed:
        blobs.finish_removal(client_id)


@dataclass(frozen=True)
class RepairReport:
    """What start-up repair did."""

    #: Unpublished blobs no row points at: deleted (:func:`repair`), or to delete
    #: (:func:`repair_pointers`: :attr:`garbage`).
    unpublished_deleted: int
    rows_removed: int
    blobs_set_aside: int
    strays_set_aside: int
    removals_finished: int = 0
    #: Blobs a durable row pointed at, published at last (rolled forward).
    published: int = 0
    #: The garbage :func:`repair_pointers` found and left to delete (:func:`finish_repair`).
    garbage: tuple[UnpublishedBlob, ...] = ()
    #: The clients whose deletion a crash cut, their rows deleted by
    #: :func:`repair_pointers` and their blobs left to delete (:func:`finish_repair`).
    removed: tuple[bytes, ...] = ()


def repair(metadata: MetadataStore, blobs: BlobStore, node: str | None = None) -> RepairReport:
    """Steps 4 and 5 (:func:`repair_pointers`), what it leaves to delete deleted too, in this
    thread (tools and tests; the server deletes it while it serves: :func:`finish_repair`).

    Raises:
        OSError, StorageFault: the store cannot be read or changed.
    """
    report = repair_pointers(metadata, blobs, node)
    finish_repair(blobs, report)
    return replace(report, garbage=(), removed=())


def finish_repair(blobs: BlobStore, report: RepairReport) -> None:
    """Delete what :func:`repair_pointers` left to delete: the blobs of the client deletions
    a crash cut, and the garbage. No row points at any of it, nor will one (no upload of
    theirs is in flight or begins), so the server does it while it serves
    (``Sweeper.finish_repair``).

    Raises:
        StorageFault: a blob cannot be deleted (the next start finds it again).
    """
    delete_removed(blobs, report.removed)
    delete_garbage(blobs, report.garbage)


def delete_garbage(blobs: BlobStore, garbage: Sequence[UnpublishedBlob]) -> int:
    """Delete the unpublished blobs start-up repair found no row pointing at; how many.

    Raises:
        StorageFault: one cannot be deleted.
    """
    for blob in garbage:
        blobs.delete_unpublished(blob)
    if garbage:
        log.warning("deleted %d unfinished upload(s) no row points at", len(garbage))
    return len(garbage)


def repair_pointers(
    metadata: MetadataStore, blobs: BlobStore, node: str | None = None
) -> RepairReport:
    """Steps 4 and 5, all that decides what a row points at, before the server serves:
    delete the rows of the client deletions a crash cut, roll forward publishes a crash
    cut, clear pending pointers, remove rows without blobs, set aside blobs without rows
    and strays; the blobs of those deletions and the garbage found (no row points at them,
    nor can one: no upload is in flight) are left to :func:`finish_repair` (the report's
    :attr:`~RepairReport.removed` and :attr:`~RepairReport.garbage`), and are not set aside.

    ``node``: this server's name when other nodes share both stores; only
    what it left is repaired then, and garbage is the sweeper's (the module's
    "several nodes"). None: the server is alone, and everything is its own.

    Raises:
        OSError, StorageFault: the store cannot be read or changed.
    """
    removed = forget_removals(metadata, blobs)
    unpublished = {
        (blob.client_id, blob.key): blob for blob in blobs.unpublished()
        if blob.client_id not in removed  # deleted with its client's blobs
    }
    strays = sum(
        _set_aside(blobs, stray, _NOT_A_FILE if stray.owner else _NOT_A_FOLDER)
        for stray in blobs.foreign_entries()
    )
    removed_owners = {client_id.hex() for client_id in removed}  # as every store files them
    stored = [  # what each path name reads, listed once rather than asked per row
        entry for entry in blobs.stored()
        if entry.owner not in removed_owners  # a name a cut removal has still to delete
    ]
    present = {entry.path_name for entry in stored}
    rows_removed = published = 0
    with metadata.transaction():
        for row in metadata.file_rows():
            if not _left_by(row, node):
                continue
            if row.pending_key is not None:
                metadata.set_pending(row.id, row.file_name, None)
            if row.path_name not in present:
                log.warning("file %s is missing; its row is removed", row.path_name)
                metadata.delete_file(row.id, row.file_name)
                rows_removed += 1
            elif _roll_forward(blobs, row, unpublished):
                published += 1
    metadata.sync()  # the repair is durable before the first request
    garbage = tuple(unpublished.values()) if node is None else ()
    # Read after the listing: a name published before it has its row durable by now.
    known = {row.path_name for row in metadata.file_rows()}
    set_aside = sum(
        _set_aside(blobs, entry, "has no database row")
        for entry in stored
        if entry.path_name not in known
    )
    return RepairReport(
        len(garbage), rows_removed, set_aside, strays, len(removed), published, garbage,
        removed,
    )


def _left_by(row: FileRow, node: str | None) -> bool:
    """Whether this node (None: a server alone) may have left the row's blob work undone."""
    return node is None or row.node is None or row.node == node


def _roll_forward(
    blobs: BlobStore, row: FileRow, unpublished: dict[tuple[bytes, str], UnpublishedBlob]
) -> bool:
    """Publish the row's blob, whose path name reads a previous version, if a crash cut a
    confirmed version's publish; whether it did.

    A first upload's blob is not: its path name reads nothing yet, and the
    client never got its 1603 (the row goes, the blob is garbage).
    """
    if row.blob_key is None or (row.id, row.blob_key) not in unpublished:
        return False
    del unpublished[(row.id, row.blob_key)]
    blobs.publish(row.blob_key, row.path_name)
    log.warning("file %s: its upload is published at last", row.path_name)
    return True


def _set_aside(blobs: BlobStore, entry: BlobEntry, why: str) -> bool:
    """Move one entry aside and log it; False (logged) if it cannot move."""
    try:
        target = blobs.quarantine(entry)
    except StorageFault as exc:
        log.warning("%s %s; cannot move it aside (%s): left in place", entry.path_name, why, exc)
        return False
    log.warning("%s %s; moved to %s", entry.path_name, why, target)
    return True
