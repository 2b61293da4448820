"""``python -m server admin``: against a real data folder, with a server running beside it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest
from helpers import ANY_ID, make_identity, reconnect, server_env, upload

from protocol import Acknowledged, CrcOk, Register, Registered, cksum
from server.storage.sweep import REPAIR_FINISHED

ADMIN = [sys.executable, "-m", "server", "admin"]
EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_SERVER_RUNNING = 3
EXIT_UNUSABLE = 4


def admin(data_dir, *args, env_extra=None):
    env = server_env()
    env.update(env_extra or {})
    return subprocess.run(
        [*ADMIN, *args, "--data-dir", str(data_dir)],
        env=env, capture_output=True, text=True, timeout=60,
    )


def no_traceback(result):
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


def verified_upload(server, name, files):
    """A client with verified files {file name: bytes}; its identity."""
    with server.client() as client:
        identity = make_identity(client, name)
        for file_name, data in files.items():
            upload(client, identity, file_name, data)
            answer = client.request(CrcOk(client_id=identity.client_id, file_name=file_name))
            assert isinstance(answer, Acknowledged), answer
    return identity


@pytest.fixture
def populated(server):
    """A running server with two clients and three files."""
    alice = verified_upload(server, "alice", {"a.txt": b"alpha" * 100, "b.bin": os.urandom(3000)})
    bob = verified_upload(server, "bob", {"notes.md": b"# bob\n"})
    return server, alice, bob


def test_list_clients_beside_a_running_server(populated):
    server, alice, bob = populated
    result = admin(server.data_dir, "clients")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ID", "EDITION", "LAST_SEEN", "FILES", "BYTES"]
    alice_line = next(line for line in lines if line.startswith("alice"))
    assert alice.client_id.hex() in alice_line and alice_line.split()[-2:] == ["2", "3500"]
    bob_line = next(line for line in lines if line.startswith("bob"))
    # aligned: the ID column starts at the same offset on every line
    assert lines[0].index("ID") == alice_line.index(alice.client_id.hex()) == bob_line.index(bob.client_id.hex())
    assert server.process.poll() is None  # the server runs on, untouched
    no_traceback(result)


def test_list_clients_json(populated):
    server, alice, bob = populated
    result = admin(server.data_dir, "clients", "--json")
    records = {record["name"]: record for record in json.loads(result.stdout)}
    assert records["bob"] == {
        "name": "bob", "id": bob.client_id.hex(), "edition": "v3",
        "last_seen": records["bob"]["last_seen"], "has_key": True, "files": 1, "bytes": 6,
    }
    assert records["alice"]["files"] == 2


def test_list_files_with_size_cksum_and_path(populated):
    server, alice, _ = populated
    result = admin(server.data_dir, "files", "alice", "--json")
    assert result.returncode == 0, result.stderr
    records = {record["file"]: record for record in json.loads(result.stdout)}
    assert set(records) == {"a.txt", "b.bin"}
    assert records["a.txt"]["size"] == 500 and records["a.txt"]["cksum"] == cksum(b"alpha" * 100)
    assert records["a.txt"]["verified"] is True
    assert records["a.txt"]["stored_as"] == f"received_files/{alice.client_id.hex()}/a.txt"
    text = admin(server.data_dir, "files")
    assert text.returncode == 0 and len(text.stdout.splitlines()) == 1 + 3


def test_show_one_client_by_name_or_id(populated):
    server, alice, _ = populated
    by_name = admin(server.data_dir, "client", "alice")
    by_id = admin(server.data_dir, "client", "--id", alice.client_id.hex())
    assert by_name.returncode == by_id.returncode == 0, by_id.stderr
    assert by_name.stdout == by_id.stdout
    assert f"id:        {alice.client_id.hex()}" in by_name.stdout
    assert "a.txt" in by_name.stdout and "b.bin" in by_name.stdout


def test_unknown_client_is_one_line_and_exit_1(populated):
    server, _, _ = populated
    result = admin(server.data_dir, "client", "nobody")
    assert result.returncode == EXIT_PROBLEM
    assert result.stderr.strip().endswith("no client named 'nobody'")
    no_traceback(result)


def _id_spellings(client_id: bytes) -> list[str]:
    """Names that spell another client's id: bytes.fromhex reads each of them as the id."""
    upper = client_id.hex().upper()
    spaced = " ".join(upper[index:index + 2] for index in range(0, len(upper), 2))
    return [client_id.hex(), upper, spaced]


