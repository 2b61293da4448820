"""protocol.proxy_header: PROXY protocol headers, v1 and v2, built by hand (issue 27, point 2).

Each valid header is fed whole, byte by byte (every prefix asks for more,
never errs), and with the client's stream after it (the length stops at the
header). Each broken one raises ProxyHeaderError, a RemoteProtocolError
that closes unanswered, as soon as the bytes show it.
"""

from __future__ import annotations

import pytest

import proxy_headers as ph
from protocol import RemoteProtocolError
from protocol.proxy_header import (
    MAX_HEADER_SIZE,
    MAX_V2_PAYLOAD,
    NEED_DATA,
    V1_MAX_LENGTH,
    Command,
    Endpoint,
    Family,
    ProxyHeader,
    ProxyHeaderError,
    parse_proxy_header,
)

#: Bytes of the client's stream after a header: a request header's worth.
STREAM = bytes(range(1, 24))
IPV6_SOURCE = "2001:db8::7"
#: The longest v1 line the specification shows (UNKNOWN with two full IPv6 addresses).
FULL_IPV6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"

VALID = {
    "v1 TCP4": (
        ph.v1("TCP4", "127.0.0.5", "127.0.0.1", 40000, 1256),
        (1, Command.PROXY, Family.TCP4, Endpoint("127.0.0.5", 40000), Endpoint("127.0.0.1", 1256)),
    ),
    "v1 TCP6": (
        ph.v1("TCP6", IPV6_SOURCE, "::1", 65535, 0),
        (1, Command.PROXY, Family.TCP6, Endpoint(IPV6_SOURCE, 65535), Endpoint("::1", 0)),
    ),
    "v1 TCP6 upper case": (
        ph.v1("TCP6", "2001:DB8::7", "::1", 1, 2),
        (1, Command.PROXY, Family.TCP6, Endpoint(IPV6_SOURCE, 1), Endpoint("::1", 2)),
    ),
    "v1 UNKNOWN short": (
        b"PROXY UNKNOWN\r\n",
        (1, Command.PROXY, Family.UNSPEC, None, None),
    ),
    "v1 UNKNOWN longest": (
        ph.v1("UNKNOWN", FULL_IPV6, FULL_IPV6, 65535, 65535),
        (1, Command.PROXY, Family.UNSPEC, None, None),
    ),
    "v2 TCP4": (
        ph.v2_tcp4("127.0.0.9", 5555),
        (2, Command.PROXY, Family.TCP4, Endpoint("127.0.0.9", 5555), Endpoint("127.0.0.1", 1256)),
    ),
    "v2 TCP6": (
        ph.v2_tcp6(IPV6_SOURCE, 443),
        (2, Command.PROXY, Family.TCP6, Endpoint(IPV6_SOURCE, 443), Endpoint("::1", 1256)),
    ),
    "v2 TCP4 with TLVs": (
        ph.v2_tcp4("127.0.0.9", 5555, tlvs=ph.tlv(ph.TLV_AUTHORITY, b"drop.example")
                   + ph.tlv(ph.TLV_NOOP, bytes(300))),
        (2, Command.PROXY, Family.TCP4, Endpoint("127.0.0.9", 5555), Endpoint("127.0.0.1", 1256)),
    ),
    "v2 LOCAL": (
        ph.v2_local(),
        (2, Command.LOCAL, Family.UNSPEC, None, None),
    ),
    # The specification: LOCAL ignores the addresses, whatever its length says.
    "v2 LOCAL with addresses": (
        ph.v2(ph.V2_LOCAL, ph.TCP4, ph.inet_body("127.0.0.1", "127.0.0.2", 1, 2)),
        (2, Command.LOCAL, Family.UNSPEC, None, None),
    ),
    "v2 UNSPEC": (
        ph.v2(ph.V2_PROXY, ph.UNSPEC, b""),
        (2, Command.PROXY, Family.UNSPEC, None, None),
    ),
    # Valid combinations this server does not use fall back to UNSPEC.
    "v2 UDP over IPv4": (
        ph.v2(ph.V2_PROXY, ph.UDP4, ph.inet_body("127.0.0.1", "127.0.0.2", 1, 2)),
        (2, Command.PROXY, Family.UNSPEC, None, None),
    ),
    "v2 UNIX stream": (
        ph.v2(ph.V2_PROXY, ph.UNIX_STREAM, bytes(2 * ph.UNIX_ADDRESS_SIZE)),
        (2, Command.PROXY, Family.UNSPEC, None, None),
    ),
    "v2 at the cap": (
        ph.v2_tcp4("127.0.0.9", 1, tlvs=ph.tlv(ph.TLV_NOOP, bytes(MAX_V2_PAYLOAD - 12 - 3))),
        (2, Command.PROXY, Family.TCP4, Endpoint("127.0.0.9", 1), Endpoint("127.0.0.1", 1256)),
    ),
}


