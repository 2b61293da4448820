"""One 828 on one connection: whether it is taken, where its content goes, what it ends in.

:func:`start_packet` makes the per-packet checks: another connection inside
the client's upload of the name, a further packet with no upload in progress
or out of order, a first packet while another attempt is receiving. A first
packet's :class:`~protocol.incoming.PacketOrder` is worked out here, once,
and goes into the upload (:meth:`Uploads.begin` builds its
:class:`~protocol.incoming.IncomingFile` with it, after the admission checks
of server/admission.py).

What it gives back is an :class:`IncomingPacket`: a :class:`StreamingPacket`
that receives into the upload, or a :class:`DroppedPacket` whose content is
read past (the content must still be read to keep the stream in step). Its
end is a :data:`PacketEnd` value, a refusal included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Union

from protocol import RemoteProtocolError
from protocol.buffer import BytesLike
from protocol.events import FilePacketStarted
from protocol.incoming import PacketOrder, ReceivedFile

from .blobport import BufferedWriter, QueuedWriter
from .errors import NoRoom, Refusal, StorageFault
from .outcome import InstallTicket
from .peer import Peer
from .phases import Receiving, Upload

if TYPE_CHECKING:
    from .storage.coordination import PendingTake
    from .upload import Uploads


def start_packet(
    uploads: Uploads,
    client_id: bytes,
    aes_key: bytes,
    peer: Peer,
    per_request: bool,
    packet: FilePacketStarted,
) -> IncomingPacket:
    """An 828 under the client's current key starts: where its content goes, how it ends."""
    upload = uploads.get(client_id, packet.file_name.text)
    if upload is not None and upload.held_by_other(peer):
        return DroppedPacket(Refused("another connection is sending this client's file"))
    order = PacketOrder.of_packet(packet)
    if order is None:
        return _continue(uploads, upload, peer, per_request, packet)
    if upload is not None and not upload.continues_on(peer):
        return DroppedPacket(Refused("another upload of this client and file is in progress"))
    uploads.start_over(client_id, peer)
    return uploads.begin(client_id, aes_key, peer, per_request, packet, order)


def _continue(
    uploads: Uploads,
    upload: Upload | None,
    peer: Peer,
    per_request: bool,
    packet: FilePacketStarted,
) -> IncomingPacket:
    """A further packet of the client's upload in progress."""
    if upload is None:
        return DroppedPacket(Refused("packet of a file that is not being sent"))
    last = upload.order.is_last(packet)
    phase = upload.phase
    if not isinstance(phase, Receiving):
        if last:
            uploads.discard(upload, "end of a failed attempt")
        return DroppedPacket(Dropped(last))
    try:
        phase.incoming.start_packet(packet)
    except RemoteProtocolError as exc:
        uploads.attempt_failed(upload, peer, per_request, last, exc)
        return DroppedPacket(Refused.of(exc, uploads.installs.aborting(phase.writer)))
    uploads.packet_started(upload, peer)
    return StreamingPacket(uploads, upload, peer, per_request, phase, last)


# -- what one packet ends in ------------------------------------------------------


@dataclass(frozen=True)
class MoreToCome:
    """The packet is in; more of its file is due."""

    detail: str


@dataclass(frozen=True)
class Dropped:
    """A packet of a refused attempt, dropped; its answer already went."""

    last: bool


@dataclass(frozen=True)
class FileComplete:
    """The file is complete and kept (installed, or pending); ``crc`` is the answer's CRC."""

    client_id: bytes
    result: ReceivedFile
    detail: str
    crc: int
    #: A first upload: it takes its name when the round is durable (the
    #: ticket :meth:`RoundInstalls.install_first_uploads` reports if it cannot).
    awaits_install: InstallTicket | None = None


@dataclass(frozen=True)
class Refused:
    """The packet (and its attempt) is refused: 1607. ``fault``: a store failed."""

    reason: str
    fault: bool = False
    #: The disk had no room for the file (:class:`~server.errors.NoRoom`).
    no_room: bool = False
    #: The attempt's blob is still being removed (the blob port's worker): the 1607 is
    #: held until it is gone (:meth:`RoundInstalls.abort`).
    awaits_abort: InstallTicket | None = None

    @classmethod
    def of(cls, error: Exception, awaits_abort: InstallTicket | None = None) -> Refused:
        """The end of a packet that ``error`` refused."""
        return cls(
            str(error), fault=isinstance(error, StorageFault), no_room=isinstance(error, NoRoom),
            awaits_abort=awaits_abort,
        )


PacketEnd = Union[MoreToCome, Dropped, FileComplete, Refused]


class IncomingPacket(Protocol):
    """One 828 on one connection: its content is fed, then it ends."""

    def feed(self, data: BytesLike) -> None: ...
    def end(self) -> PacketEnd: ...


