"""A floor under the rate of a connection's sends (docs/CLIENT.md, "Time-outs").

The time-out ends a send that makes no progress; a server that reads a few
bytes now and then makes progress and would stretch a send without end. So,
as Apache's ``mod_reqtimeout`` (``MinRate``) and curl (``--speed-limit``,
``--speed-time``) do, the bytes sent are also weighed against the time spent
sending, over windows of the time-out: a window that carried less than the
floor's rate ends the send. Only time spent inside a send counts (a wait for
an answer is bounded on its own), and the windows run on across the requests
of one connection, so a file sent as many small packets is weighed as one.
"""

from __future__ import annotations

#: Bytes per second a send must average over each window of the time-out
#: (``--min-rate``). 4 KiB/s (32 kbit/s) is below the upstream of any link
#: still in use, a dial-up modem's included, and far below a slow but honest
#: server (the tests' reads 1 MB/s); it still ends a server that reads 64 KB
#: every 29 s (2.2 KB/s), which the time-out alone lets stretch a 5 MB file to
#: 40 minutes. Under the floor a file takes at most its size / the floor.
DEFAULT_MIN_RATE = 4096


class SendRate:
    """The bytes and sending time of a connection's current window."""

    def __init__(self, floor: float, window: float) -> None:
        #: Bytes per second; 0 weighs nothing (no floor).
        self.floor = floor
        #: Seconds of sending per window.
        self.window = window
        self._spent = 0.0
        self._bytes = 0
        #: When the send under way began, or last came into the window.
        self._since: float | None = None

    def begin(self, now: float) -> None:
        """A send begins."""
        self._since = now

    def end(self, now: float) -> None:
        """The send under way ended (whole or broken)."""
        if self._since is not None:
            self._spent += now - self._since
            self._since = None

    def _elapsed(self, now: float) -> float:
        return self._spent + (now - self._since if self._since is not None else 0.0)

    def time_left(self, now: float) -> float:
        """Seconds of sending before the current window is weighed (inf: no floor)."""
        if not self.floor:
            return float("inf")
        return max(self.window - self._elapsed(now), 0.0)

    def sent(self, count: int, now: float) -> float | None:
        """Count bytes sent during a send; weigh the window if it is over.

        Returns:
            The window's rate in bytes per second if it fell under the floor,
            else None (a window weighed and passed starts a new one at ``now``).
        """
        self._bytes += count
        elapsed = self._elapsed(now)
        if not self.floor or elapsed < self.window:
            return None
        rate = self._bytes / elapsed
        if rate < self.floor:
            return rate
        self._spent, self._bytes = 0.0, 0
        self._since = now if self._since is not None else None
        return None