def expected(header: bytes, fields: tuple) -> ProxyHeader:
    return ProxyHeader(*fields, length=len(header))


@pytest.mark.parametrize("name", VALID)
def test_a_valid_header_whole_and_with_the_stream_after_it(name):
    header, fields = VALID[name]
    assert parse_proxy_header(header) == expected(header, fields)
    parsed = parse_proxy_header(header + STREAM)
    assert parsed == expected(header, fields)
    assert (header + STREAM)[parsed.length:] == STREAM


@pytest.mark.parametrize("name", VALID)
def test_every_prefix_of_a_valid_header_asks_for_more(name):
    header, _ = VALID[name]
    for end in range(len(header)):
        assert parse_proxy_header(header[:end]) is NEED_DATA, end


def test_the_longest_v1_line_is_the_specifications_107_bytes():
    header, _ = VALID["v1 UNKNOWN longest"]
    assert len(header) == V1_MAX_LENGTH


BROKEN = {
    "garbage": b"GET / HTTP/1.1\r\n",
    "a cipherdrop request": bytes(16) + b"\x03\x39\x03\x00\x00\x00\x00",
    "wrong signature": ph.SIGNATURE[:-1] + b"\x0b" + ph.v2_local()[len(ph.SIGNATURE):],
    "v2 version 1": ph.v2(0x11, ph.TCP4, ph.inet_body("127.0.0.1", "127.0.0.2", 1, 2)),
    "v2 version 3": ph.v2(0x31, ph.TCP4, ph.inet_body("127.0.0.1", "127.0.0.2", 1, 2)),
    "v2 unknown command": ph.v2(0x22, ph.TCP4, ph.inet_body("127.0.0.1", "127.0.0.2", 1, 2)),
    "v2 unknown family": ph.v2(ph.V2_PROXY, 0x41, bytes(12)),
    "v2 unknown transport": ph.v2(ph.V2_PROXY, 0x13, bytes(12)),
    "v2 TCP4 too short for its addresses": ph.v2(ph.V2_PROXY, ph.TCP4, bytes(11)),
    "v2 TCP6 too short for its addresses": ph.v2(ph.V2_PROXY, ph.TCP6, bytes(35)),
    "v2 over the cap": ph.v2_tcp4("127.0.0.9", 1, tlvs=bytes(MAX_V2_PAYLOAD - 12 + 1)),
    "v2 at the format's maximum": ph.SIGNATURE + bytes([ph.V2_PROXY, ph.TCP4]) + b"\xff\xff",
    "v1 lowercase": b"proxy TCP4 127.0.0.5 127.0.0.1 1 2\r\n",
    "v1 unknown family": ph.v1("TCP5", "127.0.0.5", "127.0.0.1", 1, 2),
    "v1 UNKNOWN glued": b"PROXY UNKNOWNX\r\n",
    "v1 LF alone": b"PROXY TCP4 127.0.0.5 127.0.0.1 1 2\n",
    "v1 CR alone inside": b"PROXY TCP4 127.0.0.5\r127.0.0.1 1 2\r\n",
    "v1 two spaces": b"PROXY TCP4  127.0.0.5 127.0.0.1 1 2\r\n",
    "v1 a field missing": b"PROXY TCP4 127.0.0.5 127.0.0.1 1\r\n",
    "v1 a field more": b"PROXY TCP4 127.0.0.5 127.0.0.1 1 2 3\r\n",
    "v1 IPv6 in TCP4": ph.v1("TCP4", "::1", "127.0.0.1", 1, 2),
    "v1 IPv4 in TCP6": ph.v1("TCP6", "127.0.0.5", "::1", 1, 2),
    "v1 leading zero in an address": ph.v1("TCP4", "127.0.0.05", "127.0.0.1", 1, 2),
    "v1 IPv6 scope": ph.v1("TCP6", "fe80::1%eth0", "::1", 1, 2),
    "v1 name for an address": ph.v1("TCP4", "localhost", "127.0.0.1", 1, 2),
    "v1 leading zero in a port": ph.v1("TCP4", "127.0.0.5", "127.0.0.1", 1, 2).replace(b" 1 ", b" 01 "),
    "v1 port too large": ph.v1("TCP4", "127.0.0.5", "127.0.0.1", 65536, 2),
    "v1 negative port": b"PROXY TCP4 127.0.0.5 127.0.0.1 -1 2\r\n",
    "v1 escape in the family": b"PROXY \x1b[31m 127.1.1.1 127.1.1.1 1 2\r\n",
    "v1 no CRLF in 107 bytes": b"PROXY UNKNOWN " + b"f" * (V1_MAX_LENGTH - 14),
}


