"""Receiving one file over 828 packets: sequence checks, decryption, cksum.

Sans-I/O: the caller feeds the packet events of one file (docs/PROTOCOL.md, 828
details) and gets plaintext chunks back to write wherever it likes; at the end
it reads the file's cksum and size. Nothing is buffered but the cipher's last
block, so a packet or a file of any size streams through.

Variants handled here (docs/PROTOCOL.md, "Variants that real clients send"):

4. The last packet may be zero-filled past ``content_size``: the stream is cut
   there, the fill must be zeros and no longer than the longest packet of the
   file (or :data:`MAX_ZERO_FILL`).
5. ``packet_number`` and ``total_packets`` may come swapped; on the first
   packet the total is the larger field, and the order found there holds for
   the whole file.
6. Each packet may be its own CBC stream: recognised on the first packet
   (more than one packet and ``content_size`` equal to this packet's content
   length). Then ``content_size`` is per packet, each packet is decrypted and
   its padding checked on its own, and the plaintext must add up to
   ``orig_file_size``.

Every failure raises :class:`RemoteProtocolError` (answer 1607, connection
kept: the framing is intact). A ciphertext that does not decrypt to exactly
``orig_file_size`` bytes (bad padding, a length that is not whole blocks, or
a plaintext of another size, in every layout) raises its subclass
:class:`DecryptionFailed`, always with the same text (docs/HOSTILE.md D3): the
server counts these, since each one answers a guess about the key.
"""

from __future__ import annotations

from dataclasses import dataclass

from .buffer import BytesLike
from .cksum import FileSums
from .codes import AES_BLOCK_SIZE, MAX_UINT32
from .crypto import CbcDecryptor, padded_size
from .errors import CryptoError, LocalProtocolError, RemoteProtocolError
from .events import FilePacketStarted
from .names import NameField

__all__ = [
    "MAX_ZERO_FILL",
    "DecryptionFailed",
    "IncomingFile",
    "PacketOrder",
    "ReceivedFile",
    "is_first_packet",
    "most_packet_content",
]

#: Zero fill accepted past ``content_size`` on the last packet when no earlier
#: packet was longer (a one-packet file sent in a fixed-size buffer).
MAX_ZERO_FILL = 64 * 1024
#: The one text of every decryption failure (padding, length, anything).
DECRYPTION_FAILED = "decryption failed"


def most_packet_content(content_size: int, *, single: bool) -> int:
    """The most content a packet of a file of ``content_size`` can carry (``single``: its only one).

    A packet carries at most ``content_size`` bytes of ciphertext (the file's,
    or its own in variant 6); only the last packet of a file may carry zero
    fill past it (variant 4), no longer than the file's longest packet (itself
    at most ``content_size``) or :data:`MAX_ZERO_FILL`, and a file of one packet
    has no other packet. Whatever is longer can never be received: the
    decoder refuses it before reading it.
    """
    fill = MAX_ZERO_FILL if single else max(content_size, MAX_ZERO_FILL)
    return content_size + fill


class DecryptionFailed(RemoteProtocolError):
    """The ciphertext is not an encryption of ``orig_file_size`` bytes under the key."""

    def __init__(self) -> None:
        super().__init__(DECRYPTION_FAILED, close=False)


def _refuse(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, close=False)


def is_first_packet(packet: FilePacketStarted) -> bool:
    """Whether a packet opens a file: (1, N) or, swapped, (N, 1)."""
    return min(packet.packet_number, packet.total_packets) == 1


@dataclass(frozen=True)
class PacketOrder:
    """Where a file's packet number and total are (variant 5), and its total.

    Learnt from the first packet, where the total is the larger field, and
    held for the whole file: the one place that says which packet is which.
    """

    total: int
    swapped: bool

    @classmethod
    def of_packet(cls, packet: FilePacketStarted) -> PacketOrder | None:
        """The order a packet sets if it opens a file (:func:`is_first_packet`), else None."""
        if not is_first_packet(packet):
            return None  # a zero field is never a first packet either: min() is not 1
        return cls(
            total=max(packet.packet_number, packet.total_packets),
            swapped=packet.packet_number > packet.total_packets,
        )

    @classmethod
    def of_first(cls, first: FilePacketStarted) -> PacketOrder:
        """The order a first packet sets.

        Raises:
            RemoteProtocolError: not a first packet (or a zero field).
        """
        order = cls.of_packet(first)
        if order is None:
            raise _refuse(
                f"first packet must be number 1, got"
                f" {first.packet_number}/{first.total_packets}"
            )
        return order

    def position(self, packet: FilePacketStarted) -> tuple[int, int]:
        """A packet's (number, total) in this file's field order."""
        number, total = packet.packet_number, packet.total_packets
        return (total, number) if self.swapped else (number, total)

    def is_last(self, packet: FilePacketStarted) -> bool:
        """Whether a packet's fields name the file's last packet (or beyond it)."""
        return self.position(packet)[0] >= self.total


