"""Fuzz the protocol decoders: only RemoteProtocolError may escape, memory stays bounded.

Run it from the repository root, for as long as you like (not in CI):

    pip install atheris
    python tests/fuzz/fuzz_decoder.py -max_total_time=300 -print_final_stats=1 fuzz-corpus/

All arguments are libFuzzer's; ``fuzz-corpus/`` (git-ignored) is created and
seeded with valid streams if it does not exist. Without atheris the same target
runs under hypothesis:

    python tests/fuzz/fuzz_decoder.py --hypothesis --max-examples 200000

Each input drives one connection. Its first bytes choose the side
(ServerConnection or ClientConnection), whether EOF follows, the server's
limits and how the rest is cut into chunks; the rest is the byte stream. The
properties, checked after every feed and every event:

- nothing but RemoteProtocolError escapes ``next_event``; after close=True no
  more bytes are fed, after close=False the stream goes on;
- events are of the decoder's side, an 828's FileContent chunks add up to its
  bytes_in_packet, and ``next_event`` reaches NEED_DATA;
- the receive buffer never holds more than the bytes left over (less than one
  header or one held payload) plus the chunk just fed: 828 content and skipped
  payloads stream through, whatever payload_size says.

tests/fuzz/test_fuzz_decoder_quick.py runs this target on a few hundred inputs
in CI.
"""

from __future__ import annotations

import dataclasses
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from harness import run_atheris

try:
    import atheris
except ImportError:  # the hypothesis fallback below
    atheris = None

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


def _import_protocol():
    # Coverage instrumentation only for a real atheris run, not under pytest.
    if atheris is not None and __name__ == "__main__" and "--hypothesis" not in sys.argv:
        with atheris.instrument_imports(include=["protocol"]):
            import protocol
    else:
        import protocol
    return protocol


protocol = _import_protocol()

from protocol.editions import EDITIONS  # noqa: E402

REQUEST_HEADER_SIZE = 23
RESPONSE_HEADER_SIZE = 7
#: The largest payload a decoder ever holds whole: 826 (docs/PROTOCOL.md).
SERVER_HELD_PAYLOAD = 415
#: The largest response payload: 1603 (variant 11).
CLIENT_HELD_PAYLOAD = 279
#: Control bytes at the start of every input.
CONTROL_SIZE = 8
#: A decoder that gives more events than this for one feed is looping.
MAX_EVENTS_PER_FEED = 1_000_000

SERVER_EVENTS = (
    protocol.Register,
    protocol.SendPublicKey,
    protocol.Reconnect,
    protocol.FilePacketStarted,
    protocol.FileContent,
    protocol.FilePacketEnded,
    protocol.CrcOk,
    protocol.CrcRetry,
    protocol.CrcAbort,
    protocol.ConnectionClosed,
)
CLIENT_EVENTS = (
    protocol.Registered,
    protocol.RegistrationFailed,
    protocol.PublicKeyReceived,
    protocol.FileReceived,
    protocol.Acknowledged,
    protocol.Reconnected,
    protocol.ReconnectRefused,
    protocol.GeneralError,
    protocol.ConnectionClosed,
)


@dataclass
class Stats:
    """What one input did; the quick pytest checks the target really works."""

    events: int = 0
    errors_kept: int = 0
    errors_closed: int = 0
    closed: int = 0
    content_bytes: int = 0
    kinds: set = field(default_factory=set)


@dataclass(frozen=True)
class Plan:
    """How one input is played: the decoded control bytes and the stream."""

    server: bool
    eof: bool
    limits: dict
    chunk_seed: int
    max_chunk: int
    stream: bytes


def plan(data: bytes) -> Plan:
    """Read the control bytes; the rest of data is the stream."""
    control = data[:CONTROL_SIZE].ljust(CONTROL_SIZE, b"\0")
    flags = control[0]
    limits = {}
    if flags & 0x04:
        limits["max_skip_payload"] = int.from_bytes(control[1:3], "little")
    if flags & 0x08:
        limits["max_packet_content"] = int.from_bytes(control[3:5], "little")
    return Plan(
        server=not flags & 0x01,
        eof=bool(flags & 0x02),
        limits=limits,
        chunk_seed=control[5],
        max_chunk=1 + int.from_bytes(control[6:8], "little") % 4096,
        stream=data[CONTROL_SIZE:],
    )


