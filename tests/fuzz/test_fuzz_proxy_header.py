"""Fuzzing the PROXY header parser with hypothesis (issue 27, point 2).

Whatever the bytes (random, or hand-built headers with bytes changed, cut or
added), :func:`parse_proxy_header`:

* returns ``NEED_DATA``, a header, or raises ``ProxyHeaderError``: nothing else;
* never reads past the header: the bytes after its ``length`` change nothing,
  and a version 2 header is exactly its fixed part plus its declared length;
* decides within ``MAX_HEADER_SIZE`` bytes, and only ever moves forward: a
  header's every prefix asks for more, and bytes added to an error stay an error.
"""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import proxy_headers as ph
from protocol.proxy_header import (
    MAX_HEADER_SIZE,
    NEED_DATA,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    parse_proxy_header,
)

SEEDS = [
    ph.v1("TCP4", "127.0.0.5", "127.0.0.1", 40000, 1256),
    ph.v1("TCP6", "2001:db8::7", "::1", 65535, 0),
    b"PROXY UNKNOWN\r\n",
    ph.v2_tcp4("127.0.0.9", 5555),
    ph.v2_tcp4("127.0.0.9", 5555, tlvs=ph.tlv(ph.TLV_AUTHORITY, b"drop.example")),
    ph.v2_tcp6("2001:db8::7", 443),
    ph.v2_local(),
    ph.v2(ph.V2_PROXY, ph.UNIX_STREAM, bytes(2 * ph.UNIX_ADDRESS_SIZE)),
]
#: The fixed part of a version 2 header: signature, two nibble bytes, the length.
V2_FIXED_SIZE = len(ph.SIGNATURE) + 4
V2_LENGTH_AT = len(ph.SIGNATURE) + 2
#: A line whose CRLF comes just past the 107 bytes a v1 header may take.
CRLF_TOO_LATE = b"PROXY UNKNOWN " + b"f" * (V1_MAX_LENGTH - 15) + b"\r\n"
FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw) -> bytes:
    """A seed with a few bytes set, inserted or deleted, maybe cut or extended."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, max(0, len(data) - 1)))
        op = draw(st.sampled_from(["set", "insert", "delete", "length"]))
        if op == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif op == "length" and data.startswith(ph.SIGNATURE):
            data[V2_LENGTH_AT:V2_LENGTH_AT + 2] = ph.be16(draw(st.integers(0, 0xFFFF)))
    data += draw(st.binary(max_size=64))
    return bytes(data)


@st.composite
def v2_shaped(draw) -> bytes:
    """The v2 signature, any two nibble bytes, any declared length, any body."""
    body = draw(st.binary(max_size=300))
    declared = draw(st.one_of(st.just(len(body)), st.integers(0, 0xFFFF)))
    head = bytes([draw(st.integers(0, 255)), draw(st.integers(0, 255))])
    return V2_SIGNATURE + head + ph.be16(declared) + body


@st.composite
def v1_shaped(draw) -> bytes:
    """``PROXY ``, a family, words from the header's alphabet, with or without a CRLF."""
    family = draw(st.sampled_from(["TCP4", "TCP6", "UNKNOWN", "TCP5"]))
    words = [family] + draw(st.lists(
        st.one_of(
            st.sampled_from(["TCP4", "TCP6", "UNKNOWN", "127.0.0.1", "::1", "0", "65535", ""]),
            st.text("0123456789abcdefABCDEF:.%- \r\n", max_size=45),
        ),
        max_size=6,
    ))
    # Padding takes a line past V1_MAX_LENGTH as often as not.
    padding = draw(st.one_of(st.just(""), st.text("f:", min_size=60, max_size=120)))
    line = " ".join(words + [padding]) if padding else " ".join(words)
    return b"PROXY " + line.encode("ascii") + draw(st.sampled_from([b"\r\n", b""]))


INPUTS = st.one_of(st.binary(max_size=200), mutated(), v2_shaped(), v1_shaped())


def outcome(data: bytes) -> ProxyHeader | object:
    """What the parser makes of ``data``: NEED_DATA, a header, or the error's class."""
    try:
        return parse_proxy_header(data)
    except ProxyHeaderError:
        return ProxyHeaderError


@FUZZ
@given(INPUTS, st.binary(max_size=32))
@example(CRLF_TOO_LATE, b"")
def test_only_a_header_need_data_or_proxy_header_error(data, after):
    result = outcome(data)  # anything but ProxyHeaderError propagates and fails
    if result is NEED_DATA:
        # A header may still complete, within the bytes the reader holds at most.
        if data.startswith(V2_SIGNATURE) and len(data) >= V2_FIXED_SIZE:
            declared = int.from_bytes(data[V2_LENGTH_AT:V2_LENGTH_AT + 2], "big")
            assert V2_FIXED_SIZE + declared <= MAX_HEADER_SIZE
        else:
            assert len(data) < V1_MAX_LENGTH
        return
    if result is ProxyHeaderError:
        assert outcome(data + after) is ProxyHeaderError  # an error is final
        return
    assert isinstance(result, ProxyHeader)
    assert 0 < result.length <= min(len(data), MAX_HEADER_SIZE)


@FUZZ
@given(INPUTS, st.binary(max_size=32))
@example(CRLF_TOO_LATE, b"")
def test_never_reads_past_the_header(data, after):
    result = outcome(data)
    if not isinstance(result, ProxyHeader):
        return
    header = data[:result.length]
    assert outcome(header) == result
    assert outcome(header + after) == result
    if result.version == 2:
        assert result.length == V2_FIXED_SIZE + int.from_bytes(
            data[V2_LENGTH_AT:V2_LENGTH_AT + 2], "big"
        )
    else:
        assert header.endswith(b"\r\n") and result.length <= V1_MAX_LENGTH
        assert b"\n" not in header[:-1]
    for end in range(result.length):
        assert outcome(header[:end]) is NEED_DATA
