"""What the PostgreSQL store does beyond the contract suite: its round trips, its
non-blocking round commit, a lost connection, its schema version, its URL.

Against a throwaway cluster (tests/backends/postgres.py): skipped without the
binaries, but not in CI.
"""

from __future__ import annotations

import selectors
import threading
import time

import psycopg
import pytest
from backends.postgres import stalled_backend

from server.errors import BadStoreUrl, LeaseLost, NameTaken, StorageFault, StoreUnusable
from server.storage.factory import metadata_url
from server.storage.postgres import schema
from server.storage.postgres.connect import APPLICATION_NAME
from server.storage.postgres.store import PostgresMetadata, migrate_at

pytestmark = pytest.mark.needed_in_ci

ALICE = b"a" * 16
BOB = b"b" * 16
NOW = 1_700_000_000.0
#: Seconds a poll of the commit's socket may wait before the test calls it stuck.
POLL_TIMEOUT = 30


@pytest.fixture
def store(postgres_url):
    opened = PostgresMetadata.open(postgres_url)
    yield opened
    opened.close()


@pytest.fixture
def observer(postgres_url):
    """Another connection: what the store committed is what it sees."""
    with psycopg.connect(postgres_url, autocommit=True) as db:
        yield db


def register(store: PostgresMetadata, client_id: bytes, name: str) -> None:
    with store.transaction():
        store.insert_client(client_id, name, NOW, "v3", "127.0.0.1")
        store.set_binding(client_id, "127.0.0.1", NOW)


def names(observer) -> list[str]:
    return [row[0] for row in observer.execute("SELECT Name FROM clients ORDER BY Name")]


def complete_polled(commit) -> int:
    """Advance a round commit as the loop would: only when its socket is ready; the polls."""
    polls = 0
    with selectors.DefaultSelector() as selector:
        while not commit.advance():
            events = selectors.EVENT_WRITE if commit.wants_write else selectors.EVENT_READ
            selector.register(commit.fileno(), events)
            assert selector.select(POLL_TIMEOUT), "the commit's socket never became ready"
            selector.unregister(commit.fileno())
            polls += 1
    return polls


def test_a_requests_writes_ride_with_the_next_read_or_the_commit(store, observer):
    register(store, ALICE, "alice")
    store.finish_round(durable=True)
    before = store.round_trips
    with store.transaction():
        store.set_keys(ALICE, b"public", b"k" * 32, NOW)
        store.set_edition(ALICE, "2024A")
        store.set_crc(ALICE, "crc32")
        store.upsert_file(ALICE, b"f.txt", "p/f")
        store.set_content(ALICE, b"f.txt", 10, 99)
        store.note_seen(ALICE, NOW + 1)
    with store.transaction():  # a read carries the writes before it
        store.set_verified(ALICE, b"f.txt", True)
        assert store.file_row(ALICE, b"f.txt").verified
    with store.transaction():
        store.set_binding(ALICE, "127.0.0.3", NOW + 2)
    with store.transaction():  # reads only: no savepoint goes out
        assert store.client_by_id(ALICE).edition == "2024A"
    store.finish_round(durable=True)  # the last writes go with the COMMIT
    assert store.round_trips - before == 3
    assert observer.execute("SELECT Address FROM key_bindings").fetchall() == [("127.0.0.3",)]


def test_a_request_whose_writes_all_wait_sends_no_savepoint(store, observer):
    """Its writes go with the COMMIT, where a failure loses the round whatever savepoint
    they had: BEGIN, the write, COMMIT."""
    register(store, ALICE, "alice")
    store.finish_round(durable=True)
    before = store.statements
    with store.transaction():
        store.set_crc(ALICE, "crc32")
    store.finish_round(durable=True)
    assert store.statements - before == 3
    assert observer.execute("SELECT Crc FROM clients").fetchall() == [("crc32",)]


def test_an_ended_requests_write_that_fails_loses_the_round(store, observer):
    register(store, ALICE, "alice")
    store.finish_round(durable=True)
    with store.transaction():
        store.set_crc(ALICE, "crc32")
    with store.transaction():  # out of bigint's range: refused when it goes out
        store.set_content(ALICE, b"f.txt", 2**64, 1)
    with pytest.raises(StorageFault, match="out of range"):
        store.finish_round(durable=True)
    assert observer.execute("SELECT Crc FROM clients").fetchall() == [("cksum",)]
    with store.transaction():
        store.set_crc(ALICE, "crc32")
    with store.transaction():
        store.set_content(ALICE, b"f.txt", 2**64, 1)
    with pytest.raises(StorageFault, match="out of range"):  # found by the next request's read
        with store.transaction():
            store.client_by_id(ALICE)
    with pytest.raises(StorageFault, match="rolled back"):  # none of the round may be answered
        store.finish_round(durable=True)
    register(store, BOB, "bob")  # the next round is fine
    store.finish_round(durable=True)
    assert observer.execute("SELECT Name, Crc FROM clients ORDER BY Name").fetchall() == [
        ("alice", "cksum"), ("bob", "cksum")]


