"""A few hundred inputs through the fuzz target of fuzz_decoder.py (seconds, in CI).

The long run is ``python tests/fuzz/fuzz_decoder.py`` (see its docstring).
"""

from __future__ import annotations

import random

import pytest

import fuzz_decoder
from fuzz_decoder import make_input, run_input, seed_inputs, seed_streams


def mutations(count: int, rng: random.Random) -> list[bytes]:
    """Seeds with a few bytes set, inserted, deleted, or a size rewritten."""
    seeds = seed_inputs()
    out = []
    for _ in range(count):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op = rng.choice(["set", "insert", "delete", "size"])
            at = rng.randrange(len(data))
            if op == "set" and at >= fuzz_decoder.CONTROL_SIZE:
                data[at] = rng.randrange(256)
            elif op == "insert":
                data[at:at] = rng.randbytes(rng.randint(1, 8))
            elif op == "delete" and at >= fuzz_decoder.CONTROL_SIZE:
                del data[at : at + rng.randint(1, 8)]
            elif op == "size":
                value = rng.choice([0, 1, 10, 255, 266, 267, 415, 416, 0xFFFFFFFF])
                data[at : at + 4] = value.to_bytes(4, "little")
        out.append(bytes(data))
    return out


def quick_inputs() -> list[bytes]:
    rng = random.Random(20240601)
    inputs = seed_inputs()
    inputs += mutations(300, rng)
    inputs += [rng.randbytes(rng.randint(0, 600)) for _ in range(100)]
    return inputs


def test_target_on_a_few_hundred_inputs():
    inputs = quick_inputs()
    assert len(inputs) >= 400
    totals = fuzz_decoder.Stats()
    for data in inputs:
        stats = run_input(data)
        totals.events += stats.events
        totals.errors_kept += stats.errors_kept
        totals.errors_closed += stats.errors_closed
        totals.closed += stats.closed
        totals.content_bytes += stats.content_bytes
        totals.kinds |= stats.kinds
    # The inputs reach every path the target checks, not just the header.
    assert totals.errors_kept > 0
    assert totals.errors_closed > 0
    assert totals.closed > 0
    assert totals.content_bytes > 0
    every_event = {t.__name__ for t in fuzz_decoder.SERVER_EVENTS + fuzz_decoder.CLIENT_EVENTS}
    assert totals.kinds == every_event


def test_plan_reads_what_make_input_writes():
    plan = fuzz_decoder.plan(
        make_input(
            b"stream",
            server=False,
            eof=True,
            max_skip_payload=300,
            max_packet_content=16,
            chunk_seed=9,
            max_chunk=40,
        )
    )
    assert plan == fuzz_decoder.Plan(
        server=False,
        eof=True,
        limits={"max_skip_payload": 300, "max_packet_content": 16},
        chunk_seed=9,
        max_chunk=40,
        stream=b"stream",
    )
    assert b"".join(fuzz_decoder.chunks_of(plan)) == b"stream"


# -- the target can fail -----------------------------------------------------


def test_target_lets_other_exceptions_through(monkeypatch):
    def broken(self):
        raise KeyError("a decoder bug")

    monkeypatch.setattr(fuzz_decoder.protocol.ServerConnection, "next_event", broken)
    with pytest.raises(KeyError):
        run_input(make_input(seed_streams()[0][1]))


def test_target_catches_unbounded_buffering(monkeypatch):
    # A decoder that buffers a declared payload instead of streaming it.
    original = fuzz_decoder.protocol.ServerConnection.next_event

    def hoarding(self):
        if self._state.name == "CONTENT":
            return fuzz_decoder.protocol.NEED_DATA
        return original(self)

    monkeypatch.setattr(fuzz_decoder.protocol.ServerConnection, "next_event", hoarding)
    big_packet = fuzz_decoder.protocol.ClientConnection().send(
        fuzz_decoder.protocol.SendFilePacket(
            client_id=bytes(16),
            content_size=1 << 16,
            orig_file_size=1,
            packet_number=1,
            total_packets=1,
            file_name="f",
            content=bytes(1 << 16),
        )
    )
    with pytest.raises(AssertionError):
        run_input(make_input(big_packet, max_chunk=1000))


def test_target_catches_a_wrong_content_count(monkeypatch):
    original = fuzz_decoder.protocol.ServerConnection.next_event

    def doubling(self):
        event = original(self)
        if isinstance(event, fuzz_decoder.protocol.FileContent):
            return fuzz_decoder.protocol.FileContent(event.data * 2)
        return event

    monkeypatch.setattr(fuzz_decoder.protocol.ServerConnection, "next_event", doubling)
    with pytest.raises(AssertionError):
        for data in seed_inputs():
            run_input(data)
