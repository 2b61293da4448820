"""The floor under a send's rate (client/send_rate.py): a server that reads a
little now and then cannot stretch a send past the time-out's windows."""

from __future__ import annotations

import select
import socket
import time

import pytest

from client.__main__ import ExitCode
from client.send_rate import SendRate
from client.session import Session
from client.upload import MAX_RETRIES
from client_fakes import (
    NAME,
    FakeServer,
    Keys,
    accept_upload,
    handshake_reconnect,
    handshake_register,
    make_file,
    write_transfer_info,
)

#: The time-out of the runs against a trickling server, and the floor they set.
TIMEOUT = 1.0
MIN_RATE = 128 * 1024
#: The trickling server's reads: this many bytes every TRICKLE_PAUSE × the
#: time-out (32 KiB/s: each read lets the client send more, each window of
#: the time-out stays under the floor).
TRICKLE_READ = 8 * 1024
TRICKLE_PAUSE = 0.25
#: Both ends' socket buffers, fixed (loopback's autotuned ones would take
#: megabytes before the first wait).
SOCKET_BUFFER = 16 * 1024
#: The file: about 60 time-outs at the trickle's rate.
FILE_SIZE = 2 * 1024 * 1024
TRICKLE_RATE = TRICKLE_READ / (TRICKLE_PAUSE * TIMEOUT)
TRICKLE_TIME = FILE_SIZE / TRICKLE_RATE
#: A slow but honest server: the same reads every HONEST_PAUSE seconds, its
#: file lasting several windows of HONEST_TIMEOUT, and a floor at a quarter of
#: its rate (HONEST_MARGIN: on a busy machine its pauses stretch; the buffers it
#: has yet to read when the file is sent take well under the time-out, the
#: deadline of its answer).
HONEST_TIMEOUT = 2.0
HONEST_PAUSE = 0.1
HONEST_FILE_SIZE = 512 * 1024
HONEST_MARGIN = 4
HONEST_FLOOR = TRICKLE_READ / HONEST_PAUSE / HONEST_MARGIN


def test_a_window_under_the_floor_gives_its_rate():
    rate = SendRate(floor=100, window=2.0)
    rate.begin(0.0)
    assert rate.sent(150, 1.0) is None  # the window is not over
    assert rate.sent(0, 2.0) == pytest.approx(75)


def test_a_window_at_the_floor_passes_and_starts_the_next():
    rate = SendRate(floor=100, window=2.0)
    rate.begin(0.0)
    assert rate.sent(200, 2.0) is None
    assert rate.time_left(2.0) == pytest.approx(2.0)
    assert rate.sent(10, 3.5) is None
    assert rate.sent(0, 4.0) == pytest.approx(5)  # the new window counts its own bytes


def test_only_time_spent_sending_counts():
    """A wait for an answer between two sends is not sending time."""
    rate = SendRate(floor=100, window=2.0)
    rate.begin(0.0)
    assert rate.sent(100, 1.0) is None
    rate.end(1.0)
    rate.begin(60.0)  # the answer took a minute
    assert rate.time_left(60.0) == pytest.approx(1.0)
    assert rate.sent(100, 61.0) is None


def test_no_floor_weighs_nothing():
    rate = SendRate(floor=0, window=1.0)
    rate.begin(0.0)
    assert rate.time_left(5.0) == float("inf")
    assert rate.sent(0, 100.0) is None


class _Trickled:
    """A server's socket read TRICKLE_READ bytes every ``pause`` seconds."""

    def __init__(self, sock: socket.socket, pause: float) -> None:
        self._sock = sock
        self._pause = pause

    def recv(self, size: int) -> bytes:
        time.sleep(self._pause)
        return self._sock.recv(min(size, TRICKLE_READ))

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)

    def close(self) -> None:
        self._sock.close()


def _trickle(server) -> None:
    """Register, then trickle every attempt at the file (one connection each)
    until the client gives up: the first and its MAX_RETRIES retries."""
    keys = Keys()
    peer = server.accept()
    handshake_register(peer, keys)
    _trickle_until_given_up(server, peer)
    for _ in range(MAX_RETRIES):
        peer = server.accept()
        handshake_reconnect(peer, keys)
        _trickle_until_given_up(server, peer)


