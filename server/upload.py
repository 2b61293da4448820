"""A file being received, from its first packet to the client's verdict: one owner.

Each client id has at most one upload in progress per file name (and at most
``max_uploads_per_client`` at once, pending versions included: each holds a
blob under its own key), and one complete upload per file name
waiting for its verdict, kept here rather than on a connection: a
per-request client (docs/PROTOCOL.md, variant 7) sends each 828 and its 900
on a new connection, so an upload outlives the connection that started it.
An :class:`~server.phases.Upload` is always in exactly one phase, one class
each (server/phases.py, where the one table of the moves between them is):

:class:`Receiving`
    Packets are arriving; :class:`~protocol.incoming.IncomingFile` checks
    their order (variant 5), the zero-filled last packet (variant 4) and
    per-packet encryption (variant 6), decrypts and sums them, and the
    plaintext is written under the upload's blob key. ``streaming`` is the
    connection inside one of its packets right now; ``owner`` is a one-connection client's
    connection, kept between packets (if it closes mid-file, the upload is
    dropped). It lives only while it progresses: its deadline is
    ``message_deadline`` after the last content byte, and no later than the
    start plus ``message_deadline`` plus the bytes received at
    ``min_content_rate``. Requests that are not its packets never extend it,
    so the disk space it reserves cannot be held by an upload that does not
    send.
:class:`Failed`
    The attempt was refused; its remaining packets are dropped without a
    reply until its last packet, a new first packet, or its deadline, so
    that a one-connection client gets one 1607 per attempt and stays in step.
:class:`Installed`
    The last packet came, and it was the name's first upload: it is the
    stored file (Verified false), waiting for the verdict.
:class:`Pending`
    The last packet came for a name already stored: the *pending version*
    waits as a sealed blob (the row's pending pointer) and replaces the stored
    file only at the 900 of the client holding the same key (the
    pending-version rule). 901, 902, a new key, the owner connection's close
    or ``idle_timeout`` discard it, and the stored file stays as it was.
:class:`GivenUp`
    A pending version discarded by 901 or 902; it still takes a 902.

Verdicts (900/901/902) apply only to an upload completed under the key in
use, never to a file name alone. A first packet while another attempt of the
same client and file name is receiving, and not on that attempt's own
connection, is refused, and the attempt in progress goes on: uploads are
serialised per client and file name (docs/HOSTILE.md D7), so the stored file
is always one complete upload. Across the nodes sharing the metadata, the
receiving upload holds a lease (server/storage/coordination.py), taken at
its first packet and let go when it stops receiving (failed, discarded:
when it stops progressing, at its deadline), or, once complete, when the
round that records it is over (its row committed, or lost): another node's
first packet of the same client and file name is refused meanwhile, and
after it finds the row, so that its upload is a new version. A node that
lost the lease meanwhile (its coordination connection broke, and another
node took it over) cannot record its upload: the fence refuses it (1607;
server/storage/postgres/fence.py). Files
of other names may stream at the same time on other connections (a client's
``--jobs``); a new first packet on a connection that owns an upload in
progress starts that client over, and the upload it replaces is dropped.

Beside this module: server/packets.py receives one 828 (an
:class:`~server.packets.IncomingPacket`, whose end is a
:data:`~server.packets.PacketEnd` value, a refusal included);
server/admission.py checks a first packet before its upload starts;
server/installs.py ends a loop round and publishes its uploads. The
order in which a complete upload is written is :mod:`server.storage.commit`'s.
"""

from __future__ import annotations

import logging

from protocol import RemoteProtocolError
from protocol.cksum import CrcFlavour
from protocol.events import FilePacketStarted
from protocol.incoming import DecryptionFailed, IncomingFile, PacketOrder, ReceivedFile
from protocol.printable import quoted

