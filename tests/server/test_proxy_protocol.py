"""``--proxy-protocol-from``: a real server behind hand-written PROXY headers (issue 27, point 2).

The test client plays the balancer: it connects from 127.0.0.1 (listed) and
writes the header itself, naming another 127.0.0.x address. That address is
then the client's for key binding, per-address limits and the log; the
balancer's own address is none of these. A listed address without a valid
header is closed with one line; a header from an address not listed is
protocol garbage, and its address is never used.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import socket
import subprocess
import sys
import time

import pytest

import proxy_headers as ph
from helpers import HOST, LOAD_FLAGS, RawClient, make_identity, server_env, unique_name, upload
from protocol import (
    ClientConnection,
    FileReceived,
    GeneralError,
    Register,
    Registered,
    RegistrationFailed,
)
from server.options import address_networks
from server.peer import Peer
from server.proxied import NO_PROXIES, ProxySources

PROXY = HOST
#: The clients the headers name (never the test's own address).
CLIENT = "127.0.0.7"
OTHER_CLIENT = "127.0.0.8"
IPV6_CLIENT = "2001:db8::7"
CLIENT_PORT = 40007
#: A pause between the small writes of a header, so that they reach the server apart.
WRITE_GAP = 0.002
#: The time a test waits for something it asserts does not happen.
QUIET = 0.5
#: A short first-request deadline: a header that never completes runs out of it.
SHORT_DEADLINE = "1"
#: One 828 packet: a per-request connection (first request 828) carries one.
FILE_DATA = b"behind a balancer" * 50


@pytest.fixture
def proxied(server_factory):
    """A server that takes PROXY headers from the test's own address."""
    return server_factory("--proxy-protocol-from", f"{PROXY}/32")


def behind(server, header: bytes, *, piece: int | None = None) -> RawClient:
    """A connection from the 'balancer' that sent ``header`` (in ``piece``-byte writes)."""
    client = server.client()
    client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if piece is None:
        client.send_raw(header)
        return client
    for start in range(0, len(header), piece):
        client.send_raw(header[start:start + piece])
        time.sleep(WRITE_GAP)
    return client


def test_the_flag_takes_addresses_and_networks():
    sources = ProxySources(address_networks("127.0.0.1, 127.1.0.0/16,::1"))
    assert sources.networks == (ipaddress.ip_network("127.0.0.1/32"),
                                ipaddress.ip_network("127.1.0.0/16"), ipaddress.ip_network("::1/128"))
    assert sources.send_headers(Peer("127.1.255.3", 1))
    assert sources.send_headers(Peer("::ffff:127.0.0.1", 1))  # as a dual-stack listener says it
    assert not sources.send_headers(Peer("127.2.0.1", 1))
    assert not sources.send_headers(Peer("127.0.0.2", 1))
    assert not NO_PROXIES.send_headers(Peer("127.0.0.1", 1))


@pytest.mark.parametrize("value, why", [
    ("127.1.2.3/8", "has host bits set"),
    ("127.0.0.1,", "''"),
    ("proxy.example", "'proxy.example' is no address or CIDR network"),
])
def test_a_bad_flag_value_is_refused(value, why):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(why)):
        address_networks(value)


def test_a_bad_flag_value_is_one_line_at_start(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "server", "--data-dir", str(tmp_path),
         "--proxy-protocol-from", "127.1.2.3/8"],
        env=server_env(), capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "python -m server: error: argument --proxy-protocol-from: '127.1.2.3/8' is no address"
        " or CIDR network (127.1.2.3/8 has host bits set); see python -m server --help"
    ]
    assert list(tmp_path.iterdir()) == []


