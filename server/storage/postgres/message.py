"""One simple-query message (statements as one text) sent and its rows read, without a cursor.

The store's reads and the coordination's waited calls are one message each
(server/storage/postgres/store.py, coordination.py): its statements with
their parameters bound as literals (:mod:`.literals`). psycopg's
``Connection.execute`` makes a cursor per call, converts the query, consults
its prepared-statement cache and keeps every result set; measured alone on
loopback, that is about twice the loop CPU of what is done here: libpq's
``PQsendQuery``, psycopg's own wait for the results (its C generator, the
loop thread's other threads running meanwhile), the first error raised as
psycopg raises it (:func:`psycopg.errors.error_from_result`: a taken name
is still a ``UniqueViolation``), and the last result's rows made into tuples
by a loader kept per connection.
"""

from __future__ import annotations

from typing import Any, Sequence

import psycopg
from psycopg import errors as pg_errors
from psycopg import generators, pq
from psycopg.adapt import Transformer

from .literals import Binder

_FATAL = pq.ExecStatus.FATAL_ERROR
_ROWS = pq.ExecStatus.TUPLES_OK


class Messenger:
    """Sends statements as one message on one connection, and reads the last one's rows."""

    def __init__(self, db: psycopg.Connection) -> None:
        self.db = db
        self.binder = Binder(db)
        self._rows = Transformer(db)
        self._encoding = db.info.encoding

    def rows(self, batch: Sequence[tuple[str, Sequence[Any]]]) -> list[tuple]:
        """Send the statements (parameters bound as literals) in one message; the rows of
        the last (none for a statement without).

        Raises:
            psycopg.Error: a statement failed (the first failure: the database skipped
                the rest), or the connection did (``OperationalError``).
        """
        return self.send(self.binder.text(batch).encode(self._encoding))

    def send(self, message: bytes) -> list[tuple]:
        """:meth:`rows` of a message already bound."""
        pgconn = self.db.pgconn
        pgconn.send_query(message)
        results = self.db.wait(generators.execute(pgconn))
        for result in results:
            if result.status == _FATAL:
                raise pg_errors.error_from_result(result, encoding=self._encoding)
        last = results[-1] if results else None
        if last is None or last.status != _ROWS:
            return []
        self._rows.set_pgresult(last)
        return self._rows.load_rows(0, last.ntuples, tuple)
