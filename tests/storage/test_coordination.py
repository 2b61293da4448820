"""The coordination contract: the same cases on every implementation, with two nodes on one state.

In memory (:class:`MemoryCoordination`, nodes joined in one process, a fake
clock) and in PostgreSQL (:class:`PgCoordination`, each node on a connection
of its own to a throwaway cluster: tests/backends/postgres.py). A lease
lapses by moving the clock (memory) or the rows' expiries (PostgreSQL);
one case also lets a short lease lapse by the database's own clock.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from backends.postgres import stalled_backend
from helpers import server_env
from timing_helpers import wait_until

from server.errors import StorageFault, StoreUnusable
from server.storage.base import StoreUrl
from server.storage.coordination import (
    UPLOAD, Coordination, MemoryCoordination, UploadLease, upload_key,
)
from server.storage.factory import open_coordination

ALICE, BOB = b"a" * 16, b"b" * 16
KEY, OTHER_KEY = b"k" * 32, b"o" * 32
HOUR = 3600.0
LEASE = 30.0
#: How long the real-clock case waits at most for a short lease to lapse.
LAPSE_WAIT = 30.0
#: Seconds between two calls while the coordination connects again.
RECONNECT_POLL = 0.01
#: How long a release sent without waiting may take to reach the database at most (far
#: below LEASE: not its lapse), and the seconds between two looks.
RELEASE_WAIT = 10.0
RELEASE_POLL = 0.01


def once_served(call: Callable[[], object], what: str, patience: float) -> object:
    """``call()``'s value once it is no longer refused (a :class:`StorageFault`: the
    coordination connects again off the calling thread), within ``patience`` seconds."""

    def served() -> tuple[object] | None:
        try:
            return (call(),)  # a tuple: a false answer is an answer too
        except StorageFault:
            return None

    return wait_until(served, what, patience, RECONNECT_POLL)[0]
#: A stopped backend is resumed this many times the coordination's patience later.
STALL_RESUME_AFTER = 4
#: Ticks that must come while the read waits (of the ~60 its patience holds).
STALL_TICKS_SEEN = 5


def lease(client_id: bytes, file_name: bytes) -> UploadLease:
    """The lease of an upload whose blob is named after its client and file name."""
    return UploadLease(client_id, file_name, (client_id + file_name).hex())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Backend:
    """Nodes of one coordination state, and a way to let every lease lapse."""

    def __init__(
        self, node: Callable[[str, float], Coordination], lapse: Callable[[], None]
    ) -> None:
        self.node = node
        self._lapse = lapse
        self.made: list[Coordination] = []

    def lapse(self) -> None:
        """Every node's calls in place (settled), then every lease lapsed."""
        for node in self.made:
            node.settle()
        self._lapse()

    def __call__(self, name: str, lease: float = LEASE) -> Coordination:
        made = self.node(name, lease)
        self.made.append(made)
        return made


def memory_backend() -> Backend:
    clock = Clock()
    first: list[MemoryCoordination] = []

    def node(name: str, lease: float) -> Coordination:
        if not first:
            first.append(MemoryCoordination(clock, name, lease))
            return first[0]
        return first[0].join(name)

    def lapse() -> None:
        clock.now += 10 * LEASE

    return Backend(node, lapse)


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.needed_in_ci)])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        made = memory_backend()
    else:
        made = postgres_backend(request.getfixturevalue("postgres_url"))
    yield made
    for node in made.made:
        node.close()


def postgres_backend(conninfo: str) -> Backend:
    import psycopg

    from server.storage.postgres.coordination import PgCoordination

    def lapse() -> None:
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(
                "UPDATE coordination_leases SET expires = now() - interval '1 second'"
            )

    return Backend(lambda name, lease: PgCoordination(conninfo, name, lease), lapse)


# -- registration holds ---------------------------------------------------------------


