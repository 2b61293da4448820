"""docs/HOSTILE.md A: framing and header, against the real server over loopback.

Every test ends with ``guard.check()``: the server lives, a bystander's rows
and files are unchanged, nothing was written outside received_files/, no
traceback was logged, and a fresh client completes a whole normal flow.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import threading
import time

import pytest

from helpers import (
    ANY_ID,
    file_packets,
    make_identity,
    packet_bytes,
    private_key,
    raw_header,
    unique_name,
)
import proxy_headers
from hostile_helpers import Guard, client_files, db_rows, file_count, proc_status, temp_files, temp_files_gone, wait_count
from timing_helpers import (
    HANG_TIMEOUT,
    TIMER_EARLY,
    load_bound,
    round_trip,
    timed,
    timer_bound,
    wait_until,
    within_load,
)
from protocol import (
    ClientConnection,
    ConnectionClosed,
    CrcOk,
    FileReceived,
    GeneralError,
    PublicKeyReceived,
    Register,
    Registered,
    SendPublicKey,
    cksum,
    crypto,
)
from protocol.codes import RequestCode
from protocol.wire import FILE_PACKET_FIELDS_SIZE, REQUEST_HEADER_SIZE, RESPONSE_HEADER_SIZE

MIB = 1024 * 1024
#: Seconds between a slowloris' bytes: its header would take 23 × this (some
#: 12 s), far past the 1.5 s deadline even when load delays the close.
TRICKLE_PAUSE = 0.5


class Trickle:
    """Sends ``data`` one byte per TRICKLE_PAUSE from a thread of its own, until stopped or
    the connection fails; ``sent`` holds the bytes that went."""

    def __init__(self, client, data: bytes) -> None:
        self.sent: list[int] = []
        self._stop = threading.Event()
        self._client, self._data = client, data
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        for byte in self._data:
            if self._stop.is_set():
                return
            try:
                self._client.send_raw(bytes([byte]))
            except OSError:
                return
            self.sent.append(byte)
            time.sleep(TRICKLE_PAUSE)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def replies_until_closed(client, timeout: float) -> list:
    """Every reply until the server closes; AssertionError if it does not in time."""
    replies = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            event = client.receive(max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            raise AssertionError(f"not closed within {timeout} s (replies {replies})") from None
        if isinstance(event, ConnectionClosed):
            return replies
        replies.append(event)


# -- A1: partial message, then EOF or a stall ----------------------------------------------


def test_a1_partial_header_then_eof(server):
    guard = Guard(server)
    with server.client() as client:
        client.send_raw(b"\0" * 10)
        client.sock.shutdown(socket.SHUT_WR)
        assert client.sock.recv(100) == b""  # dropped silently: no reply
    server.wait_log("closed: connection closed in the middle of a message")
    guard.check()


@pytest.mark.parametrize("part", ["825-payload", "828-fixed-part", "828-content"])
def test_a1_partial_payload_then_eof(server, part):
    guard = Guard(server)
    with server.client() as owner:
        identity = make_identity(owner)
    raw = packet_bytes(file_packets(identity, "a1.bin", os.urandom(300), 1024)[0])
    wire = {
        "825-payload": raw_header(RequestCode.REGISTER, 255) + unique_name().encode()[:10].ljust(100, b"\0"),
        "828-fixed-part": raw[:REQUEST_HEADER_SIZE + 100],  # header declares 267 + 320
        "828-content": raw[:REQUEST_HEADER_SIZE + FILE_PACKET_FIELDS_SIZE + 100],
    }[part]
    with server.client() as client:
        from helpers import reconnect

        reconnect(client, identity)  # one connection for the whole session
        client.send_raw(wire)
        time.sleep(0.1)
        client.sock.shutdown(socket.SHUT_WR)
        assert client.sock.recv(100) == b""
    server.wait_log("closed: connection closed in the middle of a message")
    wait_until(lambda: temp_files(server) == [], "the partial upload's temp file removed")
    assert client_files(server, identity.client_id) == []
    assert file_count(server, identity.client_id) == 0
    assert db_rows(server, "SELECT COUNT(*) FROM clients") == [(2,)]  # no partial 825 processed
    guard.check()


def test_a1_stall_mid_message_is_closed_at_the_deadline(server_factory):
    deadline = 1.0
    server = server_factory("--message-deadline", str(deadline))
    guard = Guard(server)
    baseline = round_trip(server)
    with server.client() as owner:
        identity = make_identity(owner)
    raw = packet_bytes(file_packets(identity, "a1.bin", os.urandom(3000), 4096)[0])
    stalls = [server.client() for _ in range(3)]
    try:
        stalls[0].send_raw(b"\0" * 10)  # part of a header
        stalls[1].send_raw(raw_header(RequestCode.REGISTER, 300) + b"x" * 100)  # 300 declared, 100 sent
        from helpers import reconnect

        reconnect(stalls[2], identity)
        stalls[2].send_raw(raw[: len(raw) // 2])  # inside an 828's content
        sent = time.monotonic()  # every deadline runs by now
        wait_until(lambda: len(temp_files(server)) == 1, "the 828's temp file")
        for client in stalls:
            assert replies_until_closed(client, deadline + HANG_TIMEOUT) in ([], [GeneralError()])
        assert time.monotonic() - sent <= timer_bound(deadline, baseline)
    finally:
        for client in stalls:
            client.close()
    wait_count(server, "timed out: message not completed in time", 3)
    assert temp_files_gone(server) and file_count(server, identity.client_id) == 0
    guard.check()


# -- A2: slowloris, silence ----------------------------------------------------------------


def test_a2_slowloris_is_cut_while_others_are_served(server_factory):
    deadline = 1.5
    server = server_factory("--message-deadline", str(deadline))
    guard = Guard(server)
    for _ in range(4):
        private_key()  # the test's RSA key pairs are made on first use: not in the timings
    with server.client() as fast:
        alone = timed(lambda: make_identity(fast))  # the baseline: no slowloris yet
    slow = server.client()
    header = raw_header(RequestCode.REGISTER, 255)
    trickle = Trickle(slow, header)
    try:
        wait_until(lambda: trickle.sent, "the slowloris started")
        started = time.monotonic()  # its deadline runs by now
        with server.client() as fast:
            assert within_load(timed(lambda: make_identity(fast)), alone)
        assert slow.closed_within(deadline + HANG_TIMEOUT)
        assert time.monotonic() - started <= timer_bound(deadline, alone)
        # at the deadline, not at the end of the trickle
        assert len(trickle.sent) < len(header), "closed only once the header was whole"
    finally:
        trickle.stop()
        slow.close()
    server.wait_log("timed out: message not completed in time")
    guard.check()


def test_a2_silent_connection_is_closed_at_the_deadline(server_factory):
    deadline = 1.0
    server = server_factory("--message-deadline", str(deadline))
    guard = Guard(server)
    baseline = round_trip(server)
    started = time.monotonic()  # before connecting: the server's timer starts later
    with server.client() as silent:
        assert replies_until_closed(silent, deadline + HANG_TIMEOUT) == []
        assert deadline - TIMER_EARLY <= time.monotonic() - started <= timer_bound(deadline, baseline)
    server.wait_log("timed out: no request")
    guard.check()


def test_a2_idle_between_messages_is_closed_after_the_idle_timeout(server_factory):
    idle = 1.0
    server = server_factory("--idle-timeout", str(idle))
    guard = Guard(server)
    baseline = round_trip(server)
    with server.client() as client:
        started = time.monotonic()  # before the request: the idle time starts after it
        client.request(Register(client_id=ANY_ID, name=unique_name()))
        assert client.closed_within(idle + HANG_TIMEOUT)
        assert idle - TIMER_EARLY <= time.monotonic() - started <= timer_bound(idle, baseline)
    server.wait_log("timed out: idle")
    guard.check()


def test_a2_slow_828_content_below_the_minimum_rate_is_cut(server_factory):
    deadline, rate = 1.0, 100_000
    server = server_factory("--message-deadline", str(deadline), "--min-content-rate", str(rate))
    guard = Guard(server)
    baseline = round_trip(server)
    with server.client() as client:
        identity = make_identity(client)
        raw = packet_bytes(file_packets(identity, "slow", os.urandom(500_000), 1_000_000)[0])
        started = time.monotonic()  # before the first byte: the deadline starts later
        client.send_raw(raw[:400])
        sent = 400
        for i in range(400, len(raw), 2000):  # ~20 kB/s at most, under the minimum rate: 25 s for all
            try:
                client.send_raw(raw[i : i + 2000])
            except OSError:
                break
            sent = i + 2000
            if client.closed_within(0.1):
                break
        assert client.closed_within(HANG_TIMEOUT)
    assert sent < len(raw), "not cut: the whole slow 828 was taken"
    # each byte buys 1/rate s: cut at the deadline those bytes extend, not later
    assert time.monotonic() - started <= timer_bound(deadline + sent / rate, baseline)
    server.wait_log("message not completed in time")
    wait_until(lambda: temp_files(server) == [], "the cut upload's temp file removed")
    guard.check()


# -- A3: impossible payload sizes ---------------------------------------------------------------


@pytest.mark.parametrize("code", [825, 826, 827, 900, 901, 902, 0, 829, 1600, 65535])
def test_a3_huge_payload_size(server, code):
    guard = Guard(server)
    pid = server.process.pid
    rss_before = proc_status(pid, "VmRSS")
    baseline = round_trip(server)
    with server.client() as client:
        client.send_raw(raw_header(code, 0xFFFFFFFF))  # and no payload at all
        # at once, without waiting for a body (the deadline is 30 s)
        assert replies_until_closed(client, load_bound(baseline)) == [GeneralError()]
    assert proc_status(pid, "VmRSS") - rss_before < 4 * MIB  # nothing allocated from the size
    assert "payload too large to skip, closing" in server.log()
    guard.check()


def test_a3_828_packet_over_the_content_limit(server_factory):
    server = server_factory("--max-content-size", "20000")
    guard = Guard(server)
    baseline = round_trip(server)
    for size in (FILE_PACKET_FIELDS_SIZE + 20000 + 65536 + 1, 0xFFFFFFFF):
        with server.client() as client:
            client.send_raw(raw_header(RequestCode.SEND_FILE, size))
            assert replies_until_closed(client, load_bound(baseline)) == [GeneralError()]  # at once
    assert "over the limit" in server.log()
    guard.check()


def test_a3_828_of_4_gib_is_streamed_not_buffered(server):
    """Under the default limits a 4 GiB 828 is legal (docs/PROTOCOL.md): streamed to disk."""
    guard = Guard(server)
    pid = server.process.pid
    with server.client() as client:
        identity = make_identity(client)
        size = 0xFFFFFFFF - FILE_PACKET_FIELDS_SIZE  # content of the largest payload
        orig = size - 17  # padded_size(orig) == size - 4: four bytes of zero fill at the end
        header = packet_bytes(file_packets(identity, "huge.bin", b"")[0])[:REQUEST_HEADER_SIZE + FILE_PACKET_FIELDS_SIZE]
        fields = bytearray(header)
        struct.pack_into("<I", fields, REQUEST_HEADER_SIZE - 4, 0xFFFFFFFF)  # payload_size
        struct.pack_into("<II", fields, REQUEST_HEADER_SIZE, crypto.padded_size(orig), orig)
        client.send_raw(bytes(fields))
        rss_before = proc_status(pid, "VmRSS")
        chunk = os.urandom(MIB)
        for _ in range(32):
            client.send_raw(chunk)
        wait_until(lambda: len(temp_files(server)) == 1, "the 828's temp file")  # on its way to disk
        time.sleep(0.3)
        assert proc_status(pid, "VmRSS") - rss_before < 8 * MIB
        assert client.nothing_within(0.1)
    server.wait_log("closed: peer closed")
    wait_until(lambda: temp_files(server) == [], "the temp file removed")  # dropped with the connection (D4)
    guard.check()


# -- A4: well framed but wrong ------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, size",
    [(825, 10), (826, 416), (827, 0), (900, 254), (901, 256), (902, 0), (828, 100),
     (0, 0), (829, 5), (903, 255), (1600, 16), (65535, 1)],
)
def test_a4_wrong_size_or_unknown_code(server, code, size):
    guard = Guard(server)
    with server.client() as client:
        # the declared bytes look like a whole request: they must be skipped, not parsed
        inner = ClientConnection().send(Register(client_id=ANY_ID, name=unique_name()))
        payload = (inner * (size // len(inner) + 1))[:size]
        client.send_raw(raw_header(code, size) + payload)
        assert isinstance(client.receive(), GeneralError)
        assert isinstance(client.request(Register(client_id=ANY_ID, name=unique_name())), Registered)
        assert client.nothing_within(0.2)
    assert db_rows(server, "SELECT COUNT(*) FROM clients") == [(2,)]
    guard.check()


def test_a4_six_errors_close_the_connection(server):
    guard = Guard(server)
    baseline = round_trip(server)
    with server.client() as client:
        for _ in range(5):
            client.send_raw(raw_header(829, 0))
            assert isinstance(client.receive(), GeneralError)
        client.send_raw(raw_header(829, 0) * 100)  # an unlimited error loop is cut at six
        assert replies_until_closed(client, load_bound(baseline)) == [GeneralError()]  # at once
    server.wait_log("closed: 6 errors")
    guard.check()


def test_a4_max_errors_flag(server_factory):
    server = server_factory("--max-errors", "2")
    guard = Guard(server)
    with server.client() as client:  # a baseline by hand: round_trip's 1607 would be the second error
        started = time.monotonic()
        assert isinstance(client.request(Register(client_id=ANY_ID, name=unique_name())), Registered)
        baseline = time.monotonic() - started
    with server.client() as client:
        client.send_raw(raw_header(829, 0) * 3)
        assert replies_until_closed(client, load_bound(baseline)) == [GeneralError(), GeneralError()]
    guard.check()


def test_a4_payload_too_large_to_skip_closes(server_factory):
    server = server_factory("--max-skip-payload", "100")
    guard = Guard(server)
    baseline = round_trip(server)
    with server.client() as client:
        client.send_raw(raw_header(826, 416))
        assert replies_until_closed(client, load_bound(baseline)) == [GeneralError()]  # at once
    guard.check()


# -- A5: coalesced and split requests -------------------------------------------------------------


def test_a5_825_and_826_in_one_segment_answered_in_order(server):
    guard = Guard(server)
    with server.client() as client:
        name = unique_name()
        first = client.request(Register(client_id=ANY_ID, name=name))
        key = private_key()
        conn = ClientConnection()
        segment = conn.send(Register(client_id=ANY_ID, name=unique_name())) + conn.send(
            SendPublicKey(client_id=first.client_id, name=name, public_key=crypto.export_public_key(key))
        ) + conn.send(Register(client_id=ANY_ID, name=unique_name()))
        client.sock.sendall(segment)  # one write, one segment on loopback
        answers = [client.receive() for _ in range(3)]
    assert [type(a) for a in answers] == [Registered, PublicKeyReceived, Registered]
    assert answers[1].client_id == first.client_id
    guard.check()


def test_a5_upload_in_one_byte_segments(server):
    guard = Guard(server)
    data = os.urandom(1500)
    with server.client() as client:
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        identity = make_identity(client)
        for packet in file_packets(identity, "split.bin", data, 1024):
            for byte in packet_bytes(packet):
                client.send_raw(bytes([byte]))
        answer = client.receive()
    assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
    guard.check()


# -- A6: not the protocol at all ------------------------------------------------------------------


def _client_hello() -> bytes:
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="example.org")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def test_a6_http_request(server_factory):
    server = server_factory("--message-deadline", "1")
    guard = Guard(server)
    with server.client() as client:
        client.send_raw(b"GET / HTTP/1.1\r\n\r\n")  # 18 bytes: not even a header
        assert replies_until_closed(client, 1 + HANG_TIMEOUT) == []  # the 1 s deadline closes it
    server.wait_log("timed out: message not completed in time")
    guard.check()


@pytest.mark.parametrize("junk", ["tls-client-hello", "64-kib-random"])
def test_a6_tls_hello_or_random_bytes(server_factory, junk):
    server = server_factory("--message-deadline", "1")
    guard = Guard(server)
    pid = server.process.pid
    rss_before = proc_status(pid, "VmRSS")
    data = _client_hello() if junk == "tls-client-hello" else os.urandom(65536)
    with server.client() as client:
        try:
            client.send_raw(data)
        except OSError:
            pass  # closed before all of it was taken
        replies = replies_until_closed(client, 1 + HANG_TIMEOUT)  # at the latest by the 1 s deadline
    # parsed as headers: unknown code or size → 1607 (and close, or skip and go on)
    assert all(isinstance(r, GeneralError) for r in replies) and len(replies) <= 6
    assert proc_status(pid, "VmRSS") - rss_before < 4 * MIB
    guard.check()


# -- A7: any version byte --------------------------------------------------------------------------


def _with_version(wire: bytes, version: int) -> bytes:
    return wire[:16] + bytes([version]) + wire[17:]


@pytest.mark.parametrize("version", [0, 255])
def test_a7_version_byte_0_or_255(server, version):
    guard = Guard(server)
    data = os.urandom(3000)
    with server.client() as client:
        conn = ClientConnection()

        def request(event):
            client.send_raw(_with_version(conn.send(event), version))
            head = client.sock.recv(RESPONSE_HEADER_SIZE, socket.MSG_PEEK | socket.MSG_WAITALL)
            assert head[0] == 3, head  # the reply carries version 3
            return client.receive()

        name = unique_name()
        registered = request(Register(client_id=ANY_ID, name=name))
        assert isinstance(registered, Registered)
        key = private_key()
        keyed = request(SendPublicKey(client_id=registered.client_id, name=name,
                                      public_key=crypto.export_public_key(key)))
        assert isinstance(keyed, PublicKeyReceived)
        from helpers import Identity

        identity = Identity(name, registered.client_id, key, crypto.decrypt_aes_key(key, keyed.encrypted_aes_key))
        packets = file_packets(identity, "v.bin", data, 1024)
        for packet in packets[:-1]:
            client.send_raw(_with_version(conn.send(packet), version))
        answer = request(packets[-1])
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
        assert type(request(CrcOk(client_id=identity.client_id, file_name="v.bin"))).__name__ == "Acknowledged"
    assert db_rows(server, "SELECT Verified FROM files WHERE ID = ?", identity.client_id) == [(1,)]
    guard.check()


# -- A8: PROXY protocol headers ----------------------------------------------------------------------

#: The balancer listed in --proxy-protocol-from, and an attacker that is not.
BALANCER = "127.0.0.3"
SPOOFER = "127.0.0.4"


def test_a8_a_header_from_an_unlisted_peer_is_refused_and_its_address_unused(server_factory):
    server = server_factory("--proxy-protocol-from", BALANCER)
    guard = Guard(server)
    victim = guard.identity
    # The header names the bystander's own address, 127.0.0.1, where its key is bound.
    spoof = proxy_headers.v2_tcp4("127.0.0.1", 40000)
    (packet,) = file_packets(victim, "bystander.bin", os.urandom(100))
    with server.client(source=SPOOFER) as client:
        client.send_raw(spoof + packet_bytes(packet))
        assert [type(r) for r in replies_until_closed(client, HANG_TIMEOUT)] == [GeneralError]
    server.wait_log(rf"{SPOOFER}:\d+ - - -> 1607 refused .*a PROXY protocol header, from an"
                    r" address not in --proxy-protocol-from")
    guard.check()


@pytest.mark.parametrize("opening", [
    b"",  # no header: the first request straight away
    proxy_headers.v1("TCP4", "127.0.0.1", BALANCER, 1, 2)[:-2] + b"\n",
    proxy_headers.SIGNATURE + bytes([proxy_headers.V2_PROXY, proxy_headers.TCP4]) + b"\xff\xff",
], ids=["no header", "broken v1", "oversized v2"])
def test_a8_a_listed_balancer_without_a_valid_header_is_closed_at_once(server_factory, opening):
    server = server_factory("--proxy-protocol-from", BALANCER)
    guard = Guard(server)
    register = ClientConnection().send(Register(client_id=ANY_ID, name=unique_name()))
    with server.client(source=BALANCER) as balancer:
        balancer.send_raw(opening + register)
        assert replies_until_closed(balancer, HANG_TIMEOUT) == []
    server.wait_log(rf"{BALANCER}:\d+ \(a PROXY protocol sender\) closed: no valid PROXY header")
    assert "825" not in server.log().split("PROXY protocol sender")[-1]
    guard.check()


def test_a8_a_dribbled_header_is_cut_at_the_deadline_while_others_are_served(server_factory):
    deadline = 1.5
    server = server_factory("--proxy-protocol-from", BALANCER, "--message-deadline", str(deadline))
    guard = Guard(server)
    with server.client() as fast:
        alone = timed(lambda: make_identity(fast))  # the baseline: nothing dribbles yet
    header = proxy_headers.v2_tcp4("127.0.0.9", 40000)
    slow = server.client(source=BALANCER)
    dribble = Trickle(slow, header)
    try:
        wait_until(lambda: dribble.sent, "the dribble started")
        with server.client() as fast:
            assert within_load(timed(lambda: make_identity(fast)), alone)
        assert slow.closed_within(deadline + HANG_TIMEOUT)
        assert len(dribble.sent) < len(header), "closed only once the header was whole"
    finally:
        dribble.stop()
        slow.close()
    server.wait_log(rf"{BALANCER}:\d+ \(a PROXY protocol sender\) closed: timed out: no PROXY header")
    guard.check()
