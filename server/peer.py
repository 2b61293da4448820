"""Where a connection comes from; each connection has its own :class:`Peer`.

Two notions of "address", defined here once:

* ``Peer.address``, the exact address: key binding (docs/KEY_BINDING.md)
  binds to it, and log lines name it;
* ``Peer.group``, what every per-address *limit* counts (connections,
  registrations per minute, the share of the client cap, the share of the
  disk): an IPv4 address is its own group; an IPv6 address counts with its
  network of ``ipv6_prefix`` leading bits (``--ipv6-prefix``, a /64 by
  default: one host or one home network gets a /64, so 2^64 addresses are
  one "address" to the limits). An IPv4-mapped IPv6 address
  (``::ffff:a.b.c.d``, as a dual-stack listener reports IPv4 peers) is the
  IPv4 address.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from protocol.editions import V3, Edition

#: The prefix length of a host's or a home network's IPv6 block (RFC 6177).
DEFAULT_IPV6_PREFIX = 64
#: Bits in an IPv6 address: a prefix of this length groups each address alone.
IPV6_BITS = 128


def plain_address(address: str) -> str:
    """The address as listeners of either family report it: an IPv4-mapped IPv6 one as IPv4."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return address


def address_group(address: str, ipv6_prefix: int = DEFAULT_IPV6_PREFIX) -> str:
    """What per-address limits count for ``address`` (see the module doc).

    An IPv6 address gives its network in CIDR form (``2001:db8:1:2::/64``);
    an IPv4 address (or an IPv4-mapped one) gives itself; text that is no IP
    address (a test's name for a peer) is its own group.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        # Built from the number: a scope (fe80::1%eth0) is not part of the group.
        return str(ipaddress.IPv6Network((int(ip), ipv6_prefix), strict=False))
    return str(ip)


@dataclass(eq=False)
class Peer:
    """A connection's remote address; the object itself stands for the connection.

    Compared by identity: two connections from the same address and port
    (one after the other) are two peers. Uploads and keyless registrations
    remember the connection that holds them by its Peer. ``group`` is what
    per-address limits count (module doc).
    """

    address: str
    port: int
    ipv6_prefix: int = field(default=DEFAULT_IPV6_PREFIX, repr=False)
    group: str = field(init=False)

    def __post_init__(self) -> None:
        self.address = plain_address(self.address)
        self.group = address_group(self.address, self.ipv6_prefix)

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Speaking:
    """The protocol edition a request came in (docs/EDITIONS.md).

    ``known`` is False while the connection's requests leave more than one
    edition of its family possible: a registration then records the family,
    and the first request that tells them apart records the edition.
    """

    edition: Edition = V3
    known: bool = True

    @property
    def record(self) -> str:
        """What a client registered now has recorded as its edition."""
        return self.edition.name if self.known else self.edition.family.value
