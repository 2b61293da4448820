"""Registrations per address group in the last minute: a flood of 825s meets 1601.

Each group's registration times are a deque, and the groups are kept in an
ordered dict from the least to the most recently registering: a group whose
last registration is older than the window is at the front, and each call
pops every such group there. A group enters the dict once per registration,
so the pops cost O(1) per call amortised, and the memory is what the last
window's registrations need, however many groups came before.
"""

from __future__ import annotations

import collections
from typing import Callable

#: The rate's window, in seconds (the limit is per minute).
RATE_WINDOW = 60.0


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
        if not self._per_minute:
            return True
        now = self._clock()
        self._forget_stale(now)
        times = self._times.get(group)
        if times is None:
            times = self._times[group] = collections.deque()
        while times and now - times[0] > RATE_WINDOW:
            times.popleft()
        if len(times) >= self._per_minute:
            return False
        times.append(now)
        self._times.move_to_end(group)
        return True

    def _forget_stale(self, now: float) -> None:
        """Drop every group whose last registration left the window (they are at the front)."""
        while self._times:
            group, times = next(iter(self._times.items()))
            if times and now - times[-1] <= RATE_WINDOW:
                return
            del self._times[group]
