"""A batch of statements as one SQL text, their parameters written as literals.

The store sends a round's queued writes, with the read that follows them, as
one multi-statement message (server/storage/postgres/store.py): a simple
query, which carries no separate parameters. psycopg's ``ClientCursor.mogrify``
binds them, but through its general adaptation machinery, per statement, in
the loop; the few types the store's statements take are written here
instead: a statement's text becomes a ``str.format`` template once, and
each value its literal, written by a function found by the value's exact
type. Text is quoted by libpq (``PQescapeLiteral``), bytes are hex
``bytea``, floats are ``float8``'s text input; a value of any other type
(a list for ``ANY``, a subclass) is left to ``mogrify``. A statement's
text holds no ``%`` but its placeholders.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import psycopg
from psycopg import pq

_PLACEHOLDER = "%s"
_NULL = "NULL"
_NAN = "'NaN'::float8"
_NUL = "\x00"


@functools.lru_cache(maxsize=None)
def _template(statement: str) -> tuple[str, int]:
    """The statement as a :meth:`str.format` template, a ``{}`` for each placeholder (its
    own braces doubled), and how many placeholders it has: split once per statement."""
    pieces = statement.split(_PLACEHOLDER)
    escaped = (piece.replace("{", "{{").replace("}", "}}") for piece in pieces)
    return "{}".join(escaped), len(pieces) - 1


class Binder:
    """Writes statements with their parameters as literals, for one connection (its
    quoting rules: ``standard_conforming_strings`` and the client encoding)."""

    def __init__(self, db: psycopg.Connection) -> None:
        self._db = db
        self._escaping = pq.Escaping(db.pgconn)
        self._encoding = db.info.encoding
        conforming = db.pgconn.parameter_status(b"standard_conforming_strings") == b"on"
        # Without standard_conforming_strings a backslash escapes: double it.
        self._bytea_open = "'\\x" if conforming else "E'\\\\x"
        #: A value's literal, by its exact type (any other type is left to psycopg).
        self._writers: dict[type, Callable[[Any], str]] = {
            type(None): _null, bool: _bool, int: _int, float: _float, str: self._text,
            bytes: self._bytea, bytearray: self._bytea, memoryview: self._bytea,
        }

    def text(self, batch: Sequence[tuple[str, Sequence[Any]]]) -> str:
        """The statements, ``;``-separated, each with its parameters bound.

        Raises:
            psycopg.DataError: a text parameter holds a NUL (PostgreSQL text cannot).
            psycopg.ProgrammingError: a statement's placeholders and parameters differ
                in number.
        """
        return ";".join([self._statement(statement, params) for statement, params in batch])

    def _statement(self, statement: str, params: Sequence[Any]) -> str:
        template, placeholders = _template(statement)
        if placeholders != len(params):
            raise psycopg.ProgrammingError(
                f"{placeholders} placeholder(s) for {len(params)} parameter(s)"
            )
        writers = self._writers
        try:
            literals = [writers[type(value)](value) for value in params]
        except KeyError:  # a type of its own: psycopg's adaptation binds it all
            return psycopg.ClientCursor(self._db).mogrify(statement, params)
        return template.format(*literals)

    def _text(self, value: str) -> str:
        if _NUL in value:
            raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
        return self._escaping.escape_literal(value.encode(self._encoding)).decode(self._encoding)

    def _bytea(self, value: bytes | bytearray | memoryview) -> str:
        return f"{self._bytea_open}{value.hex()}'::bytea"


def _null(value: None) -> str:
    return _NULL


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _int(value: int) -> str:
    """A number's literal; a negative one in parentheses (after a ``-``, ``--`` would
    begin a comment)."""
    return str(value) if value >= 0 else f"({value})"


def _float(value: float) -> str:
    """float8's own input: exact, and its zero keeps its sign."""
    return _NAN if math.isnan(value) else f"'{value!r}'::float8"
