"""One simple-query message (statements as one text) sent and its rows read, without a cursor.

The store's reads and the coordination's waited calls are one message each
(server/storage/postgres/store.py, coordination.py): its statements with
their parameters bound as literals (:mod:`.literals`). psycopg's
``Connection.execute`` makes a cursor per call, converts the query, consults
its prepared-statement cache and keeps every result set; measured alone on
loopback, that is about twice the loop CPU of what is done here: libpq's
``PQsendQuery``, psycopg's C generator for the results (driven in poll(),
with the connection's deadline, the loop thread's other threads running
meanwhile), the first error raised as
psycopg raises it (:func:`psycopg.errors.error_from_result`: a taken name
is still a ``UniqueViolation``), and the last result's rows made into tuples
by a loader kept per connection.

Every wait for an answer has a deadline (:class:`PatientConnection`): a
backend that stopped answering while its host still acknowledges (a stopped
or frozen process; its own ``statement_timeout`` cannot fire, and the
connection's ``tcp_user_timeout`` only sees data left unacknowledged) would
otherwise keep the waiting thread, and with it the loop and every
connection, waiting until it resumes. Past the deadline, the connection is
closed and :class:`Stalled` raised: its owner takes it for lost, as any
broken connection (the call fails with a StorageFault, and the connection
is made again off the loop: server/storage/postgres/reconnect.py).
"""

from __future__ import annotations

import select
import time
from typing import Any, Sequence, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg import generators, pq
from psycopg.abc import PQGen
from psycopg.adapt import Transformer
from psycopg.waiting import Ready, Wait

from .literals import Binder

_FATAL = pq.ExecStatus.FATAL_ERROR
_ROWS = pq.ExecStatus.TUPLES_OK
#: What a generator's wait ends with.
RV = TypeVar("RV")
#: What poll() waits for on the socket, for what libpq waits for (a psycopg ``Wait``, as
#: an int: the loop's every read passes here).
_POLLED = {
    int(Wait.R): select.POLLIN, int(Wait.W): select.POLLOUT,
    int(Wait.RW): select.POLLIN | select.POLLOUT,
}
#: What libpq is told the socket is ready for (a psycopg ``Ready``, as an int).
_NOT_READY = int(Ready.NONE)
_READY_R = int(Ready.R)
_READY_W = int(Ready.W)
#: What poll() reports besides readiness: an error or a hang-up (libpq tells which).
_TROUBLE = ~(select.POLLIN | select.POLLOUT)
_MS = 1000


class Stalled(psycopg.OperationalError):
    """No answer came by the deadline: the connection is closed (taken for lost)."""


class PatientConnection(psycopg.Connection):
    """A connection whose every wait for the database (a cursor's, a transaction's, a
    :class:`Messenger`'s) ends after :attr:`patience` seconds at most: past them the
    connection is closed and :class:`Stalled` raised (see the module doc)."""

    #: Seconds an answer may take; None: psycopg's own wait, without a deadline (a
    #: migration, which may wait long on a sound database).
    patience: float | None = None

    def wait(self, gen: PQGen[RV], *args: Any, **kwargs: Any) -> RV:
        """:meth:`psycopg.Connection.wait`, with :attr:`patience`.

        Raises:
            Stalled: no answer within the patience.
        """
        if self.patience is None:
            return super().wait(gen, *args, **kwargs)
        return answered(gen, self.pgconn, self.patience)


def answered(gen: PQGen[RV], pgconn: pq.abc.PGconn, patience: float) -> RV:
    """Drive a psycopg generator on ``pgconn`` to its end, waiting in poll() (which lets
    the other threads run) for the socket it asks for, ``patience`` seconds at most.

    Raises:
        Stalled: the deadline passed first; the connection is closed.
        psycopg.OperationalError: the connection failed.
    """
    deadline = time.monotonic() + patience
    fileno = pgconn.socket  # before the generator starts: a lost connection has none after
    try:
        wanted = next(gen)
        while True:
            ready = ready_by(fileno, wanted, deadline)
            if ready == _NOT_READY:
                pgconn.finish()
                raise Stalled(f"no answer within {patience:g} s")
            wanted = gen.send(ready)
    except StopIteration as finished:
        result: RV = finished.value
        return result


def ready_by(fileno: int, wanted: int, deadline: float) -> int:
    """Wait until libpq's socket is ready for ``wanted`` (a :class:`~psycopg.waiting.Wait`)
    or ``deadline`` (``time.monotonic()``) passes: what it is ready for (a
    :class:`~psycopg.waiting.Ready`; ``Ready.NONE``: the deadline passed). A socket
    in trouble (an error, a hang-up, closed) is ready for all: libpq tells the failure."""
    poller = select.poll()
    poller.register(fileno, _POLLED[wanted])
    while (left := deadline - time.monotonic()) > 0:
        polled = poller.poll(left * _MS)
        if not polled:
            continue
        events = polled[0][1]
        if events & _TROUBLE:
            return wanted
        return (_READY_R if events & select.POLLIN else _NOT_READY) | (
            _READY_W if events & select.POLLOUT else _NOT_READY
        )
    return _NOT_READY


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
