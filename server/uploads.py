"""Files being received, kept per client id rather than per connection.

A per-request client (PROTOCOL.md variant 7) sends each 828 on a new
connection, so an upload outlives the connection that started it. Each client
has at most one upload at a time ("the file being sent"):

* ``streaming`` is the connection inside one of its packets right now;
* ``owner`` is the one-connection client's connection, kept between packets;
  if that connection closes mid-file the upload is dropped (HOSTILE.md D4);
* an upload with neither (a per-request client between packets) expires after
  the idle timeout.

Another connection that sends a packet of the same client while the upload is
held by a live connection is refused (1607): uploads are serialised per client
and file (HOSTILE.md D7), and the final file is always one complete upload.

An upload that failed stays as a *failed* marker until its sequence ends, a
new first packet comes, or it expires: the further packets of the failed
attempt are dropped without a reply, so that a one-connection client gets one
1607 per attempt and stays in step.
"""

from __future__ import annotations

import logging
from typing import Callable

from protocol.events import FilePacketStarted
from protocol.upload import IncomingFile

from .storage.files import TempFile
from .timers import Timer, Timers

log = logging.getLogger(__name__)


class UploadSession:
    """One client's file in progress (or a failed attempt's marker)."""

    def __init__(
        self,
        client_id: bytes,
        first: FilePacketStarted,
        started: float,
        incoming: IncomingFile | None = None,
        temp: TempFile | None = None,
    ) -> None:
        self.client_id = client_id
        self.incoming = incoming
        self.temp = temp
        self.started = started
        self.file_name: bytes = first.file_name.text
        self._swapped = first.packet_number > first.total_packets
        self._total = max(first.packet_number, first.total_packets)
        self.owner: object | None = None
        self.streaming: object | None = None
        self.failed = incoming is None
        self.expiry: Timer | None = None

    @classmethod
    def failed_attempt(cls, client_id: bytes, first: FilePacketStarted, started: float):
        """A marker for an attempt refused at its first packet."""
        return cls(client_id, first, started)

    def is_last(self, packet: FilePacketStarted) -> bool:
        """Whether a packet claims to be the last of this upload's sequence."""
        number = packet.total_packets if self._swapped else packet.packet_number
        return number >= self._total

    def held_by_other(self, channel: object, is_open: Callable[[object], bool]) -> bool:
        """Whether another live connection holds this upload."""
        return (self.streaming is not None and self.streaming is not channel) or (
            self.owner is not None and self.owner is not channel and is_open(self.owner)
        )

    @property
    def reserved(self) -> int:
        """Disk bytes this upload may still need."""
        if self.failed or self.temp is None or self.incoming is None:
            return 0
        return max(0, self.incoming.max_plain_size - self.temp.size)


class Uploads:
    """The uploads in progress, one per client id."""

    def __init__(self, timers: Timers, idle_timeout: float) -> None:
        self._timers = timers
        self._idle_timeout = idle_timeout
        self._sessions: dict[bytes, UploadSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, client_id: bytes) -> UploadSession | None:
        """The client's upload, if any."""
        return self._sessions.get(client_id)

    def reserved_bytes(self) -> int:
        """Disk bytes all uploads in progress may still need."""
        return sum(session.reserved for session in self._sessions.values())

    def start(self, session: UploadSession) -> None:
        """Register a new upload, replacing (and discarding) the client's old one."""
        old = self._sessions.get(session.client_id)
        if old is not None:
            self.discard(old, "replaced by a new upload")
        self._sessions[session.client_id] = session

    def fail(self, session: UploadSession, reason: str) -> None:
        """Drop the file but keep a marker that swallows the attempt's packets."""
        log.debug("upload for %s failed: %s", session.client_id.hex(), reason)
        self._drop_temp(session)
        session.failed = True

    def discard(self, session: UploadSession, reason: str) -> None:
        """Forget an upload and delete its temp file."""
        if self._sessions.get(session.client_id) is session:
            del self._sessions[session.client_id]
        if session.expiry is not None:
            session.expiry.cancel()
            session.expiry = None
        if session.temp is not None and not session.failed:
            log.info("upload of client %s discarded: %s", session.client_id.hex(), reason)
        self._drop_temp(session)
        session.owner = session.streaming = None

    def finish(self, session: UploadSession) -> None:
        """The file is installed: forget the upload (the temp is gone)."""
        session.temp = None
        self.discard(session, "complete")

    def packet_done(self, session: UploadSession, channel: object, per_request: bool) -> None:
        """A packet ended: the connection keeps it, or it waits for the next one."""
        session.streaming = None
        session.owner = None if per_request else channel
        if session.expiry is not None:
            session.expiry.cancel()
            session.expiry = None
        if session.owner is None:
            session.expiry = self._timers.call_later(
                self._idle_timeout, lambda: self.discard(session, "no next packet in time")
            )

    def packet_started(self, session: UploadSession, channel: object) -> None:
        """A connection is inside one of the upload's packets."""
        session.streaming = channel
        if session.expiry is not None:
            session.expiry.cancel()
            session.expiry = None

    def channel_closed(self, channel: object) -> None:
        """A connection ended: drop the uploads it held (HOSTILE.md D4)."""
        for session in list(self._sessions.values()):
            if session.streaming is channel or session.owner is channel:
                self.discard(session, "connection closed in the middle of the file")

    def discard_client(self, client_id: bytes, reason: str) -> None:
        """Drop the client's upload, if any (its key changed)."""
        session = self._sessions.get(client_id)
        if session is not None:
            self.discard(session, reason)

    def close(self) -> None:
        """Drop every upload (shutdown)."""
        for session in list(self._sessions.values()):
            self.discard(session, "server stopping")

    @staticmethod
    def _drop_temp(session: UploadSession) -> None:
        if session.temp is not None:
            session.temp.discard()
            session.temp = None
