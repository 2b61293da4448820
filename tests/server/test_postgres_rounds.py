"""The loop's rounds on PostgreSQL: a round whose commit fails (its backend killed) is
closed unanswered, and the next round is served on a new connection.

The loop is driven by hand (``run_once``) in this thread, as in
test_group_commit.py; the store is PostgreSQL, in a fresh database of the
session's throwaway cluster (skipped without the binaries, but not in CI).
"""

from __future__ import annotations

import os
import signal
import time

import psycopg
import pytest
from helpers import ANY_ID, RawClient, unique_name
from loop_driving import answered, run_until

from protocol import ConnectionClosed, Register, Registered
from server.app import App
from server.limits import Limits
from server.loop import Server, create_listener
from server.storage.folder import FolderBlobs
from server.storage.postgres.connect import APPLICATION_NAME
from server.storage.postgres.store import PostgresMetadata

pytestmark = pytest.mark.needed_in_ci

CLIENTS = 3
#: Seconds the test waits for the store to serve again (its connection made again in a
#: thread of its own: requests meanwhile are refused at once).
RESUME_PATIENCE = 30.0


@pytest.fixture
def looped(tmp_path, postgres_url):
    limits = Limits(requests_per_address_per_round=0, durable_files_per_address_per_round=0)
    db = PostgresMetadata.open(postgres_url)
    server = Server(App.build(db, FolderBlobs(tmp_path), limits), create_listener("127.0.0.1", 0))
    yield server, db, postgres_url
    server.close()
    db.close()




def served_again(server) -> str:
    """A fresh client's 825, as often as needed until it is registered (the store connects
    again off the loop thread, the requests meanwhile refused); the name registered."""
    given_up = time.monotonic() + RESUME_PATIENCE
    while True:
        name = unique_name()
        with RawClient(server.address[:2]) as again:
            again.send(Register(client_id=ANY_ID, name=name))
            run_until(server, lambda: answered(again))
            if isinstance(again.receive(), Registered):
                return name
        assert time.monotonic() < given_up, "the server never served again"


def _names(url: str) -> list[str]:
    with psycopg.connect(url) as db:
        return [row[0] for row in db.execute("SELECT Name FROM clients ORDER BY Name")]


def test_a_round_whose_commit_fails_is_closed_unanswered_and_the_next_is_served(
    looped, monkeypatch
):
    server, db, url = looped
    clients = [RawClient(server.address[:2]) for _ in range(CLIENTS)]
    run_until(server, lambda: len(server.channels) == CLIENTS)
    real_begin = db.begin_round_commit
    killed = []

    def begin_round_commit(*, durable: bool):
        if not killed:  # the database loses the connection as the round ends
            with psycopg.connect(url, autocommit=True) as other:
                killed.extend(other.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = %s AND datname = current_database()",
                    (APPLICATION_NAME,)).fetchall())
        return real_begin(durable=durable)

    monkeypatch.setattr(db, "begin_round_commit", begin_round_commit)
    for client in clients:
        client.send(Register(client_id=ANY_ID, name=unique_name()))
    time.sleep(0.1)  # every request in the server's socket buffers: one round takes them
    run_until(server, lambda: not server.channels)
    assert killed == [(True,)]
    for client in clients:  # nothing answered: none of it is in the database
        assert isinstance(client.receive(), ConnectionClosed)
        client.close()
    assert _names(url) == []
    name = served_again(server)
    assert _names(url) == [name]



#: Seconds the test lets a round's COMMIT go unanswered before the store gives it up.
SHORT_COMMIT_PATIENCE = 0.5


def test_a_round_whose_commit_goes_unanswered_is_closed_unanswered_and_the_loop_goes_on(
    looped, monkeypatch
):
    """The backend stops answering as the round ends (SIGSTOP: a stalled disk, a network
    cut): the loop, which waits on nothing that would report it, still gives the round up
    after the commit's patience, closes its connections unanswered, and serves the next."""
    from server.storage.postgres import roundcommit

    monkeypatch.setattr(roundcommit, "COMMIT_PATIENCE", SHORT_COMMIT_PATIENCE)
    server, db, url = looped
    client = RawClient(server.address[:2])
    run_until(server, lambda: len(server.channels) == 1)
    real_begin = db.begin_round_commit
    stopped: list[int] = []

    def begin_round_commit(*, durable: bool):
        if not stopped:  # the backend stops answering as the round ends
            with psycopg.connect(url, autocommit=True) as other:
                (pid,), = other.execute(
                    "SELECT pid FROM pg_stat_activity"
                    " WHERE application_name = %s AND datname = current_database()",
                    (APPLICATION_NAME,)).fetchall()
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        return real_begin(durable=durable)

    monkeypatch.setattr(db, "begin_round_commit", begin_round_commit)
    client.send(Register(client_id=ANY_ID, name=unique_name()))
    try:
        run_until(server, lambda: not server.channels)
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    assert isinstance(client.receive(), ConnectionClosed)
    client.close()
    assert served_again(server)
