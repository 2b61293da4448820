"""Timers for the loop: a heap of deadlines on the monotonic clock."""

from __future__ import annotations

import heapq
import itertools
from typing import Callable


class Timer:
    """A scheduled call; ``cancel()`` makes it a no-op."""

    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        """Do not run this timer."""
        self.cancelled = True


class Timers:
    """Deadlines kept in a heap; cancelled entries are dropped when reached."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, Timer]] = []
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run callback at ``when`` (monotonic seconds)."""
        timer = Timer(when, callback)
        heapq.heappush(self._heap, (when, next(self._counter), timer))
        return timer

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run callback after ``delay`` seconds."""
        return self.call_at(self.clock() + delay, callback)

    def timeout(self, maximum: float) -> float:
        """Seconds until the next live timer, at most ``maximum``."""
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        if not self._heap:
            return maximum
        return min(maximum, max(0.0, self._heap[0][0] - self.clock()))

    def due(self) -> list[Timer]:
        """Pop every live timer whose time has come (the caller runs them)."""
        now = self.clock()
        ready = []
        while self._heap and self._heap[0][0] <= now:
            timer = heapq.heappop(self._heap)[2]
            if not timer.cancelled:
                timer.cancelled = True
                ready.append(timer)
        return ready
