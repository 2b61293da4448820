"""A file as a stream of 828 packets: sizing, reading, cksum and encryption.

docs/PROTOCOL.md, 828: the file's ciphertext is one AES-CBC stream (zero IV,
PKCS#7) cut into consecutive packets; ``content_size`` is the whole
ciphertext and ``total_packets`` must fit its 2-byte field. The file is read
one packet at a time, so memory stays flat whatever its size.

The generators here are the serial reference: the client sends with
:mod:`client.pipeline`, whose bytes tests/client/test_client_pipeline.py
compares with theirs.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

from protocol import Cksum, NameField
from protocol.codes import AES_BLOCK_SIZE, MAX_UINT16, MAX_UINT32, MAX_WIRE_NAME_LENGTH
from protocol.crypto import CbcEncryptor, padded_size
from protocol.printable import printable, quoted

from .errors import FileReadError

#: Default ciphertext bytes per packet: a multiple of the AES block. Large
#: enough that the per-packet work of both sides (header, checks, a syscall or
#: two) is lost in the per-byte work (bench/upload.py), small enough that the
#: two packet buffers stay a small part of the client's memory.
DEFAULT_PACKET_SIZE = 1024 * 1024
#: The largest plaintext whose padded ciphertext still fits ``content_size``
#: (4 bytes): PKCS#7 always adds 1 to 16 bytes.
MAX_FILE_SIZE = (MAX_UINT32 // AES_BLOCK_SIZE) * AES_BLOCK_SIZE - 1


class Readable(Protocol):
    """A source of a file's bytes: a file opened ``rb``, an ``io.BytesIO``, a raw stream."""

    def readinto(self, buffer: memoryview, /) -> int | None:
        """Read into ``buffer``; return the bytes read (0 or None: none came)."""


@dataclass(frozen=True)
class Layout:
    """How a file's packets are laid out: the variants of docs/PROTOCOL.md a server may need.

    The default is the standard layout. The others reproduce what some
    clients send, so that a server can be tested with each on purpose.
    """

    #: Variant 5: ``total_packets`` first, then ``packet_number``.
    swapped: bool = False
    #: Variant 6: each packet its own CBC stream of ``packet_size`` plaintext
    #: bytes; its ``content_size`` is that packet's ciphertext length.
    per_packet: bool = False
    #: Variant 4: the last packet zero-filled to ``packet_size`` (whole-stream only).
    pad_last: bool = False
    #: The whole file in one 828 (1 of 1), its content streamed in pieces of
    #: ``packet_size``: for a server that takes every 828 as a whole file.
    whole_file: bool = False
    #: Each packet sent only when the server's window can take all of it, so
    #: that it arrives whole: for a server that reads a packet with one receive.
    arrive_whole: bool = False


#: The layout of docs/PROTOCOL.md, 828 details.
STANDARD_LAYOUT = Layout()


@dataclass(frozen=True)
class FilePlan:
    """Everything the 828 headers of one file say, fixed before sending."""

    path: Path
    wire_name: NameField
    orig_size: int
    content_size: int
    packet_size: int
    total_packets: int

    @property
    def display_name(self) -> str:
        """The file name as a person reads it (the printable form: protocol/printable.py)."""
        return printable(self.wire_name.text)

    @property
    def quoted_name(self) -> str:
        """The file name quoted, for a sentence."""
        return quoted(self.wire_name.text)


def wire_file_name(path: Path) -> bytes:
    """The name sent in the 255-byte field: the base name, bytes as on disk."""
    return os.fsencode(path.name)


def check_wire_name(name: bytes) -> str | None:
    """Why a base name cannot travel in the field, or None if it can."""
    if not name:
        return "the file has no name"
    if len(name) > MAX_WIRE_NAME_LENGTH:
        return (
            f"the file name is {len(name)} bytes; the protocol carries at most"
            f" {MAX_WIRE_NAME_LENGTH}"
        )
    return None


def choose_packet_size(content_size: int, preferred: int = DEFAULT_PACKET_SIZE) -> int:
    """The preferred packet size, grown so that the packet count fits 2 bytes.

    The result is a multiple of the AES block, so that every packet but the
    last holds whole blocks.
    """
    needed = math.ceil(content_size / MAX_UINT16)
    size = max(preferred, needed, AES_BLOCK_SIZE)
    return math.ceil(size / AES_BLOCK_SIZE) * AES_BLOCK_SIZE