@pytest.mark.parametrize("spelling", range(3), ids=["hex", "capitals", "spaced"])
def test_a_name_that_spells_another_clients_id_selects_its_own_client(populated, spelling):
    # issue 22 point 2: the named client is the one shown and deleted, never the id's owner
    server, alice, bob = populated
    name = _id_spellings(alice.client_id)[spelling]
    mallory = verified_upload(server, name, {"m.txt": b"mallory"})
    shown = admin(server.data_dir, "client", name, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == mallory.client_id.hex()
    files = admin(server.data_dir, "files", name, "--json")
    assert [record["file"] for record in json.loads(files.stdout)] == ["m.txt"]
    server.stop()
    dry = admin(server.data_dir, "delete-client", name)
    assert dry.returncode == 0 and mallory.client_id.hex() in dry.stdout and name in dry.stdout
    deleted = admin(server.data_dir, "delete-client", name, "--yes")
    assert deleted.returncode == 0, deleted.stderr
    # what it deletes is named, by name and id, before it is deleted
    first = deleted.stdout.splitlines()[0]
    assert first.startswith("deleting client") and mallory.client_id.hex() in first and name in first
    assert (server.data_dir / "received_files" / alice.client_id.hex() / "a.txt").exists()
    remaining = {record["name"] for record in json.loads(admin(server.data_dir, "clients", "--json").stdout)}
    assert remaining == {"alice", "bob"}


def test_an_id_is_only_its_32_hex_digits_and_never_guessed(populated):
    server, alice, _ = populated
    spaced = _id_spellings(alice.client_id)[2]
    # a plain argument is a name: an id there is not taken for one, but the refusal says how
    as_name = admin(server.data_dir, "client", alice.client_id.hex())
    assert as_name.returncode == EXIT_PROBLEM
    assert f"--id {alice.client_id.hex()}" in as_name.stderr
    loose = admin(server.data_dir, "client", "--id", spaced)
    assert loose.returncode == EXIT_USAGE and "exactly 32 hex digits" in loose.stderr
    both = admin(server.data_dir, "client", "alice", "--id", alice.client_id.hex())
    assert both.returncode == EXIT_USAGE and "not both" in both.stderr
    neither = admin(server.data_dir, "delete-client", "--yes")
    assert neither.returncode == EXIT_USAGE
    upper = admin(server.data_dir, "files", "--id", alice.client_id.hex().upper(), "--json")
    assert upper.returncode == 0 and len(json.loads(upper.stdout)) == 2
    for result in (as_name, both, neither):
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for result in (as_name, loose, both, neither):
        no_traceback(result)


def test_verify_passes_then_reports_changed_and_missing(populated):
    server, alice, bob = populated
    clean = admin(server.data_dir, "verify")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout.splitlines()[-1] == "3 ok, 0 changed, 0 missing, 0 no checksum recorded"
    folder = server.data_dir / "received_files"
    changed = folder / alice.client_id.hex() / "a.txt"
    changed.write_bytes(b"alphA" + b"alpha" * 99)  # same size, another cksum
    (folder / bob.client_id.hex() / "notes.md").unlink()
    result = admin(server.data_dir, "verify", "--json")
    assert result.returncode == EXIT_PROBLEM
    verdicts = {record["file"]: record for record in json.loads(result.stdout)}
    assert verdicts["a.txt"]["result"] == "changed" and "cksum" in verdicts["a.txt"]["detail"]
    assert verdicts["notes.md"]["result"] == "missing"
    assert verdicts["b.bin"]["result"] == "ok"
    no_traceback(result)


def test_stores_named_by_url_are_where_the_server_keeps_things_and_admin_reads_them(
    tmp_path, server_factory
):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    stores = ["--metadata", f"sqlite://{elsewhere / 'meta.db'}?busy_timeout=1",
              "--blobs", f"file://{elsewhere / 'files'}"]
    data_dir = tmp_path / "data"
    server = server_factory(*stores, data_dir=data_dir)
    alice = verified_upload(server, "alice", {"a.txt": b"alpha" * 100})
    assert (elsewhere / "files" / alice.client_id.hex() / "a.txt").read_bytes() == b"alpha" * 100
    assert not (data_dir / "defensive.db").exists() and not (data_dir / "received_files").exists()
    listed = admin(data_dir, "files", *stores, "--json")
    assert [record["file"] for record in json.loads(listed.stdout)] == ["a.txt"], listed.stderr
    clean = admin(data_dir, "verify", *stores)
    assert clean.returncode == 0 and clean.stdout.splitlines()[-1].startswith("1 ok"), clean.stderr
    (elsewhere / "files" / alice.client_id.hex() / "a.txt").write_bytes(b"alphA" + b"alpha" * 99)
    assert admin(data_dir, "verify", *stores).returncode == EXIT_PROBLEM  # read through --blobs
    assert admin(data_dir, "clients").returncode == EXIT_UNUSABLE  # the data folder has none
    server.stop()
    deleted = admin(data_dir, "delete-client", "alice", "--yes", *stores)
    assert deleted.returncode == 0, deleted.stderr
    assert not (elsewhere / "files" / alice.client_id.hex()).exists()


@pytest.mark.parametrize("option, value, message", [
    ("--metadata", "mysql://db/cipherdrop", "scheme 'mysql:'; known: sqlite:, postgresql:"),
    ("--blobs", "gs://bucket/files", "scheme 'gs:'; known: file:, s3:"),
    ("--metadata", "/srv/defensive.db", "no scheme; known: sqlite:"),
    ("--metadata", "sqlite:///x.db?busy_timeout=-1", "busy_timeout must be seconds from 0 to"),
    ("--metadata", "sqlite:///x.db?journal=off", "unknown option 'journal'"),
])
def test_a_store_url_no_backend_takes_is_a_one_line_usage_error(tmp_path, option, value, message):
    result = admin(tmp_path, "clients", option, value)
    assert result.returncode == EXIT_USAGE
    [line] = result.stderr.splitlines()
    assert line.startswith("python -m server admin: ") and message in line, line
    no_traceback(result)


def test_verify_rows_from_before_checksums_are_reported_not_failed(populated):
    server, alice, _ = populated
    server.stop()
    with sqlite3.connect(server.data_dir / "defensive.db") as db:
        db.execute("UPDATE files SET Cksum = NULL, Size = NULL WHERE FileName = 'a.txt'")
    result = admin(server.data_dir, "verify")
    assert result.returncode == 0, result.stdout
    assert "no checksum recorded" in next(line for line in result.stdout.splitlines() if "a.txt" in line)


def test_old_database_without_the_columns_gets_them(tmp_path, server_factory):
    data_dir = tmp_path / "old"
    data_dir.mkdir()
    with sqlite3.connect(data_dir / "defensive.db") as db:
        db.execute("CREATE TABLE clients (ID BLOB PRIMARY KEY, Name TEXT NOT NULL UNIQUE,"
                   " PublicKey BLOB, LastSeen TEXT, AESKey BLOB)")
        db.execute("CREATE TABLE files (ID BLOB NOT NULL, FileName TEXT NOT NULL, PathName TEXT"
                   " NOT NULL, Verified INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (ID, FileName))")
    # read-only: the admin reads an old database as it is
    assert admin(data_dir, "files").returncode == 0
    server = server_factory(data_dir=data_dir)
    verified_upload(server, "carol", {"c.txt": b"carol"})
    result = admin(data_dir, "files", "--json")
    [record] = json.loads(result.stdout)
    assert record["size"] == 5 and record["cksum"] == cksum(b"carol")


def test_delete_refused_while_the_server_runs(populated):
    server, alice, _ = populated
    result = admin(server.data_dir, "delete-client", "alice", "--yes")
    assert result.returncode == EXIT_SERVER_RUNNING
    assert "the server is running" in result.stderr and "stop it" in result.stderr
    assert (server.data_dir / "received_files" / alice.client_id.hex() / "a.txt").exists()
    no_traceback(result)


def test_delete_without_yes_only_says_what(populated):
    server, alice, _ = populated
    server.stop()
    result = admin(server.data_dir, "delete-client", "alice")
    assert result.returncode == 0 and result.stdout.startswith(
        f"would delete client 'alice' (id {alice.client_id.hex()})"
    )
    assert (server.data_dir / "received_files" / alice.client_id.hex()).is_dir()


def test_delete_removes_rows_and_folder(populated, server_factory):
    server, alice, bob = populated
    assert server.stop() == 0
    result = admin(server.data_dir, "delete-client", "--id", alice.client_id.hex(), "--yes")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"deleting client 'alice' (id {alice.client_id.hex()}): 2 file(s), 3500 bytes",
        f"deleted client 'alice' (id {alice.client_id.hex()}): 2 file(s), 3500 bytes",
    ]
    assert not (server.data_dir / "received_files" / alice.client_id.hex()).exists()
    with sqlite3.connect(server.data_dir / "defensive.db") as db:
        for table in ("clients", "files", "key_bindings"):
            rows = db.execute(f"SELECT COUNT(*) FROM {table} WHERE ID = ?", (alice.client_id,))
            assert rows.fetchone() == (0,), table
    names = [record["name"] for record in json.loads(admin(server.data_dir, "clients", "--json").stdout)]
    assert names == ["bob"]
    restarted = server_factory(data_dir=server.data_dir)
    assert "1 client(s), 1 file(s)" in restarted.log() and "moved to" not in restarted.log()


