"""The client as a person meets it, against the real server: no silent data
loss within a run, folders with -r, where the identity lives, and messages that
say what to do (issue 14, points 6, 8, 9 and 10)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from client.__main__ import ExitCode, main
from client.config import ServerAddress
from client.errors import NO_REASON_HINT
from client.locations import user_folder
from protocol import GeneralError, Register
from server.storage.names import stored_name

from client_fakes import FakeServer, make_file, write_transfer_info
from client_runs import TIMEOUT, Run

NAME = "alice"


@pytest.fixture
def run_in(capsys, monkeypatch):
    """Run ``main(argv)`` with ``folder`` as the working folder, no --config-dir."""

    def run(folder: Path, *argv: str) -> Run:
        monkeypatch.chdir(folder)
        capsys.readouterr()
        code = main(["--timeout", TIMEOUT, *argv])
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        return Run(code, captured.out, captured.err)

    return run


def address(server) -> str:
    host, port = server.address
    return f"{host}:{port}"


def flags(server, name: str = NAME) -> tuple[str, ...]:
    return ("--server", address(server), "--name", name)


def stored_files(server, folder: Path) -> dict[str, bytes]:
    """What the server stored for the client of folder's me.info, by stored name."""
    client_id = (folder / "me.info").read_text().splitlines()[1]
    received = server.data_dir / "received_files" / client_id
    return {path.name: path.read_bytes() for path in received.iterdir() if path.is_file()}


