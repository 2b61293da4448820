"""A clean stop (issue 14, point 3): SIGTERM drains uploads in progress, then cuts what is left."""

from __future__ import annotations

import os
import re
import signal
import socket
import time

from helpers import HOST, CrcOk, FileReceived, file_packets, make_identity
from protocol import Acknowledged

#: Far longer than any step of these tests: reaching it would be a failure.
LONG_DRAIN = "60"
WAIT = 10.0


def still_running(server, seconds=0.5) -> bool:
    time.sleep(seconds)
    return server.process.poll() is None


def refused(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=2).close()
    except OSError:
        return True
    return False


def test_sigterm_lets_an_upload_finish_and_closes_idle_connections(server_factory):
    server = server_factory("--drain-timeout", LONG_DRAIN)
    data = os.urandom(5000)
    with server.client() as idle, server.client() as busy:
        make_identity(idle)
        identity = make_identity(busy)
        packets = file_packets(identity, "drained.bin", data, packet_size=1024)
        busy.send(packets[0])
        time.sleep(0.2)
        server.process.send_signal(signal.SIGTERM)
        server.wait_log("stop asked: draining 2 connection")
        assert idle.closed_within(WAIT)  # it held nothing
        assert refused(server.port)  # no new connections
        assert still_running(server)  # the upload is waited for
        for packet in packets[1:]:
            busy.send(packet)
        answer = busy.receive()
        assert isinstance(answer, FileReceived)
        assert isinstance(busy.request(CrcOk(client_id=identity.client_id, file_name="drained.bin")),
                          Acknowledged)
    assert server.process.wait(WAIT) == 0
    log = server.log()
    assert "drained in" in log and "cut off" not in log and "Traceback" not in log
    stored = server.data_dir / "received_files" / identity.client_id.hex() / "drained.bin"
    assert stored.read_bytes() == data


def test_drain_timeout_cuts_a_stalled_upload_and_logs_it(server_factory):
    server = server_factory("--drain-timeout", "1")
    with server.client() as client:
        identity = make_identity(client)
        client.send(file_packets(identity, "stalled.bin", os.urandom(5000))[0])
        time.sleep(0.2)
        assert server.stop() == 0
    log = server.log()
    assert "drain timeout (1 s): cutting off 1 connection(s)" in log
    [line] = [line for line in log.splitlines() if "cut off by the stop" in line]
    assert f"receiving 'stalled.bin' for client {identity.client_id.hex()}" in line
    assert "127.0.0.1:" in line
    # the discard line names the address and the client too
    assert re.search(rf"127\.0\.0\.1: upload of 'stalled.bin' for client {identity.client_id.hex()}"
                     r" discarded", log), log
    assert list((server.data_dir / "received_files" / identity.client_id.hex()).iterdir()) == []


def test_a_second_signal_stops_at_once(server_factory):
    server = server_factory("--drain-timeout", LONG_DRAIN)
    with server.client() as client:
        identity = make_identity(client)
        client.send(file_packets(identity, "stalled.bin", os.urandom(5000))[0])
        time.sleep(0.2)
        server.process.send_signal(signal.SIGTERM)
        server.wait_log("stop asked: draining")
        assert still_running(server)
        started = time.monotonic()
        assert server.stop(signal.SIGINT) == 0
        assert time.monotonic() - started < float(LONG_DRAIN) / 2
    assert "Traceback" not in server.log()


def test_no_connection_stops_without_waiting(server_factory):
    server = server_factory("--drain-timeout", LONG_DRAIN)
    assert server.stop() == 0
    assert "drained in" in server.log()

