"""protocol.cksum against the Linux ``cksum`` command and a bitwise reference.

docs/PROTOCOL.md "Checksum": CRC-32/POSIX over the bytes, then over the length
(LSB first, as few bytes as it needs), complemented; equal to the first number
``cksum FILE`` prints, the empty file included.
"""

from __future__ import annotations

import random
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import Cksum, cksum

CKSUM_COMMAND = shutil.which("cksum")
needs_cksum_command = pytest.mark.skipif(
    CKSUM_COMMAND is None, reason="the cksum command is not installed"
)


def reference_cksum(data: bytes) -> int:
    """POSIX cksum, one bit at a time, straight from its definition."""
    crc = 0

    def shift_in(byte: int) -> None:
        nonlocal crc
        crc ^= byte << 24
        for _ in range(8):
            if crc & 0x80000000:
                crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF
            else:
                crc = (crc << 1) & 0xFFFFFFFF

    for byte in data:
        shift_in(byte)
    length = len(data)
    while length:
        shift_in(length & 0xFF)
        length >>= 8
    return ~crc & 0xFFFFFFFF


def command_cksum(path) -> tuple[int, int]:
    """(crc, size) as the cksum command prints them for path."""
    out = subprocess.run(
        [CKSUM_COMMAND, str(path)], check=True, capture_output=True, text=True
    ).stdout.split()
    return int(out[0]), int(out[1])


def test_known_answers():
    # Values printed by GNU cksum: `printf '' | cksum`, `printf 123456789 | cksum`.
    assert cksum(b"") == 4294967295
    assert cksum(b"123456789") == 930766865
    assert reference_cksum(b"") == 4294967295
    assert reference_cksum(b"123456789") == 930766865


# Lengths around the 16-byte AES block, and where the appended length grows
# from 1 to 2 to 3 bytes (255/256, 65535/65536).
REFERENCE_SIZES = [0, 1, 2, 3, 7, 15, 16, 17, 100, 255, 256, 257, 1000, 4097]


@pytest.mark.parametrize("size", REFERENCE_SIZES)
def test_against_bitwise_reference(size):
    data = random.Random(size).randbytes(size)
    assert cksum(data) == reference_cksum(data)
    assert cksum(bytes(size)) == reference_cksum(bytes(size))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_against_bitwise_reference_property(data):
    assert cksum(data) == reference_cksum(data)


COMMAND_SIZES = [0, 1, 2, 3, 15, 17, 255, 256, 4001, 65535, 65536, 65537, 1_048_577, 3_000_001]


@needs_cksum_command
@pytest.mark.parametrize("size", COMMAND_SIZES)
def test_against_cksum_command(tmp_path, size):
    data = random.Random(size).randbytes(size)
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    expected, printed_size = command_cksum(path)
    assert printed_size == size
    assert cksum(data) == expected
    # and incrementally, as the server computes it while the file streams in
    checksum = Cksum()
    with open(path, "rb") as f:
        while chunk := f.read(65_521):
            checksum.update(chunk)
    assert checksum.value == expected
    assert checksum.length == size


@needs_cksum_command
@pytest.mark.parametrize("byte", [0x00, 0xFF])
def test_constant_files_against_cksum_command(tmp_path, byte):
    # All-zero data makes the CRC register depend on the length alone.
    for size in (1, 256, 70_000):
        path = tmp_path / f"{byte}-{size}"
        path.write_bytes(bytes([byte]) * size)
        assert cksum(path.read_bytes()) == command_cksum(path)[0]


@pytest.mark.parametrize("seed", range(8))
def test_incremental_equals_one_shot(seed):
    rng = random.Random(seed)
    data = rng.randbytes(rng.randint(0, 300_000))
    checksum = Cksum()
    position = 0
    while position < len(data):
        step = rng.choice([0, 1, 15, 16, 17, rng.randint(0, 70_000)])
        chunk = data[position : position + step]
        # bytes, bytearray or memoryview: what a socket or file may give
        checksum.update(rng.choice([bytes, bytearray, memoryview])(chunk))
        position += step
        # reading the value does not change the state
        assert checksum.value == cksum(data[:position])
    assert checksum.length == len(data)
    assert checksum.value == cksum(data)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=10))
def test_incremental_property(chunks):
    checksum = Cksum()
    for chunk in chunks:
        checksum.update(chunk)
    data = b"".join(chunks)
    assert checksum.value == reference_cksum(data)
    assert checksum.length == len(data)


def test_fresh_instances_are_independent():
    first, second = Cksum(), Cksum()
    first.update(b"abc")
    assert second.value == cksum(b"")
    assert first.value == cksum(b"abc")