def test_a_registration_held_by_one_node_is_held_for_the_other_until_it_lapses(backend):
    a, b = backend("a"), backend("b")
    a.hold_registration(ALICE)
    a.settle()  # what answers nothing may go out unanswered: in place once settled
    assert b.registration_held_elsewhere(ALICE)
    assert not a.registration_held_elsewhere(ALICE)  # its own
    assert not b.registration_held_elsewhere(BOB)
    backend.lapse()
    assert not b.registration_held_elsewhere(ALICE)


def test_a_released_registration_is_free_at_once(backend):
    a, b = backend("a"), backend("b")
    a.hold_registration(ALICE)
    a.hold_registration(BOB)
    a.release_registrations([ALICE])
    a.settle()
    assert not b.registration_held_elsewhere(ALICE)
    assert b.registration_held_elsewhere(BOB)


def test_one_node_cannot_release_another_s_hold(backend):
    a, b = backend("a"), backend("b")
    a.hold_registration(ALICE)
    b.release_registrations([ALICE])
    a.settle()
    b.settle()
    assert b.registration_held_elsewhere(ALICE)


# -- upload leases ----------------------------------------------------------------------


def test_an_upload_lease_is_one_node_s_until_released(backend):
    a, b = backend("a"), backend("b")
    assert a.take_upload(lease(ALICE, b"f.bin"))
    assert not b.take_upload(lease(ALICE, b"f.bin"))
    assert a.take_upload(lease(ALICE, b"f.bin"))  # its own: renewed
    assert b.take_upload(lease(ALICE, b"g.bin"))  # another name
    assert b.take_upload(lease(BOB, b"f.bin"))  # another client
    b.release_upload(ALICE, b"f.bin")  # not b's: nothing
    assert not b.take_upload(lease(ALICE, b"f.bin"))
    a.release_upload(ALICE, b"f.bin")
    a.settle()
    assert b.take_upload(lease(ALICE, b"f.bin"))
    assert not a.take_upload(lease(ALICE, b"f.bin"))


def test_an_upload_lease_lapses_unless_renewed(backend):
    a, b = backend("a"), backend("b")
    assert a.take_upload(lease(ALICE, b"f.bin"))
    backend.lapse()
    assert b.take_upload(lease(ALICE, b"f.bin"))
    assert not a.take_upload(lease(ALICE, b"f.bin"))


def test_renewal_keeps_what_the_node_holds_and_lets_go_of_the_rest(backend):
    a, b = backend("a"), backend("b")
    a.take_upload(lease(ALICE, b"kept.bin"))
    a.take_upload(lease(ALICE, b"dropped.bin"))
    a.hold_registration(ALICE)
    a.hold_registration(BOB)
    backend.lapse()
    a.renew([ALICE], [lease(ALICE, b"kept.bin")])  # lapsed and free: taken again
    assert not b.take_upload(lease(ALICE, b"kept.bin"))
    assert b.take_upload(lease(ALICE, b"dropped.bin"))
    assert b.registration_held_elsewhere(ALICE)
    assert not b.registration_held_elsewhere(BOB)


def test_renewal_does_not_take_back_a_lapsed_lease_another_node_took(backend):
    a, b = backend("a"), backend("b")
    a.take_upload(lease(ALICE, b"f.bin"))
    backend.lapse()
    assert b.take_upload(lease(ALICE, b"f.bin"))
    a.renew([], [lease(ALICE, b"f.bin")])
    assert not a.take_upload(lease(ALICE, b"f.bin"))


def test_uploading_names_the_clients_with_a_lease_on_any_node(backend):
    a, b = backend("a"), backend("b")
    a.take_upload(lease(ALICE, b"f.bin"))
    assert b.uploading([ALICE, BOB]) == {ALICE}
    assert b.uploading([]) == set()
    backend.lapse()
    assert b.uploading([ALICE, BOB]) == set()


def test_the_blobs_of_uploads_any_node_receives_are_live(backend):
    a, b = backend("a"), backend("b")
    a.take_upload(lease(ALICE, b"f.bin"))
    b.take_upload(lease(BOB, b"g.bin"))
    b.hold_registration(ALICE)
    live = {lease(ALICE, b"f.bin").blob_key, lease(BOB, b"g.bin").blob_key}
    assert a.live_blobs() == b.live_blobs() == live
    a.release_upload(ALICE, b"f.bin")
    a.settle()
    assert b.live_blobs() == {lease(BOB, b"g.bin").blob_key}
    backend.lapse()
    assert a.live_blobs() == set()


