"""The client cap holds across nodes that share one PostgreSQL database.

Two stores on two connections stand for two nodes, each with a round open
(not committed) registering the last free slot under the cap or under an
address group's share: exactly one of them gets it, the other is refused
as a single server would refuse it (not inserted, the counts at the limit).
"""

from __future__ import annotations

import psycopg
import pytest
from backends.postgres import waiting_for_a_lock
from timing_helpers import HANG_TIMEOUT

from server.errors import StorageFault
from server.storage.postgres.store import PostgresMetadata

pytestmark = pytest.mark.needed_in_ci

NOW = 1_700_000_000.0
#: The address group of the clients below (the store groups as the server does).
HOME = "127.0.0.1"
ELSEWHERE = "127.0.1.1"
#: A cap with room for two clients; a share that no registration here reaches.
TWO_CLIENTS = (2, 100)
#: Seconds the second node waits for an answer in the test of a wait that never ends.
SHORT_PATIENCE = 0.5


@pytest.fixture
def nodes(postgres_url):
    """Two stores on one database: two nodes."""
    first = PostgresMetadata.open(postgres_url)
    second = PostgresMetadata.open(postgres_url)
    yield first, second
    first.close()
    second.close()


@pytest.fixture
def observer(postgres_url):
    with psycopg.connect(postgres_url, autocommit=True) as db:
        yield db


def register(store: PostgresMetadata, client_id: bytes, name: str, address: str,
             room: tuple[int, int]) -> tuple[tuple[int, int], bool]:
    """An 825's usual case in the store's round (left open): the counts before, and
    whether the client was inserted."""
    with store.transaction():
        _, counts, inserted = store.register_if_free(
            client_id, name, NOW, "v3", address, address, room
        )
    return counts, inserted


def race_for_the_last_slot(nodes, postgres_url, first_address: str, second_address: str,
                           room: tuple[int, int]) -> tuple[tuple[tuple[int, int], bool], ...]:
    """One client is committed; the first node registers another in a round left open, the
    second node registers a third meanwhile; the first node's round then commits."""
    first, second = nodes
    register(first, b"a" * 16, "alice", first_address, room)
    first.finish_round(durable=True)
    won = register(first, b"b" * 16, "bob", first_address, room)  # its round stays open
    outcome = waiting_for_a_lock(
        lambda: register(second, b"c" * 16, "carol", second_address, room),
        postgres_url, second._live().info.backend_pid,
    )
    first.finish_round(durable=True)
    lost = outcome.result(timeout=HANG_TIMEOUT)
    second.finish_round(durable=True)
    return won, lost


def test_two_nodes_registering_the_last_slot_under_the_cap_admit_one(
    nodes, observer, postgres_url
):
    won, lost = race_for_the_last_slot(nodes, postgres_url, HOME, ELSEWHERE, TWO_CLIENTS)
    assert won == ((1, 1), True)
    assert lost == ((2, 0), False)  # refused at the cap, as a single server would
    assert observer.execute("SELECT Name FROM clients ORDER BY Name").fetchall() == [
        ("alice",), ("bob",)]
    assert observer.execute(
        "SELECT Clients FROM client_counts WHERE AddressGroup = ''").fetchall() == [(2,)]


def test_two_nodes_registering_the_last_slot_of_a_groups_share_admit_one(
    nodes, observer, postgres_url
):
    """The same race under an address group's share (a group both nodes register from)."""
    share_of_two = (100, 2)
    won, lost = race_for_the_last_slot(nodes, postgres_url, HOME, HOME, share_of_two)
    assert won == ((1, 1), True)
    assert lost == ((2, 2), False)
    assert observer.execute("SELECT count(*) FROM clients").fetchall() == [(2,)]


def test_far_from_the_cap_both_nodes_register(nodes, observer, postgres_url):
    """The wait for the other node's round is the one its insert made anyway; then both
    fit."""
    won, lost = race_for_the_last_slot(nodes, postgres_url, HOME, ELSEWHERE, (10, 10))
    assert won[1] and lost == ((2, 0), True)
    assert observer.execute("SELECT count(*) FROM clients").fetchall() == [(3,)]


