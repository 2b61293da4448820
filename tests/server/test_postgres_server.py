"""The server and ``admin`` with ``--metadata postgresql://``: refusals at start-up, the
operator's tool against the database.

Against a throwaway cluster (tests/backends/postgres.py): skipped without the
binaries, but not in CI. The flows of every edition on PostgreSQL are in
test_server_editions.py (``backend_server``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psycopg
import pytest

from helpers import ANY_ID, raw_header, server_env, unique_name
from protocol import ConnectionClosed, GeneralError, Register, Registered
from server.storage.postgres import schema
from backends.postgres import SUPERUSER, stalled_backend
from backends.relay import Relay
from test_admin import admin, no_traceback, verified_upload

pytestmark = pytest.mark.needed_in_ci

STARTUP_FAILED = 1
USAGE_ERROR = 2
RUN_TIMEOUT = 60


def start(data_dir, *flags):
    """``python -m server`` to its end (a refusal ends it at once)."""
    return subprocess.run(
        [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", "0",
         "--data-dir", str(data_dir), *flags],
        env=server_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )


def refusal(result) -> str:
    """The one line of a refused start-up."""
    assert "Traceback" not in result.stderr, result.stderr
    [line] = [line for line in result.stderr.splitlines() if "cannot start" in line]
    return line


def test_a_database_that_does_not_exist_is_a_one_line_refusal(tmp_path, postgres_cluster):
    url = postgres_cluster.url("no_such_database")
    result = start(tmp_path / "data", "--metadata", url)
    assert result.returncode == STARTUP_FAILED
    line = refusal(result)
    assert f"cannot start: cannot use {url}: " in line, line
    assert line.endswith('database "no_such_database" does not exist'), line


def test_a_database_server_that_is_not_there_is_a_one_line_refusal(tmp_path, postgres_cluster):
    import socket

    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        url = f"postgresql://postgres@127.0.0.1:{unused.getsockname()[1]}/cipherdrop"
        result = start(tmp_path / "data", "--metadata", url)
    assert result.returncode == STARTUP_FAILED
    assert "Connection refused" in refusal(result)


def test_a_role_that_may_not_make_the_tables_is_a_one_line_refusal(
    tmp_path, postgres_cluster, postgres_url
):
    role = f"weak_{postgres_url.rsplit('/', 1)[1]}"  # may connect, not create (PostgreSQL 15)
    postgres_cluster.sql(f"CREATE ROLE {role} LOGIN")
    url = postgres_url.replace(f"{SUPERUSER}@", f"{role}@")
    result = start(tmp_path / "data", "--metadata", url)
    assert result.returncode == STARTUP_FAILED
    assert refusal(result).endswith(f"cannot start: cannot use {url}: permission denied for"
                                    " schema public")


def test_a_password_in_the_url_is_refused_and_never_shown(tmp_path):
    result = start(tmp_path / "data", "--metadata", "postgresql://cd:s3cret@127.0.0.1/cd")
    assert result.returncode == USAGE_ERROR
    assert "s3cret" not in result.stderr + result.stdout and "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if "password" in line]
    assert "postgresql://cd:***@127.0.0.1/cd" in line and "~/.pgpass" in line, line


def _unix_socket_url(cluster, database: str, form: str) -> str:
    """The database's URL through the cluster's unix socket, the user in the user part or
    as an option (libpq's two forms)."""
    url = cluster.url(database, unix=True)
    if form == "user option":
        url = url.replace(f"{SUPERUSER}@/", "/", 1) + f"&user={SUPERUSER}"
    return url


@pytest.mark.parametrize("form", ["user part", "user option"])
def test_a_session_runs_on_a_database_reached_through_its_unix_socket(
    server_factory, postgres_cluster, postgres_url, form
):
    database = postgres_url.rsplit("/", 1)[1]
    url = _unix_socket_url(postgres_cluster, database, form)
    server = server_factory("--metadata", url)
    alice = verified_upload(server, "alice", {"a.txt": b"through the socket" * 50})  # 825 to 900
    with psycopg.connect(postgres_url) as db:  # over TCP: this test's own look
        assert db.execute("SELECT name FROM clients WHERE id = %s",
                          (alice.client_id,)).fetchone() == ("alice",)
        # the server's store and coordination connections: through a unix socket (no
        # client address), none over TCP
        transports = db.execute(
            "SELECT client_addr IS NULL, count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() GROUP BY 1"
        ).fetchall()
    assert transports == [(True, 2)], transports
    assert f"data in {url} and " in server.log()


def test_admin_lists_verifies_migrates_and_deletes_on_postgresql(
    tmp_path, server_factory, postgres_url
):
    stores = ["--metadata", postgres_url]
    data_dir = tmp_path / "data"
    server = server_factory(*stores, data_dir=data_dir)
    alice = verified_upload(server, "alice", {"a.txt": b"alpha" * 100, "b.bin": b"\0" * 5})
    verified_upload(server, "bob", {"c.txt": b"bob"})
    listed = admin(data_dir, "clients", *stores, "--json")
    assert [(c["name"], c["files"]) for c in json.loads(listed.stdout)] == [
        ("alice", 2), ("bob", 1)], listed.stderr
    files = admin(data_dir, "files", "alice", *stores, "--json")
    assert [(f["file"], f["size"]) for f in json.loads(files.stdout)] == [
        ("a.txt", 500), ("b.bin", 5)], files.stderr
    with server.client() as client:  # a keyless registration: unused
        assert isinstance(client.request(Register(client_id=ANY_ID, name="idle")), Registered)
    unused = admin(data_dir, "unused", *stores, "--json")
    assert [c["name"] for c in json.loads(unused.stdout)] == ["idle"], unused.stderr
    checked = admin(data_dir, "verify", *stores)
    assert checked.returncode == 0 and checked.stdout.splitlines()[-1].startswith("3 ok")
    migrated = admin(data_dir, "migrate", *stores)
    assert migrated.stdout == f"{postgres_url}: schema at version {schema.SCHEMA_VERSION}:" \
        " up to date\n", migrated.stderr
    server.stop()
    deleted = admin(data_dir, "delete-client", "alice", "--yes", *stores)
    assert deleted.returncode == 0, deleted.stderr
    with psycopg.connect(postgres_url) as db:
        assert db.execute("SELECT count(*) FROM files WHERE ID = %s",
                          (alice.client_id,)).fetchone() == (0,)
    no_traceback(deleted)


def test_admin_migrate_makes_the_schema_of_an_empty_database(tmp_path, postgres_url):
    migrated = admin(tmp_path, "migrate", "--metadata", postgres_url)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout == (
        f"{postgres_url}: schema migrated from version 0 to {schema.SCHEMA_VERSION}\n")
    with psycopg.connect(postgres_url) as db:
        assert db.execute("SELECT Version FROM schema_version").fetchall() == [
            (schema.SCHEMA_VERSION,)]


def test_admin_on_a_database_without_the_schema_is_refused(tmp_path, postgres_url):
    result = admin(tmp_path, "clients", "--metadata", postgres_url)
    assert result.returncode == 4 and "holds no cipherdrop schema" in result.stderr
    no_traceback(result)


#: Seconds the test tries whole sessions after the database came back (the first may find
#: the connection lost: refused with 1607, or closed unanswered; those while the server
#: connects again, off its loop thread, are refused at once).
RESTART_PATIENCE = 60.0
#: Seconds between two sessions meanwhile.
SESSION_POLL = 0.05


def test_the_server_serves_again_by_itself_after_the_database_restarts(
    server_factory, postgres_cluster, postgres_url
):
    server = server_factory("--metadata", postgres_url)
    before = verified_upload(server, "before", {"a.txt": b"answered before the restart"})
    postgres_cluster.restart()  # fast: the server's connection is cut
    failures = []
    given_up = time.monotonic() + RESTART_PATIENCE
    while True:
        try:
            verified_upload(server, f"after{len(failures)}", {"b.txt": b"after"})
            break
        except (AssertionError, OSError) as exc:  # a refusal, or a connection closed unanswered
            failures.append(exc)
        if time.monotonic() > given_up:
            pytest.fail(f"no session succeeded after the restart: {failures}")
        time.sleep(SESSION_POLL)
    assert server.process.poll() is None
    log = server.log()
    assert "database: the connection is lost" in log and "Traceback" not in log
    with psycopg.connect(postgres_url) as db:  # what was answered before is there
        assert db.execute("SELECT Verified FROM files WHERE ID = %s",
                          (before.client_id,)).fetchall() == [(True,)]


#: The store's connect_timeout in the held database's URL: far longer than the test's wait
#: for an answer, so that a loop waiting on that connect shows.
HELD_CONNECT_TIMEOUT = 60
#: Seconds the test polls for the server to serve again once the database answers again.
RESUME_PATIENCE = 60.0
#: Seconds between two tries meanwhile.
RESUME_POLL = 0.05
#: A request code no edition has: answered by its header alone, no database needed.
UNKNOWN_CODE = 999


def _registered_once(server) -> bool:
    """One fresh client's 825: whether it was registered (else refused, or closed)."""
    try:
        with server.client() as client:
            return isinstance(client.request(Register(client_id=ANY_ID, name=unique_name())),
                              Registered)
    except OSError:  # closed before the answer
        return False


def test_a_database_that_stops_answering_holds_no_other_connection_and_service_resumes(
    server_factory, postgres_cluster, postgres_url
):
    """The database's host stops answering (tests/backends/relay.py holds every new
    connection unanswered): a request that needs the database is refused at once, and
    one that needs none is answered while the server's connection attempt is still
    waiting for the database's reply (made again off the loop thread: the loop never
    waits for libpq's connect); once the database answers again, the server serves again
    by itself."""
    relay = Relay(("127.0.0.1", postgres_cluster.port))
    try:
        held_url = (postgres_url.replace(f":{postgres_cluster.port}/", f":{relay.port}/")
                    + f"?connect_timeout={HELD_CONNECT_TIMEOUT}")
        server = server_factory("--metadata", held_url)
        assert _registered_once(server)
        relay.hold()  # every connection to the database cut, new ones left unanswered
        with server.client() as found_lost:
            answer = found_lost.request(Register(client_id=ANY_ID, name=unique_name()))
            assert not isinstance(answer, Registered), answer
        with server.client() as while_connecting:
            while_connecting.send(Register(client_id=ANY_ID, name=unique_name()))
            given_up = time.monotonic() + RESUME_PATIENCE
            while not relay.held_open():  # the server is connecting again, held
                assert time.monotonic() < given_up, "the server never connected again"
                time.sleep(RESUME_POLL)
            with server.client() as unknown:
                unknown.send_raw(raw_header(UNKNOWN_CODE, 0))
                assert isinstance(unknown.receive(), (GeneralError, ConnectionClosed))
            assert relay.held_open(), "answered only once the connect had given up"
            assert not isinstance(while_connecting.receive(), Registered)  # refused at once
        relay.forward()  # the database answers again
        given_up = time.monotonic() + RESUME_PATIENCE
        while not _registered_once(server):
            assert time.monotonic() < given_up, "the server never served again"
            time.sleep(RESUME_POLL)
        assert server.process.poll() is None
        log = server.log()
        assert "database: connected again" in log and "Traceback" not in log
    finally:
        relay.close()


#: A stopped backend is resumed this many times the store's patience later (by a shell, so
#: that a server without the deadline ends the test late rather than never).
STALL_RESUME_AFTER = 4


def test_a_backend_that_stalls_gets_its_request_refused_after_the_patience_and_service_resumes(
    server_factory, postgres_url
):
    """The store's backend stops (SIGSTOP) while its host still acknowledges: a request
    that needs the database is refused with 1607 after the store's patience, not held
    until the backend resumes, and the server serves again by itself (a new connection),
    the stopped backend still stopped."""
    from server.storage.postgres.connect import APPLICATION_NAME
    from server.storage.postgres.store import ANSWER_PATIENCE

    server = server_factory("--metadata", postgres_url)
    assert _registered_once(server)
    with psycopg.connect(postgres_url, autocommit=True) as db:
        (backend,), = db.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE application_name = %s AND datname = current_database()", (APPLICATION_NAME,)
        ).fetchall()
    resume_after = ANSWER_PATIENCE * STALL_RESUME_AFTER
    with stalled_backend(backend, resume_after) as stall:
        with server.client() as stalled, stall.waiting():
            answer = stalled.request(
                Register(client_id=ANY_ID, name=unique_name()), timeout=2 * resume_after
            )
        assert isinstance(answer, GeneralError), answer
        assert stall.waited < resume_after  # given up, not resumed
        given_up = time.monotonic() + RESUME_PATIENCE
        while not _registered_once(server):  # connected again, off the loop
            assert time.monotonic() < given_up, "the server never served again"
            time.sleep(RESUME_POLL)
        assert not stall.resumed, "served only once the backend resumed"
    assert server.process.poll() is None
    log = server.log()
    assert log.count("the connection is lost (no answer within") == 1, log
    assert "Traceback" not in log