def test_renewal_keeps_a_lease_s_blob_live(backend):
    a, b = backend("a"), backend("b")
    a.take_upload(lease(ALICE, b"f.bin"))
    backend.lapse()
    a.renew([], [lease(ALICE, b"f.bin")])
    assert b.live_blobs() == {lease(ALICE, b"f.bin").blob_key}


def test_closing_a_node_lets_go_of_its_holds_and_leases(backend):
    a, b = backend("a"), backend("b")
    a.take_upload(lease(ALICE, b"f.bin"))
    a.hold_registration(BOB)
    a.close()
    assert b.take_upload(lease(ALICE, b"f.bin"))
    assert not b.registration_held_elsewhere(BOB)


# -- the failure budget -----------------------------------------------------------------


def test_failures_made_on_both_nodes_count_together(backend):
    a, b = backend("a"), backend("b")
    assert a.decrypt_failures(ALICE, KEY, HOUR) == b.decrypt_failures(ALICE, KEY, HOUR)
    assert a.decrypt_failures(ALICE, KEY, HOUR).in_window == 0
    first = a.note_decrypt_failure(ALICE, KEY, HOUR)
    second = b.note_decrypt_failure(ALICE, KEY, HOUR)
    assert (first.under_key, first.in_window) == (1, 1)
    assert (second.under_key, second.in_window) == (2, 2)
    seen = a.decrypt_failures(ALICE, KEY, HOUR)
    assert (seen.under_key, seen.in_window) == (2, 2)
    assert b.decrypt_failures(BOB, KEY, HOUR).in_window == 0


def test_a_new_key_starts_its_count_again_and_the_window_keeps_counting(backend):
    a, b = backend("a"), backend("b")
    a.note_decrypt_failure(ALICE, KEY, HOUR)
    a.note_decrypt_failure(ALICE, KEY, HOUR)
    assert b.decrypt_failures(ALICE, OTHER_KEY, HOUR).under_key == 0
    counts = b.note_decrypt_failure(ALICE, OTHER_KEY, HOUR)
    assert (counts.under_key, counts.in_window) == (1, 3)
    assert a.decrypt_failures(ALICE, KEY, HOUR).under_key == 0  # the old key's count is gone


def test_a_purge_forgets_failures_past_the_window(backend):
    a, b = backend("a"), backend("b")
    a.note_decrypt_failure(ALICE, KEY, HOUR)
    b.purge(HOUR)
    assert a.decrypt_failures(ALICE, KEY, HOUR).in_window == 1
    b.purge(0.0)
    counts = a.decrypt_failures(ALICE, KEY, HOUR)
    assert counts.in_window == 0 and counts.under_key == 1  # a key's count has no window


# -- the purge leader ---------------------------------------------------------------------


def test_one_node_runs_the_purges_and_another_takes_over_when_it_stops(backend):
    a, b, c = backend("a"), backend("b"), backend("c")
    assert a.may_run_purges()
    assert a.may_run_purges()  # it stays the leader
    assert not b.may_run_purges() and not c.may_run_purges()
    a.close()
    leaders = [node.may_run_purges() for node in (b, c)]
    assert leaders == [True, False]


# -- PostgreSQL only ----------------------------------------------------------------------


@pytest.mark.needed_in_ci
def test_a_short_lease_lapses_by_the_database_s_clock(postgres_url):
    from server.storage.postgres.coordination import PgCoordination

    lease_time = 2.0
    a = PgCoordination(postgres_url, "a", lease_time)
    b = PgCoordination(postgres_url, "b", lease_time)
    try:
        taken = time.monotonic()
        assert a.take_upload(lease(ALICE, b"f.bin"))
        assert not b.take_upload(lease(ALICE, b"f.bin"))
        while not b.take_upload(lease(ALICE, b"f.bin")):
            assert time.monotonic() - taken < LAPSE_WAIT, "the lease never lapsed"
            time.sleep(lease_time / 10)
        assert time.monotonic() - taken >= lease_time  # not before it lapsed
    finally:
        a.close()
        b.close()


