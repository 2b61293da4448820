"""The client as a person runs it (``python -m client`` in a folder) against the
project's real server (``python -m server`` in a subprocess: the shared
``server`` fixture of tests/conftest.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from client_fakes import write_transfer_info
from helpers import free_port
from helpers import server_env as environment

from client.__main__ import ExitCode
from protocol import cksum

RUN_TIMEOUT = 120
NAME = "alice"
MB = 1_000_000
#: Peak RSS allowed to a client sending 50 MB; flat, so the bound of any size (48 MiB).
MAX_CLIENT_RSS_KIB = 48 * 1024


def address(server) -> str:
    host, port = server.address
    return f"{host}:{port}"


def received(server, client_id_hex: str) -> Path:
    return server.data_dir / "received_files" / client_id_hex


def run(folder: Path, *args: str, timeout: str = "10") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "client", "--timeout", timeout, *args],
        cwd=folder,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def new_user(tmp_path: Path, server_address: str, name: str = NAME, *, file_name: str = "notes.txt",
             size: int = 10_000, folder: str = "user") -> Path:
    """A folder holding transfer.info and the file it names."""
    home = tmp_path / folder
    home.mkdir()
    (home / file_name).write_bytes(os.urandom(size))
    write_transfer_info(home, server_address, name, file_name)
    return home


def client_id(home: Path) -> str:
    return (home / "me.info").read_text().splitlines()[1]


def stored(server, home: Path, file_name: str) -> bytes:
    return (received(server, client_id(home)) / file_name).read_bytes()


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == ExitCode.OK, result.stderr
    assert "Traceback" not in result.stderr


def test_first_run_then_second_run_reconnects(server, tmp_path):
    home = new_user(tmp_path, address(server))
    first = run(home, "--verbose")
    assert_ok(first)
    assert "-> 825" in first.stderr and "-> 826" in first.stderr
    assert stored(server, home, "notes.txt") == (home / "notes.txt").read_bytes()
    identity = (home / "me.info").read_text()

    (home / "notes.txt").write_bytes(b"second version")
    second = run(home, "--verbose")
    assert_ok(second)
    assert "-> 827" in second.stderr and "-> 825" not in second.stderr
    assert (home / "me.info").read_text() == identity
    assert stored(server, home, "notes.txt") == b"second version"


def test_in_process_with_flags_only(server, tmp_path, run_client, work):
    """main() in this process, no transfer.info: --server, --name and files."""
    data = tmp_path / "report.pdf"
    data.write_bytes(os.urandom(123_456))
    result = run_client("--server", address(server), "--name", "carol", str(data))
    assert result.code == ExitCode.OK, result.err
    assert stored(server, work, "report.pdf") == data.read_bytes()
    result = run_client("--server", address(server), "--name", "carol", str(data))
    assert result.code == ExitCode.OK, result.err


def test_several_files_in_one_session(server, tmp_path):
    home = new_user(tmp_path, address(server))
    names = ["empty.bin", "block.bin", "odd.bin", "multi.bin"]
    sizes = [0, 16, 1001, 300_000]
    for name, size in zip(names, sizes):
        (home / name).write_bytes(os.urandom(size))
    result = run(home, "--packet-size", "4096", *names)
    assert_ok(result)
    for name in names:
        assert stored(server, home, name) == (home / name).read_bytes()


#: Runs its arguments and prints their peak RSS: from a small parent, since
#: Linux keeps the high-water mark of the memory a child had before execve
#: (pytest's, if pytest forked the client itself).
PEAK_RSS_LAUNCHER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_fifty_megabytes_in_flat_memory(server, tmp_path):
    home = new_user(tmp_path, address(server), size=50 * MB, file_name="big.bin")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_LAUNCHER, sys.executable, "-m", "client", "--quiet"],
        cwd=home,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert_ok(result)
    assert time.monotonic() - started < 60
    data = (home / "big.bin").read_bytes()
    assert cksum(stored(server, home, "big.bin")) == cksum(data)
    # ru_maxrss is KiB on Linux. The interpreter and its imports take about
    # 32 MiB; one copy of the file alone would add 48.
    assert int(result.stdout) < MAX_CLIENT_RSS_KIB


def test_name_with_spaces_and_non_ascii_letters(server, tmp_path):
    name = "Rapport d'été – ünïcødé ñ.txt"
    home = new_user(tmp_path, address(server), file_name=name)
    result = run(home)
    assert_ok(result)
    assert stored(server, home, name) == (home / name).read_bytes()


def test_taken_name(server, tmp_path):
    first = new_user(tmp_path, address(server), folder="first")
    assert_ok(run(first))
    second = new_user(tmp_path, address(server), folder="second")
    result = run(second)
    assert result.returncode == ExitCode.REGISTRATION_REFUSED
    assert "taken" in result.stderr and "Traceback" not in result.stderr
    assert not (second / "me.info").exists()


def test_forgotten_client_registers_again(server, tmp_path):
    """me.info for a client the server never saw: 827 → 1606 → 825 …"""
    home = new_user(tmp_path, address(server), name="bob")
    assert_ok(run(home))
    lines = (home / "me.info").read_text().splitlines()
    lines[1] = "ab" * 16
    (home / "me.info").write_text("\n".join(lines) + "\n")
    result = run(home, "--verbose")
    # The server keeps bob's key, so registering bob again is refused (1601);
    # under a new name the same me.info registers afresh.
    assert "-> 827" in result.stderr and "-> 825" in result.stderr
    assert result.returncode == ExitCode.REGISTRATION_REFUSED, result.stderr
    lines[0] = "bob2"
    (home / "me.info").write_text("\n".join(lines) + "\n")
    write_transfer_info(home, address(server), "bob2", "notes.txt")
    result = run(home, "--verbose")
    assert_ok(result)
    assert "registering again" in result.stderr
    assert client_id(home) != "ab" * 16


@pytest.mark.parametrize(
    "text, where",
    [
        ("", "transfer.info line 1"),
        ("{addr}\n", "transfer.info line 2"),
        ("localhost:70000\nalice\nnotes.txt\n", "transfer.info line 1"),
        ("{addr}\n" + "n" * 101 + "\nnotes.txt\n", "transfer.info line 2"),
        ("{addr}\nalice\n", "transfer.info line 3"),
        ("{addr}\nalice\nmissing.txt\n", "transfer.info line 3"),
    ],
)
def test_config_errors(server, tmp_path, text, where):
    home = new_user(tmp_path, address(server))
    (home / "transfer.info").write_text(text.format(addr=address(server)))
    result = run(home)
    assert result.returncode == ExitCode.CONFIG
    assert result.stderr.startswith(f"error: {where}: ")
    assert "Traceback" not in result.stderr


def test_damaged_me_info(server, tmp_path):
    home = new_user(tmp_path, address(server))
    assert_ok(run(home))
    lines = (home / "me.info").read_text().splitlines()
    (home / "me.info").write_text(f"{lines[0]}\n{lines[1]}\n{lines[2][:40]}\n")
    result = run(home)
    assert result.returncode == ExitCode.CONFIG
    assert "me.info line 3" in result.stderr


def test_no_server(tmp_path):
    home = new_user(tmp_path, f"127.0.0.1:{free_port()}")
    result = run(home)
    assert result.returncode == ExitCode.NETWORK
    assert "connection refused" in result.stderr and "Traceback" not in result.stderr


def _start_and_wait_for_upload(home: Path, timeout: str = "5") -> subprocess.Popen:
    process = subprocess.Popen(
        # --verbose: the line that says a file starts is a detail of normal output.
        [sys.executable, "-m", "client", "--verbose", "--timeout", timeout],
        cwd=home,
        env=environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stderr:
        if line.startswith("sending "):
            return process
    raise AssertionError("the client never started sending")


def _sparse_user(tmp_path: Path, address: str) -> Path:
    """A user whose file is 1 GiB of zeros that take no disk: slow enough to interrupt."""
    home = new_user(tmp_path, address, size=0, file_name="huge.bin")
    with (home / "huge.bin").open("wb") as handle:
        handle.truncate(1 << 30)
    return home


def test_server_killed_mid_upload(server, tmp_path):
    home = _sparse_user(tmp_path, address(server))
    process = _start_and_wait_for_upload(home)
    time.sleep(0.2)
    server.kill()
    err = process.stderr.read()
    assert process.wait(RUN_TIMEOUT) == ExitCode.NETWORK, err
    assert "upload of 'huge.bin'" in err and "Traceback" not in err


def test_server_that_stops_answering(server, tmp_path):
    home = _sparse_user(tmp_path, address(server))
    process = _start_and_wait_for_upload(home, timeout="1.5")
    server.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        err = process.stderr.read()
        assert process.wait(RUN_TIMEOUT) == ExitCode.NETWORK, err
        assert time.monotonic() - started < 30
        assert "1.5 s" in err and "Traceback" not in err
    finally:
        server.process.send_signal(signal.SIGCONT)
