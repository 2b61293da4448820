"""The one printable form of a name a person reads: in a table, a log line or on a screen.

A name off the wire is any bytes but NUL (docs/PROTOCOL.md, "Framing"): it may
hold an escape sequence that recolours or rewrites a terminal, a line feed
that starts a forged log line, or a bidi override that shows ``txt.exe`` as
``exe.txt``. Every such name is shown in this form, which has no character a
terminal or a log reader acts on and reads back to exactly one name:

* a backslash is doubled (``\\\\``), so every other backslash starts an escape;
* a byte that is not part of valid UTF-8 is ``\\xNN`` (NN is 80 to ff);
* a character :meth:`str.isprintable` rejects is ``\\xNN`` below U+0080
  (C0 controls and DEL), else ``\\uNNNN`` or ``\\UNNNNNNNN``, by its code
  point: C1 controls, format characters (bidi overrides and isolates such as
  U+202E and U+2066-2069, U+200E/F, zero-width characters), line and
  paragraph separators, spaces other than the ASCII space, surrogates,
  private-use and unassigned code points;
* everything else is itself.

:func:`quoted` adds quotes for a name inside a sentence (the log's form), and
:func:`escape_controls` is the log formatters' last line of defence
(:class:`OneLineFormatter`): it escapes the same characters but leaves
backslashes alone, so that a message whose names are already printable
passes unchanged. Nothing here does I/O.
"""

from __future__ import annotations

import logging

#: Python's ``surrogateescape`` error handler maps an undecodable byte B to U+DC00 + B.
_SURROGATE_ESCAPE_BASE = 0xDC00
_ESCAPED_BYTES = range(0xDC80, 0xDD00)
_ASCII_LIMIT = 0x80
_BMP_LIMIT = 0x10000
BACKSLASH = "\\"
QUOTE = "'"


def printable(name: bytes | str) -> str:
    """A name as a person may read it: see the module doc (bytes are read as UTF-8)."""
    text = name.decode("utf-8", errors="surrogateescape") if isinstance(name, bytes) else name
    if text.isprintable() and BACKSLASH not in text:  # the common case, at C speed
        return text
    return "".join(BACKSLASH * 2 if char == BACKSLASH else _shown(char) for char in text)


def quoted(name: bytes | str) -> str:
    """The printable form in single quotes (a quote inside is ``\\'``): a name in a sentence."""
    return QUOTE + printable(name).replace(QUOTE, BACKSLASH + QUOTE) + QUOTE


def escape_controls(text: str) -> str:
    """``text`` with the characters :func:`printable` escapes escaped, backslashes left as they are.

    For a whole log message (one record, one line): names in it are printable
    already, and any control character that still got there is made visible.
    """
    if text.isprintable():
        return text
    return "".join(_shown(char) for char in text)


class OneLineFormatter(logging.Formatter):
    """A log record's message is one line: any control character left in it is escaped.

    The server's and the client's formatters: names are put in the printable
    form where they are logged, and this is the last line of defence for text
    that got there another way (an exception's message, a local path). A
    traceback (``exc_info``) still follows on lines of its own.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


def _shown(char: str) -> str:
    """One character: itself if printable, else its visible escape."""
    if char.isprintable():
        return char
    point = ord(char)
    if point in _ESCAPED_BYTES:  # an undecodable byte
        return f"\\x{point - _SURROGATE_ESCAPE_BASE:02x}"
    if point < _ASCII_LIMIT:
        return f"\\x{point:02x}"
    if point < _BMP_LIMIT:
        return f"\\u{point:04x}"
    return f"\\U{point:08x}"
