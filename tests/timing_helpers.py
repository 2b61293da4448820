"""Timing checks that hold on a loaded machine.

A test never compares a wall-clock time with a fixed number: it compares
with a baseline measured in the same test (same machine, same load), with a
wide margin, or it waits for a state with a timeout that only bounds a hang.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

#: Other processes on the cores may slow any step this many times against the
#: same step measured earlier in the same test.
LOAD_MARGIN = 10
#: Plus this much (s): scheduler latency on a busy machine that a short baseline cannot show.
LOAD_SLACK = 1.0
#: A wait (s) that fails only when something hangs, never because the machine is slow.
HANG_TIMEOUT = 30.0
#: A timer may fire this much (s) before its nominal time (clock and select() rounding).
TIMER_EARLY = 0.05


def within_load(measured: float, baseline: float) -> bool:
    """True if ``measured`` is not slower than ``baseline`` beyond what load explains."""
    return measured <= LOAD_MARGIN * baseline + LOAD_SLACK


def load_bound(baseline: float) -> float:
    """The most a step may take (s) given its own ``baseline`` from the same test."""
    return LOAD_MARGIN * baseline + LOAD_SLACK


def timer_bound(nominal: float, baseline: float) -> float:
    """The latest (s) a timer of ``nominal`` seconds may be seen to fire.

    ``baseline`` is one round trip to the server measured in the same test:
    the observation needs about that much, times what load explains.
    """
    return nominal + load_bound(baseline)


def timed(action: Callable[[], object]) -> float:
    """How long ``action()`` takes (s)."""
    started = time.monotonic()
    action()
    return time.monotonic() - started


def median_time(action: Callable[[], object], runs: int = 3) -> float:
    """The median time of ``runs`` calls of ``action()`` (s): a baseline."""
    return statistics.median(timed(action) for _ in range(runs))


def wait_until(predicate: Callable[[], object], what: str, timeout: float = HANG_TIMEOUT, poll: float = 0.02):
    """Poll until ``predicate()`` is true and return it; AssertionError if it never is."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"never happened within {timeout} s: {what}"
        time.sleep(poll)


def round_trip(server, runs: int = 3) -> float:
    """A baseline (s): the median time to connect, send a request and get its reply.

    The request is an unknown code (829, no payload): a 1607 that changes no
    row, no file and no count a test looks at.
    """
    from helpers import raw_header
    from protocol import GeneralError

    def once():
        with server.client() as client:
            client.send_raw(raw_header(829, 0))
            assert isinstance(client.receive(), GeneralError)

    return median_time(once, runs)