@pytest.mark.needed_in_ci
def test_a_release_sent_without_waiting_reaches_the_database_before_it_is_settled(postgres_url):
    """Its statement goes at the call, its answer alone waits for the settle: a node that
    calls nothing more after a cut (its loop idle) does not keep the name from the others
    until the lease lapses."""
    from server.storage.postgres.coordination import PgCoordination

    a = PgCoordination(postgres_url, "a", LEASE)
    b = PgCoordination(postgres_url, "b", LEASE)
    try:
        assert a.take_upload(lease(ALICE, b"f.bin"))
        released = time.monotonic()
        a.release_upload(ALICE, b"f.bin")  # a is called no more: nothing settles it
        while not b.take_upload(lease(ALICE, b"f.bin")):
            assert time.monotonic() - released < RELEASE_WAIT, "the release never arrived"
            time.sleep(RELEASE_POLL)
    finally:
        a.close()
        b.close()


@pytest.mark.needed_in_ci
def test_a_stalled_backend_fails_the_settle_after_its_patience_and_other_threads_run(
    postgres_url, caplog
):
    """The backend stops (SIGSTOP) while its host still acknowledges: reading the answer
    of what was sent without waiting gives up after ANSWER_PATIENCE, the connection taken
    for lost, and the process's other threads run meanwhile, where libpq's PQgetResult
    waited for ever holding them all. A shell resumes the backend later whatever happens,
    so that the code before the fix ends the test late rather than never."""
    from server.storage.postgres.coordination import ANSWER_PATIENCE, PgCoordination

    a = PgCoordination(postgres_url, "a", LEASE)
    assert a.take_upload(lease(ALICE, b"f.bin"))
    a.release_upload(ALICE, b"f.bin")  # its statement prepared, while the backend answers
    a.settle()
    assert a.take_upload(lease(ALICE, b"f.bin"))
    backend = a._connect().info.backend_pid
    try:
        with stalled_backend(backend, ANSWER_PATIENCE * STALL_RESUME_AFTER) as stall:
            a.release_upload(ALICE, b"f.bin")  # sent; the stopped backend never answers
            with stall.waiting():
                a.settle()
    finally:
        a.close()
    assert "no answer within" in caplog.text
    assert a._connection is None  # taken for lost (made again at the next call)
    assert stall.waited < ANSWER_PATIENCE * STALL_RESUME_AFTER  # gave up, not resumed
    assert stall.ticks_while_waiting >= STALL_TICKS_SEEN


@pytest.mark.needed_in_ci
def test_a_stalled_backend_fails_a_waited_call_after_its_patience_and_other_threads_run(
    postgres_url
):
    """As above, for a call waited for (a cursor's, where psycopg's wait had no
    deadline): it fails with a StorageFault after ANSWER_PATIENCE, the connection taken
    for lost, the other threads running meanwhile; the next calls are served once it is
    made again."""
    from server.storage.postgres.coordination import ANSWER_PATIENCE, PgCoordination

    a = PgCoordination(postgres_url, "a", LEASE)
    assert not a.registration_held_elsewhere(ALICE)
    backend = a._connect().info.backend_pid
    with stalled_backend(backend, ANSWER_PATIENCE * STALL_RESUME_AFTER) as stall:
        with stall.waiting(), pytest.raises(StorageFault, match="no answer within"):
            a.registration_held_elsewhere(ALICE)
    try:
        assert a._connection is None  # taken for lost (made again at the next call)
        assert stall.waited < ANSWER_PATIENCE * STALL_RESUME_AFTER  # gave up, not resumed
        assert stall.ticks_while_waiting >= STALL_TICKS_SEEN
        assert not once_served(  # served again once connected again (off this thread)
            lambda: a.registration_held_elsewhere(ALICE),
            "the coordination connected again", RELEASE_WAIT,
        )
    finally:
        a.close()