def make_input(
    stream: bytes,
    *,
    server: bool = True,
    eof: bool = False,
    max_skip_payload: int | None = None,
    max_packet_content: int | None = None,
    chunk_seed: int = 0,
    max_chunk: int = 4095,
) -> bytes:
    """The input that plays stream this way (the inverse of plan)."""
    flags = (0 if server else 0x01) | (0x02 if eof else 0)
    flags |= 0x04 if max_skip_payload is not None else 0
    flags |= 0x08 if max_packet_content is not None else 0
    return (
        bytes([flags])
        + (max_skip_payload or 0).to_bytes(2, "little")
        + (max_packet_content or 0).to_bytes(2, "little")
        + bytes([chunk_seed])
        + (max_chunk - 1).to_bytes(2, "little")
        + stream
    )


def chunks_of(p: Plan) -> list[bytes]:
    rng = random.Random(p.chunk_seed)
    chunks, position = [], 0
    while position < len(p.stream):
        size = rng.randint(1, p.max_chunk)
        chunks.append(p.stream[position : position + size])
        position += size
    return chunks


def run_input(data: bytes) -> Stats:
    """The fuzz target: play one input, check every property.

    Raises:
        AssertionError: a property does not hold.
        Exception: anything else the decoder let escape (a finding).
    """
    p = plan(data)
    stats = Stats()
    if p.server:
        conn = protocol.ServerConnection(**p.limits)
        header, held, kinds = REQUEST_HEADER_SIZE, SERVER_HELD_PAYLOAD, SERVER_EVENTS
    else:
        conn = protocol.ClientConnection()
        header, held, kinds = RESPONSE_HEADER_SIZE, CLIENT_HELD_PAYLOAD, CLIENT_EVENTS
    leftover_bound = max(header, held)
    packet = None  # [bytes_in_packet, received] while an 828 streams

    def drain() -> bool:
        """Events until NEED_DATA; False once the connection is over."""
        nonlocal packet
        for _ in range(MAX_EVENTS_PER_FEED):
            try:
                event = conn.next_event()
            except protocol.RemoteProtocolError as error:
                assert error.close in (True, False)
                assert isinstance(error.response_code, protocol.ResponseCode)
                if error.close:
                    stats.errors_closed += 1
                    return False
                assert p.server, "the client side never goes on after an error"
                stats.errors_kept += 1
                continue
            if event is protocol.NEED_DATA:
                assert len(conn._buffer) < leftover_bound, len(conn._buffer)
                return True
            assert isinstance(event, kinds), repr(event)
            stats.events += 1
            stats.kinds.add(type(event).__name__)
            if isinstance(event, protocol.FilePacketStarted):
                assert packet is None
                packet = [event.bytes_in_packet, 0]
            elif isinstance(event, protocol.FileContent):
                assert packet is not None and event.data
                packet[1] += len(event.data)
                stats.content_bytes += len(event.data)
                assert packet[1] <= packet[0]
            elif isinstance(event, protocol.FilePacketEnded):
                assert packet is not None and packet[1] == packet[0]
                packet = None
            else:
                assert packet is None, "an event inside an 828's content"
            if isinstance(event, protocol.ConnectionClosed):
                stats.closed += 1
                return False
        raise AssertionError("next_event never returned NEED_DATA")

    for chunk in chunks_of(p):
        before = len(conn._buffer)
        conn.receive_data(chunk)
        # Bytes are stored as fed, never more (no allocation from a size field).
        assert len(conn._buffer) == before + len(chunk)
        assert len(conn._buffer) < leftover_bound + len(chunk)
        if not drain():
            return stats
    if p.eof:
        conn.receive_data(b"")
        drain()
    return stats


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    run_input(data)


# -- seeds -------------------------------------------------------------------


