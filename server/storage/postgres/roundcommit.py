"""A round's COMMIT sent over libpq's non-blocking API, completed as its socket is ready.

The loop waits on :meth:`PgRoundCommit.fileno` in its selector (writable while
the query is not all sent, then readable) and calls :meth:`PgRoundCommit.advance`,
which never blocks: libpq's ``PQflush``, ``PQconsumeInput``, ``PQisBusy`` and
``PQgetResult`` (psycopg's ``pgconn``). See /server/storage/base.py's
``RoundCommit``.
"""

from __future__ import annotations

import time
from typing import Callable

import psycopg
from psycopg import pq

from ...errors import StorageFault

#: Seconds a round's COMMIT may go unanswered before the round is given up as lost and its
#: connection cut (a database that stopped answering without closing the connection: a
#: stalled disk, a network cut): the loop, and a stop, wait no longer.
COMMIT_PATIENCE = 30.0
#: What PostgreSQL answers to a COMMIT of a transaction an error had aborted.
_ROLLED_BACK = b"ROLLBACK"
_FLUSH_DONE = 0


class PgRoundCommit:
    """The round's COMMIT under way on one connection (``query``: the writes still queued,
    then COMMIT, in one message; a failed statement leaves the rest undone: the round is lost).

    Unanswered for ``patience`` seconds, the round is lost and the connection
    closed (:meth:`advance`, which the loop calls at least once a second).
    """

    def __init__(
        self, pgconn: pq.abc.PGconn, query: bytes, done: Callable[[str | None], None],
        patience: float | None = None,
    ) -> None:
        self._pgconn = pgconn
        self._done = done
        self._give_up_at = time.monotonic() + (
            COMMIT_PATIENCE if patience is None else patience
        )
        self._failure: str | None = None
        self._finished = False
        self._was_nonblocking = pgconn.nonblocking
        pgconn.nonblocking = 1
        try:
            pgconn.send_query(query)
        except psycopg.Error as exc:
            message = _message(pgconn, exc)
            self._end(message)
            raise StorageFault(f"database: the round's commit failed ({message})") from exc
        self._sending = True

    def fileno(self) -> int:
        """libpq's socket."""
        return self._pgconn.socket

    @property
    def wants_write(self) -> bool:
        """True while libpq has COMMIT bytes it could not send yet."""
        return self._sending

    def advance(self) -> bool:
        """Send or read what can be without waiting; True once committed.

        Raises:
            StorageFault: the commit failed, the connection broke, or the database left it
                unanswered past the patience (the connection is closed): the round is lost.
        """
        if self._finished:
            return True
        pgconn = self._pgconn
        try:
            if self._progress(pgconn):
                return self._complete()
        except psycopg.Error as exc:  # libpq's failures: OperationalError
            message = _message(pgconn, exc)
            self._end(message)
            raise StorageFault(f"database: the round's commit failed ({message})") from exc
        if time.monotonic() >= self._give_up_at:
            pgconn.finish()  # its answer may never come: the connection cannot be used again
            message = "the database did not answer in time"
            self._end(message)
            raise StorageFault(f"database: the round's commit failed ({message})")
        return False

    def _progress(self, pgconn: pq.abc.PGconn) -> bool:
        """Send and read what can be; whether every result has come."""
        if self._sending:
            if pgconn.flush() != _FLUSH_DONE:
                return False
            self._sending = False
        pgconn.consume_input()
        while not pgconn.is_busy():
            result = pgconn.get_result()
            if result is None:
                return True
            self._check(result)
        return False

    def _check(self, result: pq.abc.PGresult) -> None:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            primary = result.error_field(pq.DiagnosticField.MESSAGE_PRIMARY)
            self._failure = self._failure or (primary or b"error").decode("utf-8", "replace")
        elif result.command_status == _ROLLED_BACK:
            self._failure = self._failure or "an error had aborted the round's transaction"

    def _complete(self) -> bool:
        failure = self._failure
        self._end(failure)
        if failure is not None:
            raise StorageFault(f"database: the round's commit failed ({failure})")
        return True

    def _end(self, failure: str | None) -> None:
        self._finished = True
        if self._pgconn.status == pq.ConnStatus.OK:
            self._pgconn.nonblocking = self._was_nonblocking
        self._done(failure)


def _message(pgconn: pq.abc.PGconn, exc: psycopg.Error) -> str:
    text = pgconn.error_message.decode("utf-8", "replace") if pgconn.error_message else str(exc)
    return " ".join(text.split()) or type(exc).__name__
