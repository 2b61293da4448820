"""Our client against our own server in trouble mid-upload (docs/CLIENT.md, "Fallbacks").

The server is killed, drained (SIGTERM) or runs out of disk while the client
streams a file. A close or a refusal of a server that went away names no
layout: the client says what happened, retries in the same layout, and never
switches layout ("refused the layout") against our server.

A proxy between the two holds the client's bytes once a file's upload is under
way, so that the trouble strikes in the middle of it, whatever the machine's
load.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from helpers import proxied_connections, server_env

RUN_TIMEOUT = 120
#: Client bytes let through on a connection before the proxy holds it: more
#: than a login (827), less than the file.
HOLD_AFTER = 3 * 1024 * 1024
FILE_SIZE = 8 * 1024 * 1024
SWITCHED = "refused the layout"
#: The client's exit codes (client.__main__.ExitCode).
EXIT_OK, EXIT_SERVER_ERROR, EXIT_NETWORK = 0, 1, 5


class HoldingProxy:
    """Forwards 127.0.0.1 connections to the server; holds the client's bytes
    on the first connection that carries more than ``HOLD_AFTER`` of them,
    until ``release``."""

    def __init__(self, server_address: tuple[str, int]) -> None:
        self._server = server_address
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.held = threading.Event()
        self._release = threading.Event()
        self._threads: list[threading.Thread] = []
        self._start(self._accept)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listener.getsockname()[1]}"

    def release(self) -> None:
        self._release.set()

    def close(self) -> None:
        self._release.set()
        self.listener.close()

    def _start(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        for client, server in proxied_connections(self.listener, self._server, timeout=5):
            self._start(self._pump, client, server, True)
            self._start(self._pump, server, client, False)

    def _pump(self, source: socket.socket, sink: socket.socket, holds: bool) -> None:
        passed = 0
        try:
            while data := source.recv(1 << 16):
                passed += len(data)
                if holds and passed > HOLD_AFTER and not self.held.is_set():
                    self.held.set()
                    self._release.wait(RUN_TIMEOUT)
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _client(folder: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "client", "--timeout", "10", "--packet-size", "65536", *args],
        cwd=folder, env=server_env(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _user(tmp_path: Path, address: str, *names: str) -> Path:
    folder = tmp_path / "user"
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(os.urandom(FILE_SIZE if name == "big.bin" else 1000))
    (folder / "transfer.info").write_text(f"{address}\nalice\n{names[0]}\n")
    return folder


def _run_through_trouble(folder: Path, proxy: HoldingProxy, trouble, *files: str):
    process = _client(folder, *files)
    try:
        assert proxy.held.wait(RUN_TIMEOUT), "the upload never got under way"
        trouble()
        proxy.release()
        _, err = process.communicate(timeout=RUN_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
        proxy.close()
    assert "Traceback" not in err
    return process.returncode, err


@pytest.mark.parametrize("trouble", ["killed", "drained"])
def test_a_server_that_goes_away_mid_upload_is_no_layout_refusal(server_factory, tmp_path, trouble):
    server = server_factory()
    proxy = HoldingProxy(server.address)
    folder = _user(tmp_path, proxy.address, "big.bin")
    act = server.kill if trouble == "killed" else server.stop
    code, err = _run_through_trouble(folder, proxy, act, "big.bin")
    assert code == EXIT_NETWORK, err
    assert "the server closed the connection during upload of 'big.bin'" in err
    assert SWITCHED not in err and "server responded with an error" not in err


def test_a_server_out_of_disk_mid_upload_is_no_layout_refusal(faults, tmp_path):
    server = faults.start("--min-free-disk", "0")
    proxy = HoldingProxy(server.address)
    folder = _user(tmp_path, proxy.address, "small.bin", "big.bin")

    def disk_full() -> None:
        faults.arm(write={"errno": errno.ENOSPC, "after": 65536})

    code, err = _run_through_trouble(folder, proxy, disk_full, "small.bin", "big.bin")
    # small.bin was verified; big.bin is refused (1607) on every attempt, in the same layout.
    assert code == 7, err
    assert "upload of 'big.bin' failed after 4 attempts" in err
    assert SWITCHED not in err
    faults.disarm()
    again = subprocess.run(
        [sys.executable, "-m", "client", "--timeout", "10", "--server",
         f"{server.address[0]}:{server.address[1]}", "big.bin"],
        cwd=folder, env=server_env(), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=RUN_TIMEOUT,
    )
    assert again.returncode == EXIT_OK, again.stderr
    assert "No space left on device" in server.log()
