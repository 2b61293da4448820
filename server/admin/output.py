"""The admin tool's output: aligned text columns for people, JSON for scripts.

Names come from clients, so every text a person reads is in the project's
one printable form (:mod:`protocol.printable`): an escape sequence, a line
feed or a bidi override in a name shows as ``\\x1b``, ``\\x0a``,
``\\u202e``, and cannot recolour the terminal, forge a row or reorder a
line. JSON keeps the names as they are (a script reads the real name) but
is written in ASCII only: every other character is a ``\\uNNNN`` escape.
"""

from __future__ import annotations

import json
from typing import Any, Sequence, TextIO

from protocol.printable import printable

#: Spaces between two columns.
COLUMN_GAP = 2
#: What an unknown value (NULL) shows as in text.
NONE_TEXT = "-"


def text(value: Any) -> str:
    """One cell: None as "-", bools as yes/no, text and bytes in the printable form."""
    if value is None:
        return NONE_TEXT
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (str, bytes)):
        return printable(value)
    return str(value)


def _json_value(value: Any) -> str:
    if isinstance(value, bytes):
        return printable(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], out: TextIO) -> None:
    """Rows as aligned columns under a header line (numbers aligned right)."""
    cells = [[text(row[column]) for column in columns] for row in rows]
    widths = [
        max([len(column)] + [len(line[index]) for line in cells])
        for index, column in enumerate(columns)
    ]
    numeric = [
        bool(rows) and all(isinstance(row[column], int) and not isinstance(row[column], bool)
                           for row in rows if row[column] is not None)
        for column in columns
    ]
    gap = " " * COLUMN_GAP

    def line(values: Sequence[str]) -> str:
        return gap.join(
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out.write(line([column.upper() for column in columns]) + "\n")
    for values in cells:
        out.write(line(values) + "\n")


def fields(record: dict[str, Any], out: TextIO) -> None:
    """One record as ``key: value`` lines, the values aligned."""
    width = max((len(key) for key in record), default=0)
    for key, value in record.items():
        out.write(f"{key + ':':<{width + 1}} {text(value)}\n")


def as_json(document: Any, out: TextIO) -> None:
    """A JSON document in ASCII (bytes, a non-UTF-8 name, in the printable form), then a newline."""
    json.dump(document, out, indent=2, default=_json_value, ensure_ascii=True)
    out.write("\n")
