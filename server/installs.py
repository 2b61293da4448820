"""The end of a loop round, and the first uploads that take their names then.

A first upload's row is written into the round (server/storage/commit.py);
its blob takes its name only once the round is durable, before its answer
goes out. :meth:`RoundInstalls.end_round` is the whole order: commit the
round (one sync of the metadata store: group commit), then rename each of
the round's first uploads onto its name, in the order they completed. If the
round is lost, none of them takes its name, and their rows go.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, AbstractSet, Callable

from protocol.printable import quoted

from .errors import StorageFault
from .outcome import InstallTicket
from .storage import BlobStore, MetadataStore, TempBlob, commit

if TYPE_CHECKING:
    from .upload import Upload

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class _FirstInstall(InstallTicket):
    """A first upload whose row is in the round, waiting for it to be durable."""

    upload: Upload
    temp: TempBlob
    path_name: str


class RoundInstalls:
    """The round's first uploads, waiting for the round to be durable to take their names."""

    def __init__(
        self,
        metadata: MetadataStore,
        blobs: BlobStore,
        discard: Callable[[Upload, str], None],
    ) -> None:
        self._metadata = metadata
        self._blobs = blobs
        #: Forgets an upload that will never take its name (``Uploads.discard``).
        self._discard = discard
        #: First uploads whose rows are in the round, in order: each is renamed
        #: onto its name once the round is durable (:meth:`install_first_uploads`).
        self._to_install: list[_FirstInstall] = []
        #: First uploads of the round that could not take their names.
        self._install_failed: set[_FirstInstall] = set()

    def end_round(self, *, durable: bool) -> AbstractSet[InstallTicket]:
        """Commit the round (durably if asked, or if first uploads wait); then install them.

        Returns the tickets of the files that could not be
        installed: their answers become 1607 (:meth:`Session.release`).

        Raises:
            StorageFault: the round is lost; none of its answers may go out.
        """
        durable = durable or self.installs_waiting
        try:
            self._metadata.finish_round(durable=durable)
        except StorageFault:
            self.abandon_first_uploads()
            raise
        return self.install_first_uploads() if durable else set()

    def wait(self, upload: Upload, temp: TempBlob, path_name: str) -> _FirstInstall:
        """A first upload's row is in the round: it takes its name at the round's end."""
        first = _FirstInstall(upload, temp, path_name)
        self._to_install.append(first)
        return first

    @property
    def installs_waiting(self) -> bool:
        """Whether first uploads wait for the round to be durable to take their names."""
        return bool(self._to_install)

    def install_first_uploads(self) -> AbstractSet[InstallTicket]:
        """The round is durable: rename each first upload onto its name, in order.

        Returns the tickets of the files that could not take
        their names (each row is removed, each upload forgotten): their 1603
        must not go out.
        """
        self._install_waiting()
        failed, self._install_failed = self._install_failed, set()
        return failed

    def install_first_of(self, path_name: str) -> None:
        """Before a confirmed version replaces ``path_name``: its first upload, if waiting, first.

        A name's first upload that came in this same round must take its name
        before a later version does, or it would replace the confirmed one.

        Raises:
            StorageFault: the metadata store could not be made durable.
        """
        if any(first.path_name == path_name for first in self._to_install):
            self._metadata.sync()
            self._install_waiting()

    def _install_waiting(self) -> None:
        """Rename each waiting first upload onto its name, in order; note those that fail."""
        waiting, self._to_install = self._to_install, []
        for first in waiting:
            upload = first.upload
            try:
                commit.install_recorded(
                    self._metadata, self._blobs, first.temp, upload.client_id,
                    upload.file_name, first.path_name,
                )
            except StorageFault as exc:
                log.error(
                    "%s: file %s of client %s could not be stored: %s; answered 1607",
                    upload.address, quoted(upload.file_name), upload.client_id.hex(), exc,
                )
                first.temp.discard()
                self._discard(upload, "could not be stored")
                self._install_failed.add(first)

    def awaiting_install(self, upload: Upload) -> InstallTicket | None:
        """The token of a first upload still waiting for the round to take its name, if any."""
        return next((first for first in self._to_install if first.upload is upload), None)

    def abandon_first_uploads(self) -> None:
        """The round is lost (or the server stops): its first uploads never take their names."""
        waiting, self._to_install = self._to_install, []
        self._install_failed.clear()
        for first in waiting:
            first.temp.discard()
            self._discard(first.upload, "its round could not be made durable")
        if not waiting:
            return
        try:  # a commit that reached the database before the sync failed
            with self._metadata.transaction():
                for first in waiting:
                    self._metadata.delete_file(first.upload.client_id, first.upload.file_name)
        except StorageFault as exc:  # start-up repair removes rows without a file
            log.error("cannot remove the rows of files never stored: %s", exc)
