"""Editions beside v3 on the same port, against the real server (docs/EDITIONS.md).

The requests are written byte for byte from the tables with ``int.to_bytes``,
and the answers are read as raw bytes: nothing of protocol/ builds or parses
the 2024A messages here, so the test checks the server against the tables.
"""

from __future__ import annotations

import socket

from helpers import IO_TIMEOUT, RawClient, make_identity, private_key, unique_name, upload
from protocol import FileReceived, cksum, crypto

HEADER = 7


def u16(value: int) -> bytes:
    return value.to_bytes(2, "little")


def u32(value: int) -> bytes:
    return value.to_bytes(4, "little")


def name(text: bytes) -> bytes:
    return text + bytes(255 - len(text))


def request(code: int, payload: bytes, client_id: bytes = bytes(16)) -> bytes:
    return client_id + bytes([3]) + u16(code) + u32(len(payload)) + payload


def read_answer(sock: socket.socket) -> tuple[int, int, bytes]:
    """(version, code, payload) of one answer, read by its header's size."""
    head = _read(sock, HEADER)
    size = int.from_bytes(head[3:7], "little")
    return head[0], int.from_bytes(head[1:3], "little"), _read(sock, size)


def _read(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, f"closed after {len(data)} of {count} bytes"
        data += chunk
    return data


def test_a_2024a_session_is_served_with_v3_answers(server):
    text = unique_name("e2024a").encode()
    key = private_key()
    plain = b"2024A edition file\n" * 500
    with socket.create_connection(server.address, timeout=IO_TIMEOUT) as sock:
        sock.sendall(request(1025, name(text), client_id=b"a" * 16))
        version, code, payload = read_answer(sock)
        assert (version, code, len(payload)) == (3, 1600, 16)
        client_id = payload

        sock.sendall(request(1026, name(text) + crypto.export_public_key(key), client_id))
        _, code, payload = read_answer(sock)
        assert (code, len(payload), payload[:16]) == (1602, 144, client_id)
        aes_key = crypto.decrypt_aes_key(key, payload[16:])
        assert len(aes_key) == 32  # AES-256, as v3

        ciphertext = crypto.encrypt(aes_key, plain)
        packets = [ciphertext[i : i + 4000] for i in range(0, len(ciphertext), 4000)]
        for number, content in enumerate(packets, start=1):
            fixed = u32(len(ciphertext)) + u32(len(plain)) + u16(number) + u16(len(packets))
            sock.sendall(request(1028, fixed + name(b"e.txt") + content, client_id))
        _, code, payload = read_answer(sock)
        assert code == 1603 and len(payload) == 279
        assert payload[:16] == client_id
        assert int.from_bytes(payload[16:20], "little") == len(ciphertext)
        assert payload[20:275] == name(b"e.txt")
        assert int.from_bytes(payload[275:279], "little") == cksum(plain)

        sock.sendall(request(1029, name(b"e.txt"), client_id))
        assert read_answer(sock) == (3, 1604, client_id)
    stored = server.data_dir / "received_files" / client_id.hex() / "e.txt"
    assert stored.read_bytes() == plain
    log = server.log()
    label = f"{text.decode()}/{client_id.hex()}"
    # The log names the request and its answer in the client's own codes.
    assert f" 1025 {label} -> 1600" in log and f" 1029 {label} -> 1604" in log


def test_v3_and_2024a_clients_upload_at_the_same_time(server):
    # A v3 client mid-upload while a 2024A client registers: each in its own codes.
    v3 = RawClient(server.address)
    identity = make_identity(v3)
    with socket.create_connection(server.address, timeout=IO_TIMEOUT) as sock:
        sock.sendall(request(1025, name(unique_name("e2024a").encode())))
        assert read_answer(sock)[1] == 1600
        answer = upload(v3, identity, "v3.bin", b"v3 data" * 1000)
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(b"v3 data" * 1000)
    v3.close()


def test_an_edition_not_served_yet_gets_a_general_error(server):
    with socket.create_connection(server.address, timeout=IO_TIMEOUT) as sock:
        sock.sendall(request(1100, name(unique_name().encode())))
        assert read_answer(sock) == (3, 1607, b"")
