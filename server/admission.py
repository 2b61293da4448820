"""Whether a first packet may start an upload: the checks made before a byte is stored.

In the order they are made (server/packets.py):

1. **The pending-version bound.** A client holds at most
   ``max_uploads_per_client`` blobs of other names: uploads in progress
   and pending versions waiting for their 900.
2. **The decryption budget** (server/budget.py): a client with too many
   failed decryptions in the last hour uploads nothing.
3. **The quota** (``max_bytes_per_client``): the file's worst case beside
   what the client holds already.
4. **The disk**: the file's worst case within the free space above
   ``--min-free-disk``, less what uploads in progress may still need, and
   within the share of it of the file's address group
   (``--max-disk-share-per-address``).

Each refuses with a :class:`~server.errors.Refusal` (the disk's with its
subclass :class:`~server.errors.NoRoom`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from .budget import DecryptionBudget
from .errors import NoRoom, Refusal
from .limits import Limits, size_text
from .peer import Peer
from .phases import Pending, Receiving
from .storage import BlobStore, MetadataStore

if TYPE_CHECKING:
    from .upload import Upload

#: The disk room a first packet is checked against is told only to about
#: 1/64 of itself (6 bits): enough to accept what fits, too coarse to read
#: the free space, or others' uploads, byte by byte by probing sizes.
DISK_ROOM_PRECISION_BITS = 6


class HeldUploads(Protocol):
    """What admission reads of the uploads there are (server/upload.py's ``Uploads``)."""

    def holding_blobs(self, client_id: bytes) -> list[Upload]: ...
    def reserved_bytes(self, group: str | None = None) -> int: ...


class Admission:
    """The checks a first packet passes before its upload starts."""

    def __init__(
        self,
        limits: Limits,
        metadata: MetadataStore,
        blobs: BlobStore,
        budget: DecryptionBudget,
        uploads: HeldUploads,
    ) -> None:
        self._limits = limits
        self._metadata = metadata
        self._blobs = blobs
        self._budget = budget
        self._uploads = uploads

    def check_pending_bound(self, client_id: bytes, file_name: bytes) -> None:
        """Room for one more blob of the client's (``max_uploads_per_client``).

        Raises:
            Refusal: the client holds as many as it may, of other names.
        """
        held = self._uploads.holding_blobs(client_id)
        others = sum(other.file_name != file_name for other in held)
        if others >= self._limits.max_uploads_per_client:
            raise Refusal(
                "too many uploads of this client in progress (or pending versions"
                " waiting for their 900)"
            )

    def check_budget(self, client_id: bytes, aes_key: bytes) -> None:
        """The client may still upload (server/budget.py).

        Raises:
            Refusal: too many failed decryptions for this client.
            StorageFault: the counts cannot be read.
        """
        if self._budget.uploads_blocked(client_id, aes_key):
            raise Refusal("too many failed decryptions for this client in the last hour")

    def check_room(self, client_id: bytes, file_name: bytes, peer: Peer, need: int) -> None:
        """Room for a file of at most ``need`` bytes: the client's quota, then the disk.

        Raises:
            Refusal: over the client's quota, or its address's share of the disk.
            NoRoom: not enough room on the disk.
            StorageFault: the stored bytes or the free space cannot be read.
        """
        self._check_quota(client_id, file_name, need)
        self._check_disk(peer, need)

    def _check_quota(self, client_id: bytes, file_name: bytes, need: int) -> None:
        """Room for the file's worst case within the client's quota (``max_bytes_per_client``).

        What the client holds: its stored files, its pending versions and its
        other uploads in progress (each at its worst case). A new version of a
        stored name counts beside the stored one: both are on disk until its 900.

        Raises:
            Refusal: the upload could take the client over its quota.
            StorageFault: the stored bytes cannot be read.
        """
        quota = self._limits.max_bytes_per_client
        if not quota:
            return
        held = self._metadata.stored_bytes(client_id) + sum(
            bytes_held(upload)
            for upload in self._uploads.holding_blobs(client_id)
            if not (upload.file_name == file_name and isinstance(upload.phase, Receiving))
        )
        if held + need > quota:
            raise Refusal(
                f"over the client's quota: {held} bytes held, this file up to {need},"
                f" quota {quota}"
            )

    def _check_disk(self, peer: Peer, need: int) -> None:
        """Room for the file's worst case, within this address's share.

        The room is rounded down coarsely (:func:`coarse`), so that probing
        sizes tells a client the magnitude of the free space, not its bytes.

        Raises:
            NoRoom: not enough room on the disk.
            Refusal: not enough room within this address's share.
        """
        limits = self._limits
        free = self._blobs.room()
        if free is None:
            return  # a store that is unbounded, or cannot tell: nothing to check
        usable = free - limits.min_free_disk
        reserved = self._uploads.reserved_bytes()
        if need > coarse(usable - reserved):
            raise NoRoom(
                f"not enough disk space for this file: it may need {size_text(need)};"
                f" {size_text(free)} free, --min-free-disk {size_text(limits.min_free_disk)},"
                f" {size_text(reserved)} reserved by uploads in progress"
            )
        share = limits.max_disk_share_per_address
        if need > coarse(int(usable * share) - self._uploads.reserved_bytes(peer.group)):
            raise Refusal(
                f"not enough disk space for this file within this address's share of the"
                f" disk (--max-disk-share-per-address {share:g})"
            )


def bytes_held(upload: Upload) -> int:
    """Disk bytes an upload holds or may take: a pending version's, a receiving one's worst case."""
    if isinstance(upload.phase, Receiving):
        return upload.phase.incoming.max_plain_size
    if isinstance(upload.phase, Pending):
        return upload.phase.result.plain_size
    return 0


def coarse(amount: int) -> int:
    """``amount`` rounded down to 1/2**DISK_ROOM_PRECISION_BITS of its magnitude (0 if negative)."""
    if amount <= 0:
        return 0
    step = 1 << max(0, amount.bit_length() - 1 - DISK_ROOM_PRECISION_BITS)
    return amount - amount % step
