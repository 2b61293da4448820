"""A file as 828 packets: sizes, the 2-byte packet count, streaming, cksum."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.errors import FileReadError
from client.packets import (
    DEFAULT_PACKET_SIZE,
    MAX_FILE_SIZE,
    choose_packet_size,
    encrypted_packets,
    plan_file,
)
from protocol import Cksum, cksum
from protocol.codes import MAX_UINT16, MAX_UINT32
from protocol.crypto import decrypt, new_aes_key, padded_size

AES_KEY = new_aes_key()


def test_largest_file_fits_every_field():
    plan = plan_file(Path("big"), MAX_FILE_SIZE)
    assert plan.content_size <= MAX_UINT32
    assert plan.total_packets <= MAX_UINT16
    assert plan.packet_size % 16 == 0
    with pytest.raises(ValueError):
        plan_file(Path("big"), MAX_FILE_SIZE + 1)


def test_small_files_use_the_default_packet_size():
    assert choose_packet_size(padded_size(10)) == DEFAULT_PACKET_SIZE
    assert plan_file(Path("x"), 0).total_packets == 1
    assert plan_file(Path("x"), 2 * 1024**3).packet_size == DEFAULT_PACKET_SIZE


@given(
    content_size=st.integers(16, padded_size(MAX_FILE_SIZE)).map(lambda n: n - n % 16),
    preferred=st.integers(1, 1 << 20).map(lambda n: n * 16),
)
def test_packet_size_keeps_the_count_within_two_bytes(content_size, preferred):
    size = choose_packet_size(content_size, preferred)
    assert size % 16 == 0 and size >= preferred
    assert math.ceil(content_size / size) <= MAX_UINT16


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=5000), packet_blocks=st.integers(1, 70))
def test_packets_are_one_cbc_stream_cut_in_order(data, packet_blocks):
    plan = plan_file(Path("f"), len(data), packet_blocks * 16)
    checksum = Cksum()
    read = []
    packets = [
        bytes(packet)  # each view is valid until the next packet
        for packet in encrypted_packets(io.BytesIO(data), plan, AES_KEY, checksum, read.append)
    ]
    assert len(packets) == plan.total_packets
    assert all(len(p) == plan.packet_size for p in packets[:-1])
    assert 0 < len(packets[-1]) <= plan.packet_size
    ciphertext = b"".join(packets)
    assert len(ciphertext) == plan.content_size
    assert decrypt(AES_KEY, ciphertext) == data
    assert checksum.value == cksum(data)
    assert sum(read) == len(data)


def test_a_file_that_shrinks_is_an_error():
    plan = plan_file(Path("f"), 100, 16)
    with pytest.raises(FileReadError, match="shrank"):
        list(encrypted_packets(io.BytesIO(b"x" * 50), plan, AES_KEY, Cksum()))


def test_only_about_two_packets_are_in_memory():
    """The reader is asked for one packet's worth at a time."""

    class Source(io.RawIOBase):
        def __init__(self, size: int) -> None:
            self.left = size
            self.asked: list[int] = []

        def readinto(self, buffer) -> int:
            self.asked.append(len(buffer))
            count = min(len(buffer), self.left)
            self.left -= count
            buffer[:count] = bytes(count)
            return count

    size = 10 * DEFAULT_PACKET_SIZE + 5
    source = Source(size)
    plan = plan_file(Path("f"), size)
    for _ in encrypted_packets(source, plan, AES_KEY, Cksum()):
        pass
    assert max(source.asked) == DEFAULT_PACKET_SIZE
