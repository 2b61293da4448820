"""Where a connection comes from; each connection has its own :class:`Peer`."""

from __future__ import annotations

from dataclasses import dataclass


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