@pytest.mark.needed_in_ci
def test_two_nodes_racing_for_one_lease_never_both_get_it(postgres_url):
    from server.storage.postgres.coordination import PgCoordination

    nodes = [PgCoordination(postgres_url, name, LEASE) for name in ("a", "b")]
    rounds = 50
    won: list[list[bool]] = [[], []]
    start = threading.Barrier(2)

    def race(index: int) -> None:
        for number in range(rounds):
            start.wait()
            won[index].append(nodes[index].take_upload(lease(ALICE, b"%d" % number)))

    threads = [threading.Thread(target=race, args=(index,)) for index in (0, 1)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for node in nodes:
            node.close()
    assert all(first != second for first, second in zip(*won))  # exactly one, every round


@pytest.mark.needed_in_ci
def test_tables_of_a_later_version_are_refused(postgres_url):
    import psycopg

    from server.storage.postgres.coordination import VERSION, PgCoordination

    PgCoordination(postgres_url, "a", LEASE).close()
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("UPDATE coordination_version SET version = %s", (VERSION + 1,))
    with pytest.raises(StoreUnusable, match="later server"):
        PgCoordination(postgres_url, "a", LEASE)


@pytest.mark.needed_in_ci
@pytest.mark.needed_in_ci
def test_the_urls_own_options_are_kept_beside_the_coordinations(postgres_url):
    """An operator's ``options`` (a schema of its own in ``search_path``) hold for the
    coordination's connection as for the metadata's: its tables go where the metadata's do,
    and its statement timeout still holds."""
    import psycopg

    from server.storage.postgres.coordination import STATEMENT_TIMEOUT_MS, PgCoordination

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("CREATE SCHEMA cipherdrop")
    node = PgCoordination(f"{postgres_url}?options=-c%20search_path%3Dcipherdrop", "a", LEASE)
    try:
        timeout = node._execute(
            "SELECT setting FROM pg_settings WHERE name = 'statement_timeout'", {}
        )
    finally:
        node.close()
    assert timeout is not None and int(timeout[0]) == STATEMENT_TIMEOUT_MS  # in ms
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        schemas = connection.execute(
            "SELECT DISTINCT table_schema FROM information_schema.tables"
            " WHERE table_name LIKE 'coordination_%'"
        ).fetchall()
    assert schemas == [("cipherdrop",)]


def test_an_unreachable_database_is_a_one_line_refusal():
    pytest.importorskip("psycopg")
    from server.storage.postgres.coordination import PgCoordination

    with pytest.raises(StoreUnusable) as refused:
        PgCoordination("host=127.0.0.1 port=1 dbname=none connect_timeout=2", "a", LEASE)
    assert "\n" not in str(refused.value)


#: A node in a process of its own: it leads, takes a lease and a hold, says so, and waits
#: to be killed.
_DOOMED_NODE = """
import sys, time
from server.storage.coordination import UploadLease
from server.storage.postgres.coordination import PgCoordination
node = PgCoordination(sys.argv[1], "doomed", float(sys.argv[2]))
node.hold_registration(b"b" * 16)
assert node.may_run_purges() and node.take_upload(UploadLease(b"a" * 16, b"f.bin", "doomed"))
print("ready", flush=True)
time.sleep(600)
"""
#: A lease far longer than anything the kill tests wait: none of them lapses.
UNLAPSING = 100 * LAPSE_WAIT


def _start_doomed(conninfo: str) -> subprocess.Popen:
    doomed = subprocess.Popen(
        [sys.executable, "-c", _DOOMED_NODE, conninfo, str(UNLAPSING)],
        stdout=subprocess.PIPE, text=True, env=server_env(),
    )
    assert doomed.stdout is not None and doomed.stdout.readline() == "ready\n"
    return doomed


def _kill(doomed: subprocess.Popen) -> None:
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()


def _backend_gone(conninfo: str, node: str) -> None:
    """Wait until the database has seen ``node``'s connection end (its backend exits)."""
    import psycopg

    waited = time.monotonic()
    with psycopg.connect(conninfo, autocommit=True) as connection:
        while connection.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = %s",
            (f"cipherdrop coordination {node}",),
        ).fetchall():
            assert time.monotonic() - waited < LAPSE_WAIT, "the killed node's backend stayed"
            time.sleep(0.01)