def plan_file(
    path: Path,
    size: int,
    preferred_packet_size: int = DEFAULT_PACKET_SIZE,
    layout: Layout = STANDARD_LAYOUT,
) -> FilePlan:
    """The 828 fields of a file of ``size`` bytes.

    With ``layout.per_packet``, ``packet_size`` is the plaintext of each
    packet and ``content_size`` the sum of the packets' ciphertexts (what a
    server receives).

    Raises:
        ValueError: the file is larger than MAX_FILE_SIZE.
    """
    if size > MAX_FILE_SIZE:
        raise ValueError(f"{size} bytes is over the protocol's {MAX_FILE_SIZE}")
    if layout.per_packet:
        packet_size = choose_packet_size(size or 1, preferred_packet_size)
        total = max(1, math.ceil(size / packet_size))
        last = size - (total - 1) * packet_size
        content_size = (total - 1) * padded_size(packet_size) + padded_size(last)
        return FilePlan(
            path=path,
            wire_name=NameField.from_text(wire_file_name(path)),
            orig_size=size,
            content_size=content_size,
            packet_size=packet_size,
            total_packets=total,
        )
    content_size = padded_size(size)
    packet_size = choose_packet_size(content_size, preferred_packet_size)
    return FilePlan(
        path=path,
        wire_name=NameField.from_text(wire_file_name(path)),
        orig_size=size,
        content_size=content_size,
        packet_size=packet_size,
        total_packets=math.ceil(content_size / packet_size),
    )


def encrypted_packets(
    source: Readable,
    plan: FilePlan,
    aes_key: bytes,
    checksum: Cksum,
    on_read: Callable[[int], None] = lambda count: None,
) -> Iterator[memoryview]:
    """Yield each packet's ciphertext in order, reading the file as it goes.

    Two buffers of one packet each serve every packet: the plaintext is read
    into one (``readinto``) and encrypted into the other, so nothing is
    allocated or copied per packet. Each yielded view is valid until the next
    one is asked for: send it, or copy it. ``checksum`` is updated with the
    plaintext and ``on_read`` called with the bytes read, packet by packet.

    Every packet but the last carries ``plan.packet_size`` bytes, a multiple of
    the AES block, so its ciphertext is exactly its plaintext's size; the last
    one holds the rest of the file plus the padding (a file of a whole number
    of packets ends with a packet of padding alone).

    Raises:
        FileReadError: the file ended before ``plan.orig_size`` bytes.
    """
    encryptor = CbcEncryptor(aes_key)
    size = plan.packet_size
    plain = memoryview(bytearray(size))
    cipher = memoryview(bytearray(size))
    remaining = plan.orig_size
    while True:
        count = min(size, remaining)
        chunk = plain[:count]
        if fill(source, chunk) < count:
            raise FileReadError(
                plan.path,
                f"the file shrank while being sent ({plan.orig_size - remaining}"
                f" of {plan.orig_size} bytes read)",
            )
        remaining -= count
        checksum.update(chunk)
        on_read(count)
        done = encryptor.update_into(chunk, cipher)
        if count < size:  # the last packet: the padding block fits beside
            tail = encryptor.finalize()
            cipher[done : done + len(tail)] = tail
            yield cipher[: done + len(tail)]
            return
        yield cipher[:done]
        if not remaining:
            yield memoryview(encryptor.finalize())
            return


def fill(source: Readable, view: memoryview) -> int:
    """Read into the whole view unless the file ends first; return the bytes read."""
    filled = 0
    while filled < len(view):
        count = source.readinto(view[filled:])
        if not count:
            break
        filled += count
    return filled


def per_packet_ciphertexts(
    source: Readable,
    plan: FilePlan,
    aes_key: bytes,
    checksum: Cksum,
    on_read: Callable[[int], None] = lambda count: None,
) -> Iterator[bytes]:
    """Variant 6: each packet's plaintext encrypted on its own (its own CBC stream).

    Raises:
        FileReadError: the file ended before ``plan.orig_size`` bytes.
    """
    remaining = plan.orig_size
    plain = memoryview(bytearray(plan.packet_size))
    for _ in range(plan.total_packets):
        count = min(plan.packet_size, remaining)
        chunk = plain[:count]
        if fill(source, chunk) < count:
            raise FileReadError(plan.path, "the file shrank while being sent")
        remaining -= count
        checksum.update(chunk)
        on_read(count)
        encryptor = CbcEncryptor(aes_key)
        yield encryptor.update(bytes(chunk)) + encryptor.finalize()