class DroppedPacket:
    """A packet whose content is dropped; its end is known from its start."""

    def __init__(self, end: PacketEnd) -> None:
        self._end = end

    def feed(self, data: BytesLike) -> None:
        """Content of a dropped packet: nothing to do."""

    def end(self) -> PacketEnd:
        """What the packet was known to end in."""
        return self._end


class StreamingPacket:
    """A packet whose content streams into its upload.

    If the attempt fails on the way (a sequence or decryption error, a store
    fault), or the upload is discarded meanwhile (a new key, its deadline),
    the rest of the content is dropped and the packet ends :class:`Refused`.
    """

    def __init__(self, uploads: Uploads, upload: Upload, peer: Peer, per_request: bool,
                 phase: Receiving, last: bool, lease: PendingTake | None = None) -> None:
        self._uploads = uploads
        #: The upload's lease, asked for at its first packet: answered by this packet's end.
        self._lease = lease
        self._upload = upload
        self._peer = peer
        self._per_request = per_request
        self._phase = phase
        self._last = last
        self._refused: Refused | None = None

    def feed(self, data: BytesLike) -> None:
        """A piece of the packet's content."""
        if self._refused is not None or not self._still_receiving():
            return
        incoming, writer = self._phase.incoming, self._phase.writer
        try:
            if isinstance(writer, (BufferedWriter, QueuedWriter)):  # decrypted straight
                # into what it holds, or into the chunk it queues
                self._decrypt_into(writer, data)
            else:
                plain = incoming.receive(data)
                if plain:
                    writer.write(plain)
        except (RemoteProtocolError, StorageFault) as exc:
            self._fail(exc)
            return
        self._upload.received += len(data)
        self._upload.last_progress = self._uploads.clock()

    def _decrypt_into(self, writer: BufferedWriter | QueuedWriter, data: BytesLike) -> None:
        """Decrypt ``data`` into the rooms ``writer`` lends, as much of it as each fits (a
        held buffer's end takes a part, the next buffer the rest).

        Raises:
            RemoteProtocolError: the content does not decrypt.
            StorageFault: an earlier write of the blob failed.
        """
        incoming = self._phase.incoming
        with memoryview(data) as rest:
            while rest:
                with writer.room(incoming.most_plain(len(rest))) as room:
                    piece = rest[: incoming.most_content(len(room))]
                    writer.took(incoming.receive_into(piece, room))
                rest = rest[len(piece) :]

    def end(self) -> PacketEnd:
        """The packet's content is complete: the file's end, or more to come."""
        if self._refused is None and self._still_receiving():
            self._confirm_lease()
        if self._refused is not None:
            return self._refused
        upload, incoming = self._upload, self._phase.incoming
        try:
            tail = incoming.end_packet()
            if tail:
                self._phase.writer.write(tail)
        except (RemoteProtocolError, StorageFault) as exc:
            return self._fail(exc)
        if not incoming.done:
            self._uploads.packet_done(upload, self._peer, self._per_request)
            return MoreToCome(f"packet {incoming.next_packet - 1}/{incoming.total_packets}")
        try:
            owner = None if self._per_request else self._peer
            return self._uploads.complete(upload, self._phase, owner)
        except StorageFault as exc:
            self._uploads.discard(upload, "could not be stored")
            return Refused.of(exc, self._aborting())

    def _still_receiving(self) -> bool:
        """Whether the upload is still this client's, receiving (not discarded meanwhile)."""
        upload = self._upload
        if (
            upload.phase is self._phase
            and self._uploads.get(upload.client_id, upload.file_name) is upload
        ):
            return True
        self._refused = Refused(
            "the upload was discarded while its packet was arriving",
            awaits_abort=self._aborting(),
        )
        return False

    def _aborting(self) -> InstallTicket | None:
        """The ticket of the upload's blob while the blob port's worker removes it."""
        return self._uploads.installs.aborting(self._phase.writer)

    def _confirm_lease(self) -> None:
        """The upload's lease, if this packet asked for it, is this node's: else the attempt
        fails (refused), as the lease's answer says."""
        lease, self._lease = self._lease, None
        if lease is None:
            return
        try:
            self._uploads.confirm_lease(lease)
        except (Refusal, StorageFault) as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> Refused:
        """The attempt is over: drop its file; the packet ends refused (for want of its lease
        first: an attempt without it was never this node's)."""
        lease, self._lease = self._lease, None
        if lease is not None:
            try:
                self._uploads.confirm_lease(lease)
            except (Refusal, StorageFault) as lease_failure:
                exc = lease_failure
        self._uploads.attempt_failed(self._upload, self._peer, self._per_request, self._last, exc)
        refused = Refused.of(exc, self._aborting())
        self._refused = refused
        return refused