@pytest.mark.needed_in_ci
def test_a_killed_node_s_holds_leases_and_leadership_are_void_at_once_a_live_node_s_are_not(
    postgres_url,
):
    from server.storage.postgres.coordination import PgCoordination

    doomed = _start_doomed(postgres_url)
    survivor = PgCoordination(postgres_url, "survivor", UNLAPSING)
    live = PgCoordination(postgres_url, "live", UNLAPSING)
    try:
        assert live.take_upload(lease(ALICE, b"g.bin"))
        live.hold_registration(b"c" * 16)
        live.settle()
        assert not survivor.may_run_purges()
        assert not survivor.take_upload(lease(ALICE, b"f.bin"))
        assert survivor.registration_held_elsewhere(BOB)
        _kill(doomed)
        _backend_gone(postgres_url, "doomed")
        # Long before its lease could lapse: void, as the node is gone.
        assert survivor.take_upload(lease(ALICE, b"f.bin"))
        assert not survivor.registration_held_elsewhere(BOB)
        assert survivor.may_run_purges()
        # The live node's lease and hold stand; it renews them as before.
        assert not survivor.take_upload(lease(ALICE, b"g.bin"))
        assert survivor.registration_held_elsewhere(b"c" * 16)
        live.renew([b"c" * 16], [lease(ALICE, b"g.bin")])
        assert not survivor.take_upload(lease(ALICE, b"g.bin"))
        assert not live.take_upload(lease(ALICE, b"f.bin"))  # now the survivor's
    finally:
        if doomed.poll() is None:
            _kill(doomed)
        survivor.close()
        live.close()


@pytest.mark.needed_in_ci
def test_a_node_started_again_under_its_name_lets_go_of_what_its_previous_run_held(
    postgres_url,
):
    from server.storage.postgres.coordination import PgCoordination

    doomed = _start_doomed(postgres_url)
    survivor = PgCoordination(postgres_url, "survivor", UNLAPSING)
    again = None
    try:
        _kill(doomed)
        # At once: its old backend may still be going, the new run waits for the name.
        again = PgCoordination(postgres_url, "doomed", UNLAPSING)
        assert not survivor.registration_held_elsewhere(BOB)
        assert survivor.take_upload(lease(ALICE, b"f.bin"))
        assert again.take_upload(lease(ALICE, b"h.bin"))  # the new run's own are held
        assert not survivor.take_upload(lease(ALICE, b"h.bin"))
    finally:
        if doomed.poll() is None:
            _kill(doomed)
        survivor.close()
        if again is not None:
            again.close()


@pytest.mark.needed_in_ci
def test_a_second_node_of_the_same_name_is_refused_with_a_one_line_reason(
    postgres_url, monkeypatch
):
    from server.storage.postgres import coordination as pg_coordination
    from server.storage.postgres.coordination import PgCoordination

    monkeypatch.setattr(pg_coordination, "NAME_WAIT", 0.5)
    first = PgCoordination(postgres_url, "twin", LEASE)
    try:
        first.take_upload(lease(ALICE, b"f.bin"))
        with pytest.raises(StoreUnusable, match="another node named 'twin'") as refused:
            PgCoordination(postgres_url, "twin", LEASE)
        assert "\n" not in str(refused.value)
        other = PgCoordination(postgres_url, "other", LEASE)
        try:  # the first one's lease stands: the refused twin neither took nor voided it
            assert not other.take_upload(lease(ALICE, b"f.bin"))
        finally:
            other.close()
    finally:
        first.close()


# -- which coordination a server opens --------------------------------------------------


def test_a_store_only_one_server_opens_needs_no_shared_coordination(tmp_path):
    url = StoreUrl("sqlite", tmp_path / "defensive.db")
    assert open_coordination(url, "node", LEASE) is None


