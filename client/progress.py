"""Upload progress for people: a tqdm bar on a terminal, log lines otherwise."""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Protocol, TextIO

from tqdm import tqdm

log = logging.getLogger(__name__)

#: Seconds between two progress lines when stderr is not a terminal.
LOG_INTERVAL = 5.0
BYTES_PER_MB = 1_000_000
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


class BarProgress:
    """A tqdm bar with bytes/s and ETA, for a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._bar: tqdm | None = None

    def start(self, label: str, total: int) -> None:
        """Open a bar for this file."""
        self.finish()
        size = _terminal_size(self._stream)
        known = size != FALLBACK_SIZE
        self._bar = tqdm(
            total=total,
            desc=label,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=self._stream,
            dynamic_ncols=known,
            ncols=None if known else size.columns,
            nrows=None if known else size.lines,
            leave=True,
        )

    def update(self, count: int) -> None:
        """Advance the bar."""
        if self._bar is not None:
            self._bar.update(count)

    def finish(self) -> None:
        """Close the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


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
            "%s: %d%% (%.1f of %.1f MB, %.1f MB/s, about %.0f s left)",
            self._label,
            PERCENT * self._done // max(self._total, 1),
            self._done / BYTES_PER_MB,
            self._total / BYTES_PER_MB,
            rate / BYTES_PER_MB,
            eta,
        )

    def finish(self) -> None:
        """Nothing to close."""


def make_progress(stream: TextIO, *, quiet: bool) -> Progress:
    """The reporter that fits: none when quiet, a bar on a terminal, else log lines."""
    if quiet:
        return NoProgress()
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return BarProgress(stream)
    return LogProgress()
