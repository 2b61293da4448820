"""Connecting again off the loop thread: the loop never waits for libpq's connect.

A connection found lost is made again in a worker thread (one attempt at a
time, a daemon thread of its own): toward a database that does not answer,
libpq's connect waits up to its ``connect_timeout``, and the loop would stop
serving every connection meanwhile. The loop's thread only looks at the
outcome (:meth:`Reconnection.take`): until a connection is made, the call
that wanted it fails at once with :class:`~server.errors.StorageFault` (its
request gets the refusal a database fault gets), and the first call after
the attempt succeeded has the new connection. After a failed attempt, the
next one starts no sooner than ``interval`` seconds after the failure (a
call in between fails at once, with the failure's reason), so that a
database that is away costs one attempt per interval, whatever the traffic.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Generic, TypeVar

from ...errors import StorageFault

log = logging.getLogger(__name__)

#: A connection, of whatever kind the owner makes.
Connection = TypeVar("Connection")


class Reconnection(Generic[Connection]):
    """One owner's attempts to connect again (see the module doc); its methods are the
    owner's thread's, the attempt's own thread only hands its outcome over."""

    def __init__(
        self, what: str, interval: float, discard: Callable[[Connection], None]
    ) -> None:
        #: How the owner's messages begin ("database", "coordination").
        self._what = what
        self._interval = interval
        #: Closes a connection made for an owner that closed meanwhile.
        self._discard = discard
        self._lock = threading.Lock()
        #: The attempt under way, if any.
        self._attempt: threading.Thread | None = None
        #: Its outcome, handed over by its thread (guarded by the lock).
        self._made: Connection | None = None
        self._failure: str | None = None
        #: No attempt starts before this (time.monotonic()), after a failed one.
        self._retry_at = 0.0
        #: The owner closed: what an attempt still makes is closed at once.
        self._closed = False
        #: A failure was logged, and no connection made since (one warning per outage).
        self._unreachable = False

    def start(self, make: Callable[[], Connection]) -> None:
        """Begin an attempt with ``make`` (run in a worker thread; it raises StorageFault on
        failure), unless one is under way, one made a connection not taken yet, or the
        last failed less than the interval ago."""
        with self._lock:
            if self._closed or self._attempt is not None or self._made is not None:
                return
            if time.monotonic() < self._retry_at:
                return
            self._failure = None
            attempt = self._attempt = threading.Thread(
                target=self._run, args=(make,), name=f"{self._what} connect", daemon=True
            )
        attempt.start()

    def take(self, make: Callable[[], Connection]) -> Connection:
        """The connection an attempt made (handed over once); else an attempt is begun
        (:meth:`start`) and the call refused.

        Raises:
            StorageFault: none is made yet: an attempt is under way, or the last one failed
                (its reason) less than the interval ago.
        """
        self.start(make)
        with self._lock:
            made, self._made = self._made, None
            failure = self._failure
        if made is not None:
            log.info("%s: connected again", self._what)
            self._unreachable = False
            return made
        if failure is None:
            raise StorageFault(f"{self._what}: connecting again")
        if not self._unreachable:
            log.warning("%s: %s; trying again every %g s", self._what, failure, self._interval)
        self._unreachable = True
        raise StorageFault(f"{self._what}: unreachable ({failure}), trying again shortly")

    def close(self) -> None:
        """No attempt starts any more; a connection made or still to come is closed."""
        with self._lock:
            self._closed = True
            made, self._made = self._made, None
        if made is not None:
            self._discard(made)

    def _run(self, make: Callable[[], Connection]) -> None:
        """The attempt's thread: connect, and hand the outcome over."""
        made: Connection | None = None
        failure = "the attempt ended without a connection"
        try:
            made = make()
        except StorageFault as exc:
            failure = str(exc)
        except Exception as exc:  # a surprise in the worker is a failed attempt, told in one line
            failure = f"unexpected {type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                abandoned = self._closed
                if made is None:  # counted from the failure: the attempt may have waited long
                    self._failure = failure
                    self._retry_at = time.monotonic() + self._interval
                elif not abandoned:
                    self._made = made
                self._attempt = None
            if made is not None and abandoned:
                self._discard(made)
