"""transfer.info, me.info and priv.key: every error names the file and the line."""

from __future__ import annotations

import base64
import os
import socket
import stat
from pathlib import Path

import pytest

from client import config
from client.__main__ import ExitCode, main
from client.config import (
    Identity,
    ServerAddress,
    load_identity,
    load_settings,
    parse_server,
    save_identity,
)
from client.errors import ConfigError
from client.locations import user_folder
from protocol.crypto import export_private_key, generate_private_key

from client_fakes import write_transfer_info

NAME = "alice"
CLIENT_ID = bytes(range(16))
#: One key for the whole module: RSA generation is the slow part.
KEY = generate_private_key()
KEY_TEXT = base64.b64encode(export_private_key(KEY)).decode()


@pytest.fixture
def data(work: Path) -> Path:
    path = work / "data.bin"
    path.write_bytes(b"hello")
    return path


def write_me_info(folder: Path, lines: list[str], priv_key: str | None = KEY_TEXT) -> None:
    (folder / "me.info").write_text("\n".join(lines) + "\n")
    if priv_key is not None:
        (folder / "priv.key").write_text(priv_key + "\n")


# -- transfer.info ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("", 1, "missing host:port"),
        ("localhost\nalice\ndata.bin\n", 1, "expected host:port"),
        (":1234\nalice\ndata.bin\n", 1, "expected host:port"),
        ("localhost:abc\nalice\ndata.bin\n", 1, "bad port 'abc'"),
        ("localhost:0\nalice\ndata.bin\n", 1, "bad port '0'"),
        ("localhost:65536\nalice\ndata.bin\n", 1, "bad port '65536'"),
        ("localhost:-1\nalice\ndata.bin\n", 1, "bad port '-1'"),
        ("localhost:1234\n", 2, "missing client name"),
        ("localhost:1234\n   \ndata.bin\n", 2, "missing client name"),
        (f"localhost:1234\n{'a' * 101}\ndata.bin\n", 2, "101 characters; at most 100"),
        ("localhost:1234\nalicé\ndata.bin\n", 2, "printable ASCII"),
        ("localhost:1234\nalice\n", 3, "missing file path"),
        ("localhost:1234\nalice\nnope.bin\n", 3, "not found"),
        ("localhost:1234\nalice\n.\n", 3, "not a regular file"),
    ],
)
def test_bad_transfer_info_names_file_and_line(work, data, run_client, text, line, message):
    (work / "transfer.info").write_text(text)
    result = run_client()
    assert result.code == ExitCode.CONFIG
    assert f"transfer.info line {line}: " in result.err
    assert message in result.err
    assert not (work / "me.info").exists()


def test_missing_transfer_info(run_client):
    result = run_client()
    assert result.code == ExitCode.CONFIG
    assert "transfer.info: not found" in result.err


def test_transfer_info_not_utf8(work, run_client):
    (work / "transfer.info").write_bytes(b"localhost:1234\n\xff\xfe\n")
    result = run_client()
    assert result.code == ExitCode.CONFIG
    assert "transfer.info: not UTF-8" in result.err


def test_name_of_100_characters_crlf_and_bom_are_fine(work, data):
    (work / "transfer.info").write_bytes(
        b"\xef\xbb\xbf127.0.0.1:1256\r\n" + b"b" * 100 + b"\r\ndata.bin\r\n"
    )
    settings = load_settings(work)
    assert settings.server == ServerAddress("127.0.0.1", 1256)
    assert settings.name == "b" * 100
    assert settings.files == (work / "data.bin",)


def test_relative_file_is_relative_to_the_config_folder(work, data, monkeypatch, tmp_path):
    write_transfer_info(work, "h:1", NAME, "data.bin")
    monkeypatch.chdir(tmp_path)
    assert load_settings(work).files == (work / "data.bin",)


def test_file_name_with_spaces_is_kept_whole(work):
    path = work / "my file  .txt"
    path.write_text("x")
    write_transfer_info(work, "h:1", NAME, "my file  .txt")
    assert load_settings(work).files[0].name == "my file  .txt"


def test_ipv6_address():
    assert parse_server("[::1]:1256") == ServerAddress("::1", 1256)
    assert str(ServerAddress("::1", 1256)) == "[::1]:1256"


def test_flags_override_transfer_info_lines(work, data, tmp_path):
    other = tmp_path / "other.bin"
    other.write_bytes(b"x")
    write_transfer_info(work, "localhost:bad", "a" * 200, "missing")
    settings = load_settings(work, server="127.0.0.5:99", name="bob", files=(other, data))
    assert settings == config.Settings(ServerAddress("127.0.0.5", 99), "bob", (other, data))