from . import crashpoints
from .admission import Admission
from .blobport import BlobPort, BufferedWriter, QueuedWriter
from .budget import DecryptionBudget
from .errors import InternalFault, Refusal, StorageFault
from .outcome import InstallTicket
from .installs import RoundInstalls
from .limits import Limits
from .lograte import LogLimiter
from .packets import DroppedPacket, FileComplete, IncomingPacket, Refused, StreamingPacket
from .peer import Peer
from .phases import (
    Complete,
    CrcBad,
    Failed,
    GivenUp,
    Installed,
    Pending,
    Phase,
    Receiving,
    Upload,
)
from .shares import RoundShares
from .storage import BlobStore, BlobWriter, FileRow, MetadataStore, commit, new_blob_key
from .storage.coordination import (
    Answered,
    Coordination,
    PendingTake,
    UploadFence,
    UploadLease,
)
from .timers import Timers

log = logging.getLogger(__name__)

#: Why a first packet is refused when another node holds its upload's lease.
LEASED_ELSEWHERE = "another upload of this client and file is in progress (on another node)"


class Uploads:
    """The uploads of every client: at most one receiving per client id and file name."""

    def __init__(
        self,
        timers: Timers,
        limits: Limits,
        metadata: MetadataStore,
        blobs: BlobStore,
        budget: DecryptionBudget,
        log_limiter: LogLimiter,
        shares: RoundShares,
        coordination: Coordination,
        port: BlobPort | None = None,
        fence: UploadFence | None = None,
    ) -> None:
        #: Where blob writes go: a worker thread (server/blobport.py).
        self.port = port if port is not None else BlobPort()
        self._timers = timers
        self._log_limiter = log_limiter
        #: Files made durable are charged to the address group they came from.
        self._shares = shares
        self._limits = limits
        self._metadata = metadata
        self._blobs = blobs
        self._budget = budget
        #: Where the leases of receiving uploads are taken, for every node to see.
        self._coordination = coordination
        #: The check, in the transaction that records a complete upload, that this node
        #: still holds its lease (None: the coordination needs none).
        self._fence = fence
        #: The receiving upload that holds each lease this node took.
        self._leases: dict[tuple[bytes, bytes], Upload] = {}
        #: The leases of the uploads completed in this round, with the blob each names:
        #: let go once the round is over (:meth:`round_over`).
        self._round_leases: dict[tuple[bytes, bytes], tuple[Upload, UploadLease]] = {}
        #: What a first packet is checked against before its upload starts.
        self._admission = Admission(limits, metadata, blobs, budget, self)
        self._uploads: dict[bytes, dict[bytes, Upload]] = {}
        self._complete: dict[bytes, dict[bytes, Upload]] = {}
        #: Connections to the uploads they own or stream (closing one is O(its uploads)).
        self._held: dict[Peer, set[Upload]] = {}
        #: The round's uploads, waiting to be published (server/installs.py).
        self.installs = RoundInstalls(
            metadata, blobs, self.discard, self._log_level, timers, self.round_over
        )
        #: The clients whose last answer got a "CRC bad", and what that
        #: attempt was (docs/EDITIONS.md, variant 5): their next answer's
        #: flavour depends on it. The others get the flavour they confirmed last.
        self._crc_bad: dict[bytes, CrcBad] = {}

    def __len__(self) -> int:
        return sum(len(names) for names in self._uploads.values()) + sum(
            len(names) for names in self._complete.values()
        )

    def clock(self) -> float:
        """The loop's clock."""
        return self._timers.clock()

    def get(self, client_id: bytes, file_name: bytes) -> Upload | None:
        """The client's upload of ``file_name`` in progress (receiving or failed), if any."""
        return self._uploads.get(client_id, {}).get(file_name)

    def in_progress(self, client_id: bytes) -> list[Upload]:
        """The client's uploads in progress, of every name."""
        return list(self._uploads.get(client_id, {}).values())

    def receiving(self, peer: Peer) -> bool:
        """Whether the connection streams an upload's content now (between its packets)."""
        return any(isinstance(upload.phase, Receiving) for upload in self._held.get(peer, ()))

    def storage_behind(self, peer: Peer) -> QueuedWriter | None:
        """The blob a connection streams, if its writes are behind (server/blobport.py)."""
        for upload in self._held.get(peer, ()):
            phase = upload.phase
            if isinstance(phase, Receiving) and isinstance(phase.writer, QueuedWriter):
                if phase.writer.behind:
                    return phase.writer
            if isinstance(phase, Receiving) and isinstance(phase.writer, BufferedWriter):
                if phase.writer.behind:
                    return phase.writer.queued
        return None

    def holding_blobs(self, client_id: bytes) -> list[Upload]:
        """The client's uploads that hold a blob: in progress, or pending versions."""
        waiting = self._complete.get(client_id, {}).values()
        return self.in_progress(client_id) + [
            upload for upload in waiting if isinstance(upload.phase, Pending)
        ]

    def live_blob_keys(self) -> set[str]:
        """The keys of the blobs uploads write or hold: never garbage (server/storage/sweep.py).

        Other nodes' uploads being received count too (their leases name
        their blobs): a blob store the nodes share holds them.

        Raises:
            StorageFault: the coordination cannot tell (nothing is swept then).
        """
        keys = self._coordination.live_blobs()
        for names in (*self._uploads.values(), *self._complete.values()):
            for upload in names.values():
                if isinstance(upload.phase, (Receiving, Pending)):
                    keys.add(upload.phase.writer.key)
        return keys

    def completed(self, client_id: bytes, file_name: bytes) -> Upload | None:
        """The client's complete upload of ``file_name`` waiting for verdicts, if any."""
        return self._complete.get(client_id, {}).get(file_name)

    def last_completed(self, client_id: bytes) -> Upload | None:
        """The client's upload completed last and waiting for its verdict, if any."""
        waiting = self._complete.get(client_id, {}).values()
        return max(waiting, key=lambda upload: upload.completed, default=None)

    def reserved_bytes(self, group: str | None = None) -> int:
        """Disk bytes the uploads in progress may still need (from one address group, or all)."""
        return sum(
            upload.reserved
            for names in self._uploads.values()
            for upload in names.values()
            if group is None or upload.group == group
        )

    # -- packets (server/packets.py) ----------------------------------------------

    def start_over(self, client_id: bytes, peer: Peer) -> None:
        """A first packet on a connection drops the uploads in progress it owns.

        A one-connection client sends one file at a time: a new file on its
        connection means it left the one before (as before the client could
        send several at once).
        """
        for upload in self.in_progress(client_id):
            if upload.owner is peer:
                self.discard(upload, "replaced by a new upload")

    def begin(
        self,
        client_id: bytes,
        aes_key: bytes,
        peer: Peer,
        per_request: bool,
        packet: FilePacketStarted,
        order: PacketOrder,
    ) -> IncomingPacket:
        """A first packet: admit it (server/admission.py), start its blob.

        Raises nothing: a refusal is the packet's end (:class:`Refused`).
        """
        try:
            self._admission.check_pending_bound(client_id, packet.file_name.text)
        except Refusal as exc:
            return DroppedPacket(Refused.of(exc))

        preferred = self._preferred_flavour(client_id)
        crc_bad = self._crc_bad.get(client_id)
        flavour = preferred if crc_bad is None else crc_bad.flavour

        def upload(phase: Phase) -> Upload:
            return Upload(
                client_id, peer.address, peer.group, aes_key, packet.file_name.text, order,
                self.clock(),
                phase, flavour=flavour, preferred=preferred, after_crc_bad=crc_bad,
            )

        writer: BlobWriter | None = None
        try:
            self._admission.check_budget(client_id, aes_key)
            incoming = IncomingFile(
                aes_key,
                packet,
                order,
                max_content_size=self._limits.max_content_size,
                # The answer's CRC only, in the one pass: after a 901 both,
                # as the file itself settles which one goes (CrcBad).
                crc32=flavour is CrcFlavour.ZLIB or crc_bad is not None,
            )
            self._admission.check_room(
                client_id, packet.file_name.text, peer, incoming.max_plain_size
            )
            writer = self._blobs.begin(client_id, new_blob_key())
            if self._blobs.slow_writes:
                writer = self.port.wrap(writer)
            elif self._blobs.buffered_writes:  # room for its content and a piece's scratch
                writer = self.port.buffer(writer, incoming.most_plain(incoming.max_cipher_size))
            lease = self._take_lease(client_id, packet.file_name.text, writer)
        except (Refusal, RemoteProtocolError, StorageFault) as exc:
            if order.total > 1:
                # Swallow the rest of this attempt quietly: one 1607 per attempt.
                marker = upload(Failed())
                self._add(marker)
                self.packet_done(marker, peer, per_request)
            aborting = None if writer is None else self.installs.aborting(writer)
            return DroppedPacket(Refused.of(exc, aborting))
        phase = Receiving(incoming, writer)
        started = upload(phase)
        self._leases[(client_id, started.file_name)] = started
        self._add(started)
        self.packet_started(started, peer)
        return StreamingPacket(self, started, peer, per_request, phase, order.total == 1, lease)

    def attempt_failed(
        self, upload: Upload, peer: Peer, per_request: bool, last: bool, exc: Exception
    ) -> None:
        """An attempt is refused: drop its file; swallow its further packets."""
        if isinstance(exc, DecryptionFailed):
            self._budget.record(upload.client_id, upload.aes_key, upload.address)
        if self.get(upload.client_id, upload.file_name) is not upload:
            return  # discarded meanwhile
        if last:
            self.discard(upload, f"failed: {exc}")
            return
        log.debug("%s: upload for %s failed: %s", upload.address, upload.client_id.hex(), exc)
        self._drop_blob(upload)
        self._release_lease(upload)
        upload._enter(Failed())
        self.packet_done(upload, peer, per_request)

    def packet_started(self, upload: Upload, peer: Peer) -> None:
        """A packet of the upload starts on ``peer``: it streams there until the packet ends."""
        self._set_holders(upload, owner=upload.owner, streaming=peer)

    def packet_done(self, upload: Upload, peer: Peer, per_request: bool) -> None:
        """A packet ended: the connection keeps the upload, or it waits for the next one."""
        self._set_holders(upload, owner=None if per_request else peer, streaming=None)

    def complete(self, upload: Upload, phase: Receiving, owner: Peer | None) -> FileComplete:
        """The last packet is in: install a first upload, keep a later one pending; the file
        is sealed at the round's end, before any publish (server/installs.py).

        A first upload's row goes into the round; its blob takes its name once
        the round is durable (:meth:`RoundInstalls.round_committed`), before its answer
        goes out.

        Raises:
            StorageFault: the file could not be kept (the caller discards it); LeaseLost:
                this node no longer holds the upload's lease (another node may have
                taken it over), and records nothing.
        """
        result = phase.incoming.result
        self._shares.file_made_durable(upload.group)
        queued = isinstance(phase.writer, QueuedWriter)
        if isinstance(phase.writer, QueuedWriter):
            phase.writer.seal_later()  # the answer waits for it (server/installs.py)
        elif isinstance(phase.writer, BufferedWriter):
            phase.writer.complete()  # what it holds is written by the seal
        # else the round worker seals it at the round's end (server/installs.py)
        previous, path_name = self._record(upload, phase.writer.key, result)
        awaits: InstallTicket | None
        if previous is None:
            awaits = self.installs.wait(upload, phase.writer, path_name)
            if not queued:
                self.installs.seal(upload, phase.writer, first=True)
            complete: Complete = Installed(result, path_name)
            stored = f"stored as {path_name}"
        else:
            if isinstance(phase.writer, QueuedWriter):
                awaits = self.installs.wait_sealed(upload, phase.writer)
            else:
                awaits = self.installs.seal(upload, phase.writer, first=False)
            complete = Pending(result, path_name, phase.writer)
            stored = f"kept as a pending version of {path_name} until 900"
        self._keep_lease_for_the_round(upload, phase.writer.key)
        self._forget_in_progress(upload)
        earlier = self.completed(upload.client_id, upload.file_name)
        if earlier is not None:
            self.discard(earlier, "replaced by a newer upload of the name")
        self._complete.setdefault(upload.client_id, {})[upload.file_name] = upload
        upload._enter(complete)
        upload.completed = self.clock()
        self._set_holders(upload, owner=owner, streaming=None)
        self._arm(upload)
        elapsed = upload.completed - upload.started
        if upload.after_crc_bad is not None:
            upload.flavour = upload.after_crc_bad.flavour_for(result)
        crc = result.crc32 if upload.flavour is CrcFlavour.ZLIB else result.cksum
        if crc is None:
            raise InternalFault(f"the {upload.flavour.value} of the answer was not computed")
        return FileComplete(
            upload.client_id,
            result,
            f"file {quoted(upload.file_name)} {stored}: {result.plain_size} bytes"
            f" in {elapsed:.3f} s, answered with its {upload.flavour.value}",
            crc,
            awaits,
        )

    def _record(
        self, upload: Upload, blob_key: str, result: ReceivedFile
    ) -> tuple[FileRow | None, str]:
        """Write the complete upload's row into the round (:meth:`_write_row`), behind the
        fence if there is one: the fence, the read and the writes in one transaction.

        Raises:
            LeaseLost: this node no longer holds the upload's lease (nothing is written).
            StorageFault: the row could not be written.
        """
        if self._fence is None:
            return self._write_row(upload, blob_key, result)
        with self._metadata.transaction():
            self._fence(UploadLease(upload.client_id, upload.file_name, blob_key))
            return self._write_row(upload, blob_key, result)  # its read carries the fence

    def _write_row(
        self, upload: Upload, blob_key: str, result: ReceivedFile
    ) -> tuple[FileRow | None, str]:
        """A first upload's row, or a later one's pending pointer (server/storage/commit.py):
        the row as it was, and the path name the content takes.

        Raises:
            StorageFault: the row could not be written.
        """
        previous, recorded = self._metadata.file_row_and_path_names(
            upload.client_id, upload.file_name
        )
        if previous is not None:
            commit.keep_pending(self._metadata, upload.client_id, upload.file_name, blob_key)
            return previous, previous.path_name
        path_name = self._blobs.new_path_name(
            upload.client_id, upload.file_name, blob_key, recorded
        )
        commit.record_first(
            self._metadata, upload.client_id, upload.file_name, path_name, blob_key,
            _content(result),
        )
        return None, path_name

    def _preferred_flavour(self, client_id: bytes) -> CrcFlavour:
        client = self._metadata.client_by_id(client_id)
        try:
            return CrcFlavour(client.crc) if client is not None else CrcFlavour.CKSUM
        except ValueError:
            return CrcFlavour.CKSUM

    # -- verdicts ----------------------------------------------------------------

    def confirm(self, upload: Upload) -> str:
        """900: a pending version replaces the stored file; the file is verified.

        A pending version's pointers are swapped in the round; it is published
        at the round's end (server/installs.py), its 1604 held until then. A
        publish that failed there is owed: retried on a timer, or by the next 900.

        Raises:
            Refusal: the upload was given up (901/902).
            StorageFault: the commit failed (a retried 900 completes it).
        """
        phase = upload.phase
        if isinstance(phase, GivenUp):
            raise Refusal("nothing to verify: this upload was given up (901/902)")
        crashpoints.reached("verify.before_commit")
        if isinstance(phase, Pending):
            self.installs.seal_now(phase.writer)  # completed in this round: before the swap
            self._shares.file_made_durable(upload.group)
            commit.confirm_pending(
                self._metadata, upload.client_id, upload.file_name, phase.writer.key,
                _content(phase.result),
            )
            self.installs.wait_confirmed(
                upload, phase.writer, phase.path_name, phase.result.plain_size
            )
            upload._enter(Installed(phase.result, phase.path_name))
            detail = "verified; replaces the stored version"
        else:
            with self._metadata.transaction():
                self._metadata.set_verified(upload.client_id, upload.file_name, True)
            self.installs.publish_owed(upload)
            detail = "verified"
        crashpoints.reached("verify.committed")
        self._crc_bad.pop(upload.client_id, None)
        if upload.flavour is not upload.preferred:
            with self._metadata.transaction():
                self._metadata.set_crc(upload.client_id, upload.flavour.value)
            detail += f"; the client's CRC is {upload.flavour.value} from now on"
        return detail

    def retry(self, upload: Upload) -> None:
        """901: the file comes again, its answer's CRC settled by it (:class:`CrcBad`).

        A pending version goes.
        """
        phase = upload.phase
        if isinstance(phase, (Installed, Pending, GivenUp)):
            result = phase.result
            crc_bad = CrcBad(result.plain_size, result.cksum, upload.flavour)
            self._crc_bad[upload.client_id] = crc_bad
        self._give_up(upload, "the client's cksum differed (901)")

    def abandon(self, upload: Upload) -> str:
        """902: an installed upload stays unverified; a pending one goes.

        Raises:
            StorageFault: the commit failed.
        """
        crashpoints.reached("verify.before_commit")
        if isinstance(upload.phase, (Pending, GivenUp)):
            self._give_up(upload, "the client gave up (902)")
            detail = "given up; the stored version stays as it was"
        else:
            with self._metadata.transaction():
                self._metadata.set_verified(upload.client_id, upload.file_name, False)
            detail = "kept unverified"
        crashpoints.reached("verify.committed")
        self._crc_bad.pop(upload.client_id, None)
        return detail

    def _give_up(self, upload: Upload, reason: str) -> None:
        phase = upload.phase
        if isinstance(phase, Pending):
            log.log(
                self._log_level(upload),
                "%s: pending version of %s for client %s discarded: %s",
                upload.address, quoted(upload.file_name), upload.client_id.hex(), reason,
            )
            self._discard_pending(upload, phase)
            upload._enter(GivenUp(phase.result, phase.path_name))

    # -- life cycle -------------------------------------------------------------

    def _log_level(self, upload: Upload) -> int:
        """INFO for a line about an upload, DEBUG past its address group's budget."""
        return self._log_limiter.level(log, upload.group, logging.INFO)

    def _add(self, upload: Upload) -> None:
        """A new upload (or failed marker), replacing the client's old one of the name."""
        old = self.get(upload.client_id, upload.file_name)
        if old is not None:
            self.discard(old, "replaced by a new upload")
        self._uploads.setdefault(upload.client_id, {})[upload.file_name] = upload
        self._arm(upload)

    def leased(self) -> list[UploadLease]:
        """Every upload lease this node holds (for the renewal)."""
        held = {key: lease for key, (_, lease) in self._round_leases.items()}
        held.update(
            ((client_id, file_name), UploadLease(client_id, file_name, upload.phase.writer.key))
            for (client_id, file_name), upload in self._leases.items()
            if isinstance(upload.phase, Receiving)
        )
        return list(held.values())

    def _keep_lease_for_the_round(self, upload: Upload, blob_key: str) -> None:
        """The upload is complete: its lease stays until its round is over.

        Until then another node would find no row for a first upload (the
        round is not committed), take the name for a second first upload,
        and the two would share one path name, the later row pointing at
        the other's content.
        """
        key = (upload.client_id, upload.file_name)
        if self._leases.get(key) is upload:
            del self._leases[key]
            self._round_leases[key] = (upload, UploadLease(*key, blob_key))

    def round_over(self, committed: bool) -> None:
        """The round is committed or lost: the leases of the uploads it completed go (a
        fence released them with the round's commit: :data:`UploadFence`), but for a name
        a new upload here holds again (its lease is taken now, naming its blob:
        :meth:`_take_lease` did not ask while the round held it)."""
        ended, self._round_leases = self._round_leases, {}
        released = committed and self._fence is not None
        for key, (upload, _) in ended.items():
            holder = self._leases.get(key)
            if holder is None:
                if not released:
                    self._let_go(upload)
            elif isinstance(holder.phase, Receiving):
                self._take_again(holder, holder.phase.writer)

    def _take_again(self, upload: Upload, writer: BlobWriter) -> None:
        """Take the lease of an upload receiving here for its blob; if it cannot be, the
        upload goes on, and the fence refuses its end (unless a renewal takes it)."""
        try:
            taken = self._coordination.take_upload(
                UploadLease(upload.client_id, upload.file_name, writer.key)
            )
        except StorageFault as exc:
            taken, why = False, str(exc)
        else:
            why = "another node holds it"
        if not taken:
            log.warning(
                "%s: upload of %s for client %s: its lease cannot be taken (%s)",
                upload.address, quoted(upload.file_name), upload.client_id.hex(), why,
            )

    def _take_lease(self, client_id: bytes, file_name: bytes, writer: BlobWriter) -> PendingTake:
        """Ask for the lease of the client's upload of ``file_name`` for a new attempt,
        without waiting: its first packet's end reads the answer (:meth:`confirm_lease`),
        the packet's content meanwhile going into ``writer``.

        A name whose upload completed here in this round is this node's already,
        checked by the fence, whose lock on it (server/storage/postgres/fence.py) a
        take would wait for until the round's end: it is not asked for again (the
        renewal names the new blob).

        Raises:
            StorageFault: the coordination cannot be asked (the writer is aborted).
        """
        if (client_id, file_name) in self._round_leases:
            return Answered(held=True)
        try:
            return self._coordination.begin_take_upload(
                UploadLease(client_id, file_name, writer.key)
            )
        except StorageFault:
            self.installs.abort(writer)
            raise

    @staticmethod
    def confirm_lease(lease: PendingTake) -> None:
        """The answer of :meth:`_take_lease`: this node holds the lease.

        Raises:
            Refusal: another node is receiving the upload.
            StorageFault: the coordination cannot tell.
        """
        if not lease.taken():
            raise Refusal(LEASED_ELSEWHERE)

    def _release_lease(self, upload: Upload) -> None:
        """The upload stops receiving: its lease goes (if it is the one holding it)."""
        key = (upload.client_id, upload.file_name)
        if self._leases.get(key) is not upload:
            return
        del self._leases[key]
        self._let_go(upload)

    def _let_go(self, upload: Upload) -> None:
        """Release the upload's lease in the coordination."""
        try:
            self._coordination.release_upload(upload.client_id, upload.file_name)
        except StorageFault as exc:  # it goes at the next renewal, or lapses
            log.warning(
                "%s: upload of %s for client %s: its lease stays until the next renewal: %s",
                upload.address, quoted(upload.file_name), upload.client_id.hex(), exc,
            )

    def _forget_in_progress(self, upload: Upload) -> None:
        self._release_lease(upload)
        names = self._uploads.get(upload.client_id)
        if names is not None and names.get(upload.file_name) is upload:
            del names[upload.file_name]
            if not names:
                del self._uploads[upload.client_id]

    def discard(self, upload: Upload, reason: str) -> None:
        """Forget an upload and delete its blob (a pending version included)."""
        self._forget_in_progress(upload)
        names = self._complete.get(upload.client_id)
        if names is not None and names.get(upload.file_name) is upload:
            del names[upload.file_name]
            if not names:
                del self._complete[upload.client_id]
        if upload.deadline_timer is not None:
            upload.deadline_timer.cancel()
            upload.deadline_timer = None
        if isinstance(upload.phase, (Receiving, Pending)):
            log.log(
                self._log_level(upload),
                "%s: upload of %s for client %s discarded: %s",
                upload.address, quoted(upload.file_name), upload.client_id.hex(), reason,
            )
        self._drop_blob(upload)
        self._set_holders(upload, owner=None, streaming=None)

    def discard_client(self, client_id: bytes, reason: str) -> None:
        """Drop the client's uploads, in progress and complete (its key changed)."""
        self._crc_bad.pop(client_id, None)
        for upload in [*self.in_progress(client_id), *self._complete.get(client_id, {}).values()]:
            self.discard(upload, reason)

    def close(self) -> None:
        """Drop every upload (shutdown); first uploads still waiting for their round too."""
        self.installs.close()
        for names in list(self._uploads.values()):
            for upload in list(names.values()):
                self.discard(upload, "server stopping")
        for names in list(self._complete.values()):
            for upload in list(names.values()):
                self.discard(upload, "server stopping")

    def held_by(self, peer: Peer) -> list[Upload]:
        """The uploads a connection holds (receiving, or waiting for its verdict)."""
        return list(self._held.get(peer, ()))

    def connection_closed(self, peer: Peer) -> None:
        """A connection ended: drop the uploads it held (cut in the middle)."""
        for upload in list(self._held.get(peer, ())):
            self.discard(upload, "connection closed in the middle of the file")

    # -- inside -----------------------------------------------------------------

    def _set_holders(self, upload: Upload, *, owner: Peer | None, streaming: Peer | None) -> None:
        for peer in (upload.owner, upload.streaming):
            if peer is not None and peer not in (owner, streaming):
                held = self._held.get(peer)
                if held is not None:
                    held.discard(upload)
                    if not held:
                        del self._held[peer]
        upload.owner, upload.streaming = owner, streaming
        for peer in (owner, streaming):
            if peer is not None:
                self._held.setdefault(peer, set()).add(upload)

    def _arm(self, upload: Upload) -> None:
        if upload.deadline_timer is not None:
            upload.deadline_timer.cancel()
        upload.deadline_timer = self._timers.call_at(
            upload.deadline(self._limits), lambda: self._deadline_reached(upload)
        )

    def _deadline_reached(self, upload: Upload) -> None:
        upload.deadline_timer = None
        current = self.get(upload.client_id, upload.file_name)
        if upload not in (current, self.completed(upload.client_id, upload.file_name)):
            return
        if self.clock() < upload.deadline(self._limits):
            self._arm(upload)  # it progressed meanwhile
            return
        receiving = isinstance(upload.phase, (Receiving, Failed))
        self.discard(upload, "no progress in time" if receiving else "no verdict in time")

    def _drop_blob(self, upload: Upload) -> None:
        phase = upload.phase
        if isinstance(phase, Receiving):
            self.installs.drop_seal(phase.writer)
            self.installs.abort(phase.writer)  # a refusal's answer waits for it
        elif isinstance(phase, Pending):
            self._discard_pending(upload, phase)
            upload._enter(GivenUp(phase.result, phase.path_name))

    def _discard_pending(self, upload: Upload, phase: Pending) -> None:
        """No row points at the pending version any more, and its blob goes."""
        self.installs.drop_seal(phase.writer)
        try:
            commit.discard_pending(
                self._metadata, phase.writer, upload.client_id, upload.file_name
            )
        except StorageFault as exc:
            log.warning(
                "%s: pending version of %s for client %s: its pointer stays until repair: %s",
                upload.address, quoted(upload.file_name), upload.client_id.hex(), exc,
            )


def _content(result: ReceivedFile) -> commit.Content:
    """What the file's row records of the plaintext stored: its size and cksum."""
    return commit.Content(size=result.plain_size, cksum=result.cksum)