def test_an_insert_refused_for_its_id_is_its_own_answer_not_the_rounds_loss(store, observer):
    """A fresh id is not read first (server/handlers.py): a taken one is refused as a
    taken name is, with the round's other writes kept."""
    register(store, ALICE, "alice")
    store.finish_round(durable=True)
    with store.transaction():  # an ended request's write, sent with the insert below
        store.set_crc(ALICE, "crc32")
    with pytest.raises(NameTaken), store.transaction():
        store.insert_client(ALICE, "bob", NOW, "v3", "127.0.0.1")
    store.finish_round(durable=True)
    assert observer.execute("SELECT Name, Crc FROM clients").fetchall() == [("alice", "crc32")]


def test_a_clients_row_and_binding_are_one_round_trip(store):
    register(store, ALICE, "alice")
    before = store.round_trips
    client, binding = store.client_and_binding(ALICE)
    assert (client.name, binding.address) == ("alice", "127.0.0.1")
    assert store.round_trips - before == 1
    with pytest.raises(ZeroDivisionError):
        with store.transaction():
            store.set_binding(ALICE, "127.0.0.10", NOW + 9)
            assert store.client_and_binding(ALICE)[1].address == "127.0.0.10"
            1 / 0
    assert store.client_and_binding(ALICE)[1].address == "127.0.0.1"  # the failed request's is undone


def test_the_round_commit_completes_as_its_socket_is_polled(store, observer):
    register(store, ALICE, "alice")
    register(store, BOB, "bob")
    assert names(observer) == []  # the round is not committed yet
    commit = store.begin_round_commit(durable=True)
    assert commit is not None
    complete_polled(commit)
    assert names(observer) == ["alice", "bob"]
    assert store.begin_round_commit(durable=True) is None  # nothing left to commit
    with store.transaction():  # the next round begins on the same connection
        store.set_crc(ALICE, "crc32")
    store.finish_round(durable=True)
    assert observer.execute("SELECT Crc FROM clients WHERE ID = %s", (ALICE,)).fetchone() == (
        "crc32",)


def kill_the_stores_backend(observer) -> None:
    killed = observer.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = %s AND datname = current_database()", (APPLICATION_NAME,)
    ).fetchall()
    assert killed == [(True,)]


#: Seconds a test waits for the store's connection to be made again (in a thread of its own).
RECONNECT_PATIENCE = 30.0
#: Seconds between two calls meanwhile.
RECONNECT_POLL = 0.01


def attempt_over(store: PostgresMetadata) -> StorageFault | None:
    """Call the store until its attempt to connect again is over: None once it serves,
    else the refusal that says why the attempt failed."""
    given_up = time.monotonic() + RECONNECT_PATIENCE
    while True:
        try:
            store.count_clients()
            return None
        except StorageFault as exc:
            if "connecting again" not in str(exc):
                return exc
        assert time.monotonic() < given_up, "the attempt to connect again never ended"
        time.sleep(RECONNECT_POLL)


def until_connected(store: PostgresMetadata) -> None:
    """Wait for the store to serve again (its connection made again off this thread)."""
    given_up = time.monotonic() + RECONNECT_PATIENCE
    while attempt_over(store) is not None:
        assert time.monotonic() < given_up, "the store never connected again"
        time.sleep(RECONNECT_POLL)


def test_a_killed_backend_loses_the_round_and_the_store_serves_again(store, observer):
    register(store, ALICE, "alice")
    store.finish_round(durable=True)
    register(store, BOB, "bob")
    kill_the_stores_backend(observer)
    with pytest.raises(StorageFault):
        commit = store.begin_round_commit(durable=True)
        assert commit is not None
        complete_polled(commit)
    assert names(observer) == ["alice"]  # bob's round is lost, unanswered
    until_connected(store)  # connects again by itself
    register(store, BOB, "bob")
    store.finish_round(durable=True)
    assert names(observer) == ["alice", "bob"]


def test_a_backend_killed_mid_round_fails_the_round_at_its_end(store, observer):
    register(store, ALICE, "alice")
    kill_the_stores_backend(observer)
    with pytest.raises(StorageFault):
        register(store, BOB, "bob")
    with pytest.raises(StorageFault):  # alice's writes went with the connection
        store.finish_round(durable=True)
    assert names(observer) == []
    until_connected(store)
    register(store, ALICE, "alice")
    store.finish_round(durable=True)
    assert names(observer) == ["alice"]


