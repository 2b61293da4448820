"""A real HAProxy in front of a real server: its PROXY headers name the client (issue 27, point 2).

HAProxy listens on 127.0.0.1 and forwards to the server with ``send-proxy-v2``
(and ``send-proxy``, v1), with its own health checks. Clients connect to
HAProxy from other 127.0.0.x addresses: the server must see those, never
HAProxy's 127.0.0.1. Skipped where HAProxy is not installed; CI needs it.
"""

from __future__ import annotations

import re
import time

import pytest
from backends.haproxy import (
    CHECK_FALLS,
    CHECK_INTERVAL_MS,
    INSTALL_LINE,
    PROXY_V2,
    Backend,
    HAProxy,
    haproxy_binary,
)
from helpers import HOST, RawClient, free_port, make_identity, unique_name, upload

from protocol import FileReceived, GeneralError, Register, Registered

pytestmark = [
    pytest.mark.needed_in_ci,
    pytest.mark.skipif(haproxy_binary() is None, reason=f"HAProxy is not installed ({INSTALL_LINE})"),
]
CLIENT = "127.0.0.23"
OTHER_CLIENT = "127.0.0.24"
#: Health checks waited for: a refused one would take the server out (``fall``) well
#: within them.
CHECKS_WAITED = 4 * CHECK_FALLS
FILE_DATA = b"through haproxy" * 40


@pytest.fixture
def haproxy_factory(tmp_path):
    started: list[HAProxy] = []

    def start(server_port: int, send_proxy: str) -> tuple[str, int]:
        balancer = HAProxy(tmp_path / f"haproxy-{len(started)}", (HOST, free_port(HOST)),
                           [Backend("node1", HOST, server_port)], send_proxy)
        started.append(balancer)
        return balancer.listen

    yield start
    for balancer in started:
        balancer.stop()


@pytest.mark.parametrize("send_proxy", [PROXY_V2, "send-proxy"])
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