@pytest.mark.needed_in_ci
def test_a_postgresql_store_opens_the_nodes_coordination_in_it(postgres_url):
    from psycopg.conninfo import conninfo_to_dict

    from server.storage.postgres.coordination import PgCoordination

    parts = conninfo_to_dict(postgres_url)
    text = f"postgresql://{parts['user']}@{parts['host']}:{parts['port']}/{parts['dbname']}"
    url = StoreUrl("postgresql", Path(f"/{parts['dbname']}"), host=str(parts["host"]), text=text)
    node = open_coordination(url, "node-1", LEASE)
    try:
        assert isinstance(node, PgCoordination) and node.node == "node-1"
        assert node.may_run_purges()
    finally:
        assert node is not None
        node.close()


@pytest.mark.needed_in_ci
def test_a_lost_connection_fails_one_call_and_the_next_connects_again(postgres_url):
    import psycopg

    from server.errors import StorageFault
    from server.storage.postgres.coordination import PgCoordination

    a = PgCoordination(postgres_url, "a", LEASE)
    b = PgCoordination(postgres_url, "b", LEASE)
    try:
        assert a.may_run_purges()
        assert a.take_upload(lease(ALICE, b"kept.bin"))
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'cipherdrop coordination a'"
            )
        with pytest.raises(StorageFault):
            a.take_upload(lease(ALICE, b"f.bin"))
        assert once_served(
            lambda: a.take_upload(lease(ALICE, b"f.bin")), "served again", LAPSE_WAIT
        )
        assert a.may_run_purges()  # asked for again on the new connection, and got
        assert not b.take_upload(lease(ALICE, b"kept.bin"))  # its name is held again
    finally:
        a.close()
        b.close()


@pytest.mark.needed_in_ci
def test_an_unreachable_database_fails_calls_at_once_between_attempts(postgres_url):
    from server.errors import StorageFault
    from server.storage.postgres.coordination import PgCoordination

    a = PgCoordination(postgres_url, "a", LEASE)
    try:
        a._conninfo = "host=127.0.0.1 port=1 dbname=none"  # the database went away
        a._drop_connection()  # found lost: connecting again begins
        given_up = time.monotonic() + LAPSE_WAIT
        while True:  # refused at once while the attempt is under way, then with its failure
            with pytest.raises(StorageFault) as refused:
                a.take_upload(lease(ALICE, b"f.bin"))
            if "connecting again" not in str(refused.value):
                break
            assert time.monotonic() < given_up, "the attempt to connect again never ended"
            time.sleep(RECONNECT_POLL)
        assert "cannot connect" in str(refused.value) and "trying again" in str(refused.value)
    finally:
        a.close()


@pytest.mark.needed_in_ci
def test_a_call_while_the_coordination_connects_again_is_refused_at_once(
    postgres_url, postgres_cluster
):
    """The database's host stops answering (tests/backends/relay.py holds new connections
    unanswered): the connection is made again in a thread of its own, so that a call
    meanwhile is refused at once rather than waiting on libpq's connect (in the server,
    the loop would wait); once the host answers again, calls are served again."""
    from backends.relay import Relay

    from server.errors import StorageFault
    from server.storage.postgres.coordination import PgCoordination

    relay = Relay(("127.0.0.1", postgres_cluster.port))
    a = PgCoordination(postgres_url, "a", LEASE)
    try:
        relay.hold()
        a._conninfo = postgres_url.replace(f":{postgres_cluster.port}/", f":{relay.port}/")
        a._drop_connection()  # the connection is lost
        with pytest.raises(StorageFault, match="connecting again"):
            a.take_upload(lease(ALICE, b"f.bin"))
        given_up = time.monotonic() + LAPSE_WAIT
        while not relay.held_open():  # the attempt waits for the database's reply
            assert time.monotonic() < given_up, "no attempt to connect again"
            time.sleep(RECONNECT_POLL)
        relay.forward()  # the host answers again: the held attempt fails, the next goes through
        assert once_served(
            lambda: a.take_upload(lease(ALICE, b"f.bin")), "served again",
            given_up - time.monotonic(),
        )
    finally:
        a.close()
        relay.close()