def test_a_v2_client_registers_uploads_and_is_logged_under_the_headers_address(proxied):
    with behind(proxied, ph.v2_tcp4(CLIENT, CLIENT_PORT), piece=1) as client:
        identity = make_identity(client)
        assert isinstance(upload(client, identity, "f.bin", FILE_DATA), FileReceived)
    found = proxied.wait_log(rf"{re.escape(CLIENT)}:{CLIENT_PORT} connected through"
                             rf" {re.escape(PROXY)}:\d+")
    assert found
    proxied.wait_log(rf"{re.escape(CLIENT)}:{CLIENT_PORT} 825 ")
    # The key is bound to the header's address: another header's client may not use it.
    with behind(proxied, ph.v2_tcp4(OTHER_CLIENT, CLIENT_PORT)) as stranger:
        assert isinstance(upload(stranger, identity, "g.bin", FILE_DATA), GeneralError)
    proxied.wait_log(rf"{re.escape(OTHER_CLIENT)}:{CLIENT_PORT} 828 .*key is bound to another")
    with behind(proxied, ph.v2_tcp4(CLIENT, CLIENT_PORT + 1)) as again:
        assert isinstance(upload(again, identity, "h.bin", FILE_DATA), FileReceived)


def test_the_balancers_own_address_is_not_bound_either(proxied):
    """A connection of the balancer's own (no header) is refused, not served as 127.0.0.1."""
    with behind(proxied, ph.v2_tcp4(CLIENT, CLIENT_PORT)) as client:
        identity = make_identity(client)
    with behind(proxied, ph.v2_local()) as own:
        assert isinstance(upload(own, identity, "f.bin", FILE_DATA), GeneralError)


@pytest.mark.parametrize("header, named", [
    (ph.v1("TCP4", CLIENT, PROXY, CLIENT_PORT, 1256), f"{CLIENT}:{CLIENT_PORT}"),
    (ph.v1("TCP6", IPV6_CLIENT, "::1", CLIENT_PORT, 1256), f"[{IPV6_CLIENT}]:{CLIENT_PORT}"),
    (ph.v2_tcp6(IPV6_CLIENT, CLIENT_PORT), f"[{IPV6_CLIENT}]:{CLIENT_PORT}"),
    (ph.v2_tcp4(CLIENT, CLIENT_PORT, tlvs=ph.tlv(ph.TLV_AUTHORITY, b"drop.example")
                + ph.tlv(ph.TLV_NOOP, bytes(500))), f"{CLIENT}:{CLIENT_PORT}"),
], ids=["v1 TCP4", "v1 TCP6", "v2 TCP6", "v2 with TLVs"])
def test_every_form_of_header_names_the_client_even_in_small_writes(proxied, header, named):
    with behind(proxied, header, piece=3) as client:
        name = unique_name()
        assert isinstance(client.request(Register(client_id=bytes(16), name=name)), Registered)
    proxied.wait_log(rf"{re.escape(named)} connected through {re.escape(PROXY)}:\d+")
    proxied.wait_log(rf"{re.escape(named)} 825 .*{name}")


@pytest.mark.parametrize("header", [ph.v2_local(), b"PROXY UNKNOWN\r\n"], ids=["v2 LOCAL", "v1 UNKNOWN"])
def test_a_header_without_a_client_keeps_the_connections_own_address(proxied, header):
    with behind(proxied, header) as client:
        own_port = client.sock.getsockname()[1]
        name = unique_name()
        assert isinstance(client.request(Register(client_id=bytes(16), name=name)), Registered)
    proxied.wait_log(rf"{re.escape(PROXY)}:{own_port} connected \(")
    proxied.wait_log(rf"{re.escape(PROXY)}:{own_port} 825 .*{name}")


def test_the_header_and_the_first_request_may_arrive_in_one_write(proxied):
    name = unique_name()
    request = ClientConnection().send(Register(client_id=bytes(16), name=name))
    with behind(proxied, ph.v2_tcp4(CLIENT, CLIENT_PORT) + request) as client:
        assert isinstance(client.receive(), Registered)
    proxied.wait_log(rf"{re.escape(CLIENT)}:{CLIENT_PORT} 825 .*{name}")


