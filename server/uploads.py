"""Files being received, and received files waiting for the client's verdict.

Each client id has at most one :class:`Upload` in progress at a time, and a
complete one per file name waiting for its verdict, kept here rather than on
a connection: a per-request client (PROTOCOL.md variant 7) sends each 828
and its 900 on a new connection, so an upload outlives the connection that
started it. An upload is in one of three states:

``RECEIVING``
    Packets are arriving. ``streaming`` is the connection inside one of its
    packets right now; ``owner`` is a one-connection client's connection,
    kept between packets (if it closes mid-file, the upload is dropped,
    HOSTILE.md D4). It lives only while it progresses: its deadline is
    ``message_deadline`` after the last content byte, and no later than the
    start plus ``message_deadline`` plus the bytes received at
    ``min_content_rate``. Requests that are not its packets (keep-alives)
    never extend it, so the disk space it reserves cannot be held by an
    upload that does not send.
``FAILED``
    The attempt was refused; its remaining packets are dropped without a
    reply until its last packet, a new first packet, or its deadline, so
    that a one-connection client gets one 1607 per attempt and stays in step.
``COMPLETE``
    The last packet came and 1603 went out; the upload waits for the verdicts
    (900/901/902) of the client holding the same AES key: a verdict applies
    only to an upload completed under the key in use, never to a file name
    alone. A first upload of a name is already installed (Verified false);
    any later upload of a name that is stored is a *pending* version, kept as
    a synced temp file that replaces the stored file only on 900. 901, 902, a
    new key, the owner connection's close or ``idle_timeout`` discard it, and
    the stored file stays as it was (HOSTILE.md C7).

A first packet while another attempt of the same client is RECEIVING and not
sent by that attempt's own connection is refused (1607), and the attempt in
progress goes on: uploads are serialised per client (HOSTILE.md D7), so the
stored file is always one complete upload.
"""

from __future__ import annotations

import enum
import logging
from typing import Callable

from protocol.upload import IncomingFile, ReceivedFile

from .limits import Limits
from .storage.files import TempFile
from .timers import Timer, Timers

log = logging.getLogger(__name__)


class UploadState(enum.Enum):
    """Where an upload stands; see the module docstring."""

    RECEIVING = "receiving"
    FAILED = "failed"
    COMPLETE = "complete"


class Upload:
    """One client's file: in progress, a failed attempt's marker, or complete."""

    def __init__(
        self,
        client_id: bytes,
        address: str,
        aes_key: bytes,
        file_name: bytes,
        last_packet: int,
        swapped: bool,
        started: float,
        incoming: IncomingFile | None = None,
        temp: TempFile | None = None,
    ) -> None:
        self.client_id = client_id
        #: Where the first packet came from (disk reservations per address).
        self.address = address
        #: The key it was sent under: a verdict must come under the same key.
        self.aes_key = aes_key
        self.file_name = file_name
        self.incoming = incoming
        self.temp = temp
        self.started = started
        self.state = UploadState.RECEIVING if incoming is not None else UploadState.FAILED
        self.owner: object | None = None
        self.streaming: object | None = None
        self.received = 0
        self.last_progress = started
        self.completed = 0.0
        #: COMPLETE: the 1603's fields, and whether the content waits as a
        #: pending version (a temp file) rather than being installed.
        self.result: ReceivedFile | None = None
        self.pending = False
        #: A pending version whose content was discarded (901, 902).
        self.dropped = False
        self.stored_name = ""
        self.deadline_timer: Timer | None = None
        self._last_packet = last_packet
        self._swapped = swapped

    def __repr__(self) -> str:
        return f"<Upload {self.client_id.hex()} {self.file_name!r} {self.state.value}>"

    def is_last(self, packet_number: int, total_packets: int) -> bool:
        """Whether a packet's fields name the last packet of this upload (variant 5)."""
        number = total_packets if self._swapped else packet_number
        return number >= self._last_packet

    def held_by_other(self, channel: object, is_open: Callable[[object], bool]) -> bool:
        """Whether another live connection holds this upload."""
        return (self.streaming is not None and self.streaming is not channel) or (
            self.owner is not None and self.owner is not channel and is_open(self.owner)
        )

    def continues_on(self, channel: object) -> bool:
        """Whether a new first packet on ``channel`` may replace this upload.

        A RECEIVING upload is replaced only by its own connection (a
        one-connection client starting over); anything else waits for it.
        """
        return self.state is not UploadState.RECEIVING or self.owner is channel

    @property
    def reserved(self) -> int:
        """Disk bytes this upload may still need."""
        if self.state is not UploadState.RECEIVING or self.temp is None or self.incoming is None:
            return 0
        return max(0, self.incoming.max_plain_size - self.temp.size)

    def progressed(self, count: int, now: float) -> None:
        """Content bytes arrived."""
        self.received += count
        self.last_progress = now

    def deadline(self, limits: Limits) -> float:
        """When this upload is dropped unless it moves on."""
        if self.state is UploadState.COMPLETE:
            return self.completed + limits.idle_timeout
        paced = self.started + limits.message_deadline + self.received / limits.min_content_rate
        return min(paced, self.last_progress + limits.message_deadline)


