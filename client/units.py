"""Sizes and rates as a person reads them, and plurals.

One unit system everywhere, the decimal one (SI): 1 kB = 1,000 bytes,
1 MB = 1,000,000 bytes, in the progress bar, the log lines and the summary
(docs/CLIENT.md, "Output").
"""

from __future__ import annotations

#: Bytes per step of the decimal units.
UNIT_STEP = 1000
UNITS = ("B", "kB", "MB", "GB", "TB")
#: Below this many seconds a rate says more about latency than throughput.
MIN_RATE_SECONDS = 0.05


def plural(count: int, noun: str) -> str:
    """``1 packet``, ``2 packets``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def format_bytes(count: float) -> str:
    """A size in decimal units: ``0 B``, ``999 B``, ``1.2 kB``, ``3.4 MB``."""
    if abs(count) < UNIT_STEP:
        return f"{int(count)} {UNITS[0]}"
    value = float(count)
    step = 0
    while abs(value) >= UNIT_STEP and step < len(UNITS) - 1:
        value /= UNIT_STEP
        step += 1
    return f"{value:.1f} {UNITS[step]}"


def format_rate(count: int, seconds: float) -> str | None:
    """``12.3 MB/s``, or None when the transfer was too short for a rate to mean anything."""
    if count <= 0 or seconds < MIN_RATE_SECONDS:
        return None
    return f"{format_bytes(count / seconds)}/s"
