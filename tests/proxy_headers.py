"""PROXY protocol headers written by hand from HAProxy's proxy-protocol.txt.

Nothing here uses protocol/proxy_header.py: the parser's tests and the
server's build their headers with these, so that a mistake in the parser's
declarations cannot hide itself.
"""

from __future__ import annotations

import ipaddress

#: Section 2.2: the 12 bytes that open every version 2 header.
SIGNATURE = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"
#: Section 2.2: version 2 in the high nibble; LOCAL 0, PROXY 1 in the low one.
V2_LOCAL = 0x20
V2_PROXY = 0x21
#: Section 2.2: family (high nibble) and transport (low nibble).
TCP4 = 0x11
UDP4 = 0x12
TCP6 = 0x21
UNIX_STREAM = 0x31
UNSPEC = 0x00
#: Section 2.2.7: a TLV of type PP2_TYPE_AUTHORITY, and one of PP2_TYPE_NOOP.
TLV_AUTHORITY = 0x02
TLV_NOOP = 0x04
UNIX_ADDRESS_SIZE = 108


def be16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def v1(family: str, source: str, destination: str, source_port: int, destination_port: int) -> bytes:
    """``PROXY FAMILY SRC DST SPORT DPORT\\r\\n``."""
    return (f"PROXY {family} {source} {destination} {source_port} {destination_port}\r\n"
            .encode("ascii"))


def v2(version_command: int, family_transport: int, body: bytes) -> bytes:
    """The signature, the two nibble bytes, the body's length (big-endian), the body."""
    return SIGNATURE + bytes([version_command, family_transport]) + be16(len(body)) + body


def inet_body(source: str, destination: str, source_port: int, destination_port: int) -> bytes:
    """Addresses (4 or 16 bytes each, network order), then the two ports."""
    return (ipaddress.ip_address(source).packed + ipaddress.ip_address(destination).packed
            + be16(source_port) + be16(destination_port))


def tlv(kind: int, value: bytes) -> bytes:
    """type(1) length(2, big-endian) value."""
    return bytes([kind]) + be16(len(value)) + value


def v2_tcp4(source: str, source_port: int, destination: str = "127.0.0.1",
            destination_port: int = 1256, tlvs: bytes = b"") -> bytes:
    """A PROXY command for TCP over IPv4, with TLVs after the addresses."""
    return v2(V2_PROXY, TCP4, inet_body(source, destination, source_port, destination_port) + tlvs)


def v2_tcp6(source: str, source_port: int, destination: str = "::1",
            destination_port: int = 1256) -> bytes:
    """A PROXY command for TCP over IPv6."""
    return v2(V2_PROXY, TCP6, inet_body(source, destination, source_port, destination_port))


def v2_local() -> bytes:
    """A LOCAL command (a balancer's health check), no addresses."""
    return v2(V2_LOCAL, UNSPEC, b"")
