"""docs/PROTOCOL.md "Variants that real clients send", 1 to 11, on the real server."""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest

from helpers import (
    ANY_ID,
    Identity,
    private_key,
    file_packets,
    make_identity,
    packet_bytes,
    raw_header,
    unique_name,
    upload,
)
from protocol import (
    Acknowledged,
    ClientConnection,
    ConnectionClosed,
    CrcAbort,
    CrcOk,
    CrcRetry,
    FileReceived,
    GeneralError,
    Reconnect,
    Register,
    Registered,
    SendPublicKey,
    cksum,
    crypto,
)
from protocol.codes import RequestCode
from protocol.names import NameField
from protocol.wire import RESPONSE_HEADER_SIZE
from timing_helpers import HANG_TIMEOUT, wait_until

#: Variant 8's delay (s) where a resend must beat it: a 0.3 s pause and a
#: one-packet upload fit in it many times over even on a loaded machine.
RETRY_DELAY = 3.0


def stored(server, identity, name: str) -> bytes:
    return (server.data_dir / "received_files" / identity.client_id.hex() / name).read_bytes()


# 1 -----------------------------------------------------------------------------


def test_variant1_left_padded_and_garbage_after_nul(server):
    name = unique_name()
    left_padded = name.encode().rjust(255, b"\0")
    with server.client() as client:
        client.send_raw(raw_header(RequestCode.REGISTER, 255) + left_padded)
        registered = client.receive()
        assert isinstance(registered, Registered)
        identity = Identity(name, registered.client_id, None, b"")
        key = private_key()
        garbage = (name.encode() + b"\0garbage\xff").ljust(255, b"\x07")
        client.send_raw(
            raw_header(RequestCode.SEND_PUBLIC_KEY, 415, registered.client_id)
            + garbage + crypto.export_public_key(key)
        )
        answer = client.receive()
        identity.private_key = key
        identity.aes_key = crypto.decrypt_aes_key(key, answer.encrypted_aes_key)
        weird = NameField.parse(b"doc.txt\0trailing junk".ljust(255, b"\x01"))
        for name_field in (NameField.parse(b"doc.txt".rjust(255, b"\0")), weird):
            answer = upload(client, identity, name_field, b"hello")
            assert isinstance(answer, FileReceived)
            assert answer.file_name.raw == name_field.raw  # echoed byte for byte
        assert isinstance(client.request(CrcOk(client_id=identity.client_id, file_name=weird)), Acknowledged)
    assert stored(server, identity, "doc.txt") == b"hello"


# 2 -----------------------------------------------------------------------------


@pytest.mark.parametrize("header_id", [bytes(16), b"a" * 16, b"\xff" * 16])
def test_variant2_825_header_id_is_ignored(server, header_id):
    with server.client() as client:
        answer = client.request(Register(client_id=header_id, name=unique_name()))
    assert isinstance(answer, Registered) and answer.client_id != header_id


# 3 -----------------------------------------------------------------------------


def test_variant3_split_segments_and_coalesced_requests(server):
    names = [unique_name() for _ in range(3)]
    wire = b"".join(ClientConnection().send(Register(client_id=ANY_ID, name=n)) for n in names)
    with server.client() as client:
        client.send_raw(wire)  # three requests in one segment
        answers = [client.receive() for _ in names]
        assert all(isinstance(a, Registered) for a in answers)
        identity = make_identity(client)
        data = os.urandom(3000)
        for packet in file_packets(identity, "split.bin", data, 2000):
            raw = packet_bytes(packet)
            # header, fixed part and content each in their own segment, then bytes
            for piece in (raw[:23], raw[23:290], raw[290:300]):
                client.send_raw(piece)
                time.sleep(0.01)
            for i in range(300, len(raw), 97):
                client.send_raw(raw[i : i + 97])
        answer = client.receive()
    assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
    assert stored(server, identity, "split.bin") == data


def test_variant3_one_byte_segments(server):
    with server.client() as client:
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in ClientConnection().send(Register(client_id=ANY_ID, name=unique_name())):
            client.send_raw(bytes([byte]))
        assert isinstance(client.receive(), Registered)