def test_the_schema_version_is_recorded_and_migrating_again_changes_nothing(
    store, observer, postgres_url
):
    assert observer.execute("SELECT Version FROM schema_version").fetchall() == [
        (schema.SCHEMA_VERSION,)]
    assert migrate_at(postgres_url) == (schema.SCHEMA_VERSION, schema.SCHEMA_VERSION)
    assert observer.execute("SELECT count(*) FROM schema_version").fetchone() == (1,)


def test_a_schema_newer_than_the_servers_is_refused_untouched(store, observer, postgres_url):
    observer.execute("UPDATE schema_version SET Version = %s", (schema.SCHEMA_VERSION + 1,))
    with pytest.raises(StoreUnusable, match="newer than this server's"):
        PostgresMetadata.open(postgres_url)
    assert observer.execute("SELECT Version FROM schema_version").fetchone() == (
        schema.SCHEMA_VERSION + 1,)


def test_counts_follow_a_changed_address_grouping_at_open(store, postgres_url):
    register(store, ALICE, "alice")
    register(store, BOB, "bob")
    store.finish_round(durable=True)
    regrouped = PostgresMetadata.open(postgres_url, group_of=lambda address: "one group")
    try:
        assert regrouped.count_clients("one group") == 2 and regrouped.count_clients() == 2
    finally:
        regrouped.close()


@pytest.mark.parametrize("url", [
    "postgresql://cipherdrop:s3cret@db.example/cipherdrop",
    "postgresql://db.example/cipherdrop?password=s3cret&sslmode=require",
])
def test_a_url_with_a_password_is_refused_saying_where_it_goes(tmp_path, url):
    with pytest.raises(BadStoreUrl) as refused:
        metadata_url(url, tmp_path)
    message = str(refused.value)
    assert "s3cret" not in message and "~/.pgpass" in message and "PGPASSWORD" in message
    assert "\n" not in message


def test_a_database_that_refuses_is_unusable_with_the_reason(postgres_cluster):
    url = postgres_cluster.url("no_such_database")
    with pytest.raises(StoreUnusable, match='database "no_such_database" does not exist'):
        PostgresMetadata.open(url)


def test_a_database_away_is_refused_with_the_reason_and_used_again_when_back(
    store, observer, postgres_cluster
):
    register(store, ALICE, "alice")
    store.finish_round(durable=True)
    database = observer.execute("SELECT current_database()").fetchone()[0]
    kill_the_stores_backend(observer)
    allow = 'ALTER DATABASE "{}" ALLOW_CONNECTIONS {}'
    postgres_cluster.sql(allow.format(database, "false"))  # from another database
    try:
        with pytest.raises(StorageFault, match="terminating connection"):  # found lost
            store.client_by_id(ALICE)
        refusal = str(attempt_over(store))
        assert "not currently accepting connections" in refusal, refusal
        assert "trying again shortly" in refusal, refusal
    finally:
        postgres_cluster.sql(allow.format(database, "true"))
    until_connected(store)
    assert store.client_by_id(ALICE).name == "alice"


#: Stored names beyond ASCII (server/storage/names.py keeps printable Unicode as it is).
NON_ASCII_PATH = "résumé ✓ 日本.pdf"


@pytest.mark.parametrize("encoding", ["LATIN1", "SQL_ASCII"])
def test_text_beyond_the_databases_encoding_is_kept_exactly_as_given(
    postgres_cluster, encoding
):
    """A database made in another encoding than UTF-8 (SQL_ASCII is initdb's under the C
    locale): the store still speaks UTF-8, so that a path name reads back as written (not
    re-encoded on the way) or is refused as a StorageFault, never a UnicodeEncodeError."""
    name = f"enc{encoding.lower()}{time.monotonic_ns()}"
    postgres_cluster.sql(
        f"CREATE DATABASE {name} ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C'"
        " TEMPLATE template0"
    )
    store = PostgresMetadata.open(postgres_cluster.url(name))
    try:
        register(store, ALICE, "alice")
        for file_name, path_name in ((b"latin", "résumé.pdf"), (b"wide", NON_ASCII_PATH)):
            try:
                with store.transaction():
                    store.upsert_file(ALICE, file_name, path_name)
                store.finish_round(durable=True)
            except StorageFault:  # LATIN1 cannot hold 日本: refused, the round lost
                assert encoding == "LATIN1" and path_name == NON_ASCII_PATH
                continue
            row = store.file_row(ALICE, file_name)
            assert row is not None and row.path_name == path_name
    finally:
        store.close()


