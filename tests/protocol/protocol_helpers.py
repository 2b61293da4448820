"""Helpers shared by the protocol tests: feeding, draining, splitting.

Drain after every feed (the sans-I/O contract), merge streamed 828 content so
that event lists compare whatever the chunking was.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from protocol import NEED_DATA, ConnectionClosed, FileContent

#: Above this many events from one feed, a decoder is looping.
MAX_EVENTS_PER_FEED = 100_000


def drain(conn) -> list:
    """Every event ready now, up to NEED_DATA (excluded) or ConnectionClosed."""
    events = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        events.append(event)
        if isinstance(event, ConnectionClosed):
            return events
        assert len(events) < MAX_EVENTS_PER_FEED, "next_event never says NEED_DATA"


def feed(conn, chunks: Iterable[bytes], *, eof: bool = False) -> list:
    """Feed chunks one at a time, draining after each; optionally then EOF.

    Empty chunks are skipped: ``receive_data(b"")`` means EOF, asked with eof.
    """
    events = []
    for chunk in chunks:
        if not chunk:
            continue
        conn.receive_data(chunk)
        events += drain(conn)
    if eof:
        conn.receive_data(b"")
        events += drain(conn)
    return events


def merge_content(events: list) -> list:
    """Join consecutive FileContent events into one (chunking is not meaning)."""
    merged: list = []
    for event in events:
        if isinstance(event, FileContent):
            assert event.data, "an empty FileContent carries nothing"
            if merged and isinstance(merged[-1], FileContent):
                merged[-1] = FileContent(merged[-1].data + event.data)
                continue
        merged.append(event)
    return merged


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def random_split(data: bytes, rng: random.Random, max_cuts: int = 8) -> list[bytes]:
    """data cut at up to max_cuts random points (empty pieces dropped)."""
    cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(1, max_cuts)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def splits(data: bytes, seeds: Iterable[int] = range(8)) -> list[tuple[str, list[bytes]]]:
    """Every chunking the streaming tests use: whole, byte by byte, random."""
    ways = [("whole", [data]), ("byte-by-byte", byte_by_byte(data))]
    for seed in seeds:
        ways.append((f"seed-{seed}", random_split(data, random.Random(seed))))
    return ways
