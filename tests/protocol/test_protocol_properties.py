"""Hypothesis properties of both decoders: round trips and any chunking.

- build → parse round trip of every message, any chunking;
- random and mutated byte streams, in random chunks, only ever give events,
  NEED_DATA, ConnectionClosed or RemoteProtocolError; after close=True the
  feeding stops, after close=False it goes on;
- the outcome does not depend on how the stream is chunked;
- after draining, the receive buffer holds less than one header + payload.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    NEED_DATA,
    Acknowledged,
    ClientConnection,
    ConnectionClosed,
    CrcAbort,
    CrcOk,
    CrcRetry,
    FileContent,
    FilePacketEnded,
    FilePacketStarted,
    FileReceived,
    GeneralError,
    NameField,
    PublicKeyReceived,
    Reconnect,
    ReconnectRefused,
    Reconnected,
    Register,
    Registered,
    RegistrationFailed,
    RemoteProtocolError,
    SendFilePacket,
    SendPublicKey,
    ServerConnection,
)
from protocol_helpers import merge_content

PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

REQUEST_HEADER_SIZE = 23
RESPONSE_HEADER_SIZE = 7
#: 826's payload, the largest a decoder ever holds whole (docs/PROTOCOL.md).
LARGEST_HELD_PAYLOAD = 415
RESPONSE_LARGEST_PAYLOAD = 279

REQUEST_EVENT_TYPES = (
    Register,
    SendPublicKey,
    Reconnect,
    FilePacketStarted,
    FileContent,
    FilePacketEnded,
    CrcOk,
    CrcRetry,
    CrcAbort,
    ConnectionClosed,
)
RESPONSE_EVENT_TYPES = (
    Registered,
    RegistrationFailed,
    PublicKeyReceived,
    FileReceived,
    Acknowledged,
    Reconnected,
    ReconnectRefused,
    GeneralError,
    ConnectionClosed,
)

# -- strategies --------------------------------------------------------------

client_ids = st.binary(min_size=16, max_size=16)
client_names = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=254
).filter(lambda name: name.strip(" ") == name)
uint32 = st.integers(0, 2**32 - 1)
uint16 = st.integers(0, 2**16 - 1)
no_nul = st.binary(min_size=1, max_size=254).map(lambda b: b.replace(b"\0", b"_"))


@st.composite
def name_fields(draw, allow_empty: bool = False) -> NameField:
    """A 255-byte field as peers send it: canonical, left-padded or with garbage."""
    if allow_empty and draw(st.booleans()):
        # Leading NULs are padding, so the only field with no text is all NULs.
        return NameField.parse(bytes(255))
    text = draw(no_nul)
    kind = draw(st.sampled_from(["canonical", "left", "garbage"]))
    if kind == "canonical":
        return NameField.from_text(text)
    if kind == "left":
        raw = text.rjust(255, b"\0")
    else:
        lead = draw(st.integers(0, 254 - len(text)))
        tail = draw(st.binary(min_size=254 - lead - len(text), max_size=254 - lead - len(text)))
        raw = b"\0" * lead + text + b"\0" + tail
    field = NameField.parse(raw)
    assert field is not None and field.text == text
    return field


simple_requests = st.one_of(
    st.builds(Register, client_id=client_ids, name=client_names),
    st.builds(
        SendPublicKey,
        client_id=client_ids,
        name=client_names,
        public_key=st.binary(min_size=160, max_size=160),
    ),
    st.builds(Reconnect, client_id=client_ids, name=client_names),
    st.builds(CrcOk, client_id=client_ids, file_name=name_fields()),
    st.builds(CrcRetry, client_id=client_ids, file_name=name_fields()),
    st.builds(CrcAbort, client_id=client_ids, file_name=name_fields()),
)
file_packets = st.builds(
    SendFilePacket,
    client_id=client_ids,
    content_size=uint32,
    orig_file_size=uint32,
    packet_number=uint16,
    total_packets=uint16,
    file_name=name_fields(),
    content=st.binary(max_size=3000),
)
requests = st.one_of(simple_requests, file_packets)

responses = st.one_of(
    st.builds(Registered, client_id=client_ids),
    st.just(RegistrationFailed()),
    st.builds(
        PublicKeyReceived,
        client_id=client_ids,
        encrypted_aes_key=st.binary(min_size=128, max_size=128),
    ),
    st.builds(
        FileReceived,
        client_id=client_ids,
        content_size=uint32,
        file_name=name_fields(allow_empty=True),
        cksum=uint32,
    ),
    st.builds(Acknowledged, client_id=client_ids),
    st.builds(
        Reconnected,
        client_id=client_ids,
        encrypted_aes_key=st.binary(min_size=128, max_size=128),
    ),
    st.builds(ReconnectRefused, client_id=client_ids),
    st.just(GeneralError()),
)


def expected_request_events(request) -> list:
    """What ServerConnection gives for a request it was sent."""
    if not isinstance(request, SendFilePacket):
        return [request]
    started = FilePacketStarted(
        client_id=request.client_id,
        content_size=request.content_size,
        orig_file_size=request.orig_file_size,
        packet_number=request.packet_number,
        total_packets=request.total_packets,
        file_name=request.file_name,
        bytes_in_packet=len(request.content),
    )
    content = [FileContent(request.content)] if request.content else []
    return [started, *content, FilePacketEnded()]


@st.composite
def chunkings(draw, data: bytes) -> list[bytes]:
    """data cut at any points hypothesis likes."""
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=30))
    bounds = sorted({0, len(data), *cuts})
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


# -- the driver: what a correct caller does, and what may come out ------------


def run(conn, chunks, *, eof: bool, event_types: tuple, header_size: int, held: int):
    """Feed and drain like the server loop does; return the outcome.

    The outcome is the list of events (FileContent merged) and of errors as
    ("error", response_code, close). Anything but RemoteProtocolError escaping
    fails the test; after close=True nothing more is fed.
    """
    outcome: list = []
    in_packet = None  # [announced, received] while an 828's content streams

    def drain() -> bool:
        """False once the connection is over (closed or failed for good)."""
        nonlocal in_packet
        for _ in range(100_000):
            try:
                event = conn.next_event()
            except RemoteProtocolError as error:
                assert isinstance(error.close, bool)
                assert 1600 <= error.response_code <= 1607
                outcome.append(("error", int(error.response_code), error.close))
                if error.close:
                    return False
                continue
            if event is NEED_DATA:
                # What is left is part of one header or of one held payload:
                # 828 content and skipped payloads are never held.
                assert len(conn._buffer) < max(header_size, held)
                return True
            assert isinstance(event, event_types), event
            if isinstance(event, FilePacketStarted):
                assert in_packet is None
                in_packet = [event.bytes_in_packet, 0]
            elif isinstance(event, FileContent):
                assert in_packet is not None and event.data
                in_packet[1] += len(event.data)
                assert in_packet[1] <= in_packet[0]
            elif isinstance(event, FilePacketEnded):
                assert in_packet is not None and in_packet[0] == in_packet[1]
                in_packet = None
            else:
                assert in_packet is None, "an event inside an 828's content"
            outcome.append(event)
            if isinstance(event, ConnectionClosed):
                return False
        raise AssertionError("next_event never returned NEED_DATA")

    for chunk in chunks:
        if not chunk:
            continue
        conn.receive_data(chunk)
        if not drain():
            return merge_content(outcome)
    if eof:
        conn.receive_data(b"")
        drain()
    return merge_content(outcome)


def run_server(chunks, *, eof=False, **limits):
    return run(
        ServerConnection(**limits),
        chunks,
        eof=eof,
        event_types=REQUEST_EVENT_TYPES,
        header_size=REQUEST_HEADER_SIZE,
        held=LARGEST_HELD_PAYLOAD,
    )


def run_client(chunks, *, eof=False):
    return run(
        ClientConnection(),
        chunks,
        eof=eof,
        event_types=RESPONSE_EVENT_TYPES,
        header_size=RESPONSE_HEADER_SIZE,
        held=RESPONSE_LARGEST_PAYLOAD,
    )


# -- round trips -------------------------------------------------------------


@PROPERTY
@given(st.lists(requests, min_size=1, max_size=5), st.data())
def test_request_round_trip(reqs, data):
    sender = ClientConnection()
    wire = b"".join(sender.send(r) for r in reqs)
    chunks = data.draw(chunkings(wire))
    expected = [e for r in reqs for e in expected_request_events(r)]
    assert run_server(chunks, eof=True) == merge_content([*expected, ConnectionClosed()])


@PROPERTY
@given(requests)
def test_request_sizes(request):
    wire = ClientConnection().send(request)
    payload_size = int.from_bytes(wire[19:23], "little")
    assert len(wire) == 23 + payload_size
    assert int.from_bytes(wire[17:19], "little") == request.code
    assert wire[:16] == request.client_id


@PROPERTY
@given(st.lists(responses, min_size=1, max_size=8), st.data())
def test_response_round_trip(resps, data):
    sender = ServerConnection()
    wire = b"".join(sender.send(r) for r in resps)
    chunks = data.draw(chunkings(wire))
    assert run_client(chunks, eof=True) == [*resps, ConnectionClosed()]


@PROPERTY
@given(responses)
def test_response_sizes_are_variant_11(response):
    wire = ServerConnection().send(response)
    expected = {1600: 16, 1601: 0, 1602: 144, 1603: 279, 1604: 16, 1605: 144, 1606: 16, 1607: 0}
    assert wire[0] == 3
    code = int.from_bytes(wire[1:3], "little")
    assert int.from_bytes(wire[3:7], "little") == len(wire) - 7 == expected[code]


# -- garbage in, only protocol errors out -------------------------------------


@PROPERTY
@given(st.binary(max_size=2000), st.data(), st.booleans())
def test_random_bytes_to_server(stream, data, eof):
    chunks = data.draw(chunkings(stream))
    whole = run_server([stream], eof=eof)
    assert run_server(chunks, eof=eof) == whole


@PROPERTY
@given(
    st.binary(max_size=2000),
    st.data(),
    st.booleans(),
    st.integers(0, 5000),
    st.integers(0, 5000),
)
def test_random_bytes_to_server_with_limits(stream, data, eof, discard, content):
    limits = {"max_skip_payload": discard, "max_packet_content": content}
    chunks = data.draw(chunkings(stream))
    assert run_server(chunks, eof=eof, **limits) == run_server([stream], eof=eof, **limits)


@PROPERTY
@given(st.binary(max_size=2000), st.data(), st.booleans())
def test_random_bytes_to_client(stream, data, eof):
    chunks = data.draw(chunkings(stream))
    assert run_client(chunks, eof=eof) == run_client([stream], eof=eof)


@st.composite
def mutated(draw, valid: bytes) -> bytes:
    """A valid stream with a few bytes flipped, inserted, deleted or cut."""
    stream = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate", "size"]))
        at = draw(st.integers(0, max(len(stream) - 1, 0)))
        if op == "set" and stream:
            stream[at] = draw(st.integers(0, 255))
        elif op == "insert":
            stream[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del stream[at : at + draw(st.integers(1, 8))]
        elif op == "truncate":
            del stream[at:]
        elif op == "size" and len(stream) >= at + 4:
            # Rewrite 4 bytes as a little-endian size: hits payload_size fields.
            stream[at : at + 4] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "little")
    return bytes(stream)


@PROPERTY
@given(st.lists(requests, min_size=1, max_size=4), st.data(), st.booleans())
def test_mutated_requests(reqs, data, eof):
    sender = ClientConnection()
    stream = data.draw(mutated(b"".join(sender.send(r) for r in reqs)))
    chunks = data.draw(chunkings(stream))
    assert run_server(chunks, eof=eof) == run_server([stream], eof=eof)


@PROPERTY
@given(st.lists(responses, min_size=1, max_size=6), st.data(), st.booleans())
def test_mutated_responses(resps, data, eof):
    sender = ServerConnection()
    stream = data.draw(mutated(b"".join(sender.send(r) for r in resps)))
    chunks = data.draw(chunkings(stream))
    assert run_client(chunks, eof=eof) == run_client([stream], eof=eof)


@PROPERTY
@given(st.lists(requests, min_size=1, max_size=4), st.binary(max_size=600), st.data())
def test_garbage_between_requests_costs_at_most_a_close(reqs, garbage, data):
    # A valid prefix is always given out whole, whatever follows it.
    sender = ClientConnection()
    prefix = b"".join(sender.send(r) for r in reqs)
    outcome = run_server(data.draw(chunkings(prefix + garbage)))
    expected = merge_content([e for r in reqs for e in expected_request_events(r)])
    assert outcome[: len(expected)] == expected


def cut_points(messages: list[bytes], header_size: int):
    """Anywhere in the stream, often at or next to a boundary or a header end."""
    total = sum(map(len, messages))
    starts = [sum(map(len, messages[:i])) for i in range(len(messages))]
    near = st.builds(
        lambda start, offset: min(start + offset, total),
        st.sampled_from(starts),
        st.sampled_from([0, 1, header_size - 1, header_size, header_size + 1, header_size + 267]),
    )
    return st.one_of(st.integers(0, total), near)


@PROPERTY
@given(st.lists(requests, min_size=1, max_size=4), st.data())
def test_request_stream_cut_by_eof(reqs, data):
    # EOF between messages is ConnectionClosed; anywhere else, after the
    # complete messages' events, it is a close=True error.
    sender = ClientConnection()
    messages = [sender.send(r) for r in reqs]
    wire = b"".join(messages)
    cut = data.draw(cut_points(messages, REQUEST_HEADER_SIZE))
    outcome = run_server(data.draw(chunkings(wire[:cut])), eof=True)
    complete, boundary = [], 0
    for request, message in zip(reqs, messages):
        if boundary + len(message) > cut:
            break
        boundary += len(message)
        complete += expected_request_events(request)
    complete = merge_content(complete)
    assert outcome[: len(complete)] == complete
    if cut == boundary:
        assert outcome[len(complete) :] == [ConnectionClosed()]
    else:
        assert outcome[-1] == ("error", 1607, True)


@PROPERTY
@given(st.lists(responses, min_size=1, max_size=6), st.data())
def test_response_stream_cut_by_eof(resps, data):
    sender = ServerConnection()
    messages = [sender.send(r) for r in resps]
    wire = b"".join(messages)
    cut = data.draw(cut_points(messages, RESPONSE_HEADER_SIZE))
    outcome = run_client(data.draw(chunkings(wire[:cut])), eof=True)
    lengths = [len(m) for m in messages]
    boundaries = [sum(lengths[:i]) for i in range(len(lengths) + 1)]
    complete = [r for r, end in zip(resps, boundaries[1:]) if end <= cut]
    assert outcome[: len(complete)] == complete
    if cut in boundaries:
        assert outcome[len(complete) :] == [ConnectionClosed()]
    else:
        assert outcome[len(complete) :] == [("error", 1607, True)]
