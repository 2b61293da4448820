"""Timers for the loop: a heap of deadlines on the monotonic clock.

A cancelled timer drops its callback at once: the callback usually closes
over a connection, which must not outlive its close by the timer's delay.
Its heap entry stays until it is reached, or until cancelled entries are
most of the heap, which is then rebuilt: connection churn cannot grow it.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Callable

#: Heaps smaller than this are never rebuilt: not worth it.
COMPACT_MIN_ENTRIES = 256


class Timer:
    """A scheduled call; ``cancel()`` makes it a no-op and drops the callback."""

    __slots__ = ("when", "callback", "cancelled", "_timers")

    def __init__(self, when: float, callback: Callable[[], None], timers: Timers) -> None:
        self.when = when
        self.callback: Callable[[], None] | None = callback
        self.cancelled = False
        self._timers: Timers | None = timers  # None once out of the heap

    def cancel(self) -> None:
        """Do not run this timer; no effect once :meth:`Timers.due` returned it."""
        timers, self._timers = self._timers, None
        if timers is None:
            return
        self.cancelled = True
        self.callback = None
        timers._cancelled_one()

    def _leave_heap(self) -> None:
        self._timers = None
        self.cancelled = True


class Timers:
    """Deadlines kept in a heap; cancelled entries are dropped when reached."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, Timer]] = []
        self._counter = itertools.count()
        self._cancelled = 0  # cancelled entries still in the heap

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run callback at ``when`` (monotonic seconds)."""
        timer = Timer(when, callback, self)
        heapq.heappush(self._heap, (when, next(self._counter), timer))
        return timer

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run callback after ``delay`` seconds."""
        return self.call_at(self.clock() + delay, callback)

    def timeout(self, maximum: float) -> float:
        """Seconds until the next live timer, at most ``maximum``."""
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
            self._cancelled -= 1
        if not self._heap:
            return maximum
        return min(maximum, max(0.0, self._heap[0][0] - self.clock()))

    def due(self) -> list[Timer]:
        """Pop every live timer whose time has come (the caller runs them)."""
        now = self.clock()
        ready = []
        while self._heap and self._heap[0][0] <= now:
            timer = heapq.heappop(self._heap)[2]
            if timer.cancelled:
                self._cancelled -= 1
            else:
                timer._leave_heap()
                ready.append(timer)
        return ready

    def _cancelled_one(self) -> None:
        self._cancelled += 1
        if self._cancelled > COMPACT_MIN_ENTRIES and 2 * self._cancelled > len(self._heap):
            # Each rebuild removes more than half the heap: amortised O(1) per cancel.
            self._heap = [entry for entry in self._heap if not entry[2].cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0
