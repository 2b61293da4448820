"""Where a connection comes from; each connection has its own :class:`Peer`."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.editions import V3, Edition


@dataclass(eq=False)
class Peer:
    """A connection's remote address; the object itself stands for the connection.

    Compared by identity: two connections from the same address and port
    (one after the other) are two peers. Uploads and keyless registrations
    remember the connection that holds them by its Peer.
    """

    address: str
    port: int

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
