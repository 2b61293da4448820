"""The admin tool's output: aligned text columns for people, JSON for scripts."""

from __future__ import annotations

import json
from typing import Any, Sequence, TextIO

#: Spaces between two columns.
COLUMN_GAP = 2
#: What an unknown value (NULL) shows as in text.
NONE_TEXT = "-"


def text(value: Any) -> str:
    """One cell: None as "-", bools as yes/no, bytes (a non-UTF-8 name) escaped."""
    if value is None:
        return NONE_TEXT
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return str(value)


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
    """A JSON document (bytes as escaped text), then a newline."""
    json.dump(document, out, indent=2, default=text, ensure_ascii=False)
    out.write("\n")
