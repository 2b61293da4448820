"""The per-user identity folder, the list of registrations and sent.info
(client/locations.py, client/history.py; issue 14, points 6 and 8)."""

from __future__ import annotations

import stat

from client import history
from client.__main__ import build_parser
from client.config import ServerAddress
from client.history import record_sent, sent_names
from client.locations import (
    folders_of,
    identity_folder,
    remember_registration,
    server_folder_name,
    user_folder,
)

SERVER = ServerAddress("Drop.Example", 1256)
CLIENT_ID = bytes(range(16))


def test_server_folder_names_are_plain_file_names():
    assert server_folder_name(SERVER) == "drop.example_1256"
    assert server_folder_name(ServerAddress("::1", 1256)) == "__1_1256"


def test_user_folder_follows_xdg_config_home_else_dot_config(tmp_path, monkeypatch):
    assert user_folder(SERVER, {"XDG_CONFIG_HOME": str(tmp_path)}) == (
        tmp_path / "cipherdrop" / "drop.example_1256"
    )
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_folder(SERVER, {"XDG_CONFIG_HOME": ""}) == (
        tmp_path / "home" / ".config" / "cipherdrop" / "drop.example_1256"
    )


def test_identity_folder_precedence(tmp_path):
    environ = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    work = tmp_path / "work"
    work.mkdir()
    per_user = user_folder(SERVER, environ)
    assert identity_folder(work, SERVER, explicit=False, environ=environ) == work
    per_user.mkdir(parents=True)
    (per_user / "me.info").write_text("alice\n")
    assert identity_folder(work, SERVER, explicit=False, environ=environ) == per_user
    assert identity_folder(work, SERVER, explicit=True, environ=environ) == work
    (work / "me.info").write_text("alice\n")
    assert identity_folder(work, SERVER, explicit=False, environ=environ) == work


def test_registrations_list_keeps_live_folders_only(tmp_path):
    environ = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    folders = [tmp_path / name for name in ("one", "two")]
    for folder in folders:
        folder.mkdir()
        (folder / "me.info").write_text("alice\n")
        remember_registration(SERVER, "alice", folder, environ)
    assert folders_of(SERVER, "alice", environ) == folders
    assert folders_of(SERVER, "bob", environ) == []
    assert folders_of(ServerAddress("other", 1), "alice", environ) == []
    (folders[0] / "me.info").unlink()
    assert folders_of(SERVER, "alice", environ) == [folders[1]]
    listing = tmp_path / "xdg" / "cipherdrop" / "folders.info"
    assert stat.S_IMODE(listing.stat().st_mode) == 0o600
    listing.write_text(listing.read_text() + "not json\n")
    assert folders_of(SERVER, "alice", environ) == [folders[1]]


def test_sent_names_belong_to_one_client_id_and_are_capped(tmp_path, monkeypatch):
    record_sent(tmp_path, CLIENT_ID, [b"a.txt", b"photos/\xff.jpg"])
    assert sent_names(tmp_path, CLIENT_ID) == {b"a.txt", b"photos/\xff.jpg"}
    assert sent_names(tmp_path, bytes(16)) == set()
    monkeypatch.setattr(history, "MAX_NAMES", 2)
    record_sent(tmp_path, CLIENT_ID, [b"b.txt"])
    assert sent_names(tmp_path, CLIENT_ID) == {b"photos/\xff.jpg", b"b.txt"}
    record_sent(tmp_path, bytes(16), [b"c.txt"])  # a new registration starts afresh
    assert sent_names(tmp_path, bytes(16)) == {b"c.txt"}
    assert sent_names(tmp_path, CLIENT_ID) == set()


def test_help_states_the_identity_precedence_and_the_new_flags():
    text = build_parser().format_help()
    for part in ("-r, --recursive", "--flat", "--rename-duplicates", "XDG_CONFIG_HOME",
                 "chmod 600", "first match wins"):
        assert part in text, part