# 4, 5, 6 ----------------------------------------------------------------------------


@pytest.mark.parametrize("packet_size", [1024, 4000, 8192, 65536])
@pytest.mark.parametrize("zero_fill", [False, True])
def test_variant4_packet_sizes_and_zero_fill(server, packet_size, zero_fill):
    data = os.urandom(70_001)
    with server.client() as client:
        identity = make_identity(client)
        answer = upload(client, identity, "v4.bin", data, packet_size, zero_fill=zero_fill)
    assert isinstance(answer, FileReceived)
    assert answer.cksum == cksum(data) and answer.content_size == crypto.padded_size(len(data))
    assert stored(server, identity, "v4.bin") == data


def test_variant4_whole_file_in_one_packet(server):
    data = os.urandom(3 * 1024 * 1024 + 5)
    with server.client() as client:
        identity = make_identity(client)
        answer = upload(client, identity, "one.bin", data, len(data) + 16)
    assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
    assert stored(server, identity, "one.bin") == data


def test_variant5_swapped_packet_fields(server):
    data = os.urandom(10_000)
    with server.client() as client:
        identity = make_identity(client)
        answer = upload(client, identity, "v5.bin", data, 1024, swapped=True)
    assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
    assert stored(server, identity, "v5.bin") == data


def test_variant6_each_packet_its_own_cbc_stream(server):
    data = os.urandom(10_000)
    with server.client() as client:
        identity = make_identity(client)
        answer = upload(client, identity, "v6.bin", data, 1024, per_packet=True)
    assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
    assert answer.content_size == 9 * 1040 + crypto.padded_size(10_000 - 9 * 1024)
    assert stored(server, identity, "v6.bin") == data


def test_variant5_and_6_together(server):
    data = os.urandom(5000)
    with server.client() as client:
        identity = make_identity(client)
        answer = upload(client, identity, "v56.bin", data, 1024, per_packet=True, swapped=True)
    assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)


# 7 -----------------------------------------------------------------------------


def test_variant7_one_connection_per_request(server):
    data = os.urandom(5000)
    with server.client() as client:
        identity = make_identity(client)
    packets = file_packets(identity, "pr.bin", data, 1024)
    for packet in packets[:-1]:
        with server.client() as client:
            client.send(packet)
            assert isinstance(client.receive(), ConnectionClosed)  # closed, no reply
    with server.client() as client:
        answer = client.request(packets[-1])
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
    with server.client() as client:
        client.send(CrcRetry(client_id=identity.client_id, file_name="pr.bin"))
        assert isinstance(client.receive(timeout=HANG_TIMEOUT), ConnectionClosed)  # 901: a close
    with server.client() as client:
        assert isinstance(client.request(CrcOk(client_id=identity.client_id, file_name="pr.bin")), Acknowledged)
    assert stored(server, identity, "pr.bin") == data


def test_variant7_one_connection_client_gets_nothing_after_non_final_828(server):
    with server.client() as client:
        identity = make_identity(client)
        packets = file_packets(identity, "oc.bin", os.urandom(3000), 1024)
        client.send(packets[0])
        assert client.nothing_within(0.5)
        for packet in packets[1:]:
            client.send(packet)
        assert isinstance(client.receive(), FileReceived)


def test_variant7_per_request_upload_expires_without_next_packet(server_factory):
    # an upload lives while it progresses: message_deadline after its last byte
    server = server_factory("--message-deadline", "1")
    with server.client() as client:
        identity = make_identity(client)
    packets = file_packets(identity, "gone.bin", os.urandom(3000), 1024)
    with server.client() as client:
        client.send(packets[0])
        client.receive()
    folder = server.data_dir / "received_files" / identity.client_id.hex()
    assert [p.name for p in folder.iterdir() if p.name.startswith(".tmp-")]
    wait_until(lambda: list(folder.iterdir()) == [], "the expired upload's temp file removed")
    with server.client() as client:
        assert isinstance(client.request(packets[1]), GeneralError)


