"""A real HAProxy in front of a real server: its PROXY headers name the client (issue 27, point 2).

HAProxy listens on 127.0.0.1 and forwards to the server with ``send-proxy-v2``
(and ``send-proxy``, v1), with its own health checks. Clients connect to
HAProxy from other 127.0.0.x addresses: the server must see those, never
HAProxy's 127.0.0.1. Skipped where HAProxy is not installed; CI needs it.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time

import pytest

from helpers import HOST, IO_TIMEOUT, POLL_INTERVAL, RawClient, make_identity, unique_name, upload
from protocol import FileReceived, GeneralError, Register, Registered

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
MISSING = "HAProxy is not installed (apt-get install haproxy)"
pytestmark = [
    pytest.mark.needed_in_ci,
    pytest.mark.skipif(not shutil.which(HAPROXY), reason=MISSING),
]
CLIENT = "127.0.0.23"
OTHER_CLIENT = "127.0.0.24"
#: HAProxy's health checks, often enough that a refused one would take the
#: server out (fall 3) well within the wait below.
CHECK_INTERVAL_MS = 100
CHECKS_WAITED = 8
FILE_DATA = b"through haproxy" * 40
CONFIG = """\
global
    maxconn 64
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend drop
    bind {host}:{port}
    default_backend nodes
backend nodes
    server node1 {host}:{server_port} {send_proxy} check inter {check}ms fall 3 rise 2
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


@pytest.fixture
def haproxy_factory(tmp_path):
    started: list[subprocess.Popen] = []

    def start(server_port: int, send_proxy: str) -> tuple[str, int]:
        port = free_port()
        config = tmp_path / f"haproxy-{port}.cfg"
        config.write_text(CONFIG.format(host=HOST, port=port, server_port=server_port,
                                        send_proxy=send_proxy, check=CHECK_INTERVAL_MS))
        process = subprocess.Popen([HAPROXY, "-db", "-f", str(config)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append(process)
        deadline = time.monotonic() + IO_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"haproxy exited: {process.stderr.read().decode()}")
            try:
                socket.create_connection((HOST, port), timeout=IO_TIMEOUT).close()
                return HOST, port
            except OSError:
                time.sleep(POLL_INTERVAL)
        raise RuntimeError("haproxy did not listen")

    yield start
    for process in started:
        process.terminate()
        process.wait(IO_TIMEOUT)


@pytest.mark.parametrize("send_proxy", ["send-proxy-v2", "send-proxy"])
def test_clients_behind_haproxy_are_known_by_their_own_addresses(
    server_factory, haproxy_factory, send_proxy
):
    server = server_factory("--proxy-protocol-from", HOST)
    balancer = haproxy_factory(server.port, send_proxy)
    # Its health checks (with the header, LOCAL in v2) keep the node up meanwhile.
    time.sleep(CHECKS_WAITED * CHECK_INTERVAL_MS / 1000)
    with RawClient(balancer, source=CLIENT) as client:
        own_port = client.sock.getsockname()[1]
        identity = make_identity(client)
        assert isinstance(upload(client, identity, "f.bin", FILE_DATA), FileReceived)
    server.wait_log(rf"{re.escape(CLIENT)}:{own_port} 828 \S+ -> 1603")
    with RawClient(balancer, source=OTHER_CLIENT) as stranger:
        assert isinstance(upload(stranger, identity, "g.bin", FILE_DATA), GeneralError)
    server.wait_log(rf"{re.escape(OTHER_CLIENT)}:\d+ 828 .*key is bound to another address")
    with RawClient(balancer, source=CLIENT) as again:
        assert isinstance(again.request(Register(client_id=bytes(16), name=unique_name())),
                          Registered)
    assert not re.search(rf"{re.escape(HOST)}:\d+ (82|90)\d ", server.log())
    assert "PROXY protocol sender" not in server.log()  # no check was refused
