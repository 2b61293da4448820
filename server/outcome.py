"""What a handler hands back: what a request led to.

The session (server/session.py) reads :data:`~server.session.OWED` with the
request (its event class), whether the outcome has an answer and the
connection model to know what the request is owed on the wire.
An answer that reports a first upload carries the upload's
:class:`InstallTicket`: the session holds it until the round's end says
whether the file took its name.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.events import Response


class InstallTicket:
    """A first upload waiting for the round's end to take its name (or a blob's seal, or a
    refused upload's removal, that the blob port's worker has still to do).

    Its answer is held with it (:meth:`server.session.Session.release`); the
    round's end (:meth:`server.app.App.round_committed`) names the tickets whose
    files could not take their names. A ticket is compared by identity: it
    stands for one upload of one round.
    """

    __slots__ = ()


@dataclass(frozen=True)
class Outcome:
    """What one request led to.

    ``response`` is the answer the request is owed, if any (for a 901, the
    1604 that goes out only if no 828 follows in time); only an 828 may have
    none (a packet after which more of its file is due, or one of a refused
    attempt, whose 1607 went at the refusal). ``refused`` marks a
    refusal (1607, and 1601 or a 1606 that registers nothing): it is always
    sent, counts toward the connection's errors and does not keep the
    connection alive. ``client`` and ``detail`` go into the request's log
    line; ``final`` is False for a packet after which more of its file is due
    (logged at DEBUG; the last packet of a refused attempt is final, and
    unanswered).
    """

    response: Response | None = None
    client: str = ""
    detail: str = ""
    refused: bool = False
    final: bool = True
    #: The stored file the answer reports takes its name only once the round
    #: is durable (a first upload): the answer is held until then, and a 1607
    #: goes instead if the file cannot take it.
    awaits_install: InstallTicket | None = None