#: Seconds the test lets a round's COMMIT go unanswered before the store gives it up.
SHORT_COMMIT_PATIENCE = 0.5
#: Seconds the test waits for the wait on that commit to end (far past the patience).
WAIT_PATIENCE = 30.0


def test_a_commit_the_database_leaves_unanswered_is_given_up_and_the_store_serves_again(
    store, observer, monkeypatch
):
    """A backend that stops answering (stopped by SIGSTOP here: a stalled disk, a network
    cut) loses the round after the commit's patience: the wait on it, the loop's and a
    stop's, ends rather than blocking for ever; the next round has a new connection."""
    from server.storage.base import wait_for
    from server.storage.postgres import roundcommit

    monkeypatch.setattr(roundcommit, "COMMIT_PATIENCE", SHORT_COMMIT_PATIENCE)
    register(store, ALICE, "alice")
    (pid,), = observer.execute(
        "SELECT pid FROM pg_stat_activity"
        " WHERE application_name = %s AND datname = current_database()", (APPLICATION_NAME,)
    ).fetchall()
    outcome: list[BaseException | None] = []

    def wait() -> None:
        try:
            wait_for(store.begin_round_commit(durable=True))
            outcome.append(None)
        except StorageFault as exc:
            outcome.append(exc)

    waiting = threading.Thread(target=wait, daemon=True)
    try:
        with stalled_backend(pid):
            waiting.start()
            waiting.join(WAIT_PATIENCE)
            given_up = list(outcome)
    finally:
        waiting.join()
    assert len(given_up) == 1 and isinstance(given_up[0], StorageFault), given_up
    assert "did not answer" in str(given_up[0])
    until_connected(store)  # connects again by itself
    register(store, BOB, "bob")
    store.finish_round(durable=True)
    assert "bob" in names(observer)


#: Seconds between attempts in the test.
SHORT_RECONNECT_INTERVAL = 0.2
#: Seconds the test's attempt waits at most for the test to let it fail (a host that does
#: not answer: libpq's connect waits its whole connect_timeout).
HELD_ATTEMPT = 10.0


def test_a_call_while_connecting_again_is_refused_at_once_and_the_next_attempt_waits(
    postgres_url, observer, monkeypatch
):
    """The connection is made again in a thread of its own, begun as the loss is seen: a
    call meanwhile is refused at once rather than waiting on the attempt (in the server,
    the loop serves every other connection meanwhile). After a failed attempt the next
    waits the interval, counted from the failure: counted from its start, an attempt
    that waited its connect_timeout would be followed by another at once."""
    from server.errors import StoreUnusable
    from server.storage.postgres import store as store_module

    monkeypatch.setattr(store_module, "RECONNECT_INTERVAL", SHORT_RECONNECT_INTERVAL)
    store = PostgresMetadata.open(postgres_url)
    started: list[float] = []
    failed: list[float] = []
    let_fail = threading.Event()

    def connect(conninfo: str):
        started.append(time.monotonic())
        let_fail.wait(HELD_ATTEMPT)  # a host that does not answer
        failed.append(time.monotonic())
        raise StoreUnusable("cannot use the database: timeout expired")

    try:
        register(store, ALICE, "alice")
        store.finish_round(durable=True)
        monkeypatch.setattr(store_module, "connect", connect)
        kill_the_stores_backend(observer)
        with pytest.raises(StorageFault, match="terminating connection"):  # found lost
            store.client_by_id(ALICE)
        with pytest.raises(StorageFault, match="connecting again"):
            store.client_by_id(ALICE)
        assert failed == []  # refused while the attempt still waits
        while time.monotonic() - started[0] < 2 * SHORT_RECONNECT_INTERVAL:
            time.sleep(RECONNECT_POLL)  # the attempt lasts longer than the interval
        let_fail.set()
        assert "timeout expired" in str(attempt_over(store))
        given_up = time.monotonic() + RECONNECT_PATIENCE
        while len(failed) < 2:  # the next attempt (failing at once now)
            assert time.monotonic() < given_up, "no attempt after the interval"
            attempt_over(store)
            time.sleep(RECONNECT_POLL)
        assert started[1] - failed[0] >= SHORT_RECONNECT_INTERVAL
    finally:
        let_fail.set()
        store.close()