# 8 -----------------------------------------------------------------------------


def test_variant8_resend_within_a_second_gets_no_1604(server_factory):
    server = server_factory("--retry-ack-delay", str(RETRY_DELAY))
    with server.client() as client:
        identity = make_identity(client)
        upload(client, identity, "r.bin", b"v1")
        client.send(CrcRetry(client_id=identity.client_id, file_name="r.bin"))
        retried = time.monotonic()
        time.sleep(0.3)
        answer = upload(client, identity, "r.bin", b"v2")
        assert isinstance(answer, FileReceived)  # not a 1604 first
        # and none later: past the time the cancelled 1604 was due
        assert client.nothing_within(max(0.0, retried + RETRY_DELAY - time.monotonic()) + 0.3)


def test_variant8_other_request_flushes_the_pending_1604_first(server):
    with server.client() as client:
        identity = make_identity(client)
        upload(client, identity, "r.bin", b"v1")
        client.send(CrcRetry(client_id=identity.client_id, file_name="r.bin"))
        client.send(CrcAbort(client_id=identity.client_id, file_name="r.bin"))
        assert isinstance(client.receive(), Acknowledged)
        assert isinstance(client.receive(), Acknowledged)
        assert client.nothing_within(1.3)


# 10 ----------------------------------------------------------------------------


def test_variant10_four_uploads_then_901_then_902(server):
    with server.client() as client:
        identity = make_identity(client)
        for attempt in range(4):
            assert isinstance(upload(client, identity, "t.bin", os.urandom(2000)), FileReceived)
            client.send(CrcRetry(client_id=identity.client_id, file_name="t.bin"))
            if attempt == 3:
                assert isinstance(client.receive(timeout=HANG_TIMEOUT), Acknowledged)
        assert isinstance(client.request(CrcAbort(client_id=identity.client_id, file_name="t.bin")), Acknowledged)


# 11 ----------------------------------------------------------------------------


def _raw_response(sock) -> tuple[int, int, int, bytes]:
    head = b""
    while len(head) < RESPONSE_HEADER_SIZE:
        head += sock.recv(RESPONSE_HEADER_SIZE - len(head))
    version, code, size = struct.unpack("<BHI", head)
    payload = b""
    while len(payload) < size:
        payload += sock.recv(size - len(payload))
    return version, code, size, payload


def test_variant11_exact_response_sizes(server):
    name = unique_name()
    conn = ClientConnection()
    key = private_key()
    with server.client() as client:
        sock = client.sock
        sock.sendall(conn.send(Register(client_id=ANY_ID, name=name)))
        version, code, size, payload = _raw_response(sock)
        assert (version, code, size) == (3, 1600, 16)
        client_id = payload
        sock.sendall(conn.send(SendPublicKey(client_id=client_id, name=name, public_key=crypto.export_public_key(key))))
        version, code, size, payload = _raw_response(sock)
        assert (version, code, size) == (3, 1602, 144) and payload[:16] == client_id
        aes = crypto.decrypt_aes_key(key, payload[16:])
        identity = Identity(name, client_id, key, aes)
        for packet in file_packets(identity, "s.bin", b"x" * 100):
            sock.sendall(conn.send(packet))
        assert _raw_response(sock)[:3] == (3, 1603, 279)
        sock.sendall(conn.send(CrcOk(client_id=client_id, file_name="s.bin")))
        assert _raw_response(sock)[:3] == (3, 1604, 16)
        sock.sendall(conn.send(Reconnect(client_id=client_id, name=name)))
        assert _raw_response(sock)[:3] == (3, 1605, 144)
        sock.sendall(conn.send(Reconnect(client_id=os.urandom(16), name=name)))
        assert _raw_response(sock)[:3] == (3, 1606, 16)
        sock.sendall(conn.send(Register(client_id=ANY_ID, name=name)))
        assert _raw_response(sock)[:3] == (3, 1601, 0)
        sock.sendall(raw_header(999, 0))
        assert _raw_response(sock)[:3] == (3, 1607, 0)
