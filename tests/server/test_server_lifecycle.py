"""Running ``python -m server``: port.info, the port in use, signals, restart.

Start-up faults (docs/HOSTILE.md G4) and kill -9 (G3) are in tests/hostile/test_g_faults.py.
"""

from __future__ import annotations

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
from protocol import Acknowledged, CrcOk, FileReceived, GeneralError, Register, RegistrationFailed
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
        # the AES key issued before the restart still works (same address, in time) ...
        answer = upload(client, identity, "old-key.bin", b"sent under the old key")
        assert isinstance(answer, FileReceived)
        assert isinstance(client.request(CrcOk(client_id=identity.client_id, file_name="old-key.bin")), Acknowledged)
        # ... but a verdict speaks only of an upload completed under it since the start
        assert isinstance(client.request(CrcOk(client_id=identity.client_id, file_name="keep.bin")), GeneralError)
        reconnect(client, identity)
        answer = upload(client, identity, "new.bin", b"after restart")
        assert isinstance(answer, FileReceived)
        assert isinstance(client.request(Register(client_id=ANY_ID, name=identity.name)), RegistrationFailed)
    with sqlite3.connect(data_dir / "defensive.db") as db:
        files = sorted(db.execute("SELECT FileName, Verified FROM files").fetchall())
    assert files == [("keep.bin", 1), ("new.bin", 0), ("old-key.bin", 1)]
    assert (data_dir / "received_files" / identity.client_id.hex() / "keep.bin").read_bytes() == data
