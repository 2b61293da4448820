"""Any chunking of a byte stream gives the same events (docs/PROTOCOL.md variant 3).

Each message is fed whole, byte by byte and split at random points with
several seeds; several messages are also coalesced in one chunk. An 828's
content arrives as FileContent chunks: their concatenation is compared.
"""

from __future__ import annotations

import random

import pytest

import protocol_vectors as v
from protocol import (
    NEED_DATA,
    ClientConnection,
    ConnectionClosed,
    FileContent,
    FilePacketEnded,
    FilePacketStarted,
    ServerConnection,
)
from protocol_helpers import byte_by_byte, feed, merge_content, random_split, splits
from test_protocol_vectors import REQUESTS, RESPONSES

SEEDS = range(10)


@pytest.mark.parametrize(
    "wire, expected", [r[1:3] for r in REQUESTS], ids=[r[0] for r in REQUESTS]
)
def test_request_any_chunking(wire, expected):
    for how, chunks in splits(wire, SEEDS):
        assert b"".join(chunks) == wire
        conn = ServerConnection()
        events = feed(conn, chunks, eof=True)
        assert merge_content(events) == [*expected, ConnectionClosed()], how


@pytest.mark.parametrize("wire, event", [r[1:] for r in RESPONSES], ids=[r[0] for r in RESPONSES])
def test_response_any_chunking(wire, event):
    for how, chunks in splits(wire, SEEDS):
        events = feed(ClientConnection(), chunks, eof=True)
        assert events == [event, ConnectionClosed()], how


def test_828_content_streams_as_it_arrives():
    # Each content byte is given out as soon as it is fed: nothing waits for
    # the whole packet.
    conn = ServerConnection()
    header_and_fields = v.SEND_FILE[: 23 + 267]
    assert [type(e) for e in feed(conn, [header_and_fields])] == [FilePacketStarted]
    *first, last = byte_by_byte(v.CONTENT)
    for byte in first:
        assert feed(conn, [byte]) == [FileContent(byte)]
        assert len(conn._buffer) == 0
    # FilePacketEnded comes with the last byte, without waiting for more input.
    assert feed(conn, [last]) == [FileContent(last), FilePacketEnded()]
    assert conn.next_event() is NEED_DATA


def test_big_828_content_concatenates_in_order():
    rng = random.Random(1)
    content = rng.randbytes(100_000)
    wire = (
        v.request_header(v.CLIENT_ID, "03" "3c03")
        + (267 + len(content)).to_bytes(4, "little")
        + bytes.fromhex("a0860100" "9a860100" "0100" "0100")
        + v.FILE_NAME_REPORT
        + content
    )
    for seed in SEEDS:
        chunks = random_split(wire, random.Random(seed), max_cuts=50)
        events = merge_content(feed(ServerConnection(), chunks))
        assert [type(e) for e in events] == [FilePacketStarted, FileContent, FilePacketEnded]
        assert events[0].bytes_in_packet == len(content)
        assert events[1].data == content


def _request_stream() -> tuple[bytes, list]:
    """Every request vector, in order, as one stream, with its events."""
    wire = b"".join(r[1] for r in REQUESTS)
    expected = [event for r in REQUESTS for event in r[2]]
    return wire, expected


def test_coalesced_requests_any_chunking():
    wire, expected = _request_stream()
    for how, chunks in splits(wire, SEEDS):
        events = merge_content(feed(ServerConnection(), chunks, eof=True))
        assert events == [*expected, ConnectionClosed()], how


def test_coalesced_requests_random_order_and_splits():
    for seed in SEEDS:
        rng = random.Random(seed)
        picked = [rng.choice(REQUESTS) for _ in range(20)]
        wire = b"".join(r[1] for r in picked)
        expected = [event for r in picked for event in r[2]]
        chunks = random_split(wire, rng, max_cuts=40)
        events = merge_content(feed(ServerConnection(), chunks, eof=True))
        assert events == [*expected, ConnectionClosed()], seed


def test_coalesced_responses_any_chunking():
    wire = b"".join(r[1] for r in RESPONSES) * 2
    expected = [r[2] for r in RESPONSES] * 2
    for how, chunks in splits(wire, SEEDS):
        events = feed(ClientConnection(), chunks, eof=True)
        assert events == [*expected, ConnectionClosed()], how


def test_whole_stream_in_one_chunk_is_drained_in_one_go():
    # The sans-I/O contract: one receive_data, then next_event until NEED_DATA,
    # gives every message; nothing waits for more input.
    wire, expected = _request_stream()
    conn = ServerConnection()
    conn.receive_data(wire)
    events = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
    assert merge_content(events) == expected
    assert not conn.in_message
