"""What every handler shares: storage, uploads, limits, timers and clocks."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Callable

from .limits import Limits
from .storage.db import Database
from .storage.files import FileStore
from .timers import Timers
from .uploads import Uploads

_RATE_WINDOW = 60.0


@dataclass(eq=False)
class Peer:
    """The handlers' view of a connection: where it comes from.

    Each connection has its own Peer object; its identity stands for the
    connection (see :attr:`App.live_registrations`).
    """

    address: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


class RegistrationLimiter:
    """Registrations per address in the last minute (HOSTILE.md B5)."""

    def __init__(self, per_minute: int, clock: Callable[[], float]) -> None:
        self._per_minute = per_minute
        self._clock = clock
        self._times: dict[str, collections.deque] = {}

    def allow(self, address: str) -> bool:
        """Count a registration; False when the address is over its rate."""
        if not self._per_minute:
            return True
        now = self._clock()
        times = self._times.setdefault(address, collections.deque())
        while times and now - times[0] > _RATE_WINDOW:
            times.popleft()
        for stale in [a for a, t in self._times.items() if not t and a != address]:
            del self._times[stale]
        if len(times) >= self._per_minute:
            return False
        times.append(now)
        return True


@dataclass
class App:
    """The server's shared state; one per process, never a global."""

    db: Database
    store: FileStore
    limits: Limits
    timers: Timers
    uploads: Uploads
    registrations: RegistrationLimiter
    wall_clock: Callable[[], float] = field(default=time.time)
    #: Keyless registrations made by 825 on a connection still open: another
    #: connection's 825 for the same name gets 1601 (HOSTILE.md B4).
    live_registrations: dict[bytes, Peer] = field(default_factory=dict)

    def connection_closed(self, peer: Peer) -> None:
        """Forget the registrations a closed connection was holding."""
        for client_id in [k for k, v in self.live_registrations.items() if v is peer]:
            del self.live_registrations[client_id]

    @classmethod
    def build(
        cls,
        db: Database,
        store: FileStore,
        limits: Limits,
        clock: Callable[[], float] = time.monotonic,
    ) -> App:
        """Wire the parts together."""
        timers = Timers(clock)
        return cls(
            db=db,
            store=store,
            limits=limits,
            timers=timers,
            uploads=Uploads(timers, limits.idle_timeout),
            registrations=RegistrationLimiter(limits.registrations_per_minute, clock),
        )

    def monotonic(self) -> float:
        """The loop's clock (deadlines, elapsed times)."""
        return self.timers.clock()