def test_no_transfer_info_needed_when_every_flag_is_given(work, data, run_client):
    result = run_client("--server", "127.0.0.1:bad", "--name", NAME, str(data))
    assert result.code == ExitCode.USAGE  # a bad flag is a bad command line
    assert "argument --server: bad port 'bad'" in result.err


def test_bad_name_flag(work, data, run_client):
    result = run_client("--server", "127.0.0.1:1", "--name", "x" * 101, str(data))
    assert result.code == ExitCode.USAGE
    assert "argument --name: the client name is 101 characters" in result.err


def test_missing_file_argument_is_named(work, run_client, tmp_path):
    missing = tmp_path / "gone.txt"
    result = run_client("--server", "127.0.0.1:1", "--name", NAME, str(missing))
    assert result.code == ExitCode.CONFIG
    assert "gone.txt" in result.err and "not found" in result.err


def test_missing_config_folder(run_client, tmp_path):
    result = run_client(config_dir=tmp_path / "nowhere")
    assert result.code == ExitCode.CONFIG
    assert "nowhere: the configuration folder does not exist" in result.err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(work, data, run_client):
    data.chmod(0)
    write_transfer_info(work, "127.0.0.1:1", NAME, data.name)
    result = run_client()
    assert result.code == ExitCode.CONFIG
    assert "transfer.info line 3: cannot read" in result.err


def test_unreadable_file_any_user(work, data, run_client, monkeypatch):
    real_open = Path.open

    def deny(self, *args, **kwargs):
        if self.name == data.name:
            raise PermissionError(13, "Permission denied")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", deny)
    write_transfer_info(work, "127.0.0.1:1", NAME, data.name)
    result = run_client()
    assert result.code == ExitCode.CONFIG
    assert "transfer.info line 3: cannot read" in result.err and "Permission denied" in result.err


def test_file_of_4_gib_is_refused(work, run_client):
    big = work / "big.bin"
    with big.open("wb") as handle:
        handle.truncate(2**32)  # sparse: no disk used
    write_transfer_info(work, "127.0.0.1:1", NAME, big.name)
    result = run_client()
    assert result.code == ExitCode.CONFIG
    assert "transfer.info line 3" in result.err and "4-byte size" in result.err


def test_largest_file_is_accepted(work):
    big = work / "big.bin"
    with big.open("wb") as handle:
        handle.truncate(config.MAX_FILE_SIZE)
    assert config.check_file(big) == 2**32 - 17


def test_file_name_too_long_for_the_wire(work, run_client):
    path = work / ("é" * 127 + "a")  # 255 bytes of UTF-8: one over the field
    path.write_bytes(b"x")
    write_transfer_info(work, "127.0.0.1:1", NAME, path.name)
    result = run_client()
    assert result.code == ExitCode.CONFIG
    assert "at most 254" in result.err


# -- me.info and priv.key ---------------------------------------------------------


def test_no_me_info_means_not_registered(work):
    assert load_identity(work) is None


def test_identity_round_trip_owner_only(work):
    (work / "me.info").write_text("old")
    (work / "me.info").chmod(0o644)
    old_umask = os.umask(0)
    try:
        save_identity(work, Identity(NAME, CLIENT_ID, KEY))
    finally:
        os.umask(old_umask)
    for name in ("me.info", "priv.key"):
        assert stat.S_IMODE((work / name).stat().st_mode) == 0o600
    assert (work / "me.info").read_text() == f"{NAME}\n{CLIENT_ID.hex()}\n{KEY_TEXT}\n"
    assert (work / "priv.key").read_text() == f"{KEY_TEXT}\n"
    identity = load_identity(work)
    assert identity == Identity(NAME, CLIENT_ID, KEY)
    assert [p.name for p in work.iterdir() if p.name.startswith(".")] == []


def test_key_in_lines_of_72_like_cryptopp(work):
    lines = [KEY_TEXT[i : i + 72] for i in range(0, len(KEY_TEXT), 72)]
    write_me_info(work, [NAME, CLIENT_ID.hex().upper(), *lines], priv_key="\n".join(lines))
    assert load_identity(work) == Identity(NAME, CLIENT_ID, KEY)


def test_missing_priv_key_is_written_again(work):
    write_me_info(work, [NAME, CLIENT_ID.hex(), KEY_TEXT], priv_key=None)
    assert load_identity(work).private_key == KEY
    assert (work / "priv.key").read_text().strip() == KEY_TEXT
    assert stat.S_IMODE((work / "priv.key").stat().st_mode) == 0o600


OTHER_KEY_TEXT = base64.b64encode(export_private_key(generate_private_key())).decode()


