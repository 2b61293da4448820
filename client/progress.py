"""Upload progress for people: a tqdm bar on a terminal, log lines otherwise."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Callable, Protocol, TextIO

from .units import UNIT_STEP, format_bytes

if TYPE_CHECKING:
    from tqdm import tqdm

log = logging.getLogger(__name__)

#: Seconds between two progress lines when stderr is not a terminal.
LOG_INTERVAL = 5.0
PERCENT = 100
#: Floor of a measured duration, so that a rate never divides by zero.
MIN_SECONDS = 1e-9
#: Terminal size to assume when it does not tell its own (a pty of 0 x 0):
#: tqdm would otherwise draw nothing.
FALLBACK_SIZE = os.terminal_size((80, 24))


class Progress(Protocol):
    """What the upload reports while a file is being sent."""

    def start(self, label: str, total: int) -> None:
        """A file (or a resend of it) of ``total`` plaintext bytes begins."""

    def update(self, count: int) -> None:
        """``count`` more bytes were read and sent."""

    def finish(self) -> None:
        """The file's bytes are all sent (or the attempt was given up)."""


class NoProgress:
    """``--quiet``: report nothing."""

    def start(self, label: str, total: int) -> None:
        """Nothing to show."""

    def update(self, count: int) -> None:
        """Nothing to show."""

    def finish(self) -> None:
        """Nothing to show."""

    def relabel(self, label: str) -> None:
        """Nothing to show."""

    def grow(self, count: int) -> None:
        """Nothing to show."""


class BarProgress:
    """A tqdm bar with bytes/s and ETA, for a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._bar: tqdm | None = None

    def start(self, label: str, total: int) -> None:
        """Open a bar for this file."""
        self.finish()
        # imported here: tqdm (and the asyncio it pulls in) is a quarter of the
        # client's start-up, paid only when a bar is drawn
        from tqdm import tqdm

        size = _terminal_size(self._stream)
        known = size != FALLBACK_SIZE
        self._bar = tqdm(
            total=total,
            desc=label,
            unit="B",
            unit_scale=True,
            unit_divisor=UNIT_STEP,  # decimal units, as everywhere (client/units.py)
            file=self._stream,
            dynamic_ncols=known,
            ncols=None if known else size.columns,
            nrows=None if known else size.lines,
            leave=False,  # the line that ends each file says what the bar said
        )

    def update(self, count: int) -> None:
        """Advance the bar."""
        if self._bar is not None:
            self._bar.update(count)

    def finish(self) -> None:
        """Draw the bar's last state, then clear it (the file's own line follows)."""
        if self._bar is not None:
            self._bar.refresh()
            self._bar.close()
            self._bar = None

    def relabel(self, label: str) -> None:
        """Say something else in front of the bar."""
        if self._bar is not None:
            self._bar.set_description_str(label)

    def grow(self, count: int) -> None:
        """``count`` more bytes to send than announced (a resend)."""
        if self._bar is not None:
            self._bar.total += count
            self._bar.refresh()


def _terminal_size(stream: TextIO) -> os.terminal_size:
    """The terminal's size, or FALLBACK_SIZE when it does not say."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return FALLBACK_SIZE
    return size if size.columns and size.lines else FALLBACK_SIZE


class LogProgress:
    """A plain log line every LOG_INTERVAL seconds, for logs and pipes."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._label = ""
        self._total = 0
        self._done = 0
        self._started = 0.0
        self._last = 0.0

    def start(self, label: str, total: int) -> None:
        """Remember the file and the time."""
        self._label, self._total, self._done = label, total, 0
        self._started = self._last = self._clock()

    def update(self, count: int) -> None:
        """Log a line if LOG_INTERVAL has passed since the last one."""
        self._done += count
        now = self._clock()
        if now - self._last < LOG_INTERVAL or self._done >= self._total:
            return
        self._last = now
        rate = self._done / max(now - self._started, MIN_SECONDS)
        eta = (self._total - self._done) / rate if rate else float("inf")
        log.info(
            "%s: %d%% (%s of %s, %s/s, about %.0f s left)",
            self._label,
            PERCENT * self._done // max(self._total, 1),
            format_bytes(self._done),
            format_bytes(self._total),
            format_bytes(rate),
            eta,
        )

    def finish(self) -> None:
        """Nothing to close."""

    def relabel(self, label: str) -> None:
        """Name what the next lines are about."""
        self._label = label

    def grow(self, count: int) -> None:
        """``count`` more bytes to send than announced (a resend)."""
        self._total += count


class Display(Progress, Protocol):
    """A progress display that can also be relabelled and grown (one for a whole run)."""

    def relabel(self, label: str) -> None:
        """Say something else in front of the figures."""

    def grow(self, count: int) -> None:
        """``count`` more bytes to send than announced."""


class CombinedProgress:
    """One display for the files of a ``--jobs`` run: total bytes, rate, files done.

    Each connection reports through its own :meth:`view`; the calls come
    from several threads.
    """

    def __init__(self, display: Display, files: int, total: int) -> None:
        self._display = display
        self._files = files
        self._done = 0
        self._lock = threading.Lock()
        display.start(self._label(), total)

    def _label(self) -> str:
        return f"{self._done}/{self._files} files"

    def view(self) -> Progress:
        """The reporter of one connection."""
        return _CombinedView(self)

    def add(self, count: int) -> None:
        """``count`` more bytes sent, on any connection."""
        with self._lock:
            self._display.update(count)

    def grow(self, count: int) -> None:
        """A resend: ``count`` more bytes to send."""
        with self._lock:
            self._display.grow(count)

    def file_done(self) -> None:
        """One more file is done (verified or not)."""
        with self._lock:
            self._done += 1
            self._display.relabel(self._label())

    def finish(self) -> None:
        """Close the display."""
        with self._lock:
            self._display.finish()


class _CombinedView:
    """One connection's reports, added to a :class:`CombinedProgress`."""

    def __init__(self, combined: CombinedProgress) -> None:
        self._combined = combined
        self._label: str | None = None

    def start(self, label: str, total: int) -> None:
        """A file begins; a second start of the same file is a resend."""
        if self._label is not None and (
            label == self._label or label.startswith(f"{self._label} (")
        ):
            self._combined.grow(total)  # a retry or a resend of the same file
        else:
            self._label = label

    def update(self, count: int) -> None:
        """Count the bytes in the total."""
        self._combined.add(count)

    def finish(self) -> None:
        """The file is done when its outcome is known, not here."""


def make_progress(stream: TextIO, *, quiet: bool) -> Display:
    """The reporter that fits: none when quiet, a bar on a terminal, else log lines."""
    if quiet:
        return NoProgress()
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return BarProgress(stream)
    return LogProgress()
