"""Registrations per address group in the last minute: a flood of 825s meets 1601.

Each group's registration times are a deque, and the groups are kept in an
ordered dict from the least to the most recently registering: a group whose
last registration is older than the window is at the front. Each call pops
at most ``PURGE_PER_CALL`` such groups there (bounded work per 825, and more
than the one group a call can add, so stale groups drain faster than they
come); :meth:`RegistrationLimiter.sweep`, on the server's timers, pops the
rest when 825s stop. The memory is what the last window's registrations
need, however many groups came before.
"""

from __future__ import annotations

import collections
from typing import Callable

#: The rate's window, in seconds (the limit is per minute).
RATE_WINDOW = 60.0
#: Stale groups forgotten per registration at the most: bounded work per call,
#: several times the one group a call may add.
PURGE_PER_CALL = 8


class RegistrationLimiter:
    """Registrations per address group (server/peer.py) in the last ``RATE_WINDOW`` seconds."""

    def __init__(self, per_minute: int, clock: Callable[[], float]) -> None:
        self._per_minute = per_minute
        self._clock = clock
        #: Each group's times in the window, the least recently registering group first.
        self._times: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict()
        )

    def __len__(self) -> int:
        """How many groups are tracked (each registered within the window, or not yet pruned)."""
        return len(self._times)

    def allow(self, group: str) -> bool:
        """Count a registration from ``group``; False when the group is over its rate."""
        if not self.allows(group):
            return False
        self._count(group)
        return True

    def allows(self, group: str) -> bool:
        """Whether a registration from ``group`` is within its rate now (nothing counted:
        :meth:`allow` counts it). Time only lets the window's registrations go, so a group
        allowed here is allowed by an :meth:`allow` that follows."""
        if not self._per_minute:
            return True
        now = self._clock()
        self._forget_stale(now, PURGE_PER_CALL)
        times = self._times.get(group)
        if times is None:
            return True
        while times and now - times[0] > RATE_WINDOW:
            times.popleft()
        return len(times) < self._per_minute

    def _count(self, group: str) -> None:
        times = self._times.get(group)
        if times is None:
            times = self._times[group] = collections.deque()
        times.append(self._clock())
        self._times.move_to_end(group)

    def sweep(self) -> None:
        """Forget every group whose last registration left the window (the timers call this)."""
        self._forget_stale(self._clock(), len(self._times))

    def _forget_stale(self, now: float, most: int) -> None:
        """Drop up to ``most`` groups whose last registration left the window (at the front)."""
        for _ in range(most):
            if not self._times:
                return
            group, times = next(iter(self._times.items()))
            if times and now - times[-1] <= RATE_WINDOW:
                return
            del self._times[group]