@pytest.mark.parametrize("point", ["remove.begun", "remove.forgotten"])
def test_a_delete_cut_by_a_crash_is_finished_at_start(populated, server_factory, point):
    server, alice, bob = populated
    assert server.stop() == 0
    crashed = admin(server.data_dir, "delete-client", "alice", "--yes",
                    env_extra={"CIPHERDROP_CRASH_AT": point})
    assert crashed.returncode == -9  # SIGKILL at the point
    trash = server.data_dir / "received_files" / ".deleting" / alice.client_id.hex()
    assert trash.is_dir() and not (server.data_dir / "received_files" / alice.client_id.hex()).exists()
    restarted = server_factory(data_dir=server.data_dir)
    log = restarted.log()
    assert f"finishing the deletion of client {alice.client_id.hex()}" in log
    assert "1 client(s), 1 file(s)" in log and "moved to" not in log
    restarted.wait_log(REPAIR_FINISHED)  # its deletions are done while it serves
    assert not trash.exists()
    restarted.stop()
    assert [r["name"] for r in json.loads(admin(server.data_dir, "clients", "--json").stdout)] == ["bob"]


def test_admin_on_a_folder_without_database(tmp_path):
    result = admin(tmp_path, "clients")
    assert result.returncode == EXIT_UNUSABLE
    assert "no database at" in result.stderr
    no_traceback(result)


