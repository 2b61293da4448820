"""Timers for the loop: a heap of deadlines on the monotonic clock.

A cancelled timer drops its callback at once: the callback usually closes
over a connection, which must not outlive its close by the timer's delay.
Its heap entry stays until it is reached, or until cancelled entries are
most of the heap, which is then rebuilt: connection churn cannot grow it.

A timer that never calls a store says so (``touches_storage=False``): the
loop runs it even while a round's commit is under way; the others wait for
the commit's end (server/loop.py).
"""

from __future__ import annotations

import heapq
import itertools
from typing import Callable

#: Heaps smaller than this are never rebuilt: not worth it.
COMPACT_MIN_ENTRIES = 256


class Timer:
    """A scheduled call; ``cancel()`` makes it a no-op and drops the callback."""

    __slots__ = ("when", "callback", "cancelled", "touches_storage", "_timers")

    def __init__(
        self, when: float, callback: Callable[[], None], timers: Timers, touches_storage: bool
    ) -> None:
        self.when = when
        self.callback: Callable[[], None] | None = callback
        self.cancelled = False
        #: Whether the callback may call a store (then it waits for a commit under way).
        self.touches_storage = touches_storage
        self._timers: Timers | None = timers  # None once out of the heap

    def cancel(self) -> None:
        """Do not run this timer; no effect once :meth:`Timers.due` returned it."""
        timers, self._timers = self._timers, None
        if timers is None:
            return
        self.cancelled = True
        self.callback = None
        timers._cancelled_one(self)

    def _leave_heap(self) -> None:
        self._timers = None
        self.cancelled = True


class Timers:
    """Deadlines kept in two heaps (timers that may call a store, and the others);
    cancelled entries are dropped when reached."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, Timer]] = []
        #: The timers that never call a store (few: no compaction).
        self._free_heap: list[tuple[float, int, Timer]] = []
        self._counter = itertools.count()
        self._cancelled = 0  # cancelled entries still in ``_heap``

    def call_at(
        self, when: float, callback: Callable[[], None], *, touches_storage: bool = True
    ) -> Timer:
        """Run callback at ``when`` (monotonic seconds)."""
        timer = Timer(when, callback, self, touches_storage)
        heap = self._heap if touches_storage else self._free_heap
        heapq.heappush(heap, (when, next(self._counter), timer))
        return timer

    def call_later(
        self, delay: float, callback: Callable[[], None], *, touches_storage: bool = True
    ) -> Timer:
        """Run callback after ``delay`` seconds."""
        return self.call_at(self.clock() + delay, callback, touches_storage=touches_storage)

    def timeout(self, maximum: float, *, storage: bool = True) -> float:
        """Seconds until the next live timer, at most ``maximum``; with ``storage`` False,
        of the timers that never call a store only."""
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
            self._cancelled -= 1
        while self._free_heap and self._free_heap[0][2].cancelled:
            heapq.heappop(self._free_heap)
        heads = [heap[0][0] for heap in self._heaps(storage) if heap]
        if not heads:
            return maximum
        return min(maximum, max(0.0, min(heads) - self.clock()))

    def due(self, *, storage: bool = True) -> list[Timer]:
        """Pop every live timer whose time has come, earliest first (the caller runs
        them); with ``storage`` False, of the timers that never call a store only."""
        now = self.clock()
        ready = []
        for heap in self._heaps(storage):
            while heap and heap[0][0] <= now:
                timer = heapq.heappop(heap)[2]
                if timer.cancelled:
                    if heap is self._heap:
                        self._cancelled -= 1
                else:
                    timer._leave_heap()
                    ready.append(timer)
        ready.sort(key=lambda timer: timer.when)
        return ready

    def _heaps(self, storage: bool) -> tuple[list[tuple[float, int, Timer]], ...]:
        return (self._heap, self._free_heap) if storage else (self._free_heap,)

    def _cancelled_one(self, timer: Timer) -> None:
        if not timer.touches_storage:
            return
        self._cancelled += 1
        if self._cancelled > COMPACT_MIN_ENTRIES and 2 * self._cancelled > len(self._heap):
            # Each rebuild removes more than half the heap: amortised O(1) per cancel.
            self._heap = [entry for entry in self._heap if not entry[2].cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0
