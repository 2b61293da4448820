"""The end of a loop round, and the uploads published then.

A first upload's row, and a confirmed version's pointer swap, are written
into the round (server/storage/commit.py); the blob is published only once
the round is durable, before the answer goes out. The whole order:
commit the round (one sync of the metadata store: group commit,
:meth:`RoundInstalls.begin_round`, whose commit the loop waits for through
its selector), then (:meth:`RoundInstalls.round_committed`) publish each of
the round's blobs, in the order they were recorded (a name's first upload
before a later version of it confirmed in the same round). If the round is
lost, none of them is published: the first uploads' rows go, and a
confirmed version is left to start-up repair, which publishes it if its swap
reached the disk. A confirmed version whose publish fails is *owed*: it is
published again every :data:`OWED_PUBLISH_RETRY` seconds (or at the
client's next 900) until it is, unless a later version replaced it meanwhile.

For a blob store with slow writes, the publishes go to the blob port's
worker (server/blobport.py), in the same order, after the blobs' seals; a
later version kept pending is answered only once its seal is done
(:meth:`RoundInstalls.wait_sealed`). Their answers stay held meanwhile
(:attr:`RoundInstalls.pending`), and the loop goes on; what follows a
publish in the metadata (a failed first upload's row removed) is done in the
loop thread when the worker reports it, the stores free.
"""

from __future__ import annotations

import logging
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, AbstractSet, Callable

from protocol.printable import quoted

from .blobport import QueuedWriter
from .errors import StorageFault
from .outcome import InstallTicket
from .storage import BlobStore, BlobWriter, MetadataStore, RoundCommit, commit
from .storage.base import wait_for
from .timers import Timer, Timers

if TYPE_CHECKING:
    from .upload import Upload

log = logging.getLogger(__name__)

#: Seconds between two attempts to publish a confirmed version whose publish failed.
OWED_PUBLISH_RETRY = 1.0


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
class _Sealing(InstallTicket):
    """A later version kept pending on a store with slow writes: answered once sealed."""

    upload: Upload
    writer: QueuedWriter