@dataclass(frozen=True)
class ReceivedFile:
    """What a complete upload gave: the 1603 fields, both CRCs and the plaintext size."""

    cksum: int
    #: zlib's CRC-32 of the plaintext (docs/EDITIONS.md, variant 5), if asked for.
    crc32: int | None
    content_size: int
    plain_size: int
    file_name: NameField


class IncomingFile:
    """One file being received: built on its first packet, fed the rest.

    Built from the first packet and the :class:`PacketOrder` the caller found
    in it (once: the caller needed it to tell a first packet from a further
    one). Use: ``receive(chunk)`` and ``end_packet()`` for the first packet, then
    ``start_packet(event)``, ``receive``… ``end_packet()`` for each further
    one, until ``done``; then read ``result``. Each call returns plaintext to
    store, in order.

    Raises (every method):
        RemoteProtocolError: the packets break docs/PROTOCOL.md or docs/HOSTILE.md D1/D2,
            or the ciphertext does not decrypt.
        LocalProtocolError: the caller fed events out of order.
    """

    def __init__(
        self,
        aes_key: bytes,
        first: FilePacketStarted,
        order: PacketOrder,
        *,
        max_content_size: int = MAX_UINT32,
        crc32: bool = False,
    ) -> None:
        if order.position(first) != (1, order.total):
            raise LocalProtocolError("the order given is not the first packet's")
        self.order = order
        self._aes_key = aes_key
        self._total = self.order.total
        self._name = first.file_name.text
        #: None for a file sent in one request (docs/EDITIONS.md): the
        #: plaintext's size is then what the padding says.
        self._orig_size = first.orig_file_size
        self._content_size = first.content_size
        self._per_packet = self._total > 1 and first.content_size == first.bytes_in_packet
        #: The most plaintext the file can have.
        self._plain_bound = first.content_size - 1
        if self._orig_size is None:
            if not first.content_size or first.content_size % AES_BLOCK_SIZE:
                raise DecryptionFailed()
            if first.content_size > max_content_size:
                raise _refuse(f"content_size {first.content_size} is over the limit")
        elif self._per_packet:
            self._plain_bound = self._orig_size
            if self._orig_size > max_content_size:
                raise _refuse(f"orig_file_size {self._orig_size} is over the limit")
        else:
            if first.content_size != padded_size(self._orig_size):
                raise _refuse(
                    f"content_size {first.content_size} does not fit"
                    f" orig_file_size {first.orig_file_size} under PKCS#7"
                )
            if first.content_size > max_content_size:
                raise _refuse(f"content_size {first.content_size} is over the limit")
        self._decryptor = CbcDecryptor(aes_key)
        self._sums = FileSums(zlib=crc32)
        self._received = 0
        self._next = 1
        self._longest_packet = 0
        self._field = first.file_name
        self._in_packet = False
        self._packet_left = 0
        self._cipher_left = 0
        self._is_last = False
        self._done = False
        self._begin(first, 1)

    # -- what the caller may ask ----------------------------------------------

    @property
    def file_name(self) -> bytes:
        """The file name's text, as the first packet gave it."""
        return self._name

    @property
    def total_packets(self) -> int:
        """How many packets the file has (after undoing variant 5)."""
        return self._total

    @property
    def next_packet(self) -> int:
        """The number of the packet expected next."""
        return self._next

    @property
    def per_packet(self) -> bool:
        """Whether each packet is its own CBC stream (variant 6)."""
        return self._per_packet

    @property
    def max_plain_size(self) -> int:
        """An upper bound of the plaintext size (for disk-space checks)."""
        return self._plain_bound

    @property
    def max_cipher_size(self) -> int:
        """An upper bound of the ciphertext the file carries (its zero fill aside): its
        content_size, or, where each packet is encrypted on its own, its plaintext's bound
        and a padding per packet."""
        if self._per_packet:
            return min(self._plain_bound + AES_BLOCK_SIZE * self._total, MAX_UINT32)
        return self._content_size

    @property
    def done(self) -> bool:
        """Whether the last packet was received and the file checked."""
        return self._done

    @property
    def result(self) -> ReceivedFile:
        """The cksum and sizes of the complete file.

        Raises:
            LocalProtocolError: the file is not complete.
        """
        if not self._done:
            raise LocalProtocolError("the file is not complete")
        return ReceivedFile(
            cksum=self._sums.cksum,
            crc32=self._sums.crc32,
            content_size=self._received,
            plain_size=self._sums.length,
            file_name=self._field,
        )

    # -- feeding --------------------------------------------------------------

    def start_packet(self, packet: FilePacketStarted) -> None:
        """Start a further packet of this file (not the first one)."""
        if self._in_packet or self._done:
            raise LocalProtocolError("a packet started while another is open")
        number, total = self.order.position(packet)
        if total != self._total:
            raise _refuse(f"total_packets changed from {self._total} to {total}")
        if number != self._next:
            raise _refuse(f"packet {number} out of order, expected {self._next}")
        if packet.file_name.text != self._name:
            raise _refuse("file name changed in the middle of a file")
        if packet.orig_file_size != self._orig_size:
            raise _refuse("orig_file_size changed in the middle of a file")
        if not self._per_packet and packet.content_size != self._content_size:
            raise _refuse("content_size changed in the middle of a file")
        self._field = packet.file_name
        self._begin(packet, number)

    def receive(self, data: BytesLike) -> BytesLike:
        """Take a piece of the current packet's content; return its plaintext.

        The plaintext may be a view of the decryptor's buffer, valid until the
        next call: write it out before then.
        """
        cipher = self._take(data)
        if not cipher:
            return b""
        plain = self._decryptor.update(cipher)
        self._account(plain)
        return plain

    @staticmethod
    def most_plain(size: int) -> int:
        """Bytes of room :meth:`receive_into` needs for ``size`` bytes of content."""
        return CbcDecryptor.most_output(size)

    @staticmethod
    def most_content(room: int) -> int:
        """Bytes of content whose plaintext :meth:`receive_into` surely fits in ``room``
        bytes (the inverse of :meth:`most_plain`; 0 if none)."""
        return CbcDecryptor.most_input(room)

    def receive_into(self, data: BytesLike, out: memoryview) -> int:
        """Take a piece of the current packet's content; decrypt it into ``out`` (at
        least :meth:`most_plain` bytes) and return how many of its first bytes are
        plaintext (the rest is scratch): no copy between the cipher and the caller's
        buffer.
        """
        cipher = self._take(data)
        if not cipher:
            return 0
        count = self._decryptor.update_into(cipher, out)
        self._account(out[:count])
        return count

    def end_packet(self) -> bytes:
        """End the current packet; return the plaintext it still held."""
        if not self._in_packet or self._packet_left:
            raise LocalProtocolError("packet ended before its content")
        self._in_packet = False
        tail = b""
        if self._per_packet or self._is_last:
            try:
                tail = self._decryptor.finalize()
            except CryptoError:
                raise DecryptionFailed() from None
            self._account(tail)
        if self._is_last:
            if self._orig_size is not None and self._sums.length != self._orig_size:
                raise DecryptionFailed()
            self._done = True
        else:
            self._next += 1
        return tail

    # -- inside ---------------------------------------------------------------

    def _take(self, data: BytesLike) -> BytesLike:
        """The ciphertext of a piece of content (the zero fill past content_size checked
        and dropped)."""
        if not self._in_packet or len(data) > self._packet_left:
            raise LocalProtocolError("content outside of a packet's length")
        self._packet_left -= len(data)
        take = min(len(data), self._cipher_left)
        if take < len(data):
            fill = data[take:]
            if bytes(fill).count(0) != len(fill):
                raise _refuse("bytes past content_size that are not zero fill")
            data = data[:take]
        self._cipher_left -= take
        self._received += take
        return data

    def _begin(self, packet: FilePacketStarted, number: int) -> None:
        length = packet.bytes_in_packet
        self._is_last = number == self._total
        if self._per_packet:
            self._check_own_stream(packet, number)
            self._decryptor = CbcDecryptor(self._aes_key)
            cipher = length
        else:
            remaining = self._content_size - self._received
            if length <= remaining:
                if self._is_last and length < remaining:
                    raise _refuse(
                        f"last packet short: {remaining - length} bytes of"
                        f" content_size missing"
                    )
                cipher = length
            else:
                fill = length - remaining
                if not self._is_last or fill > max(self._longest_packet, MAX_ZERO_FILL):
                    raise _refuse("packets add up to more than content_size")
                cipher = remaining
        self._longest_packet = max(self._longest_packet, length)
        self._packet_left = length
        self._cipher_left = cipher
        self._in_packet = True

    def _check_own_stream(self, packet: FilePacketStarted, number: int) -> None:
        """Variant 6: this packet's own content_size, a whole CBC stream."""
        length = packet.bytes_in_packet
        if packet.content_size != length:
            raise _refuse("content_size must equal the packet's content length")
        if not length or length % AES_BLOCK_SIZE:
            raise DecryptionFailed()
        bound = self._plain_bound + AES_BLOCK_SIZE * number
        if self._received + length > min(bound, MAX_UINT32):
            raise _refuse("more ciphertext than orig_file_size can need")

    def _account(self, plain: BytesLike) -> None:
        self._sums.update(plain)
        if self._per_packet and self._sums.length > self._plain_bound:
            raise DecryptionFailed()