def test_admin_usage_errors_name_the_program(tmp_path):
    result = admin(tmp_path, "explode")
    assert result.returncode == EXIT_USAGE
    assert result.stderr.startswith("usage: python -m server admin")
    no_traceback(result)


def test_a_confirmed_new_version_records_its_cksum_and_the_overwrite_is_logged(populated):
    server, alice, _ = populated
    new = b"a new alpha" * 7
    with server.client() as client:

        reconnect(client, alice)
        upload(client, alice, "a.txt", new)
        assert isinstance(client.request(CrcOk(client_id=alice.client_id, file_name="a.txt")), Acknowledged)
    line = server.wait_log(r"127\.0\.0\.1: stored file \S+/a\.txt of client [0-9a-f]{32} overwritten.*").group(0)
    assert alice.client_id.hex() in line and f"({len(new)} bytes)" in line
    records = {r["file"]: r for r in json.loads(admin(server.data_dir, "files", "alice", "--json").stdout)}
    assert records["a.txt"]["size"] == len(new) and records["a.txt"]["cksum"] == cksum(new)
    assert admin(server.data_dir, "verify").returncode == 0


def test_the_options_go_before_the_command_too(populated):
    server, alice, bob = populated
    before = subprocess.run(
        [*ADMIN, "--data-dir", str(server.data_dir), "--json", "clients"],
        env=server_env(), capture_output=True, text=True, timeout=60,
    )
    assert before.returncode == 0, before.stderr
    assert before.stdout == admin(server.data_dir, "clients", "--json").stdout
    assert {record["name"] for record in json.loads(before.stdout)} == {"alice", "bob"}


def test_a_reader_that_stops_early_gets_no_traceback(populated):
    server, alice, bob = populated
    # long names: the listing is far more than a pipe and stdout's buffer hold
    many = {f"{number:03}{'n' * 200}.txt": b"x" for number in range(300)}
    verified_upload(server, "carol", many)
    with subprocess.Popen([*ADMIN, "files", "--data-dir", str(server.data_dir)],
                          env=server_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE) as run:
        run.stdout.readline()  # the header, then the reader goes away
        run.stdout.close()
        error = run.stderr.read().decode()
        code = run.wait(60)
    assert "Traceback" not in error and error == "", error
    assert code == 128 + 13  # SIGPIPE's number on Linux: as a writer killed by it ends


