"""How many event lines one address may write into the log (a flood must not fill the disk).

Each address group (:func:`log_key`) gets ``burst`` lines at INFO and above per
window of ``interval`` seconds, the model of journald's
``RateLimitIntervalSec``/``RateLimitBurst``, per peer like sshd's
``PerSourcePenalties``. Past that, its lines go to DEBUG (the operator who
asks for DEBUG still sees every one) and are counted; when its window ends,
one line at the highest level suppressed says so: "N lines suppressed for
ADDRESS". That line goes out before the address's next line that is
allowed, or from :meth:`LogLimiter.sweep`, which the server's timers call so
that a flood that falls silent is still counted, and at the server's stop.

Only lines about a peer go through here. Lines about the server itself
(a storage fault, a lost fsync, a bug's traceback) are never suppressed.

Memory is bounded: windows are kept in the order they started, so that
those that ended are purged from the front (a few per call, all in a sweep),
and past ``max_keys`` addresses every new one shares one window
(:data:`OTHER_ADDRESSES`): many addresses together still get a bounded log.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)

#: The window every address past ``max_keys`` shares.
OTHER_ADDRESSES = "other addresses"
#: Addresses tracked at once: a few hundred bytes each, a few MB in all, far
#: above the addresses of ``max_connections`` open connections.
MAX_TRACKED_ADDRESSES = 10_000
#: Ended windows purged per line: bounded work per call (the sweep does the rest).
PURGE_PER_CALL = 4

#: Reports one address's suppressed lines: (key, count, seconds, highest level).
Report = Callable[[str, int, float, int], None]


def log_key(group: str) -> str:
    """The key of a peer's log budget: its address group (``Peer.group``, server/peer.py).

    The one place that says which addresses share a budget: those of one
    group, like every other per-address limit (one IPv6 /64 does not get a
    budget per address; only ``max_keys`` bounded that).
    """
    return group


@dataclass
class _Window:
    started: float
    lines: int = 0
    suppressed: int = 0
    level: int = logging.NOTSET  # the highest level suppressed


class LogLimiter:
    """At most ``burst`` lines per key per ``interval`` seconds; ``burst`` 0: no limit."""

    def __init__(
        self,
        burst: int,
        interval: float,
        clock: Callable[[], float],
        report: Report | None = None,
        max_keys: int = MAX_TRACKED_ADDRESSES,
    ) -> None:
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._report = report if report is not None else log_suppressed
        self._max_keys = max_keys
        #: Oldest window first: a window that restarts moves to the end.
        self._windows: collections.OrderedDict[str, _Window] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._windows)

    def admit(self, key: str, level: int) -> bool:
        """Count one line about ``key``; False when it is past its budget (then suppressed)."""
        if not self.burst:
            return True
        now = self._clock()
        self._purge(now, PURGE_PER_CALL)
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= self._max_keys and key != OTHER_ADDRESSES:
                return self.admit(OTHER_ADDRESSES, level)
            window = self._windows[key] = _Window(now)
        elif now - window.started >= self.interval:
            self._end(key, window, now)
            window = self._windows[key] = _Window(now)
        if window.lines < self.burst:
            window.lines += 1
            return True
        window.suppressed += 1
        window.level = max(window.level, level)
        return False

    def level(self, logger: logging.Logger, group: str, level: int) -> int:
        """The level of a line about a peer of ``group``: ``level`` within budget, else DEBUG.

        Lines the logger would not write at ``level`` (DEBUG ones included)
        are not counted.
        """
        if level <= logging.DEBUG or not logger.isEnabledFor(level):
            return level
        return level if self.admit(log_key(group), level) else logging.DEBUG

    def sweep(self) -> None:
        """Report and forget every window that ended (the loop's timers call this)."""
        self._purge(self._clock(), len(self._windows))

    def flush(self) -> None:
        """Report every suppressed count now, ended window or not (at the server's stop)."""
        now = self._clock()
        windows, self._windows = self._windows, collections.OrderedDict()
        for key, window in windows.items():
            self._end(key, window, now)

    def _purge(self, now: float, most: int) -> None:
        """Report and forget up to ``most`` ended windows, oldest first."""
        windows = self._windows
        for _ in range(most):
            if not windows:
                return
            key, window = next(iter(windows.items()))
            if now - window.started < self.interval:
                return
            self._end(key, window, now)

    def _end(self, key: str, window: _Window, now: float) -> None:
        """A window is over: forget it (if still kept), report its count."""
        self._windows.pop(key, None)
        if window.suppressed:
            self._report(key, window.suppressed, now - window.started, window.level)


def log_suppressed(key: str, count: int, seconds: float, level: int) -> None:
    """The summary line of one address's suppressed lines, at the highest level suppressed."""
    log.log(level, "%d lines suppressed for %s in the last %.1f s (--log-lines-per-address)",
            count, key, seconds)
