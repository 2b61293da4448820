"""docs/HOSTILE.md E: file names and paths, against the real server.

The server never joins a wire name to a path: each name becomes one plain
file name inside received_files/<client>/ (server/storage/files.py,
stored_name), and the database keeps the name as sent (decision 3).

What cannot be tested on this Linux machine (E3): whether Windows itself
would open a device (CON, NUL.txt, COM1) or an alternate data stream
(a:stream), or drop a trailing dot or space. The tests check instead that
every name the server stores is one Windows accepts as a plain file name
(no reserved device stem, no ':' or other forbidden character, no trailing
dot or space), which is what keeps the server safe there.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from helpers import file_packets, make_identity, packet_bytes, raw_header, upload
from hostile_helpers import Guard, client_dir, db_rows, temp_files
from protocol import (
    Acknowledged,
    CrcAbort,
    CrcOk,
    FileReceived,
    GeneralError,
)
from protocol.codes import RequestCode
from protocol.wire import FILE_PACKET_FIELDS_SIZE, REQUEST_HEADER_SIZE

_WINDOWS_FORBIDDEN = set('<>:"/\\|?*') | {chr(c) for c in range(32)}
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{dev}{n}" for dev in ("COM", "LPT") for n in "123456789¹²³"
}


def windows_safe(name: str) -> bool:
    """Whether Windows takes this as a plain file name in a folder."""
    return (
        name not in ("", ".", "..")
        and not any(char in _WINDOWS_FORBIDDEN for char in name)
        and not name.endswith((".", " "))
        and name.split(".")[0].rstrip(" ").upper() not in _WINDOWS_DEVICES
        and len(name.encode("utf-8")) <= 255
    )


def _wire_name(value) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _upload_each(server, names: list[bytes]) -> tuple:
    """Upload one file per name; check what lands where; return the identity and contents."""
    root = (server.data_dir / "received_files").resolve()
    contents = {}
    with server.client() as client:
        identity = make_identity(client)
        for index, name in enumerate(names):
            data = f"content {index} ".encode() * 10
            answer = upload(client, identity, name, data)
            assert isinstance(answer, FileReceived), name
            assert answer.file_name.text == name  # echoed as sent
            contents[name] = data
        # and the CRC requests find them by the same names
        for name in names:
            assert isinstance(client.request(CrcOk(client_id=identity.client_id, file_name=name)), Acknowledged)
        assert isinstance(client.request(CrcAbort(client_id=identity.client_id, file_name=names[0])), Acknowledged)
    folder = client_dir(server, identity.client_id)
    stored = list(folder.iterdir())
    assert len(stored) == len(names)
    for path in stored:  # one plain file per name, right in the client's folder
        assert path.is_file() and not path.is_symlink()
        assert path.resolve().parent == folder.resolve()
        assert str(path.resolve()).startswith(str(root) + os.sep)
    for value, path_name in db_rows(server, "SELECT FileName, PathName FROM files WHERE ID = ?", identity.client_id):
        name = _wire_name(value)  # the database keeps the name as sent
        assert name in contents
        assert (server.data_dir / path_name).read_bytes() == contents[name]
        assert windows_safe(Path(path_name).name), path_name
    assert temp_files(server) == []
    return identity, folder


def _system_files() -> dict[str, str]:
    files = {}
    for path in ("/etc/passwd", "/etc/hosts"):
        try:
            files[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError:
            pass
    return files


# -- E1: paths ------------------------------------------------------------------------------------

PATH_NAMES = [
    "../../etc/passwd", "..", ".", "/etc/passwd", "C:\\Windows\\win.ini", "\\\\host\\share\\x",
    "..\\..\\x.txt", "a/b/c.txt", "./.", "../", "received_files/../../escape", ".tmp-123",
    "~/.ssh/authorized_keys", "%2e%2e%2fx",
]


def test_e1_path_names_stay_in_the_client_folder(server):
    guard = Guard(server)
    before = _system_files()
    _upload_each(server, [n.encode() for n in PATH_NAMES])
    assert _system_files() == before
    for escaped in (server.data_dir / "etc", server.data_dir.parent / "etc", server.data_dir / "a",
                    server.data_dir / "escape", server.data_dir.parent / "escape"):
        assert not escaped.exists(), escaped
    guard.check()


# -- E2: empty, unterminated, control and non-ASCII names ------------------------------------------


@pytest.mark.parametrize("field", [bytes(255), b"x" * 255], ids=["all-nuls", "no-nul"])
def test_e2_empty_or_unterminated_name(server, field):
    guard = Guard(server)
    with server.client() as client:
        identity = make_identity(client)
        for code in (RequestCode.CRC_OK, RequestCode.CRC_RETRY, RequestCode.CRC_ABORT):
            client.send_raw(raw_header(code, 255, identity.client_id) + field)
            assert isinstance(client.receive(), GeneralError)
        good = file_packets(identity, "ok", b"abc")[0]
        raw = packet_bytes(good)
        name_at = REQUEST_HEADER_SIZE + FILE_PACKET_FIELDS_SIZE - 255
        client.send_raw(raw[:name_at] + field + raw[name_at + 255 :])
        assert isinstance(client.receive(), GeneralError)  # and its content skipped
        assert isinstance(client.request(good), FileReceived)  # the stream is still in step
    assert db_rows(server, "SELECT FileName FROM files WHERE ID = ?", identity.client_id) == [("ok",)]
    guard.check()


def test_e2_control_characters_and_non_ascii_bytes(server):
    guard = Guard(server)
    names = [
        b"tab\there", b"new\nline", b"bell\x07", b"esc\x1b[31m", b"del\x7f",
        "café.txt".encode(), b"\xe9t\xe9.txt", b"\x80\xff\xfe", "日本語.txt".encode(),
        "emoji-\U0001F600".encode(), b"bad-utf8-\xc3(",
        b"x" * 254, "é".encode() * 127, b"%" * 254, b"\x01" * 254,  # longest, escaped past 255 bytes
    ]
    identity, folder = _upload_each(server, names)
    stored = {p.name for p in folder.iterdir()}
    assert "café.txt" in stored and "日本語.txt" in stored  # UTF-8 where it decodes
    assert "%E9t%E9.txt" in stored  # escaped where it does not
    assert all(c.isprintable() for name in stored for c in name)
    guard.check()


# -- E3: Windows-special names ---------------------------------------------------------------------

WINDOWS_NAMES = [
    "CON", "con", "NUL.txt", "nul.tar.gz", "COM1", "LPT9.log", "AUX ", "PRN.", "name.", "name ",
    "name. . ", "a:stream", "file.txt:Zone.Identifier:$DATA", "a|b", "what?", "star*", "<>", 'q"uote',
    "COM¹",
]


def test_e3_windows_special_names_get_safe_names(server):
    guard = Guard(server)
    identity, folder = _upload_each(server, [n.encode() for n in WINDOWS_NAMES])
    stored = sorted(p.name for p in folder.iterdir())
    assert all(windows_safe(name) for name in stored), stored
    # case-insensitive file systems (Windows, macOS) must not merge two of them either
    assert len({name.lower() for name in stored}) == len(stored)
    guard.check()


# -- E4: a planted symlink ---------------------------------------------------------------------------


def test_e4_symlink_at_the_final_name_is_replaced_not_followed(server, tmp_path):
    guard = Guard(server)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"untouched")
    with server.client() as client:
        identity = make_identity(client)
        assert isinstance(upload(client, identity, "first", b"makes the folder"), FileReceived)
        folder = client_dir(server, identity.client_id)
        (folder / "target.txt").symlink_to(outside)
        assert isinstance(upload(client, identity, "target.txt", b"new"), FileReceived)
    assert outside.read_bytes() == b"untouched"
    assert not (folder / "target.txt").is_symlink()
    assert (folder / "target.txt").read_bytes() == b"new"
    guard.check(allowed=(outside,))


def test_e4_symlink_planted_as_the_client_folder(server, tmp_path):
    guard = Guard(server)
    outside = tmp_path / "outside"
    outside.mkdir()
    with server.client() as client:
        identity = make_identity(client)
        folder = client_dir(server, identity.client_id)
        folder.symlink_to(outside, target_is_directory=True)  # before the client's first file
        assert isinstance(upload(client, identity, "x.txt", b"data"), GeneralError)
        assert list(outside.iterdir()) == []
        folder.unlink()
        assert isinstance(upload(client, identity, "x.txt", b"data"), FileReceived)
    assert "is not a folder" in server.log()
    assert list(outside.iterdir()) == []
    guard.check(allowed=(outside,))


def test_e4_symlink_planted_at_the_temp_name(faults, tmp_path):
    """Temp names are random; a local attacker who guesses one still cannot redirect the write.

    The injection (inject/sitecustomize.py) stands in for the guess: it makes
    the next temp name known, and the test plants a symlink there first.
    """
    server = faults.start()
    guard = Guard(server)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"untouched")
    with server.client() as client:
        identity = make_identity(client)
        assert isinstance(upload(client, identity, "first", b"makes the folder"), FileReceived)
        folder = client_dir(server, identity.client_id)
        planted = folder / ".tmp-guessed"
        planted.symlink_to(outside)
        faults.arm(temp_name="guessed")
        assert isinstance(upload(client, identity, "x.txt", b"redirected?"), GeneralError)
        faults.disarm()
        assert outside.read_bytes() == b"untouched"  # O_EXCL | O_NOFOLLOW: never followed
        assert planted.is_symlink()
        planted.unlink()
        assert isinstance(upload(client, identity, "x.txt", b"data"), FileReceived)
    assert "cannot create a temp file" in server.log()
    guard.check(allowed=(outside,))
