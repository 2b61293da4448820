"""Running ``python -m server``: port.info, start-up faults, signals, restart, kill -9."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from helpers import (
    ANY_ID,
    file_packets,
    make_identity,
    reconnect,
    server_env,
    start_server,
    upload,
)
from protocol import Acknowledged, CrcOk, FileReceived, Register, RegistrationFailed, cksum
from server.limits import Limits

DEFAULT_PORT = 1256


def run_server(data_dir, *args, timeout=15):
    return subprocess.run(
        [sys.executable, "-m", "server", "--host", "127.0.0.1", "--data-dir", str(data_dir), *args],
        env=server_env(), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def test_help_explains_every_flag():
    result = subprocess.run(
        [sys.executable, "-m", "server", "--help"], env=server_env(), capture_output=True, text=True
    )
    assert result.returncode == 0
    flags = ["--port", "--host", "--data-dir", "--log-level"] + [
        "--" + name.replace("_", "-") for name in Limits.__dataclass_fields__
    ]
    for flag in flags:
        assert flag in result.stdout, flag


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("content", [None, "", "abc", "70000", "0", "12 34", "\xff\xfe"])
def test_port_info_missing_or_invalid_warns_and_uses_1256(tmp_path, content):
    if not _port_free(DEFAULT_PORT):
        pytest.skip("port 1256 is busy on this machine")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if content is not None:
        (data_dir / "port.info").write_bytes(content.encode("latin-1"))
    server = start_server(data_dir, port=None)
    try:
        log = server.log()
        assert server.port == DEFAULT_PORT
        assert "WARNING" in log and "port.info" in log and "1256" in log
        assert "Traceback" not in log
    finally:
        assert server.stop() == 0


def test_port_info_is_used(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "port.info").write_text(f"{port}\n")
    server = start_server(data_dir, port=None)
    try:
        assert server.port == port and "WARNING" not in server.log()
    finally:
        server.stop()


@pytest.mark.parametrize(
    "content",
    [b"this is not a database at all" * 100, b"SQLite format 3\0" + os.urandom(8192)],
    ids=["text", "sqlite-header-garbage-pages"],
)
def test_corrupt_database_stops_with_a_message_and_is_untouched(tmp_path, content):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    db = data_dir / "defensive.db"
    db.write_bytes(content)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    result = run_server(data_dir, "--port", "0")
    assert result.returncode != 0
    assert "defensive.db" in result.stderr and "Traceback" not in result.stderr
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in data_dir.iterdir()) == ["defensive.db"]


def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = run_server(tmp_path, "--port", str(busy.getsockname()[1]))
    assert result.returncode != 0 and "cannot listen" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_with_connections_open(server, sig):
    with server.client() as client:
        identity = make_identity(client)
        packets = file_packets(identity, "half.bin", os.urandom(5000))
        client.send(packets[0])
        time.sleep(0.2)
        assert server.stop(sig) == 0
    log = server.log()
    assert "stopped" in log and "Traceback" not in log
    folder = server.data_dir / "received_files" / identity.client_id.hex()
    assert list(folder.iterdir()) == []  # the unfinished upload's temp file is gone
    with sqlite3.connect(server.data_dir / "defensive.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_restart_with_the_same_folder_knows_clients_keys_and_files(server_factory, tmp_path):
    data_dir = tmp_path / "data"
    first = server_factory(data_dir=data_dir)
    data = os.urandom(20_000)
    with first.client() as client:
        identity = make_identity(client)
        upload(client, identity, "keep.bin", data)
        client.request(CrcOk(client_id=identity.client_id, file_name="keep.bin"))
    assert first.stop() == 0
    second = server_factory(data_dir=data_dir)
    assert "1 client(s), 1 file(s)" in second.log()
    with second.client() as client:
        # the AES key issued before the restart still works (same address, in time)
        assert isinstance(client.request(CrcOk(client_id=identity.client_id, file_name="keep.bin")), Acknowledged)
        reconnect(client, identity)
        answer = upload(client, identity, "new.bin", b"after restart")
        assert isinstance(answer, FileReceived)
        assert isinstance(client.request(Register(client_id=ANY_ID, name=identity.name)), RegistrationFailed)
    with sqlite3.connect(data_dir / "defensive.db") as db:
        files = sorted(db.execute("SELECT FileName, Verified FROM files").fetchall())
    assert files == [("keep.bin", 1), ("new.bin", 0)]
    assert (data_dir / "received_files" / identity.client_id.hex() / "keep.bin").read_bytes() == data


def test_kill_9_during_upload_leaves_no_partial_file_and_a_consistent_db(server_factory, tmp_path):
    data_dir = tmp_path / "data"
    server = server_factory(data_dir=data_dir)
    verified = os.urandom(10_000)
    with server.client() as client:
        identity = make_identity(client)
        upload(client, identity, "doc.bin", verified)
        client.request(CrcOk(client_id=identity.client_id, file_name="doc.bin"))
        packets = file_packets(identity, "doc.bin", os.urandom(2_000_000), 65536)
        for packet in packets[:10]:
            client.send(packet)
        folder = data_dir / "received_files" / identity.client_id.hex()
        deadline = time.monotonic() + 5
        while not any(p.name.startswith(".tmp-") for p in folder.iterdir()):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        server.kill()
    assert (folder / "doc.bin").read_bytes() == verified
    restarted = server_factory(data_dir=data_dir)
    assert "temp file(s) removed" in restarted.log()
    assert sorted(p.name for p in folder.iterdir()) == ["doc.bin"]
    with sqlite3.connect(data_dir / "defensive.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT FileName, Verified FROM files").fetchall() == [("doc.bin", 1)]
    with restarted.client() as client:
        reconnect(client, identity)
        data = os.urandom(3000)
        answer = upload(client, identity, "doc.bin", data)
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
    with sqlite3.connect(data_dir / "defensive.db") as db:
        assert db.execute("SELECT COUNT(*), Verified FROM files").fetchone() == (1, 0)


def test_start_up_repairs_rows_without_files_and_files_without_rows(server_factory, tmp_path):
    data_dir = tmp_path / "data"
    server = server_factory(data_dir=data_dir)
    with server.client() as client:
        identity = make_identity(client)
        upload(client, identity, "a.bin", b"a")
        upload(client, identity, "b.bin", b"b")
    server.stop()
    folder = data_dir / "received_files" / identity.client_id.hex()
    (folder / "a.bin").unlink()
    (folder / "stray.bin").write_bytes(b"?")
    (folder / ".tmp-deadbeef").write_bytes(b"partial")
    restarted = server_factory(data_dir=data_dir)
    with sqlite3.connect(data_dir / "defensive.db") as db:
        assert db.execute("SELECT FileName FROM files").fetchall() == [("b.bin",)]
    assert sorted(p.name for p in folder.iterdir()) == ["b.bin"]
    assert "no database row" in restarted.log()
    quarantined = list((data_dir / "received_files" / ".orphaned").rglob("stray.bin*"))
    assert len(quarantined) == 1


def test_unusable_received_files_or_missing_data_dir_is_a_clear_error(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "received_files").write_text("not a folder")
    result = run_server(data_dir, "--port", "0")
    assert result.returncode != 0 and "received_files" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_server(tmp_path / "missing", "--port", "0")
    assert result.returncode != 0 and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_database_and_folder_are_created(server):
    assert (server.data_dir / "defensive.db").is_file()
    assert (server.data_dir / "received_files").is_dir()
