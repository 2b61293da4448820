"""server/storage/postgres/reconnect.py: connecting again in a thread of its own, without a
database (the attempts are functions the test controls)."""

from __future__ import annotations

import threading

import pytest
from timing_helpers import wait_until

from server.errors import StorageFault
from server.storage.postgres.reconnect import Reconnection

#: Seconds the test waits for an attempt's thread to get somewhere.
PATIENCE = 30.0
#: Seconds between two looks meanwhile.
POLL = 0.01
#: An interval no test waits out.
LONG_INTERVAL = 3600.0


class Attempts:
    """Attempts that wait until the test lets them end, made or failed."""

    def __init__(self) -> None:
        self.started = 0
        self.ended = threading.Event()
        self._go = threading.Event()
        self._outcome: object = None

    def make(self) -> object:
        self.started += 1
        assert self._go.wait(PATIENCE)
        try:
            if isinstance(self._outcome, Exception):
                raise self._outcome
            return self._outcome
        finally:
            self.ended.set()

    def end(self, outcome: object) -> None:
        """Let the attempt under way end with ``outcome`` (a connection, or a StorageFault)."""
        self._outcome = outcome
        self._go.set()
        assert self.ended.wait(PATIENCE)


def taken(reconnection: Reconnection, attempts: Attempts) -> object:
    """The connection, once the attempt's thread has handed it over."""

    def handed_over() -> object | None:
        try:
            return reconnection.take(attempts.make)
        except StorageFault:
            return None

    return wait_until(handed_over, "never handed over", PATIENCE, POLL)


def refusal_after_the_attempt(reconnection: Reconnection, attempts: Attempts) -> StorageFault:
    """What a call is refused with once the attempt's thread has failed (until then, each
    call is refused as "connecting again")."""

    def failed() -> StorageFault | None:
        with pytest.raises(StorageFault) as refused:
            reconnection.take(attempts.make)
        return None if "connecting again" in str(refused.value) else refused.value

    return wait_until(failed, "the failed attempt never refused a call", PATIENCE, POLL)


def test_a_call_during_the_attempt_is_refused_at_once_and_the_made_connection_handed_over_once():
    attempts = Attempts()
    reconnection: Reconnection[object] = Reconnection("database", LONG_INTERVAL, list.append)
    with pytest.raises(StorageFault, match="database: connecting again"):
        reconnection.take(attempts.make)
    with pytest.raises(StorageFault, match="connecting again"):  # the same attempt, not another
        reconnection.take(attempts.make)
    connection = object()
    attempts.end(connection)
    assert taken(reconnection, attempts) is connection
    assert attempts.started == 1


def test_a_failed_attempt_refuses_with_its_reason_until_the_interval_has_passed():
    attempts = Attempts()
    reconnection: Reconnection[object] = Reconnection("coordination", LONG_INTERVAL, list.append)
    reconnection.start(attempts.make)
    attempts.end(StorageFault("cannot connect: timeout expired"))
    refused = refusal_after_the_attempt(reconnection, attempts)
    assert str(refused) == (
        "coordination: unreachable (cannot connect: timeout expired), trying again shortly"
    )
    assert attempts.started == 1  # no new attempt within the interval


def test_a_connection_made_after_the_owner_closed_is_discarded():
    attempts = Attempts()
    discarded: list[object] = []
    reconnection: Reconnection[object] = Reconnection("database", LONG_INTERVAL, discarded.append)
    reconnection.start(attempts.make)
    reconnection.close()
    connection = object()
    attempts.end(connection)
    wait_until(lambda: discarded, "never discarded", PATIENCE, POLL)
    assert discarded == [connection]
    reconnection.start(attempts.make)  # closed: no attempt any more
    assert attempts.started == 1


def test_a_surprise_in_the_attempt_is_a_failed_attempt_with_its_reason_and_no_traceback(capsys):
    attempts = Attempts()
    reconnection: Reconnection[object] = Reconnection("database", LONG_INTERVAL, list.append)
    reconnection.start(attempts.make)
    attempts.end(KeyError("sslmode"))  # not a StorageFault: a library's own surprise
    refused = refusal_after_the_attempt(reconnection, attempts)
    assert str(refused) == (
        "database: unreachable (unexpected KeyError: 'sslmode'), trying again shortly"
    )
    assert "Traceback" not in capsys.readouterr().err