#: File names a hostile client sends (issue 22 point 3): each would act on a terminal.
HOSTILE_FILE_NAMES = [
    b"csi\x1b[2J\x1b[31mred.txt",  # clear the screen, recolour
    b"osc\x1b]0;owned title\x07.txt",  # set the window title
    b"cr\rover.txt",
    b"bell\x07.txt",
    b"lf\nbob  forged.txt  received_files/x  1  yes",  # a forged row
    "c1\u009b31mcsi.txt".encode(),  # the one-byte CSI, in UTF-8
    "rlo\u202etxt.exe".encode(),  # shows as ...exe.txt
    "isolate\u2066x\u2069\u200e.txt".encode(),
    b"del\x7f.txt",
    b"latin1 caf\xe9.txt",  # not UTF-8
    b"back\\x1b.txt",  # a literal backslash: must not read as an escape
]


def _for_people(text: str) -> None:
    """Output a terminal may show: no character but the line feeds acts on it."""
    for line in text.splitlines():
        assert line.isprintable(), ascii(line)
    assert "\r" not in text and "\x85" not in text


def test_hostile_names_are_shown_escaped_and_json_stays_ascii(populated):
    server, alice, _ = populated
    mallory = verified_upload(server, "mallory", {name: b"m" for name in HOSTILE_FILE_NAMES})
    server.stop()
    with sqlite3.connect(server.data_dir / "defensive.db") as db:  # a row another tool wrote
        db.execute("UPDATE clients SET Name = ? WHERE ID = ?", ("bob\x1b[8m\u202e", alice.client_id))
    rows = 1 + len(HOSTILE_FILE_NAMES)  # the header and one line per file
    for command in (["files"], ["files", "--id", mallory.client_id.hex()], ["verify"],
                    ["client", "--id", mallory.client_id.hex()], ["clients"],
                    ["client", "--id", alice.client_id.hex()]):
        result = admin(server.data_dir, *command)
        assert result.returncode == 0, (command, result.stderr)
        _for_people(result.stdout)
        if command[0] == "files":
            assert len(result.stdout.splitlines()) == rows + (3 if len(command) == 1 else 0)
    shown = admin(server.data_dir, "files", "--id", mallory.client_id.hex()).stdout
    assert "csi\\x1b[2J\\x1b[31mred.txt" in shown and "rlo\\u202etxt.exe" in shown
    assert "latin1 caf\\xe9.txt" in shown and "back\\\\x1b.txt" in shown
    assert "lf\\x0abob  forged.txt" in shown
    listed = admin(server.data_dir, "clients").stdout
    assert "bob\\x1b[8m\\u202e" in listed
    for command in (["files"], ["verify"], ["clients"], ["client", "--id", mallory.client_id.hex()]):
        result = admin(server.data_dir, *command, "--json")
        assert result.returncode == 0 and result.stdout.isascii(), command
        _for_people(result.stdout)  # DEL too is an escape, not a raw byte
        json.loads(result.stdout)  # valid
    records = json.loads(admin(server.data_dir, "files", "--id", mallory.client_id.hex(), "--json").stdout)
    names = {record["file"] for record in records}
    # JSON keeps each UTF-8 name as it is; the one that is not UTF-8 has its byte escaped
    assert {name.decode() for name in HOSTILE_FILE_NAMES if name != b"latin1 caf\xe9.txt"} < names
    assert "latin1 caf\\xe9.txt" in names


# -- folders the tool cannot use (issue 24 point 2) ----------------------------------------

#: Every command, as an operator would type it.
EVERY_COMMAND = [
    ["clients"], ["files"], ["files", "alice"], ["client", "alice"],
    ["client", "--id", "00" * 16], ["verify"], ["delete-client", "alice"],
    ["delete-client", "alice", "--yes"],
]
#: unshare(1) with a user namespace: root's files are then checked as any user's, so a
#: mode of 000 denies (tests run as root, which reads anything otherwise).
AS_ANOTHER_USER = ["unshare", "--user", "--"]


def _can_drop_privileges() -> bool:
    try:
        return subprocess.run([*AS_ANOTHER_USER, "true"], capture_output=True, timeout=30,
                              check=False).returncode == 0
    except OSError:
        return False


def _data_folder(path):
    """A real data folder: its database made as a server makes it, and a client folder."""
    from server.storage.sqlite import SqliteMetadata

    path.mkdir()
    SqliteMetadata.open(path / "defensive.db").close()
    (path / "received_files").mkdir()
    return path


