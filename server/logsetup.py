"""The server's log: one line per event on stderr, in one of two formats.

``plain`` (the default) stamps each line with its time and level, for a
terminal or a log file. ``journal`` is for systemd's journal, which stamps
lines itself: no time of our own, and the level as the ``<N>`` syslog priority
prefix that journald reads from a service's stderr (sd-daemon(3)).
"""

from __future__ import annotations

import logging
import sys
import time

from protocol.printable import OneLineFormatter

PLAIN = "plain"
JOURNAL = "journal"
FORMATS = (PLAIN, JOURNAL)
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(message)s"
#: syslog priorities (sd-daemon(3)) of the logging levels; finer levels round down.
SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class PlainFormatter(OneLineFormatter):
    """``time level message``; the time's text is made once per second, not per line."""

    #: logging.Formatter's own defaults (its class attributes), set here.
    default_time_format = "%Y-%m-%d %H:%M:%S"
    default_msec_format = "%s,%03d"

    def __init__(self) -> None:
        super().__init__(PLAIN_FORMAT)
        self._second = -1
        self._second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime(
                self.default_time_format, self.converter(record.created)
            )
        return self.default_msec_format % (self._second_text, record.msecs)


class JournalFormatter(OneLineFormatter):
    """``<priority>message``; each line of a traceback carries the prefix too."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def syslog_priority(level: int) -> int:
    """The syslog priority of a logging level (a custom level takes the next one up)."""
    for known in sorted(SYSLOG_PRIORITY):
        if level <= known:
            return SYSLOG_PRIORITY[known]
    return SYSLOG_PRIORITY[logging.CRITICAL]


def setup(level: str, log_format: str = PLAIN) -> None:
    """Send every logger's lines at ``level`` and above to stderr in ``log_format``.

    A line records none of what our formats leave out: the caller's source
    line, thread and process (the logging HOWTO's "Optimization"): a server
    session logs several lines, and each costs less.
    """
    logging._srcfile = None  # documented in the logging HOWTO
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    if log_format == JOURNAL:
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(PlainFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