def test_a_wait_for_another_nodes_round_past_the_patience_is_a_fault_not_a_hang(
    nodes, observer
):
    """The other node's round never commits within the store's patience: the waiting
    registration fails (StorageFault: its 825 is answered 1607), it does not hang."""
    first, second = nodes
    register(first, b"a" * 16, "alice", HOME, TWO_CLIENTS)  # its round stays open
    second._live().patience = SHORT_PATIENCE
    with pytest.raises(StorageFault, match="no answer within"):
        register(second, b"c" * 16, "carol", ELSEWHERE, TWO_CLIENTS)
    first.finish_round(durable=True)
    assert observer.execute("SELECT Name FROM clients").fetchall() == [("alice",)]


def delete(store: PostgresMetadata, client_id: bytes) -> None:
    """A client deleted in the store's round, which then commits."""
    with store.transaction():
        store.delete_client(client_id)
    store.finish_round(durable=True)


@pytest.mark.parametrize("deleting", ["one client", "the lapsed keyless ones"])
def test_a_deletion_meeting_another_nodes_registration_waits_for_it_without_a_deadlock(
    nodes, observer, postgres_url, deleting
):
    """Every statement that inserts or deletes a client takes the total's lock first (an
    825's insert did): a deletion waits for another node's round that registered a client
    before it locks the row it deletes, so that round may delete that row too (a purge of
    the lapsed keyless registrations on both nodes) without a deadlock's abort."""
    first, second = nodes
    far = (100, 100)
    register(first, b"a" * 16, "alice", HOME, far)  # keyless, lapsed for the purge below
    first.finish_round(durable=True)
    register(first, b"b" * 16, "bob", HOME, far)  # first's round keeps the total's lock
    with first.transaction():  # keyed: no purge takes it
        first.set_keys(b"b" * 16, b"public key", b"k" * 32, NOW)
    if deleting == "one client":
        other = waiting_for_a_lock(lambda: delete(second, b"a" * 16), postgres_url,
                                   second._live().info.backend_pid)
    else:
        other = waiting_for_a_lock(lambda: second.delete_stale_keyless(NOW + 1), postgres_url,
                                   second._live().info.backend_pid)
    with first.transaction():
        first.delete_client(b"a" * 16)  # the row the other node's deletion is after
    first.finish_round(durable=True)  # no deadlock: the other waits for the total's lock
    other.result(timeout=HANG_TIMEOUT)
    second.finish_round(durable=True)
    assert observer.execute("SELECT Name FROM clients").fetchall() == [("bob",)]
    assert observer.execute(
        "SELECT Clients FROM client_counts WHERE AddressGroup = ''").fetchall() == [(1,)]


def forget(store: PostgresMetadata, client_id: bytes) -> None:
    """Every row of a client deleted in the store's round (its files first), which then
    commits."""
    with store.transaction():
        store.forget_client(client_id)
    store.finish_round(durable=True)


def test_a_clients_removal_meeting_another_nodes_registration_waits_before_its_files(
    nodes, observer, postgres_url
):
    """A removal deletes the client's files before the client: it takes the total's lock
    before those too, so that a round holding the total that then writes one of those
    files waits for no round that waits for it."""
    first, second = nodes
    far = (100, 100)
    register(first, b"a" * 16, "alice", HOME, far)
    with first.transaction():
        first.upsert_file(b"a" * 16, b"a.bin", "received_files/a/a.bin")
    first.finish_round(durable=True)
    register(first, b"b" * 16, "bob", HOME, far)  # first's round keeps the total's lock
    other = waiting_for_a_lock(lambda: forget(second, b"a" * 16), postgres_url,
                               second._live().info.backend_pid)
    with first.transaction():
        first.delete_file(b"a" * 16, b"a.bin")  # a row the removal is after
    first.finish_round(durable=True)  # no deadlock: the removal waits for the total's lock
    other.result(timeout=HANG_TIMEOUT)
    assert observer.execute("SELECT Name FROM clients").fetchall() == [("bob",)]
    assert observer.execute("SELECT count(*) FROM files").fetchall() == [(0,)]
