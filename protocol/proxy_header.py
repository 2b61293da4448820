"""The PROXY protocol header, versions 1 and 2, sans-I/O: bytes in, a header out.

A TCP balancer in front of the server (HAProxy's ``send-proxy-v2``) opens
its own connection to the server, so the server sees the balancer's address.
The PROXY protocol (HAProxy's ``doc/proxy-protocol.txt``) puts a header
before the client's bytes that names the client's address and port. What
reads the connection's first bytes (server/proxied.py) feeds them to
:func:`parse_proxy_header` until it returns a :class:`ProxyHeader`; the
bytes after its ``length`` are the client's stream.

* **Version 1** is one line of ASCII: ``PROXY TCP4|TCP6 SRC DST SPORT
  DPORT\\r\\n`` or ``PROXY UNKNOWN …\\r\\n``, at most
  :data:`V1_MAX_LENGTH` bytes with its CRLF. Single spaces, canonical
  addresses of the family named, ports without leading zeros.
* **Version 2** is binary: the 12-byte :data:`V2_SIGNATURE`, the version
  (2) and command (LOCAL or PROXY), the address family and transport, the
  length of what follows (big-endian), then the addresses and ports, then
  TLVs, which are skipped.

A ``LOCAL`` header (a balancer's health check) and an ``UNKNOWN`` or
unsupported family (UNIX sockets, datagrams, ``AF_UNSPEC``) carry no client
address: :attr:`ProxyHeader.source` is None, and the connection's own
address stands. Everything else the specification does not allow raises
:class:`ProxyHeaderError`, as soon as the bytes show it.

The layouts of version 2 are declared here once (protocol/wire.py holds
docs/PROTOCOL.md's own); the PROXY protocol is big-endian.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass

from construct import BitStruct, Bytes, Const, ConstructError, Int16ub, Nibble, Struct

from .connection import NEED_DATA, NeedData
from .errors import ProxyHeaderError
from .printable import quoted

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
#: The longest version 1 line with its CRLF (the specification's worst case:
#: ``PROXY UNKNOWN`` with two full IPv6 addresses and two 5-digit ports).
V1_MAX_LENGTH = 107
V1_LINE_END = b"\r\n"
V2_VERSION = 2
#: The most a version 2 header may declare after its fixed part (its
#: ``length``). The format allows 65535; this server reads none of the TLVs,
#: and what a TCP balancer sends fits well within this: the addresses (36
#: bytes for TCP over IPv6, 216 for UNIX sockets) plus HAProxy's TLVs
#: (ALPN, the authority of at most 255 bytes, a unique ID of at most 128, a
#: CRC32C, a network namespace, the TLS facts of a TLS frontend). A longer
#: header is refused rather than buffered: every connection waiting for its
#: header may hold this much.
MAX_V2_PAYLOAD = 2048

ProxyV2Fixed = Struct(
    "signature" / Const(V2_SIGNATURE),
    "version_command" / BitStruct("version" / Nibble, "command" / Nibble),
    "family_transport" / BitStruct("family" / Nibble, "transport" / Nibble),
    "length" / Int16ub,
)
ProxyV2Inet = Struct(
    "source" / Bytes(4),
    "destination" / Bytes(4),
    "source_port" / Int16ub,
    "destination_port" / Int16ub,
)
ProxyV2Inet6 = Struct(
    "source" / Bytes(16),
    "destination" / Bytes(16),
    "source_port" / Int16ub,
    "destination_port" / Int16ub,
)
V2_FIXED_SIZE = ProxyV2Fixed.sizeof()
#: The longest header either version may be: with this many bytes,
#: :func:`parse_proxy_header` never asks for more.
MAX_HEADER_SIZE = max(V1_MAX_LENGTH, V2_FIXED_SIZE + MAX_V2_PAYLOAD)

#: How many of a connection's first bytes tell whether it begins with a PROXY
#: header (:func:`starts_like_proxy_header`): the v2 signature, or ``PROXY ``
#: and six bytes without a line feed. A request of this protocol starts with
#: its 16-byte client id, which begins so once in 2**48 random ids (the
#: server's are random; a register's, which the server ignores, is zeros).
PROBE_SIZE = len(V2_SIGNATURE)

#: A version 1 port: decimal, no leading zero (the specification: no octal confusion).
_V1_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
_MAX_PORT = 65535
#: Bytes of a version 1 address: digits and dots (TCP4); hex digits, colons
#: and the dots of an embedded IPv4 address (TCP6). No scope (``%eth0``).
_V1_ADDRESS = re.compile(rb"[0-9A-Fa-f:.]{2,45}")
#: The fields of a version 1 TCP line after ``PROXY``: family, two addresses, two ports.
_V1_TCP_FIELDS = 5


class Command(enum.Enum):
    """What the sender says the connection is (version 2's low nibble; version 1 is PROXY)."""

    #: A connection of the balancer's own (a health check): its address stands.
    LOCAL = 0
    #: A connection relayed for a client: the header names the client.
    PROXY = 1


class Family(enum.Enum):
    """The relayed connection's kind, as far as this server uses it."""

    TCP4 = "TCP4"
    TCP6 = "TCP6"
    #: No address to use: ``UNKNOWN``, ``AF_UNSPEC``, UNIX sockets, datagrams, LOCAL.
    UNSPEC = "UNSPEC"


#: Version 2's family nibble (AF_UNSPEC, AF_INET, AF_INET6, AF_UNIX) and its layout.
_V2_FAMILIES = {0x0: None, 0x1: ProxyV2Inet, 0x2: ProxyV2Inet6, 0x3: None}
#: Version 2's transport nibble: UNSPEC, STREAM, DGRAM.
_V2_TRANSPORTS = {0x0, 0x1, 0x2}
_V2_STREAM = 0x1
_V2_FAMILY_OF = {ProxyV2Inet: Family.TCP4, ProxyV2Inet6: Family.TCP6}
_V1_FAMILIES = {b"TCP4": Family.TCP4, b"TCP6": Family.TCP6}
_V1_UNKNOWN = b"UNKNOWN"
_IP_VERSION = {Family.TCP4: 4, Family.TCP6: 6}


@dataclass(frozen=True)
class Endpoint:
    """An address and a port, as the header gives them."""

    address: str
    port: int


@dataclass(frozen=True)
class ProxyHeader:
    """A whole PROXY header; the connection's stream starts ``length`` bytes in."""

    version: int
    command: Command
    family: Family
    #: The client's end, or None when the header carries none (module doc).
    source: Endpoint | None
    destination: Endpoint | None
    length: int


def parse_proxy_header(data: bytes | bytearray | memoryview) -> ProxyHeader | NeedData:
    """The header at the start of ``data``, or ``NEED_DATA`` while it may still come.

    Reads at most the header's own bytes: what follows it never changes the
    answer. Given :data:`MAX_HEADER_SIZE` bytes, it never returns ``NEED_DATA``.

    Raises:
        ProxyHeaderError: the bytes are no PROXY header, or a broken one.
    """
    data = bytes(data[:MAX_HEADER_SIZE])
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    if data.startswith(V1_PREFIX):
        return _parse_v1(data)
    if V2_SIGNATURE.startswith(data) or V1_PREFIX.startswith(data):
        return NEED_DATA
    raise ProxyHeaderError("no PROXY protocol signature")


def starts_like_proxy_header(opening: bytes | bytearray) -> bool:
    """Whether a connection's first :data:`PROBE_SIZE` bytes (or more) begin a PROXY header.

    For a connection that must not send one: a balancer that sends headers
    to a server that was not told to take them from it.
    """
    if len(opening) < PROBE_SIZE:
        return False
    try:
        return parse_proxy_header(opening[:PROBE_SIZE]) is NEED_DATA
    except ProxyHeaderError:
        return False


def _parse_v2(data: bytes) -> ProxyHeader | NeedData:
    if len(data) < V2_FIXED_SIZE:
        return NEED_DATA
    fixed = ProxyV2Fixed.parse(data[:V2_FIXED_SIZE])
    if fixed.version_command.version != V2_VERSION:
        raise ProxyHeaderError(f"version {fixed.version_command.version} after the v2 signature")
    try:
        command = Command(fixed.version_command.command)
    except ValueError:
        raise ProxyHeaderError(f"unknown v2 command {fixed.version_command.command}") from None
    family, transport = fixed.family_transport.family, fixed.family_transport.transport
    if family not in _V2_FAMILIES or transport not in _V2_TRANSPORTS:
        raise ProxyHeaderError(f"unknown v2 family and transport 0x{family:x}{transport:x}")
    if fixed.length > MAX_V2_PAYLOAD:
        raise ProxyHeaderError(
            f"v2 header declares {fixed.length} bytes, more than the {MAX_V2_PAYLOAD} taken"
        )
    layout = _V2_FAMILIES[family] if transport == _V2_STREAM else None
    if command is Command.PROXY and layout is not None and fixed.length < layout.sizeof():
        raise ProxyHeaderError(
            f"v2 header declares {fixed.length} bytes, too few for its addresses"
        )
    length = V2_FIXED_SIZE + fixed.length
    if len(data) < length:
        return NEED_DATA
    if command is Command.LOCAL or layout is None:
        # LOCAL: the addresses are ignored; others: a family this server does not use.
        return ProxyHeader(V2_VERSION, command, Family.UNSPEC, None, None, length)
    try:
        addresses = layout.parse(data[V2_FIXED_SIZE:length])
    except ConstructError as exc:  # cannot happen: the length was checked
        raise ProxyHeaderError(f"v2 addresses unreadable: {exc}") from exc
    return ProxyHeader(
        V2_VERSION,
        command,
        _V2_FAMILY_OF[layout],
        Endpoint(str(ipaddress.ip_address(addresses.source)), addresses.source_port),
        Endpoint(str(ipaddress.ip_address(addresses.destination)), addresses.destination_port),
        length,
    )


def _parse_v1(data: bytes) -> ProxyHeader | NeedData:
    line_feed = data.find(b"\n", 0, V1_MAX_LENGTH)
    if line_feed < 0:
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyHeaderError(f"v1 header with no CRLF in its first {V1_MAX_LENGTH} bytes")
        return NEED_DATA
    length = line_feed + 1
    if not data[:length].endswith(V1_LINE_END):
        raise ProxyHeaderError("v1 header ends with a line feed alone, not CRLF")
    line = data[len(V1_PREFIX) : length - len(V1_LINE_END)]
    if b"\r" in line:
        raise ProxyHeaderError("v1 header holds a carriage return alone")
    family_name = line.split(b" ", 1)[0]
    if family_name == _V1_UNKNOWN:
        # The specification: anything before the CRLF is ignored.
        return ProxyHeader(1, Command.PROXY, Family.UNSPEC, None, None, length)
    family = _V1_FAMILIES.get(family_name)
    if family is None:
        raise ProxyHeaderError(f"v1 header names no known family: {quoted(family_name)}")
    fields = line.split(b" ")
    if len(fields) != _V1_TCP_FIELDS:
        raise ProxyHeaderError(
            f"v1 {family.value} header has {len(fields)} fields separated by single spaces,"
            f" not {_V1_TCP_FIELDS}"
        )
    _, source, destination, source_port, destination_port = fields
    return ProxyHeader(
        1,
        Command.PROXY,
        family,
        Endpoint(_v1_address(source, family), _v1_port(source_port)),
        Endpoint(_v1_address(destination, family), _v1_port(destination_port)),
        length,
    )


def _v1_address(text: bytes, family: Family) -> str:
    """A version 1 address of ``family``, in its canonical form.

    Raises:
        ProxyHeaderError: not an address of that family (leading zeros in
            IPv4, a scope in IPv6, anything else).
    """
    try:
        if not _V1_ADDRESS.fullmatch(text):
            raise ValueError(text)
        ip = ipaddress.ip_address(text.decode("ascii"))
    except ValueError:
        raise ProxyHeaderError(f"v1 header: {quoted(text)} is no {family.value} address") from None
    if ip.version != _IP_VERSION[family]:
        raise ProxyHeaderError(f"v1 header: {quoted(text)} is no {family.value} address")
    return str(ip)


def _v1_port(text: bytes) -> int:
    """A version 1 port.

    Raises:
        ProxyHeaderError: not 0 to 65535 in decimal without a leading zero.
    """
    if not _V1_PORT.fullmatch(text) or int(text) > _MAX_PORT:
        raise ProxyHeaderError(f"v1 header: {quoted(text)} is no port")
    return int(text)


__all__ = [
    "MAX_HEADER_SIZE",
    "MAX_V2_PAYLOAD",
    "NEED_DATA",
    "PROBE_SIZE",
    "V1_MAX_LENGTH",
    "V1_PREFIX",
    "V2_SIGNATURE",
    "Command",
    "Endpoint",
    "Family",
    "ProxyHeader",
    "ProxyHeaderError",
    "parse_proxy_header",
    "starts_like_proxy_header",
]
