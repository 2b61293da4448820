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

import psycopg
import pytest

from helpers import ANY_ID, server_env
from protocol import Register, Registered
from server.storage.postgres import schema
from backends.postgres import SUPERUSER
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


#: Attempts at a whole session after the database came back (the first may find the
#: connection lost: refused with 1607, or closed unanswered).
SESSIONS_AFTER_RESTART = 5


def test_the_server_serves_again_by_itself_after_the_database_restarts(
    server_factory, postgres_cluster, postgres_url
):
    server = server_factory("--metadata", postgres_url)
    before = verified_upload(server, "before", {"a.txt": b"answered before the restart"})
    postgres_cluster.restart()  # fast: the server's connection is cut
    failures = []
    for attempt in range(SESSIONS_AFTER_RESTART):
        try:
            verified_upload(server, f"after{attempt}", {"b.txt": b"after"})
            break
        except (AssertionError, OSError) as exc:  # a refusal, or a connection closed unanswered
            failures.append(exc)
    else:
        pytest.fail(f"no session succeeded after the restart: {failures}")
    assert server.process.poll() is None
    log = server.log()
    assert "database: the connection is lost" in log and "Traceback" not in log
    with psycopg.connect(postgres_url) as db:  # what was answered before is there
        assert db.execute("SELECT Verified FROM files WHERE ID = %s",
                          (before.client_id,)).fetchall() == [(True,)]
