"""The end of a loop round, and the uploads published then.

A first upload's row, and a confirmed version's pointer swap, are written
into the round (server/storage/commit.py); the blob is published only once
the round is durable, before the answer goes out. The whole order, at the
round's end (:meth:`RoundInstalls.begin_round`): commit the round, then, in
the round worker (server/roundworker.py, server/roundjob.py), seal the
round's blobs and make the metadata durable (one sync of it: group commit),
then publish each of the round's blobs, in the order they were recorded (a
name's first upload before a later version of it confirmed in the same
round); the loop waits for all of it through its selector, then
(:meth:`RoundInstalls.round_committed`) acts on what failed, the stores
free. A blob whose seal fails is not published: a first upload is undone
(its row goes), a pending version discarded, and their answers become 1607.
If the round is lost, none of its blobs is published: the first uploads'
rows go, and a confirmed version is left to start-up repair, which
publishes it if its swap reached the disk. A confirmed version whose
publish fails is *owed*: it is published again every
:data:`OWED_PUBLISH_RETRY` seconds (or at the client's next 900) until it
is, unless a later version replaced it meanwhile.

For a blob store with slow writes, the seals and publishes go to the blob
port's worker (server/blobport.py) instead, one job per upload, in the same
order, after the blobs' writes; a later version kept pending is answered
only once its seal is done (:meth:`RoundInstalls.wait_sealed`). Their
answers stay held meanwhile (:attr:`RoundInstalls.pending`), and the loop
goes on; what follows a publish in the metadata (a failed first upload's
row removed) is done in the loop thread when the worker reports it, the
stores free. A refused upload's blob that the port's worker removes holds
the refusal's answer the same way (:meth:`RoundInstalls.abort`), and so
does a blob whose seal or publish failed (its 1607, on any store whose
aborts are the worker's, the folder's included): a client told of the
failure finds nothing left of it. A failure is reported at every round's
end for as long as an answer holds its ticket, so an answer held behind
another, or behind its blob's removal, still becomes a 1607 when it goes.
"""

from __future__ import annotations

import logging
import functools
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, AbstractSet, Callable

from protocol.printable import quoted

from .blobport import BufferedWriter, QueuedWriter
from .errors import StorageFault
from .outcome import InstallTicket
from .roundjob import RoundJob
from .roundworker import RoundWorker
from .storage import BlobStore, BlobWriter, MetadataStore, RoundCommit, commit
from .storage.base import DurableStep, wait_for
from .timers import Timer, Timers

if TYPE_CHECKING:
    from .upload import Upload

log = logging.getLogger(__name__)

#: Seconds between two attempts to publish a confirmed version whose publish failed.
OWED_PUBLISH_RETRY = 1.0


class _FailedTickets:
    """The tickets of files that could not be sealed or published, held weakly: one is
    forgotten once no answer holds it.

    Unlike a :class:`weakref.WeakSet`, no callback runs when a ticket dies, so nothing
    changes the set from the thread that drops the last reference (the blob port's or
    the round's worker, which keep their last job a while): the loop thread prunes the
    dead ones itself when it reads the set (:meth:`alive`).
    """

    def __init__(self) -> None:
        self._refs: dict[int, weakref.ref[InstallTicket]] = {}

    def add(self, ticket: InstallTicket) -> None:
        self._refs[id(ticket)] = weakref.ref(ticket)

    def discard(self, ticket: InstallTicket) -> None:
        ref = self._refs.get(id(ticket))
        if ref is not None and ref() is ticket:
            del self._refs[id(ticket)]

    def alive(self) -> frozenset[InstallTicket]:
        """The tickets still held somewhere (the dead ones forgotten)."""
        alive = {key: ticket for key, ref in self._refs.items() if (ticket := ref()) is not None}
        self._refs = {key: self._refs[key] for key in alive}
        return frozenset(alive.values())


@dataclass(frozen=True, eq=False)
class _Publish(InstallTicket):
    """An upload whose row (or pointer swap) is in the round, waiting for it to be durable."""

    upload: Upload
    writer: BlobWriter
    path_name: str
    #: A name's first upload (undone if it cannot be published), or a confirmed version.
    first: bool
    #: The plaintext bytes published (for the log).
    size: int = 0


@dataclass(frozen=True, eq=False)
class _Seal(InstallTicket):
    """A blob completed in the round, sealed at its end (the round worker's, server/roundjob.py).

    A pending version's answer waits on this ticket; a first upload's on its :class:`_Publish`.
    """

    upload: Upload
    writer: BlobWriter
    first: bool