BROKEN = {
    "no header": b"\0" * 16 + b"\x03\x39\x03" + b"\0" * 4,
    "wrong signature": ph.SIGNATURE[:-1] + b"\x0b" + ph.v2_local()[len(ph.SIGNATURE):],
    "oversized v2": ph.SIGNATURE + bytes([ph.V2_PROXY, ph.TCP4]) + b"\xff\xff",
    "v2 unknown command": ph.v2(0x2F, ph.TCP4, ph.inet_body(CLIENT, PROXY, 1, 2)),
    "v1 garbage with an escape": b"PROXY TCP4 \x1b[2J 127.0.0.1 1 2\r\n",
    "v1 LF alone": ph.v1("TCP4", CLIENT, PROXY, 1, 2)[:-2] + b"\n",
}


@pytest.mark.parametrize("name", BROKEN)
def test_a_listed_address_without_a_valid_header_is_closed_unanswered_with_one_line(proxied, name):
    with behind(proxied, BROKEN[name]) as client:
        assert client.closed_within(5)
    found = proxied.wait_log(r"(\S+) \(a PROXY protocol sender\) closed: no valid PROXY header: (.*)")
    assert found.group(1).startswith(f"{PROXY}:")
    assert "\x1b" not in proxied.log()
    assert "connected" not in proxied.log()  # never a channel
    assert len(re.findall("PROXY protocol sender", proxied.log())) == 1


def test_a_truncated_header_runs_out_of_the_first_requests_deadline(server_factory):
    server = server_factory("--proxy-protocol-from", PROXY, "--message-deadline", SHORT_DEADLINE)
    header = ph.v2_tcp4(CLIENT, CLIENT_PORT)
    with behind(server, header[:-1], piece=4) as client:
        assert client.closed_within(10)
    server.wait_log(rf"{re.escape(PROXY)}:\d+ \(a PROXY protocol sender\) closed:"
                    r" timed out: no PROXY header \(in 27 B")


def test_the_first_requests_deadline_counts_from_the_connection_not_from_its_header(
    server_factory,
):
    deadline = 3.0
    server = server_factory("--proxy-protocol-from", PROXY, "--message-deadline", str(deadline))
    client = server.client()
    time.sleep(deadline * 2 / 3)  # the header comes late, but within the deadline
    client.send_raw(ph.v2_tcp4(CLIENT, CLIENT_PORT))
    header_sent = time.monotonic()
    with client:
        # Counted from the header, the deadline would leave the connection open a whole
        # deadline more; counted from the connection, a third of it.
        assert client.closed_within(deadline)
    assert time.monotonic() - header_sent < deadline
    server.wait_log(rf"{re.escape(CLIENT)}:{CLIENT_PORT} .*timed out")


@pytest.mark.parametrize("header", [
    ph.v2_tcp4(CLIENT, CLIENT_PORT), ph.v1("TCP4", CLIENT, PROXY, CLIENT_PORT, 1256),
], ids=["v2", "v1"])
def test_a_header_from_an_address_not_listed_is_refused_and_never_trusted(server_factory, header):
    server = server_factory("--proxy-protocol-from", "127.0.0.2")
    with behind(server, header) as client:
        own_port = client.sock.getsockname()[1]
        client.send(Register(client_id=bytes(16), name=unique_name()))
        assert isinstance(client.receive(), GeneralError)
        assert client.closed_within(5)
    server.wait_log(rf"{re.escape(PROXY)}:{own_port} - - -> 1607 refused .*: a PROXY protocol"
                    r" header, from an address not in --proxy-protocol-from")
    server.wait_log(rf"{re.escape(PROXY)}:{own_port} - closed: protocol error")
    assert CLIENT not in server.log()