class Uploads:
    """The uploads of every client, one per client id."""

    def __init__(self, timers: Timers, limits: Limits) -> None:
        self._timers = timers
        self._limits = limits
        self._uploads: dict[bytes, Upload] = {}
        self._complete: dict[bytes, dict[bytes, Upload]] = {}
        #: Connections to the uploads they own or stream (closing one is O(its uploads)).
        self._held: dict[object, set[Upload]] = {}

    def __len__(self) -> int:
        return len(self._uploads) + sum(len(names) for names in self._complete.values())

    def get(self, client_id: bytes) -> Upload | None:
        """The client's upload in progress (or failed marker), if any."""
        return self._uploads.get(client_id)

    def completed(self, client_id: bytes, file_name: bytes) -> Upload | None:
        """The client's complete upload of ``file_name`` waiting for verdicts, if any."""
        return self._complete.get(client_id, {}).get(file_name)

    def reserved_bytes(self, address: str | None = None) -> int:
        """Disk bytes the uploads in progress may still need (from one address, or all)."""
        return sum(
            upload.reserved
            for upload in self._uploads.values()
            if address is None or upload.address == address
        )

    # -- life cycle -------------------------------------------------------------

    def begin(self, upload: Upload) -> None:
        """Register a new upload (or failed marker), discarding the client's old one."""
        old = self._uploads.get(upload.client_id)
        if old is not None:
            self.discard(old, "replaced by a new upload")
        self._uploads[upload.client_id] = upload
        self._arm(upload)

    def fail(self, upload: Upload, reason: str) -> None:
        """Drop the file but keep a marker that swallows the attempt's packets."""
        log.debug("upload for %s failed: %s", upload.client_id.hex(), reason)
        self._drop_temp(upload)
        upload.state = UploadState.FAILED

    def complete(self, upload: Upload, *, pending: bool, stored_name: str, owner: object | None) -> None:
        """The last packet is in: wait for the verdict (``pending``: as a temp file).

        It replaces the client's earlier complete upload of the same name.
        """
        if self._uploads.get(upload.client_id) is upload:
            del self._uploads[upload.client_id]
        earlier = self.completed(upload.client_id, upload.file_name)
        if earlier is not None:
            self.discard(earlier, "replaced by a newer upload of the name")
        self._complete.setdefault(upload.client_id, {})[upload.file_name] = upload
        upload.state = UploadState.COMPLETE
        upload.result = upload.incoming.result if upload.incoming is not None else None
        upload.incoming = None
        upload.pending = pending
        upload.stored_name = stored_name
        upload.completed = self._timers.clock()
        if not pending:
            upload.temp = None  # installed: the temp file is the stored file now
        self._set_holders(upload, owner=owner, streaming=None)
        self._arm(upload)

    def drop_pending(self, upload: Upload, reason: str) -> None:
        """Discard a pending version's content; the stored file stays as it was."""
        if upload.pending:
            log.info(
                "pending version of %r for client %s discarded: %s",
                upload.file_name, upload.client_id.hex(), reason,
            )
            self._drop_temp(upload)
            upload.pending = False
            upload.dropped = True

    def installed(self, upload: Upload) -> None:
        """A pending version was renamed onto the stored file."""
        upload.temp = None
        upload.pending = False

    def discard(self, upload: Upload, reason: str) -> None:
        """Forget an upload and delete its temp file (a pending version included)."""
        if self._uploads.get(upload.client_id) is upload:
            del self._uploads[upload.client_id]
        names = self._complete.get(upload.client_id)
        if names is not None and names.get(upload.file_name) is upload:
            del names[upload.file_name]
            if not names:
                del self._complete[upload.client_id]
        if upload.deadline_timer is not None:
            upload.deadline_timer.cancel()
            upload.deadline_timer = None
        if upload.temp is not None and upload.state is not UploadState.FAILED:
            log.info(
                "upload of %r for client %s discarded: %s",
                upload.file_name, upload.client_id.hex(), reason,
            )
        self._drop_temp(upload)
        self._set_holders(upload, owner=None, streaming=None)

    def discard_client(self, client_id: bytes, reason: str) -> None:
        """Drop the client's uploads, in progress and complete (its key changed)."""
        for upload in [self._uploads.get(client_id), *self._complete.get(client_id, {}).values()]:
            if upload is not None:
                self.discard(upload, reason)

    def close(self) -> None:
        """Drop every upload (shutdown)."""
        for upload in list(self._uploads.values()):
            self.discard(upload, "server stopping")
        for names in list(self._complete.values()):
            for upload in list(names.values()):
                self.discard(upload, "server stopping")

    # -- connections ------------------------------------------------------------

    def packet_started(self, upload: Upload, channel: object) -> None:
        """A connection is inside one of the upload's packets."""
        self._set_holders(upload, owner=upload.owner, streaming=channel)

    def packet_done(self, upload: Upload, channel: object, per_request: bool) -> None:
        """A packet ended: the connection keeps the upload, or it waits for the next one."""
        self._set_holders(upload, owner=None if per_request else channel, streaming=None)

    def channel_closed(self, channel: object) -> None:
        """A connection ended: drop the uploads it held (HOSTILE.md D4)."""
        for upload in list(self._held.get(channel, ())):
            self.discard(upload, "connection closed in the middle of the file")

    # -- inside -----------------------------------------------------------------

    def _set_holders(self, upload: Upload, *, owner: object | None, streaming: object | None) -> None:
        for channel in (upload.owner, upload.streaming):
            if channel is not None and channel not in (owner, streaming):
                held = self._held.get(channel)
                if held is not None:
                    held.discard(upload)
                    if not held:
                        del self._held[channel]
        upload.owner, upload.streaming = owner, streaming
        for channel in (owner, streaming):
            if channel is not None:
                self._held.setdefault(channel, set()).add(upload)

    def _arm(self, upload: Upload) -> None:
        if upload.deadline_timer is not None:
            upload.deadline_timer.cancel()
        upload.deadline_timer = self._timers.call_at(
            upload.deadline(self._limits), lambda: self._deadline_reached(upload)
        )

    def _deadline_reached(self, upload: Upload) -> None:
        upload.deadline_timer = None
        if upload not in (self._uploads.get(upload.client_id), self.completed(upload.client_id, upload.file_name)):
            return
        if self._timers.clock() < upload.deadline(self._limits):
            self._arm(upload)  # it progressed meanwhile
            return
        why = "no verdict in time" if upload.state is UploadState.COMPLETE else "no progress in time"
        self.discard(upload, why)

    @staticmethod
    def _drop_temp(upload: Upload) -> None:
        if upload.temp is not None:
            upload.temp.discard()
            upload.temp = None