def folder(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


# -- point 6: one name per file within a run -----------------------------------------


def test_two_files_with_one_name_are_refused_before_anything_is_sent(server, tmp_path, run_client, work):
    first = make_file(folder(tmp_path, "a"), "x.txt")
    second = make_file(folder(tmp_path, "b"), "x.txt")
    result = run_client(*flags(server), str(first), str(second))
    assert result.code == ExitCode.CONFIG
    assert str(first) in result.err and str(second) in result.err
    assert "--rename-duplicates" in result.err
    assert not (work / "me.info").exists()  # not even registered
    received = server.data_dir / "received_files"
    assert not received.exists() or not any(received.iterdir())


def test_rename_duplicates_stores_both_files_and_says_which_name(server, tmp_path, run_client, work):
    first = make_file(folder(tmp_path, "a"), "x.txt", 300)
    second = make_file(folder(tmp_path, "b"), "x.txt", 400)
    result = run_client(*flags(server), "--rename-duplicates", str(first), str(second))
    assert result.code == ExitCode.OK, result.err
    assert f"{second} is sent as 'x (2).txt'" in result.err
    assert stored_files(server, work) == {
        "x.txt": first.read_bytes(),
        "x (2).txt": second.read_bytes(),
    }


def test_replacing_a_file_of_an_earlier_run_is_said_only_with_v(server, tmp_path, run_client, work):
    data = make_file(tmp_path, "notes.txt")
    other = make_file(tmp_path, "other.txt")
    first = run_client(*flags(server), "-v", str(data))
    assert first.code == ExitCode.OK, first.err
    assert "replaces it" not in first.err
    quiet = run_client(*flags(server), str(data), str(other))
    assert quiet.code == ExitCode.OK, quiet.err
    assert "replaces it" not in quiet.err
    verbose = run_client(*flags(server), "-v", str(data), str(other))
    assert verbose.code == ExitCode.OK, verbose.err
    assert "'notes.txt' was stored by this client in an earlier run" in verbose.err
    assert "'other.txt' was stored" in verbose.err  # sent by the quiet run
    assert stat.S_IMODE((work / "sent.info").stat().st_mode) == 0o600


# -- point 9: folders ------------------------------------------------------------------


def test_r_uploads_a_folder_under_relative_paths(server, tmp_path, run_client, work):
    root = folder(tmp_path, "photos")
    (root / "2024").mkdir()
    top = make_file(root, "a.jpg", 100)
    inner = make_file(root / "2024", "a.jpg", 200)
    result = run_client(*flags(server), "-r", str(root))
    assert result.code == ExitCode.OK, result.err
    assert stored_files(server, work) == {
        stored_name(b"photos/a.jpg"): top.read_bytes(),
        stored_name(b"photos/2024/a.jpg"): inner.read_bytes(),
    }


def test_a_folder_without_r_says_to_pass_r(server, tmp_path, run_client):
    root = folder(tmp_path, "photos")
    result = run_client(*flags(server), str(root))
    assert result.code == ExitCode.CONFIG
    assert "is a folder; pass -r" in result.err


# -- point 8: identity ----------------------------------------------------------------


def test_1601_for_a_name_registered_from_another_folder_names_that_folder(server, tmp_path, run_client, run_in):
    data = make_file(tmp_path, "notes.txt")
    first = folder(tmp_path, "first")
    assert run_client(*flags(server), str(data), config_dir=first).code == ExitCode.OK
    second = folder(tmp_path, "second")

    result = run_in(second, *flags(server), str(data))
    assert result.code == ExitCode.REGISTRATION_REFUSED
    assert f"this machine registered 'alice' with {address(server)} from {first}" in result.err
    assert f"--config-dir {first}" in result.err

    explicit = run_client(*flags(server), str(data), config_dir=second)
    assert explicit.code == ExitCode.REGISTRATION_REFUSED
    assert f"--config-dir {first}" in explicit.err
    assert "choose another name" not in explicit.err  # the name is ours


def test_1601_for_a_name_of_someone_else_suggests_config_dir_in_general(server, tmp_path, run_client):
    data = make_file(tmp_path, "notes.txt")
    first = folder(tmp_path, "first")
    assert run_client(*flags(server), str(data), config_dir=first).code == ExitCode.OK
    (first / "me.info").unlink()  # that folder no longer holds the name
    (first / "priv.key").unlink()
    result = run_client(*flags(server), str(data), config_dir=folder(tmp_path, "second"))
    assert result.code == ExitCode.REGISTRATION_REFUSED
    assert "if this machine registered it from another folder" in result.err
    assert str(first) not in result.err


def test_the_per_user_folder_is_used_when_the_working_folder_has_no_identity(
    server, tmp_path, run_client, run_in, user_config_home
):
    data = make_file(tmp_path, "notes.txt")
    host, port = server.address
    per_user = user_folder(ServerAddress(host, port))
    assert per_user == user_config_home / "cipherdrop" / f"{host}_{port}"
    per_user.mkdir(parents=True)
    assert run_client(*flags(server), str(data), config_dir=per_user).code == ExitCode.OK

    anywhere = folder(tmp_path, "anywhere")
    result = run_in(anywhere, "-v", *flags(server), str(data))
    assert result.code == ExitCode.OK, result.err
    assert f"using the identity in {per_user}" in result.err
    assert "-> 827" in result.err and "-> 825" not in result.err
    assert not (anywhere / "me.info").exists()


def test_the_working_folder_identity_wins_over_the_per_user_one(server, tmp_path, run_client, run_in):
    data = make_file(tmp_path, "notes.txt")
    host, port = server.address
    per_user = user_folder(ServerAddress(host, port))
    per_user.mkdir(parents=True)
    assert run_client(*flags(server, "per-user"), str(data), config_dir=per_user).code == 0
    here = folder(tmp_path, "here")
    assert run_client(*flags(server, "here"), str(data), config_dir=here).code == 0

    result = run_in(here, "-v", *flags(server, "here"), str(data))
    assert result.code == ExitCode.OK, result.err
    assert "using the identity in" not in result.err
    assert "me.info holds the client" not in result.err


def test_an_identity_readable_by_others_is_warned_about_like_ssh(server, tmp_path, run_client, work):
    data = make_file(tmp_path, "notes.txt")
    assert run_client(*flags(server), str(data)).code == ExitCode.OK
    for name in ("me.info", "priv.key"):
        assert stat.S_IMODE((work / name).stat().st_mode) == 0o600
    quiet = run_client(*flags(server), str(data))
    assert "readable or writable by others" not in quiet.err
    os.chmod(work / "priv.key", 0o644)
    result = run_client(*flags(server), str(data))
    assert result.code == ExitCode.OK, result.err
    assert f"{work / 'priv.key'} is readable or writable by others (mode 0644)" in result.err
    assert f"chmod 600 {work / 'priv.key'}" in result.err
    assert "me.info is readable" not in result.err


# -- point 10: messages -------------------------------------------------------------


def test_a_url_as_server_is_a_usage_error_saying_host_port(tmp_path, run_client):
    data = make_file(tmp_path, "notes.txt")
    result = run_client("--server", "http://127.0.0.1:1256", "--name", NAME, str(data))
    assert result.code == ExitCode.USAGE
    assert "is a URL" in result.err and "'127.0.0.1:1256'" in result.err
    assert "usage:" not in result.err and result.err.rstrip().endswith("--help")  # one line


def test_a_server_without_port_is_reported_before_a_missing_transfer_info(run_client):
    result = run_client("--server", "localhost")
    assert result.code == ExitCode.USAGE
    assert "argument --server: expected host:port, got 'localhost': add the server's port" in result.err
    assert "transfer.info" not in result.err


def test_a_bare_1607_after_the_retries_says_where_the_reason_is(work, run_client):
    data = make_file(work)

    def script(server):
        peer = server.accept()
        for _ in range(4):
            peer.expect(Register)
            peer.reply(GeneralError())
        peer.expect_closed()

    with FakeServer(script) as fake:
        write_transfer_info(work, fake.address, NAME, data.name)
        result = run_client()
    assert result.code == ExitCode.SERVER_ERROR
    assert f"failed after 4 attempts: the server answered 1607 (general error); {NO_REASON_HINT}" in result.err