@pytest.mark.parametrize(
    "lines, priv_key, where, message",
    [
        ([], KEY_TEXT, "me.info line 1", "missing client name"),
        (["a" * 101, CLIENT_ID.hex(), KEY_TEXT], KEY_TEXT, "me.info line 1", "at most 100"),
        ([NAME], KEY_TEXT, "me.info line 2", "missing client id"),
        ([NAME, "xyz", KEY_TEXT], KEY_TEXT, "me.info line 2", "32 hex digits"),
        ([NAME, "00" * 15, KEY_TEXT], KEY_TEXT, "me.info line 2", "32 hex digits"),
        ([NAME, "0 " * 16, KEY_TEXT], KEY_TEXT, "me.info line 2", "32 hex digits"),
        ([NAME, CLIENT_ID.hex()], KEY_TEXT, "me.info line 3", "missing private key"),
        ([NAME, CLIENT_ID.hex(), "not base64!"], KEY_TEXT, "me.info line 3", "not valid Base64"),
        ([NAME, CLIENT_ID.hex(), KEY_TEXT[:-20]], KEY_TEXT, "me.info line 3", ""),
        (
            [NAME, CLIENT_ID.hex(), base64.b64encode(b"garbage").decode()],
            KEY_TEXT,
            "me.info line 3",
            "damaged",
        ),
        ([NAME, CLIENT_ID.hex(), KEY_TEXT], "%%%", "priv.key line 1", "not valid Base64"),
        ([NAME, CLIENT_ID.hex(), KEY_TEXT], "", "priv.key line 1", "missing private key"),
        (
            [NAME, CLIENT_ID.hex(), KEY_TEXT],
            OTHER_KEY_TEXT,
            "priv.key line 1",
            "differs from the one in me.info line 3",
        ),
    ],
)
def test_damaged_me_info_or_priv_key(work, data, run_client, lines, priv_key, where, message):
    write_me_info(work, lines, priv_key)
    with pytest.raises(ConfigError) as caught:
        load_identity(work)
    assert str(caught.value).startswith(f"{where}: ")
    assert message in str(caught.value)
    write_transfer_info(work, "127.0.0.1:1", NAME, data.name)
    result = run_client()
    assert result.code == ExitCode.CONFIG
    assert f"error: {where}: " in result.err


def test_unwritable_folder_is_a_config_error(work, monkeypatch):
    def fail(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(config.tempfile, "mkstemp", fail)
    with pytest.raises(ConfigError, match="priv.key: cannot write: Permission denied"):
        save_identity(work, Identity(NAME, CLIENT_ID, KEY))


# -- --name beside a registered identity (issue 24, point 8) ----------------------


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connecting is refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_registered_identity_needs_no_name(work, data, run_client):
    write_me_info(work, [NAME, CLIENT_ID.hex(), KEY_TEXT])
    result = run_client("--server", f"127.0.0.1:{closed_port()}", str(data))
    assert result.code == ExitCode.NETWORK, result.err  # past the configuration, to the network
    assert "transfer.info" not in result.err
    settings = load_settings(work, server="h:1", files=(data,), stored_name=lambda _: (NAME, work))
    assert settings.name == NAME


def test_a_name_other_than_the_registered_one_is_refused(work, data, run_client):
    write_me_info(work, [NAME, CLIENT_ID.hex(), KEY_TEXT])
    result = run_client("--server", f"127.0.0.1:{closed_port()}", "--name", "other", str(data))
    assert result.code == ExitCode.CONFIG
    [line] = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: --name: '{work / 'me.info'}' is the client {NAME!r},"
                           " not 'other':"), line
    assert "--config-dir" in line
    same = run_client("--server", f"127.0.0.1:{closed_port()}", "--name", NAME, str(data))
    assert same.code == ExitCode.NETWORK, same.err


def test_a_refused_name_names_the_me_info_of_the_per_user_folder(tmp_path, data, monkeypatch,
                                                                  capsys):
    # The identity is not in the working folder: the refusal says where it is.
    port = closed_port()
    folder = user_folder(ServerAddress("127.0.0.1", port))
    folder.mkdir(parents=True)
    write_me_info(folder, [NAME, CLIENT_ID.hex(), KEY_TEXT])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code = main(["--server", f"127.0.0.1:{port}", "--name", "other", str(data)])
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == ExitCode.CONFIG
    assert f"'{folder / 'me.info'}' is the client {NAME!r}, not 'other'" in line, line
    assert "this folder" not in line


def test_transfer_info_name_beside_another_registered_one_warns_and_uses_it(work, data, caplog):
    write_transfer_info(work, "h:1", "other", "data.bin")
    settings = load_settings(work, stored_name=lambda _: (NAME, work))
    assert settings.name == NAME
    assert f"names 'other' but me.info holds the client {NAME!r}" in caplog.text