def test_a_connection_from_elsewhere_is_served_as_before(server_factory):
    server = server_factory("--proxy-protocol-from", "127.0.0.2")
    with server.client() as client:
        assert isinstance(client.request(Register(client_id=bytes(16), name=unique_name())),
                          Registered)


def test_per_address_limits_count_the_headers_address_not_the_balancers(server_factory):
    flags = [flag for flag in LOAD_FLAGS]
    flags[flags.index("--max-connections-per-address") + 1] = "1"
    server = server_factory("--proxy-protocol-from", PROXY, *flags, load_flags=())
    with behind(server, ph.v2_tcp4(CLIENT, CLIENT_PORT)) as first:
        assert isinstance(first.request(Register(client_id=bytes(16), name=unique_name())),
                          Registered)
        with behind(server, ph.v2_tcp4(CLIENT, CLIENT_PORT + 1)) as second:
            assert second.closed_within(5)
        server.wait_log(rf"{re.escape(CLIENT)}:{CLIENT_PORT + 1} refused: 1 connections open"
                        r" from this address")
        # Another client behind the same balancer is its own address.
        with behind(server, ph.v2_tcp4(OTHER_CLIENT, CLIENT_PORT)) as other:
            assert isinstance(other.request(Register(client_id=bytes(16), name=unique_name())),
                              Registered)


def test_the_registration_rate_counts_the_headers_address(server_factory):
    flags = [flag for flag in LOAD_FLAGS]
    flags[flags.index("--registrations-per-minute") + 1] = "1"
    server = server_factory("--proxy-protocol-from", PROXY, *flags, load_flags=())
    answers = []
    for client, port in ((CLIENT, CLIENT_PORT), (CLIENT, CLIENT_PORT + 1), (OTHER_CLIENT, CLIENT_PORT)):
        with behind(server, ph.v2_tcp4(client, port)) as connection:
            answers.append(type(connection.request(
                Register(client_id=bytes(16), name=unique_name()))))
    assert answers == [Registered, RegistrationFailed, Registered]


def test_a_balancers_plain_health_check_is_silent(proxied):
    """A TCP check that connects and closes is counted, not logged at INFO."""
    with behind(proxied, b""):
        pass
    with behind(proxied, ph.v2_tcp4(CLIENT, CLIENT_PORT)) as client:
        assert isinstance(client.request(Register(client_id=bytes(16), name=unique_name())),
                          Registered)
    assert "PROXY protocol sender" not in proxied.log()
    proxied.wait_log(r"1 connections closed without sending a byte")  # counted, as a channel's


def test_a_header_cut_by_the_peer_is_one_line(proxied):
    with behind(proxied, ph.v1("TCP4", CLIENT, PROXY, CLIENT_PORT, 1256)[:20]):
        pass
    proxied.wait_log(rf"{re.escape(PROXY)}:\d+ \(a PROXY protocol sender\) closed: closed before"
                     r" its PROXY header \(in 20 B")


def test_a_connection_awaiting_its_header_holds_one_of_max_connections(server_factory):
    server = server_factory("--proxy-protocol-from", PROXY, "--max-connections", "1")
    with behind(server, b"PROXY "):
        with behind(server, ph.v2_tcp4(CLIENT, CLIENT_PORT)) as second:
            assert second.closed_within(5)
        server.wait_log(rf"{re.escape(PROXY)}:\d+ refused: 1 connections open")


def test_a_stop_closes_a_connection_awaiting_its_header(proxied):
    with behind(proxied, b"PROXY TCP4 127.0.0.7"):
        # Accepted in order: once a later connection is served, this one is waiting.
        with behind(proxied, ph.v2_tcp4(CLIENT, CLIENT_PORT)) as later:
            assert isinstance(later.request(Register(client_id=bytes(16), name=unique_name())),
                              Registered)
        assert proxied.stop() == 0
    proxied.wait_log(rf"{re.escape(PROXY)}:\d+ \(a PROXY protocol sender\) closed:"
                     r" server stopping")