def _folder(tmp_path, state):
    """A data folder in one of the states the tool must refuse (exit 4)."""
    folder = tmp_path / "data"
    if state == "missing":
        return folder
    if state == "a file":
        folder.write_text("not a folder")
        return folder
    if state.startswith("unreadable"):
        _data_folder(folder)
        target = {"unreadable folder": folder, "unreadable database": folder / "defensive.db",
                  "unreadable files": folder / "received_files"}[state]
        target.chmod(0)
        return folder
    folder.mkdir()
    if state == "foreign: text database":
        (folder / "defensive.db").write_text("hello\n")
    elif state == "foreign: another sqlite database":
        with sqlite3.connect(folder / "defensive.db") as db:
            db.execute("CREATE TABLE notes (text TEXT)")
    return folder


UNUSABLE_STATES = [
    "missing", "a file", "foreign: empty folder", "foreign: text database",
    "foreign: another sqlite database", "unreadable folder", "unreadable database",
]


def test_verify_refuses_a_files_folder_it_cannot_read(tmp_path):
    if not _can_drop_privileges():
        pytest.skip("no user namespace to run as another user")
    folder = _folder(tmp_path, "unreadable files")
    try:
        result = subprocess.run([*AS_ANOTHER_USER, *ADMIN, "verify", "--data-dir", str(folder)],
                                env=server_env(), capture_output=True, text=True, timeout=60,
                                check=False)
    finally:
        (folder / "received_files").chmod(0o700)
    assert result.returncode == EXIT_UNUSABLE, result.stderr
    assert result.stderr.strip().endswith("received_files: Permission denied"
                                          " (run it as the server's user, e.g. sudo -u cipherdrop)")
    no_traceback(result)


@pytest.mark.parametrize("state", UNUSABLE_STATES)
def test_every_command_refuses_an_unusable_folder_with_one_line_and_exit_4(tmp_path, state):
    prefix = []
    if state.startswith("unreadable"):
        if not _can_drop_privileges():
            pytest.skip("no user namespace to run as another user")
        prefix = AS_ANOTHER_USER
    folder = _folder(tmp_path, state)
    try:
        for command in EVERY_COMMAND:
            result = subprocess.run(
                [*prefix, *ADMIN, *command, "--data-dir", str(folder)],
                env=server_env(), capture_output=True, text=True, timeout=60, check=False,
            )
            assert result.returncode == EXIT_UNUSABLE, (command, result.stderr)
            lines = result.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith("python -m server admin: "), (
                command, result.stderr,
            )
            assert str(folder) in lines[0], lines[0]  # it says which folder
            no_traceback(result)
    finally:
        for path in (folder, folder / "defensive.db", folder / "received_files"):
            if path.exists() and not path.is_symlink():
                path.chmod(0o700)
def test_unused_lists_and_purges_the_clients_that_never_stored_a_file(populated):
    server, alice, bob = populated
    with server.client() as client:
        make_identity(client, "keyed-idle")
        assert isinstance(client.request(Register(client_id=ANY_ID, name="keyless")), Registered)
    result = admin(server.data_dir, "unused", "--json")
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert sorted(record["name"] for record in records) == ["keyed-idle", "keyless"]
    assert {record["registered_from"] for record in records} == {"127.0.0.1"}
    assert {record["has_key"] for record in records} == {True, False}
    assert all(0 <= record["unused_for"] < 600 for record in records)
    table = admin(server.data_dir, "unused")
    assert table.stdout.splitlines()[0].split() == [
        "NAME", "ID", "HAS_KEY", "REGISTERED_FROM", "UNUSED_FOR", "LAST_SEEN"]
    assert json.loads(admin(server.data_dir, "unused", "--older-than", "3600", "--json").stdout) == []
    said = admin(server.data_dir, "purge-unused", "--older-than", "0")
    assert said.returncode == 0 and said.stdout.startswith("would delete 2 client(s)")
    running = admin(server.data_dir, "purge-unused", "--older-than", "0", "--yes")
    assert running.returncode == EXIT_SERVER_RUNNING and "stop it" in running.stderr
    server.stop()
    done = admin(server.data_dir, "purge-unused", "--older-than", "0", "--yes")
    assert done.returncode == 0 and done.stdout.startswith("deleted 2 client(s)"), done.stderr
    names = [record["name"] for record in json.loads(admin(server.data_dir, "clients", "--json").stdout)]
    assert sorted(names) == ["alice", "bob"]
    no_traceback(done)