def _trickle_once_then_serve(server) -> None:
    """Register and trickle the file until the client gives up; then, on its
    next connection, read the file at full speed and confirm it."""
    keys = Keys()
    peer = server.accept()
    handshake_register(peer, keys)
    _trickle_until_given_up(server, peer)
    peer = server.accept()
    handshake_reconnect(peer, keys)
    accept_upload(peer, keys)


def _trickle_until_given_up(server, peer) -> None:
    """Read TRICKLE_READ bytes every TRICKLE_PAUSE × the time-out until the
    client gives up: it closes, or comes back on a new connection (or the
    whole file's trickle is over)."""
    limit = time.monotonic() + TRICKLE_TIME
    try:
        while time.monotonic() < limit:
            if not peer.sock.recv(TRICKLE_READ):
                return
            back, _, _ = select.select([server.listener], [], [], TRICKLE_PAUSE * TIMEOUT)
            if back:
                return
    except OSError:  # the client gave up and closed: what the test wants
        pass


@pytest.fixture
def small_send_buffer(monkeypatch):
    """The client's sockets with a fixed SOCKET_BUFFER send buffer."""
    connect = Session._connect

    def with_small_buffer(self: Session) -> socket.socket:
        sock = connect(self)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        return sock

    monkeypatch.setattr(Session, "_connect", with_small_buffer)


def _run_with_small_buffers(
    script, work, run_client, size: int, min_rate: float, timeout: float
):
    data = make_file(work, size=size)
    with FakeServer(script) as server:
        server.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        write_transfer_info(work, server.address, NAME, data.name)
        return run_client(
            "--timeout", f"{timeout:g}", "--min-rate", f"{min_rate:g}", "--strict"
        )


def _slow_but_honest(server) -> None:
    """The trickling server's reads, to the end of the file, which it then confirms."""
    peer = server.accept()
    keys = Keys()
    handshake_register(peer, keys)
    peer.sock = _Trickled(peer.sock, HONEST_PAUSE)  # type: ignore[assignment]
    accept_upload(peer, keys)


def test_a_server_that_reads_slowly_above_the_floor_is_not_cut_off(
    work, run_client, small_send_buffer
):
    """Reads at twice the floor, with a pause between each: every window passes."""
    result = _run_with_small_buffers(
        _slow_but_honest, work, run_client, HONEST_FILE_SIZE, HONEST_FLOOR, HONEST_TIMEOUT
    )
    assert result.code == ExitCode.OK, result.err
    assert "reads too slowly" not in result.err


def test_a_server_that_trickles_its_reading_is_bound_by_the_floor(
    work, run_client, small_send_buffer
):
    """Each read makes progress, so the time-out alone never ends the send; the
    floor ends each attempt within a few time-outs, not after the whole file's
    trickle, and the attempts are the file's retries (one budget)."""
    attempts = 1 + MAX_RETRIES
    started = time.monotonic()
    result = _run_with_small_buffers(
        _trickle, work, run_client, FILE_SIZE, MIN_RATE, TIMEOUT
    )
    elapsed = time.monotonic() - started
    assert result.code == ExitCode.NETWORK, result.err
    assert "reads too slowly" in result.err and f"under the floor of {MIN_RATE}" in result.err
    assert result.err.count("under the floor") == attempts, result.err
    assert f"retry {MAX_RETRIES} of {MAX_RETRIES}" in result.err
    print(f"ended after {elapsed / TIMEOUT:.1f} time-outs; the trickle takes {TRICKLE_TIME:.0f} s")
    assert elapsed < attempts * 6 * TIMEOUT < TRICKLE_TIME


def test_a_send_under_the_floor_is_retried_under_the_files_budget(
    work, run_client, small_send_buffer
):
    """A send the floor ended is a failure like a close or an error reply: the
    file is sent again on a new connection, taking one of its retries."""
    result = _run_with_small_buffers(
        _trickle_once_then_serve, work, run_client, FILE_SIZE, MIN_RATE, TIMEOUT
    )
    assert result.code == ExitCode.OK, result.err
    assert "reads too slowly" in result.err
    assert f"retrying on a new connection (retry 1 of {MAX_RETRIES})" in result.err
