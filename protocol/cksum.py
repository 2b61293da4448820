"""The POSIX CRC of the Linux ``cksum`` command, at C speed; and zlib's CRC-32.

CRC-32, polynomial 0x04C11DB7, not reflected, initial value 0, over the data
and then over its length (least significant byte first, only as many bytes as
the length needs), complemented at the end (docs/PROTOCOL.md, "Checksum"). The CRC
register runs in anycrc's C code; this module adds the length and the
complement.

Some clients compute zlib's CRC-32 instead (reflected, 0xFFFFFFFF in and out,
no length appended): :class:`FileSums` keeps both while a file streams in, and
:class:`CrcFlavour` names which one an answer carries (docs/EDITIONS.md,
variant 5).
"""

from __future__ import annotations

import enum
import zlib

import anycrc

_POLYNOMIAL = 0x04C11DB7
_WIDTH = 32
_MASK = 2**_WIDTH - 1

# The bare register: no reflection, no final XOR, so that it can be resumed.
_CRC = anycrc.CRC(
    width=_WIDTH, poly=_POLYNOMIAL, init=0, refin=False, refout=False, xorout=0
)


def _length_bytes(length: int) -> bytes:
    """The length as cksum appends it: LSB first, no trailing zero bytes."""
    return length.to_bytes((length.bit_length() + 7) // 8, "little")


class Cksum:
    """Incremental cksum: ``update`` with chunks, then read ``value``."""

    def __init__(self) -> None:
        self._register = 0
        self._length = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Add the next bytes of the file."""
        if len(data):
            self._register = _CRC.calc(data, self._register)
            self._length += len(data)

    @property
    def length(self) -> int:
        """How many bytes went in so far."""
        return self._length

    @property
    def value(self) -> int:
        """The cksum of everything so far (what ``cksum FILE`` prints first)."""
        register = self._register
        tail = _length_bytes(self._length)
        if tail:
            register = _CRC.calc(tail, register)
        return ~register & _MASK


def cksum(data: bytes | bytearray | memoryview) -> int:
    """The cksum of one buffer."""
    checksum = Cksum()
    checksum.update(data)
    return checksum.value


class CrcFlavour(enum.Enum):
    """Which CRC a file-received answer carries."""

    #: The POSIX cksum: the contract, and every client's first answer.
    CKSUM = "cksum"
    #: ``zlib.crc32`` of the plaintext, as some clients compute it.
    ZLIB = "crc32"

    @property
    def other(self) -> CrcFlavour:
        """The flavour an answer carries after a "CRC bad" to this one, for the same plaintext."""
        return CrcFlavour.ZLIB if self is CrcFlavour.CKSUM else CrcFlavour.CKSUM


class FileSums:
    """The CRCs of a file, updated together in one pass over its chunks.

    The cksum always; zlib's CRC-32 only when asked for (``zlib=True``): it
    costs about a third of the cksum's speed, for an answer few need.
    """

    def __init__(self, *, zlib: bool = True) -> None:
        self._cksum = Cksum()
        self._crc32: int | None = 0 if zlib else None

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Add the next bytes of the file."""
        self._cksum.update(data)
        if self._crc32 is not None:
            self._crc32 = zlib.crc32(data, self._crc32)

    @property
    def length(self) -> int:
        """How many bytes went in so far."""
        return self._cksum.length

    @property
    def cksum(self) -> int:
        """The cksum of everything so far."""
        return self._cksum.value

    @property
    def crc32(self) -> int | None:
        """zlib's CRC-32 of everything so far (None: it was not asked for)."""
        return self._crc32