@dataclass(frozen=True, eq=False)
class _Sealing(InstallTicket):
    """A later version kept pending on a store with slow writes: answered once sealed."""

    upload: Upload
    writer: QueuedWriter


@dataclass(frozen=True, eq=False)
class _Aborting(InstallTicket):
    """A blob the port's worker removes: the answer that reports its upload's failure waits
    for it (:meth:`RoundInstalls.abort`)."""

    writer: BlobWriter


class RoundInstalls:
    """The round's blobs, waiting for the round to be durable to be published."""

    def __init__(
        self,
        metadata: MetadataStore,
        blobs: BlobStore,
        discard: Callable[[Upload, str], None],
        log_level: Callable[[Upload], int],
        timers: Timers,
        round_over: Callable[[bool], None] = lambda committed: None,
    ) -> None:
        self._metadata = metadata
        self._blobs = blobs
        self._timers = timers
        #: Forgets an upload that will never be published (``Uploads.discard``).
        self._discard = discard
        #: Told when a round is over, committed (True) or lost (``Uploads.round_over``).
        self._round_over = round_over
        #: The level of a line about an upload (its address group's log budget).
        self._log_level = log_level
        #: Blobs whose rows are in the round, in order: each is published once
        #: the round is durable (the round's job, :meth:`begin_round`; the blob
        #: port's, :meth:`install_first_uploads`).
        self._to_install: list[_Publish] = []
        #: Uploads that could not be sealed or published, as long as an answer holds their
        #: ticket: every round's end reports them, so that an answer held behind another
        #: (or behind its blob's removal) still becomes a 1607 when it goes.
        self._install_failed = _FailedTickets()
        #: Confirmed versions whose publish failed: retried (:meth:`_retry_owed`).
        self._owed: dict[Upload, _Publish] = {}
        #: The next retry of the owed publishes, while any is owed.
        self._owed_timer: Timer | None = None
        #: Whether the round being committed is made durable (its blobs are then published).
        self._durable = False
        #: Tickets whose blob the port's worker is still sealing or publishing.
        self._pending: set[_Publish | _Sealing] = set()
        #: The blobs the port's worker is still removing, with their refusals' tickets.
        self._aborting: dict[BlobWriter, _Aborting] = {}
        #: Tickets whose answer waits for the port's worker to remove their blob (an
        #: abort): a refusal's, a failed seal's or publish's.
        self._removing: set[InstallTicket] = set()
        #: Blobs completed in the round: sealed at its end, before its publishes.
        self._to_seal: list[_Seal] = []
        #: Runs each round's seals, durable step and publishes (:meth:`begin_round`).
        self._worker = RoundWorker()
        #: The round's job under way or just done, if it has one, and its seals.
        self._job: RoundJob[_Publish] | None = None
        self._job_seals: list[_Seal] = []

    def begin_round(self, *, durable: bool) -> RoundCommit | None:
        """Start committing the round (durably if asked, or if blobs wait), its blobs' seals
        and publishes in the round worker (server/roundjob.py).

        None: committed already; else the loop waits for the commit through
        its selector, then calls :meth:`round_committed` (or, if the commit
        raised, :meth:`abandon_first_uploads`). A round with nothing to
        seal, publish or make durable hands nothing to the worker.

        Raises:
            StorageFault: the round is lost; none of its answers may go out
                (its first uploads are abandoned).
        """
        self._durable = durable or self.installs_waiting
        try:
            metadata_commit = self._metadata.begin_round_commit(durable=self._durable)
        except StorageFault:
            self.abandon_first_uploads()
            raise
        seals, self._to_seal = self._to_seal, []
        publishes = [entry for entry in self._to_install if not _queued(entry)]
        self._to_install = [entry for entry in self._to_install if _queued(entry)]
        # None first: most rounds (every empty one) skip the check of a run-time protocol,
        # which walks its attributes (dearer than the rest of an empty round's end)
        if not seals and not publishes and (
            metadata_commit is None or not isinstance(metadata_commit, DurableStep)
        ):
            return metadata_commit
        self._job = RoundJob(
            self._worker, self._blobs, metadata_commit,
            [seal.writer for seal in seals], publishes,
        )
        self._job_seals = seals
        return self._job

    def round_committed(self) -> AbstractSet[InstallTicket]:
        """The round's commit is done, its job's seals and publishes too: act on what failed,
        and hand the blob port's publishes to it (a store with slow writes).

        Returns the tickets of the files that could not be sealed or
        published: their answers become 1607 (:meth:`Session.release`).
        """
        job, self._job = self._job, None
        try:
            if job is not None:
                self._job_done(job, self._job_seals)
            return self.install_first_uploads() if self._durable else set()
        finally:
            self._round_over(True)

    def _job_done(self, job: RoundJob[_Publish], seals: list[_Seal]) -> None:
        """The round's job is over, the round durable: act on the seals and publishes that
        failed (loop thread, the stores free)."""
        for seal in seals:
            error = job.seal_failures.get(seal.writer)
            if error is not None and not seal.first:  # a first upload's fails with its publish
                self._seal_failed(seal, error)
        for entry in job.publishes:
            self._publish_outcome(entry, job.undone, job.publish_failures.get(entry))

    def end_round(self, *, durable: bool) -> AbstractSet[InstallTicket]:
        """:meth:`begin_round`, waited for, then :meth:`round_committed` (tests, tools).

        Raises:
            StorageFault: the round is lost; none of its answers may go out.
        """
        commit = self.begin_round(durable=durable)
        try:
            wait_for(commit)
        except StorageFault:
            self.abandon_first_uploads()
            raise
        return self.round_committed()

    def seal(self, upload: Upload, writer: BlobWriter, *, first: bool) -> InstallTicket:
        """A blob completed: it is sealed at the round's end, before any publish (a first
        upload's answer waits on its :meth:`wait` ticket, a pending version's on this one).

        If its seal fails, it is never published: a first upload is undone,
        a pending version discarded, and the answer becomes 1607.
        """
        ticket = _Seal(upload, writer, first)
        self._to_seal.append(ticket)
        return ticket

    def seal_now(self, writer: BlobWriter) -> None:
        """Seal at once a blob whose seal waits for the round's end (a pending version
        confirmed in the round that completed it: its swap must not point at content not
        durable); a failure is its seal's (its answer becomes 1607, it is discarded).

        Raises:
            StorageFault: the seal failed.
        """
        seal = next((seal for seal in self._to_seal if seal.writer is writer), None)
        if seal is None:
            return
        self._to_seal.remove(seal)
        try:
            commit.seal(writer)
        except StorageFault as exc:
            self._seal_failed(seal, exc)
            raise

    def drop_seal(self, writer: BlobWriter) -> None:
        """A blob given up before the round's end (it is aborted): not sealed."""
        self._to_seal = [seal for seal in self._to_seal if seal.writer is not writer]

    def _seal_failed(self, seal: _Seal, error: StorageFault) -> None:
        """A pending version's seal failed: it is discarded, its answer becomes 1607."""
        upload = seal.upload
        log.error(
            "%s: file %s of client %s could not be stored: %s; answered 1607",
            upload.address, quoted(upload.file_name), upload.client_id.hex(), error,
        )
        self._discard(upload, "could not be stored")
        self._failed(seal, seal.writer)

    def wait(self, upload: Upload, writer: BlobWriter, path_name: str) -> _Publish:
        """A first upload's row is in the round: it is published at the round's end."""
        first = _Publish(upload, writer, path_name, first=True)
        self._to_install.append(first)
        return first

    def wait_confirmed(
        self, upload: Upload, writer: BlobWriter, path_name: str, size: int
    ) -> None:
        """A confirmed version's swap is in the round: it is published at the round's end."""
        self._to_install.append(_Publish(upload, writer, path_name, first=False, size=size))

    def wait_sealed(self, upload: Upload, writer: QueuedWriter) -> InstallTicket:
        """A later version kept pending, its seal in the port's worker: its answer waits for it.

        If the seal fails, the pending version is discarded and its answer becomes 1607.
        """
        ticket = _Sealing(upload, writer)
        self._pending.add(ticket)
        writer.then(writer.check, functools.partial(self._sealed, ticket))
        return ticket

    def _sealed(self, ticket: _Sealing, error: StorageFault | None) -> None:
        self._pending.discard(ticket)
        if error is None:
            return
        upload = ticket.upload
        log.error(
            "%s: file %s of client %s could not be stored: %s; answered 1607",
            upload.address, quoted(upload.file_name), upload.client_id.hex(), error,
        )
        self._discard(upload, "could not be stored")
        self._failed(ticket, ticket.writer)

    @property
    def pending(self) -> AbstractSet[InstallTicket]:
        """The tickets whose blob the port's worker is still sealing, publishing or
        removing."""
        if self._removing:
            return frozenset([*self._pending, *self._removing])
        return frozenset(self._pending)

    def abort(self, writer: BlobWriter) -> None:
        """Give a blob up; if the port's worker removes it, the answer that reports its
        failure waits for that (:meth:`aborting`), so that a client told of the failure
        finds nothing left of it."""
        writer.abort()
        ticket = _Aborting(writer)
        if self._held_until_removed(ticket, writer):
            self._aborting[writer] = ticket

    def _failed(self, ticket: _Publish | _Seal | _Sealing, writer: BlobWriter) -> None:
        """A file could not be sealed or published, its blob given up (aborted already):
        its answer becomes a 1607, which waits for the port's worker to remove the blob
        (as a refusal's does: :meth:`abort`)."""
        self._install_failed.add(ticket)
        self._held_until_removed(ticket, writer)

    def _held_until_removed(self, ticket: InstallTicket, writer: BlobWriter) -> bool:
        """Keep ``ticket`` pending until the port's worker has done what is queued for
        ``writer`` (its abort, queued before); whether the worker removes it (else the
        store's abort is done, or left to the sweeper)."""
        queued = writer.queued if isinstance(writer, BufferedWriter) else writer
        if not isinstance(queued, QueuedWriter):
            return False
        self._removing.add(ticket)
        queued.then(_nothing, functools.partial(self._removed, ticket))
        return True

    def _removed(self, ticket: InstallTicket, error: StorageFault | None) -> None:
        self._removing.discard(ticket)
        if isinstance(ticket, _Aborting) and self._aborting.get(ticket.writer) is ticket:
            del self._aborting[ticket.writer]

    def aborting(self, writer: BlobWriter) -> InstallTicket | None:
        """The ticket of a blob the port's worker is still removing (:meth:`abort`), if it is."""
        return self._aborting.get(writer)

    def publish_owed(self, upload: Upload) -> None:
        """A 900 again: a confirmed version whose publish failed is published at the round's end."""
        owed = self._owed.pop(upload, None)
        if owed is not None:
            self._install_failed.discard(owed)  # its answer tells this publish's outcome
            self._to_install.append(owed)

    @property
    def installs_waiting(self) -> bool:
        """Whether blobs wait for the round's end to be sealed or published."""
        return bool(self._to_install or self._to_seal)

    def install_first_uploads(self) -> AbstractSet[InstallTicket]:
        """The round is durable: hand each blob still waiting to the blob port, in order.

        Returns the tickets of the files that could not be sealed or
        published (each first upload's row is removed, each upload
        forgotten): their answers must not go out.
        """
        self._install_waiting()
        return self._install_failed.alive()

    def _install_waiting(self) -> None:
        """Hand each blob waiting for the port's worker to it, in order (a store with slow
        writes; the others' are the round job's: :meth:`begin_round`)."""
        waiting, self._to_install = self._to_install, []
        undone: set[str] = set()  # path names whose first upload was undone
        for entry in waiting:
            if isinstance(entry.writer, QueuedWriter):
                self._publish_later(entry, entry.writer, undone)

    def _publish_later(self, entry: _Publish, writer: QueuedWriter, undone: set[str]) -> None:
        """Publish in the port's worker, after the blob's seal; :meth:`_published` then.

        ``undone`` is the round's path names whose first upload was undone,
        filled and read by the worker (in the round's order).
        """

        def publish() -> None:
            if entry.first:
                try:
                    writer.check()  # its seal failed: it is undone the same way
                    commit.publish_first_blob(self._blobs, writer, entry.path_name)
                except StorageFault:
                    undone.add(entry.path_name)
                    raise
            elif entry.path_name in undone:
                raise StorageFault("its name's first upload could not be stored")
            else:
                commit.publish_confirmed(self._blobs, writer, entry.path_name)

        self._pending.add(entry)
        writer.then(publish, functools.partial(self._published, entry, undone))

    def _published(self, entry: _Publish, undone: set[str], error: StorageFault | None) -> None:
        """The port's worker published a blob, or could not (loop thread, the stores free)."""
        self._pending.discard(entry)
        self._publish_outcome(entry, undone, error)

    def _publish_outcome(
        self, entry: _Publish, undone: set[str], error: StorageFault | None
    ) -> None:
        """A blob was published, or could not be (``error``; ``undone``: the round's path
        names whose first upload was undone): log it; undo, discard or owe what failed."""
        upload = entry.upload
        if error is None:
            self._install_failed.discard(entry)  # an owed publish, done at last
            if not entry.first:
                log.log(
                    self._log_level(upload),
                    "%s: stored file %s of client %s overwritten by its confirmed new"
                    " version (%d bytes)", upload.address, entry.path_name,
                    upload.client_id.hex(), entry.size,
                )
            return
        log.error(
            "%s: file %s of client %s could not be stored: %s; answered 1607",
            upload.address, quoted(upload.file_name), upload.client_id.hex(), error,
        )
        if entry.first:
            entry.writer.abort()
            try:
                commit.undo_first(self._metadata, upload.client_id, upload.file_name)
            except StorageFault as exc:  # start-up repair removes rows without a file
                log.error("cannot remove the row of a file never stored: %s", exc)
            self._discard(upload, "could not be stored")
            self._failed(entry, entry.writer)  # its 1607 waits for the blob's removal
        elif entry.path_name in undone:
            entry.writer.abort()
            self._discard(upload, "could not be stored")
            self._failed(entry, entry.writer)
        else:
            self._install_failed.add(entry)
            self._owed[upload] = entry
            self._arm_owed()

    def _arm_owed(self) -> None:
        if self._owed_timer is None:
            self._owed_timer = self._timers.call_later(OWED_PUBLISH_RETRY, self._retry_owed)

    def _retry_owed(self) -> None:
        """Publish each owed confirmed version again (its swap is durable), as a round's
        publishes are (off the loop thread); keep what cannot be checked now (its row
        unreadable). One that fails is owed again.

        A version no longer the row's (a later one was confirmed, or the
        client was deleted) is not published: it is garbage, left to the
        sweeper's grace period (the swap that replaced it may not be durable yet).
        """
        self._owed_timer = None
        for upload, entry in list(self._owed.items()):
            try:
                row = self._metadata.file_row(upload.client_id, upload.file_name)
            except StorageFault as exc:  # kept: the next retry reads it again
                log.warning(
                    "%s: file %s of client %s: its confirmed version is still not stored"
                    " (its row cannot be read: %s); retried in %.0f s", upload.address,
                    quoted(upload.file_name), upload.client_id.hex(), exc, OWED_PUBLISH_RETRY,
                )
                continue
            if row is None or row.blob_key != entry.writer.key:
                del self._owed[upload]
                continue
            del self._owed[upload]
            log.warning(
                "%s: file %s of client %s: its confirmed version is published again",
                upload.address, quoted(upload.file_name), upload.client_id.hex(),
            )
            if isinstance(entry.writer, QueuedWriter):  # in the port's worker
                self._publish_later(entry, entry.writer, set())
            else:  # in this round's job (it fails: owed again)
                self._to_install.append(entry)
        if self._owed:
            self._arm_owed()

    def awaiting_install(self, upload: Upload) -> InstallTicket | None:
        """The ticket of an upload still waiting to be published (or sealed), if any."""
        waiting: list[_Publish | _Seal | _Sealing] = [
            *self._to_install, *self._to_seal, *self._pending
        ]
        return next((entry for entry in waiting if entry.upload is upload), None)

    def abandon_first_uploads(self) -> None:
        """The round is lost (or the server stops): nothing waiting is published.

        A first upload is forgotten with its row; a confirmed version's blob
        is left for start-up repair (its swap may have reached the disk); a
        pending version not sealed is discarded.
        """
        waiting, self._to_install = self._to_install, []
        seals, self._to_seal = self._to_seal, []
        job, self._job = self._job, None
        if job is not None:
            waiting = [*job.publishes, *waiting]
            seals = [
                seal for seal in self._job_seals if seal.writer in job.seal_failures
            ] + seals
        self._owed.clear()
        if self._owed_timer is not None:
            self._owed_timer.cancel()
            self._owed_timer = None
        firsts = [entry for entry in waiting if entry.first]
        for entry in firsts:
            entry.writer.abort()
            self._discard(entry.upload, "its round could not be made durable")
        for seal in seals:
            if not seal.first:
                self._discard(seal.upload, "its round could not be made durable")
        try:  # a commit that reached the database before the sync failed
            if firsts:
                with self._metadata.transaction():
                    for entry in firsts:
                        self._metadata.delete_file(entry.upload.client_id, entry.upload.file_name)
        except StorageFault as exc:  # start-up repair removes rows without a file
            log.error("cannot remove the rows of files never stored: %s", exc)
        finally:
            self._round_over(False)

    def close(self) -> None:
        """The server stops: nothing waiting is published (:meth:`abandon_first_uploads`);
        the round worker ends."""
        self.abandon_first_uploads()
        self._worker.close()


def _nothing() -> None:
    """A job that only marks its place in the port's queue (after an abort)."""


def _queued(entry: _Publish) -> bool:
    """Whether the blob is the blob port's (a store with slow writes: server/blobport.py)."""
    return isinstance(entry.writer, QueuedWriter)