@pytest.mark.parametrize("name", BROKEN)
def test_a_broken_header_is_a_proxy_header_error_that_closes_unanswered(name):
    with pytest.raises(ProxyHeaderError) as caught:
        parse_proxy_header(BROKEN[name] + STREAM)
    assert isinstance(caught.value, RemoteProtocolError)
    assert caught.value.close and not caught.value.answer
    assert str(caught.value).isprintable()


@pytest.mark.parametrize("name", ["garbage", "a cipherdrop request", "wrong signature"])
def test_no_signature_is_refused_at_the_first_byte_that_shows_it(name):
    data = BROKEN[name]
    first_wrong = next(
        end for end in range(1, len(data) + 1)
        if not (ph.SIGNATURE.startswith(data[:end]) or b"PROXY ".startswith(data[:end]))
    )
    assert parse_proxy_header(data[:first_wrong - 1]) is NEED_DATA
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(data[:first_wrong])


def test_an_oversized_v2_is_refused_from_its_fixed_part_alone():
    header = BROKEN["v2 at the format's maximum"]
    assert len(header) == len(ph.SIGNATURE) + 4  # nothing of its 65535 bytes sent
    with pytest.raises(ProxyHeaderError, match="65535"):
        parse_proxy_header(header)


def test_max_header_size_bytes_always_decide():
    """The reader never needs to hold more than MAX_HEADER_SIZE bytes."""
    for data in (b"PROXY " + b"x" * MAX_HEADER_SIZE, ph.SIGNATURE + bytes(MAX_HEADER_SIZE)):
        with pytest.raises(ProxyHeaderError):
            parse_proxy_header(data[:MAX_HEADER_SIZE])
    header, _ = VALID["v2 at the cap"]
    assert len(header) == MAX_HEADER_SIZE
    assert parse_proxy_header(header + STREAM).length == MAX_HEADER_SIZE


def test_v1_ignores_what_follows_unknown():
    header = b"PROXY UNKNOWN \x00\xff anything\r\n"
    assert parse_proxy_header(header + STREAM) == ProxyHeader(
        1, Command.PROXY, Family.UNSPEC, None, None, len(header)
    )


def test_a_peers_text_in_the_error_is_escaped():
    with pytest.raises(ProxyHeaderError) as caught:
        parse_proxy_header(BROKEN["v1 escape in the family"])
    assert "\x1b" not in str(caught.value)
    assert "\\x1b" in str(caught.value)