def seed_streams() -> list[tuple[bool, bytes]]:
    """Valid streams of every message, for both sides: (server side?, bytes)."""
    p = protocol
    cid = bytes(range(16))
    client, server = p.ClientConnection(), p.ServerConnection()
    requests = [
        p.Register(client_id=cid, name="alice"),
        p.SendPublicKey(client_id=cid, name="alice", public_key=bytes(range(160))),
        p.Reconnect(client_id=cid, name="alice"),
        p.SendFilePacket(
            client_id=cid,
            content_size=64,
            orig_file_size=50,
            packet_number=1,
            total_packets=2,
            file_name="report.txt",
            content=bytes(range(32)),
        ),
        p.CrcOk(client_id=cid, file_name="report.txt"),
        p.CrcRetry(client_id=cid, file_name="report.txt"),
        p.CrcAbort(client_id=cid, file_name="report.txt"),
    ]
    responses = [
        p.Registered(client_id=cid),
        p.RegistrationFailed(),
        p.PublicKeyReceived(client_id=cid, encrypted_aes_key=bytes(128)),
        p.FileReceived(client_id=cid, content_size=64, file_name="report.txt", cksum=1),
        p.Acknowledged(client_id=cid),
        p.Reconnected(client_id=cid, encrypted_aes_key=bytes(128)),
        p.ReconnectRefused(client_id=cid),
        p.GeneralError(),
    ]
    seeds = [(True, client.send(r)) for r in requests]
    seeds.append((True, b"".join(client.send(r) for r in requests)))
    # A whole session of every other edition (its file in one request where it sends so).
    whole_file = dataclasses.replace(requests[3], content_size=32, total_packets=1)
    for edition in EDITIONS[1:]:
        speaker = p.ClientConnection(edition)
        spoken = [r for r in requests if edition.request_for(type(r)) is not None]
        spoken = [whole_file if r is requests[3] and edition.whole_file else r for r in spoken]
        seeds.append((True, b"".join(speaker.send(r) for r in spoken)))
    seeds += [(False, server.send(r)) for r in responses]
    seeds.append((False, b"".join(server.send(r) for r in responses)))
    return seeds


def seed_inputs() -> list[bytes]:
    inputs = []
    for server, stream in seed_streams():
        inputs.append(make_input(stream, server=server))
        inputs.append(make_input(stream, server=server, eof=True, max_chunk=1))
        inputs.append(make_input(stream, server=server, chunk_seed=7, max_chunk=40))
        if server:
            inputs.append(make_input(stream, max_skip_payload=300, max_packet_content=16))
    return inputs


# -- entry points ------------------------------------------------------------


def main_atheris(argv: list[str]) -> None:
    run_atheris(argv, seed_inputs, TestOneInput)


def main_hypothesis(argv: list[str]) -> None:
    import argparse
    import time

    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    parser = argparse.ArgumentParser(description="fuzz the decoders with hypothesis")
    parser.add_argument("--hypothesis", action="store_true")
    parser.add_argument("--max-examples", type=int, default=100_000)
    args = parser.parse_args(argv[1:])
    seeds = seed_inputs()
    count = 0

    def mutate(seed: bytes, edits: list[tuple[int, int]]) -> bytes:
        data = bytearray(seed)
        for position, value in edits:
            if data:
                data[position % len(data)] = value
        return bytes(data)

    inputs = st.one_of(
        st.binary(max_size=4096),
        st.builds(
            mutate,
            st.sampled_from(seeds),
            st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
        ),
    )

    @settings(
        max_examples=args.max_examples,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(inputs)
    def fuzz(data: bytes) -> None:
        nonlocal count
        count += 1
        run_input(data)

    started = time.monotonic()
    for data in seeds:
        run_input(data)
    fuzz()
    minutes = (time.monotonic() - started) / 60
    print(f"hypothesis: {count} inputs in {minutes:.1f} min, no finding")


if __name__ == "__main__":
    if atheris is not None and "--hypothesis" not in sys.argv:
        main_atheris(sys.argv)
    else:
        main_hypothesis(sys.argv)