def test_a_requests_reads_are_prepared_once_per_connection(store):
    """In a batch a read is simple query text: prepared, it is not planned at every call."""
    register(store, ALICE, "alice")
    with store.transaction():  # the write goes with the read: the read is its EXECUTE
        store.set_crc(ALICE, "crc32")
        client, binding = store.client_and_binding(ALICE)
    assert (client.crc, binding.address) == ("crc32", "127.0.0.1")
    assert store.file_row(ALICE, b"none") is None
    prepared = store._db.execute("SELECT name FROM pg_prepared_statements").fetchall()
    assert {"cd_client", "cd_name", "cd_file"} <= {name for (name,) in prepared}


def test_a_refused_upload_fence_undoes_its_request_only(store, observer, postgres_url):
    from server.storage.coordination import UploadLease
    from server.storage.postgres.coordination import PgCoordination

    coordination = PgCoordination(postgres_url, "a", lease=60.0)
    try:
        fence = coordination.fence_along(store)
        assert fence is not None
        register(store, ALICE, "alice")
        store.finish_round(durable=True)
        with store.transaction():  # an ended request's writes wait for the next read
            store.upsert_file(ALICE, b"kept.txt", "p/kept")
        assert coordination.take_upload(UploadLease(ALICE, b"held.txt", "its blob"))
        with store.transaction():  # this node's lease, this blob: recorded
            fence(UploadLease(ALICE, b"held.txt", "its blob"))
            store.file_row_and_path_names(ALICE, b"held.txt")
            store.upsert_file(ALICE, b"held.txt", "p/held")
        with pytest.raises(LeaseLost), store.transaction():  # no lease: refused at the read
            fence(UploadLease(ALICE, b"lost.txt", "another blob"))
            store.file_row_and_path_names(ALICE, b"lost.txt")
            store.upsert_file(ALICE, b"lost.txt", "p/lost")
        store.finish_round(durable=True)  # the round goes on without the refused request
    finally:
        coordination.close()
    rows = observer.execute("SELECT FileName FROM files ORDER BY FileName").fetchall()
    assert [bytes(name) for (name,) in rows] == [b"held.txt", b"kept.txt"]


def test_a_sessions_writes_are_called_prepared(store):
    """A write in a batch is its EXECUTE: not parsed and planned at every call."""
    register(store, ALICE, "alice")  # the insert goes out at once, the binding with the commit
    with store.transaction():
        store.register_if_free(BOB, "bob", NOW, "v3", "127.0.0.1", "127.0.0.1", (10, 10))
        store.set_keys(ALICE, b"public", b"aes", 1.0)
        store.upsert_file(ALICE, b"f.bin", "received_files/f.bin")
    store.note_seen(ALICE, NOW + 1)
    store.note_key_used(ALICE, NOW + 1)
    store.flush()
    store.finish_round(durable=True)
    assert store.file_row(ALICE, b"f.bin").path_name == "received_files/f.bin"
    assert store.client_by_name("bob").id == BOB
    called = store._db.execute(
        "SELECT name FROM pg_prepared_statements WHERE generic_plans + custom_plans > 0"
    ).fetchall()
    assert {"cd_insert_client", "cd_register", "cd_bind", "cd_set_keys", "cd_upsert_file",
            "cd_set_stamps"} <= {name for (name,) in called}


#: A stopped backend is resumed this many times the store's patience later (by a shell, so
#: that the code before the deadline ends the test late rather than never).
STALL_RESUME_AFTER = 4
#: Ticks that must come while the read waits (of the ~100 its patience holds).
STALL_TICKS_SEEN = 5


def test_a_stalled_backend_fails_a_read_after_its_patience_and_the_store_serves_again(
    store, caplog
):
    """The backend stops (SIGSTOP) while its host still acknowledges: a request's read
    gives up after ANSWER_PATIENCE with a StorageFault (its request's refusal), the
    connection taken for lost, and the process's other threads run meanwhile, where the
    wait had no deadline and kept the loop until the backend resumed; the connection is
    made again by itself."""
    from server.storage.postgres.store import ANSWER_PATIENCE

    register(store, ALICE, "alice")
    store.finish_round(durable=True)
    backend = store._live().info.backend_pid
    with stalled_backend(backend, ANSWER_PATIENCE * STALL_RESUME_AFTER) as stall:
        with stall.waiting(), pytest.raises(StorageFault, match="no answer within"):
            store.client_by_id(ALICE)
    assert caplog.text.count("no answer within") == 1  # one line
    assert stall.waited < ANSWER_PATIENCE * STALL_RESUME_AFTER  # gave up, not resumed
    assert stall.ticks_while_waiting >= STALL_TICKS_SEEN
    until_connected(store)  # connects again by itself
    found = store.client_by_id(ALICE)
    assert found is not None and found.name == "alice"
