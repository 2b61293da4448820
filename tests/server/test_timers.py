"""server.timers: order, cancel, and what a cancelled timer keeps (docs/HOSTILE.md F, review point 9)."""

from __future__ import annotations

import gc
import weakref

from server.timers import Timers

CHURN = 100_000


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Owner:
    """Stands for a Channel: what a timer's callback keeps alive."""


def test_due_timers_come_in_order_and_cancelled_ones_never():
    clock = _Clock()
    timers = Timers(clock)
    ran = []
    timers.call_at(3.0, lambda: ran.append(3))
    timers.call_at(1.0, lambda: ran.append(1))
    timers.call_at(2.0, lambda: ran.append(2)).cancel()
    assert timers.timeout(10.0) == 1.0
    clock.now = 5.0
    for timer in timers.due():
        timer.callback()
    assert ran == [1, 3]
    assert timers.timeout(10.0) == 10.0


def test_a_cancelled_timer_releases_its_callback_at_once():
    timers = Timers(_Clock())
    owner = _Owner()
    timer = timers.call_at(30.0, lambda: owner)  # noqa: F821 (deleted below on purpose)
    alive = weakref.ref(owner)
    timer.cancel()
    del owner
    gc.disable()  # freed by reference counting, not at some later collection
    try:
        assert timer.callback is None
        assert alive() is None, "a cancelled timer still keeps its callback's objects"
    finally:
        gc.enable()
    assert timer.cancelled


def test_the_heap_stays_bounded_under_call_and_cancel_churn():
    clock = _Clock()
    timers = Timers(clock)
    live = [timers.call_at(1000.0 + i, lambda: None) for i in range(10)]
    peak = 0
    for i in range(CHURN):
        timers.call_at(30.0 + i * 1e-6, lambda: None).cancel()  # a closed connection's deadline
        peak = max(peak, len(timers._heap))
    print(f"\nheap peak {peak} entries over {CHURN} call_at/cancel with {len(live)} live")
    assert peak <= 2 * len(live) + 1024, peak
    clock.now = 2000.0
    assert [t.when for t in timers.due()] == [t.when for t in live]  # the live ones survive


def test_cancel_after_due_is_harmless_and_compaction_keeps_order():
    clock = _Clock()
    timers = Timers(clock)
    early = timers.call_at(1.0, lambda: None)
    clock.now = 1.0
    (fired,) = timers.due()
    assert fired is early
    early.cancel()  # the holder cancels a timer that already ran: no effect
    later = [timers.call_at(10.0 + i, lambda: None) for i in range(5000)]
    for timer in later[::2] + later[1::4]:
        timer.cancel()
    clock.now = 100_000.0
    expected = [t.when for t in later[3::4]]
    assert [t.when for t in timers.due()] == expected
    assert len(timers._heap) == 0


def test_while_a_commit_is_under_way_only_the_timers_that_call_no_store_come_due():
    clock = _Clock()
    timers = Timers(clock)
    ran = []
    timers.call_at(1.0, lambda: ran.append("store"))
    timers.call_at(2.0, lambda: ran.append("free"), touches_storage=False)
    timers.call_at(4.0, lambda: ran.append("free later"), touches_storage=False).cancel()
    assert timers.timeout(10.0, storage=False) == 2.0  # the store's timer does not wake it
    clock.now = 5.0
    for timer in timers.due(storage=False):
        timer.callback()
    assert ran == ["free"] and timers.timeout(10.0, storage=False) == 10.0
    assert timers.timeout(10.0) == 0.0  # the store's timer is due once the commit is done
    for timer in timers.due():
        timer.callback()
    assert ran == ["free", "store"]