class RoundInstalls:
    """The round's blobs, waiting for the round to be durable to be published."""

    def __init__(
        self,
        metadata: MetadataStore,
        blobs: BlobStore,
        discard: Callable[[Upload, str], None],
        log_level: Callable[[Upload], int],
        timers: Timers,
        round_over: Callable[[], None] = lambda: None,
    ) -> None:
        self._metadata = metadata
        self._blobs = blobs
        self._timers = timers
        #: Forgets an upload that will never be published (``Uploads.discard``).
        self._discard = discard
        #: Told when a round is over, committed or lost (``Uploads.round_over``).
        self._round_over = round_over
        #: The level of a line about an upload (its address group's log budget).
        self._log_level = log_level
        #: Blobs whose rows are in the round, in order: each is published once
        #: the round is durable (:meth:`install_first_uploads`).
        self._to_install: list[_Publish] = []
        #: Uploads of the round that could not be published.
        self._install_failed: set[_Publish | _Sealing] = set()
        #: Confirmed versions whose publish failed: retried (:meth:`_retry_owed`).
        self._owed: dict[Upload, _Publish] = {}
        #: The next retry of the owed publishes, while any is owed.
        self._owed_timer: Timer | None = None
        #: Whether the round being committed is made durable (its blobs are then published).
        self._durable = False
        #: Tickets whose blob the port's worker is still sealing or publishing.
        self._pending: set[_Publish | _Sealing] = set()

    def begin_round(self, *, durable: bool) -> RoundCommit | None:
        """Start committing the round (durably if asked, or if blobs wait).

        None: committed already; else the loop waits for the commit through
        its selector, then calls :meth:`round_committed` (or, if the commit
        raised, :meth:`abandon_first_uploads`).

        Raises:
            StorageFault: the round is lost; none of its answers may go out
                (its first uploads are abandoned).
        """
        self._durable = durable or self.installs_waiting
        try:
            return self._metadata.begin_round_commit(durable=self._durable)
        except StorageFault:
            self.abandon_first_uploads()
            raise

    def round_committed(self) -> AbstractSet[InstallTicket]:
        """The round's commit is done: publish its blobs if it was durable.

        Returns the tickets of the files that could not be published: their
        answers become 1607 (:meth:`Session.release`).
        """
        try:
            return self.install_first_uploads() if self._durable else set()
        finally:
            self._round_over()

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
        self._install_failed.add(ticket)
        self._discard(upload, "could not be stored")

    @property
    def pending(self) -> AbstractSet[InstallTicket]:
        """The tickets whose blob the port's worker is still sealing or publishing."""
        return frozenset(self._pending)

    def publish_owed(self, upload: Upload) -> None:
        """A 900 again: a confirmed version whose publish failed is published at the round's end."""
        owed = self._owed.pop(upload, None)
        if owed is not None:
            self._to_install.append(owed)

    @property
    def installs_waiting(self) -> bool:
        """Whether blobs wait for the round to be durable to be published."""
        return bool(self._to_install)

    def install_first_uploads(self) -> AbstractSet[InstallTicket]:
        """The round is durable: publish each waiting blob, in order.

        Returns the tickets of the files that could not be published (each
        first upload's row is removed, each upload forgotten): their answers
        must not go out.
        """
        self._install_waiting()
        failed, self._install_failed = self._install_failed, set()
        return failed

    def _install_waiting(self) -> None:
        """Publish each waiting blob, in order; note those that fail."""
        waiting, self._to_install = self._to_install, []
        undone: set[str] = set()  # path names whose first upload was undone
        for entry in waiting:
            if isinstance(entry.writer, QueuedWriter):
                self._publish_later(entry, entry.writer, undone)
                continue
            upload = entry.upload
            try:
                if entry.first:
                    commit.publish_first(
                        self._metadata, self._blobs, entry.writer, upload.client_id,
                        upload.file_name, entry.path_name,
                    )
                elif entry.path_name in undone:
                    raise StorageFault("its name's first upload could not be stored")
                else:
                    commit.publish_confirmed(self._blobs, entry.writer, entry.path_name)
                    log.log(
                        self._log_level(upload),
                        "%s: stored file %s of client %s overwritten by its confirmed new"
                        " version (%d bytes)", upload.address, entry.path_name,
                        upload.client_id.hex(), entry.size,
                    )
            except StorageFault as exc:
                log.error(
                    "%s: file %s of client %s could not be stored: %s; answered 1607",
                    upload.address, quoted(upload.file_name), upload.client_id.hex(), exc,
                )
                self._install_failed.add(entry)
                if entry.first or entry.path_name in undone:
                    undone.add(entry.path_name)
                    entry.writer.abort()
                    self._discard(upload, "could not be stored")
                else:
                    self._owed[upload] = entry
                    self._arm_owed()

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
        """The worker published a blob, or could not (loop thread, the stores free)."""
        self._pending.discard(entry)
        upload = entry.upload
        if error is None:
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
        self._install_failed.add(entry)
        if entry.first:
            entry.writer.abort()
            try:
                commit.undo_first(self._metadata, upload.client_id, upload.file_name)
            except StorageFault as exc:  # start-up repair removes rows without a file
                log.error("cannot remove the row of a file never stored: %s", exc)
            self._discard(upload, "could not be stored")
        elif entry.path_name in undone:
            entry.writer.abort()
            self._discard(upload, "could not be stored")
        else:
            self._owed[upload] = entry
            self._arm_owed()

    def _arm_owed(self) -> None:
        if self._owed_timer is None:
            self._owed_timer = self._timers.call_later(OWED_PUBLISH_RETRY, self._retry_owed)

    def _retry_owed(self) -> None:
        """Publish each owed confirmed version again (its swap is durable); keep what fails,
        and what cannot be checked now (its row unreadable).

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
            if isinstance(entry.writer, QueuedWriter):  # in the port's worker
                del self._owed[upload]
                self._publish_later(entry, entry.writer, set())
                continue
            try:
                commit.publish_confirmed(self._blobs, entry.writer, entry.path_name)
            except StorageFault as exc:
                log.warning(
                    "%s: file %s of client %s: its confirmed version is still not stored: %s;"
                    " retried in %.0f s", upload.address, quoted(upload.file_name),
                    upload.client_id.hex(), exc, OWED_PUBLISH_RETRY,
                )
                continue
            del self._owed[upload]
            log.warning(
                "%s: stored file %s of client %s overwritten by its confirmed new version"
                " at last (%d bytes)", upload.address, entry.path_name,
                upload.client_id.hex(), entry.size,
            )
        if self._owed:
            self._arm_owed()

    def awaiting_install(self, upload: Upload) -> InstallTicket | None:
        """The ticket of an upload still waiting to be published (or sealed), if any."""
        waiting: list[_Publish | _Sealing] = [*self._to_install, *self._pending]
        return next((entry for entry in waiting if entry.upload is upload), None)

    def abandon_first_uploads(self) -> None:
        """The round is lost (or the server stops): nothing waiting is published.

        A first upload is forgotten with its row; a confirmed version's blob
        is left for start-up repair (its swap may have reached the disk).
        """
        waiting, self._to_install = self._to_install, []
        self._install_failed.clear()
        self._owed.clear()
        if self._owed_timer is not None:
            self._owed_timer.cancel()
            self._owed_timer = None
        firsts = [entry for entry in waiting if entry.first]
        for entry in firsts:
            entry.writer.abort()
            self._discard(entry.upload, "its round could not be made durable")
        try:  # a commit that reached the database before the sync failed
            if firsts:
                with self._metadata.transaction():
                    for entry in firsts:
                        self._metadata.delete_file(entry.upload.client_id, entry.upload.file_name)
        except StorageFault as exc:  # start-up repair removes rows without a file
            log.error("cannot remove the rows of files never stored: %s", exc)
        finally:
            self._round_over()

