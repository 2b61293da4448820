"""A batch of statements as one SQL text, their parameters written as literals.

The store sends a round's queued writes, with the read that follows them, as
one multi-statement message (server/storage/postgres/store.py): a simple
query, which carries no separate parameters. psycopg's ``ClientCursor.mogrify``
binds them, but through its general adaptation machinery, per statement, in
the loop; the few types the store's statements take are written here
instead: a statement's text is split at its ``%s`` once, and each value
becomes its literal. Text is quoted by libpq (``PQescapeLiteral``), bytes
are hex ``bytea``, floats are ``float8``'s text input; a value of any other
type (a list for ``ANY``) is left to ``mogrify``. A statement's text holds
no ``%`` but its placeholders.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import psycopg
from psycopg import pq

_PLACEHOLDER = "%s"
_NULL = "NULL"
_NAN = "'NaN'::float8"
_NUL = "\x00"


@functools.lru_cache(maxsize=None)
def _pieces(statement: str) -> tuple[str, ...]:
    """The statement's text around its placeholders (one more piece than placeholders)."""
    return tuple(statement.split(_PLACEHOLDER))


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

    def text(self, batch: Sequence[tuple[str, Sequence[Any]]]) -> str:
        """The statements, ``;``-separated, each with its parameters bound.

        Raises:
            psycopg.DataError: a text parameter holds a NUL (PostgreSQL text cannot).
            psycopg.ProgrammingError: a statement's placeholders and parameters differ
                in number.
        """
        return ";".join(self._statement(statement, params) for statement, params in batch)

    def _statement(self, statement: str, params: Sequence[Any]) -> str:
        pieces = _pieces(statement)
        if len(pieces) != len(params) + 1:
            raise psycopg.ProgrammingError(
                f"{len(pieces) - 1} placeholder(s) for {len(params)} parameter(s)"
            )
        literals = []
        for value in params:
            literal = self._literal(value)
            if literal is None:  # a type of its own: psycopg's adaptation binds it all
                return psycopg.ClientCursor(self._db).mogrify(statement, params)
            literals.append(literal)
        parts = [pieces[0]]
        for literal, piece in zip(literals, pieces[1:], strict=True):
            parts += (literal, piece)
        return "".join(parts)

    def _literal(self, value: Any) -> str | None:
        """A value's SQL literal; None for a type left to psycopg."""
        if value is None:
            return _NULL
        kind = type(value)
        if kind is str:
            if _NUL in value:
                raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
            return self._escaping.escape_literal(value.encode(self._encoding)).decode(
                self._encoding
            )
        if kind is bytes or kind is bytearray or kind is memoryview:
            return f"{self._bytea_open}{bytes(value).hex()}'::bytea"
        if kind is bool:
            return "true" if value else "false"
        if kind is int:
            return _number(str(value))
        if kind is float:  # float8's own input: exact, and its zero keeps its sign
            return _NAN if math.isnan(value) else f"'{value!r}'::float8"
        return None


def _number(text: str) -> str:
    """A number's literal; a negative one in parentheses (after a ``-``, ``--`` would
    begin a comment)."""
    return f"({text})" if text.startswith("-") else text
