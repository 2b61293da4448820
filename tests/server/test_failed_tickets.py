"""The failed uploads' tickets a round's end reports: held weakly, read in the loop thread only."""

from __future__ import annotations

import gc
import weakref

from server.installs import _FailedTickets
from server.outcome import InstallTicket


class _Ticket(InstallTicket):
    """A ticket as the installs make them (their dataclasses take weak references)."""


def test_a_failed_ticket_is_reported_while_an_answer_holds_it_and_forgotten_after() -> None:
    failed = _FailedTickets()
    held, dropped, discarded = _Ticket(), _Ticket(), _Ticket()
    for ticket in (held, dropped, discarded):
        failed.add(ticket)
    failed.discard(discarded)
    del dropped
    gc.collect()

    assert failed.alive() == {held}
    assert len(failed._refs) == 1  # the dead one is pruned, not kept as a dead reference


def test_no_callback_runs_when_a_failed_ticket_dies() -> None:
    """A ticket's last reference may go in a worker thread: a callback there (a WeakSet's)
    would change the set while the loop thread reads it at a round's end."""
    failed = _FailedTickets()
    ticket = _Ticket()
    failed.add(ticket)

    callbacks = [ref.__callback__ for ref in weakref.getweakrefs(ticket)]

    assert callbacks == [None]