@pytest.mark.needed_in_ci
def test_both_connections_of_a_node_have_the_database_notice_a_vanished_host(postgres_url):
    """TCP keepalives at the database's end of the store's and the coordination's
    connections: a node whose host vanishes without closing them frees its name, holds,
    leases and locks within seconds, not after the kernel's two hours."""
    import psycopg

    from server.storage.postgres.coordination import PgCoordination
    from server.storage.postgres.connect import (
        APPLICATION_NAME, KEEPALIVE_COUNT, KEEPALIVE_IDLE, KEEPALIVE_INTERVAL,
    )
    from server.storage.postgres.store import PostgresMetadata

    store = PostgresMetadata.open(postgres_url)
    node = PgCoordination(postgres_url, "a", LEASE)
    wanted = {"tcp_keepalives_idle": str(KEEPALIVE_IDLE),
              "tcp_keepalives_interval": str(KEEPALIVE_INTERVAL),
              "tcp_keepalives_count": str(KEEPALIVE_COUNT)}
    read = ("SELECT name, setting FROM pg_settings WHERE name IN"
            " ('tcp_keepalives_idle', 'tcp_keepalives_interval', 'tcp_keepalives_count')")
    try:
        assert dict(node._connect().execute(read).fetchall()) == wanted
        with store.transaction():
            store.count_clients()  # the store's connection is open
        with psycopg.connect(postgres_url, autocommit=True) as other:
            names = [row[0] for row in other.execute(
                "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()"
            )]
        assert APPLICATION_NAME in names
        assert dict(store._live().execute(read).fetchall()) == wanted
    finally:
        node.close()
        store.close()


@pytest.mark.needed_in_ci
def test_what_is_sent_without_waiting_is_prepared_once_per_connection(postgres_url):
    """Sent as text, the hold would be planned at every call (its pg_locks read too)."""
    from server.storage.postgres.coordination import PgCoordination

    node = PgCoordination(postgres_url, "a", LEASE)
    other = PgCoordination(postgres_url, "b", LEASE)
    try:
        node.hold_registration(ALICE)
        waited = node.round_trips
        node.hold_registration(BOB)
        node.release_upload(ALICE, b"f.bin")  # its own statement's first call: prepared
        node.release_upload(BOB, b"f.bin")
        node.settle()
        assert node.round_trips - waited == 1
        assert other.registration_held_elsewhere(ALICE) and other.registration_held_elsewhere(BOB)
        prepared = node._connection.execute("SELECT name FROM pg_prepared_statements").fetchall()
        assert {"cd_take", "cd_release"} <= {name for (name,) in prepared}
    finally:
        node.close()
        other.close()


@pytest.mark.needed_in_ci
def test_a_purge_and_a_renewal_leave_a_fenced_lease_row_without_waiting(postgres_url):
    import psycopg

    from server.storage.postgres.coordination import PgCoordination
    from server.storage.postgres.fence import STATEMENT

    fenced = lease(ALICE, b"fenced.bin")
    a = PgCoordination(postgres_url, "a", LEASE)
    try:
        assert a.take_upload(fenced)
        postgres_backend(postgres_url).lapse()
        with psycopg.connect(postgres_url) as round_:  # node a's round, the row fenced in it
            round_.execute(STATEMENT, (UPLOAD, upload_key(ALICE, b"fenced.bin"), "a",
                                       fenced.blob_key))
            a.purge(window=HOUR)  # neither waits for the round (nor fails at its timeout)
            a.renew((), [fenced])
            assert leases(postgres_url) == [("a", False)]  # left as it was, lapsed
        a.purge(window=HOUR)  # the round is over: the lapsed row goes
        assert leases(postgres_url) == []
    finally:
        a.close()


def leases(conninfo: str) -> list[tuple[str, bool]]:
    """Every lease row's node, and whether it is unlapsed."""
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as observer:
        return observer.execute("SELECT node, expires > now() FROM coordination_leases").fetchall()
