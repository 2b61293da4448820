"""Every edition on the same port, against the real server (docs/EDITIONS.md).

The first tests write their requests byte for byte from the tables with
``int.to_bytes`` and read the answers as raw bytes, so they check the server
against the tables; the flows after them speak through ``ClientConnection``
of each edition (whose bytes tests/protocol/test_editions.py checks).
"""

from __future__ import annotations

import os
import socket
import zlib

import pytest

from helpers import (
    ANY_ID,
    IO_TIMEOUT,
    RawClient,
    make_identity,
    private_key,
    unique_name,
    upload,
)
from protocol import (
    Acknowledged,
    CrcAbort,
    CrcOk,
    CrcRetry,
    FileReceived,
    GeneralError,
    PublicKeyReceived,
    Reconnect,
    Reconnected,
    Register,
    Registered,
    RegistrationFailed,
    SendFilePacket,
    SendPublicKey,
    cksum,
    crypto,
)
from edition_helpers import db_rows, keyed, send_file, stored, verified
from wire_by_hand import name, request, u16, u32
from protocol.editions import EDITION_2022, EDITION_2023A, EDITION_2023C, EDITIONS, V3

HEADER = 7


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


def register_as_2024a(sock: socket.socket, text: bytes) -> bytes:
    """A 2024A client's registration, from the wire facts of one (docs/EDITIONS.md).

    Header id 16 x '0', version 3, the 278 bytes in one write. It expects
    1600; of an answer it does not expect it reads the 7-byte header alone
    and sends its 1025 again at once. Returns the id of the 1600.
    """
    register = request(1025, name(text), client_id=b"0" * 16)
    sock.sendall(register)
    for _ in range(2):
        head = _read(sock, HEADER)
        code, size = int.from_bytes(head[1:3], "little"), int.from_bytes(head[3:7], "little")
        if code == 1600:
            assert (head[0], size) == (3, 16)
            return _read(sock, size)
        sock.sendall(register)  # the payload it did not read stays unread
    raise AssertionError("no 1600 after asking twice")


def test_a_2024a_session_is_served_with_v3_answers(server):
    text = unique_name("e2024a").encode()
    key = private_key()
    plain = b"2024A edition file\n" * 500
    with socket.create_connection(server.address, timeout=IO_TIMEOUT) as sock:
        client_id = register_as_2024a(sock, text)

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


#: Written from the tables of docs/EDITIONS.md: request codes (register, key,
#: file, CRC ok), answer codes (registered, key, file received, acknowledged),
#: the acknowledgement's size, the AES key's, the file whole?, the id in payloads?
BYTE_TABLES = {
    "2022": ((1100, 1101, 1103, 1104), (2100, 2102, 2103, 2104), 0, 16, True, True),
    "2023A": ((1100, 1101, 1103, 1104), (2100, 2102, 2103, 2104), 16, 16, True, False),
    "2023C": ((1025, 1026, 1028, 1029), (2100, 2102, 2103, 2104), 16, 16, True, False),
    "2024A": ((1025, 1026, 1028, 1029), (1600, 1602, 1603, 1604), 16, 32, False, False),
    "v3": ((825, 826, 828, 900), (1600, 1602, 1603, 1604), 16, 32, False, False),
}


@pytest.mark.parametrize("edition", sorted(BYTE_TABLES))
def test_a_session_written_byte_for_byte_from_the_tables(server, edition):
    (register, key_code, file_code, ok), answers, ack_size, key_size, whole, with_id = BYTE_TABLES[edition]
    text = unique_name(f"bytes{edition}").encode()
    key = private_key()
    plain = os.urandom(12_345)
    with socket.create_connection(server.address, timeout=IO_TIMEOUT) as sock:
        if edition == "2024A":
            client_id = register_as_2024a(sock, text)
        else:
            sock.sendall(request(register, name(text)))
            version, code, client_id = read_answer(sock)
            assert (version, code, len(client_id)) == (3, answers[0], 16)
        sock.sendall(request(key_code, name(text) + crypto.export_public_key(key), client_id))
        _, code, payload = read_answer(sock)
        assert (code, len(payload), payload[:16]) == (answers[1], 144, client_id)
        aes_key = crypto.decrypt_aes_key(key, payload[16:], key_size)
        ciphertext = crypto.encrypt(aes_key, plain)
        prefix = client_id if with_id else b""
        if whole:
            fixed = prefix + u32(len(ciphertext)) + name(b"t.bin")
        else:
            fixed = u32(len(ciphertext)) + u32(len(plain)) + u16(1) + u16(1) + name(b"t.bin")
        sock.sendall(request(file_code, fixed + ciphertext, client_id))
        _, code, payload = read_answer(sock)
        assert (code, len(payload)) == (answers[2], 279)
        assert payload[:16] == client_id and payload[20:275] == name(b"t.bin")
        assert int.from_bytes(payload[16:20], "little") == len(ciphertext)
        assert int.from_bytes(payload[275:], "little") == cksum(plain)
        sock.sendall(request(ok, prefix + name(b"t.bin"), client_id))
        assert read_answer(sock) == (3, answers[3], client_id[:ack_size])
    stored_file = server.data_dir / "received_files" / client_id.hex() / "t.bin"
    assert stored_file.read_bytes() == plain


def test_v3_and_2024a_clients_upload_at_the_same_time(server):
    # A v3 client mid-upload while a 2024A client registers: each in its own codes.
    v3 = RawClient(server.address)
    identity = make_identity(v3)
    with socket.create_connection(server.address, timeout=IO_TIMEOUT) as sock:
        register_as_2024a(sock, unique_name("e2024a").encode())
        answer = upload(v3, identity, "v3.bin", b"v3 data" * 1000)
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(b"v3 data" * 1000)
    v3.close()


# -- every edition, through ClientConnection(edition) -------------------------------------

EDITION_IDS = [edition.name for edition in EDITIONS]


@pytest.mark.parametrize("edition", EDITIONS, ids=EDITION_IDS)
def test_a_full_flow_in_every_edition(backend_server, edition):
    with RawClient(backend_server.address, edition=edition) as client:
        who = keyed(client)
        assert len(who.aes_key) == edition.aes_key_size
        for file_name, data in (("empty.bin", b""), ("100k.bin", os.urandom(100_000)),
                                ("5m.bin", os.urandom(5 * 1024 * 1024))):
            answer = send_file(client, who, file_name, data)
            assert isinstance(answer, FileReceived), answer
            assert answer.cksum == cksum(data) and answer.content_size == len(crypto.encrypt(who.aes_key, data))
            assert isinstance(client.request(CrcOk(client_id=who.client_id, file_name=file_name)), Acknowledged)
            assert stored(backend_server, who, file_name) == data and verified(backend_server, who, file_name) == 1
    # Recorded at registration (or, in the 1100 and 1025 series, once a file
    # request's layout told the editions apart).
    assert db_rows(backend_server, "SELECT Edition FROM clients WHERE ID = ?", who.client_id) == [(edition.name,)]


@pytest.mark.parametrize("edition", EDITIONS, ids=EDITION_IDS)
def test_crc_bad_then_a_resend_then_ok_follows_the_crc_flavour_rule(backend_server, edition):
    # cksum first; after a CRC bad the other CRC (zlib's); the one confirmed is
    # the client's from then on, and an answer after a CRC bad is the other again.
    data, later = b"resend me" * 3000, b"later" * 999
    with RawClient(backend_server.address, edition=edition) as client:
        who = keyed(client)
        assert send_file(client, who, "r.bin", data).cksum == cksum(data)
        client.send(CrcRetry(client_id=who.client_id, file_name="r.bin"))
        answer = send_file(client, who, "r.bin", data)  # at once: no answer to the CRC bad
        assert isinstance(answer, FileReceived) and answer.cksum == zlib.crc32(data)
        assert isinstance(client.request(CrcOk(client_id=who.client_id, file_name="r.bin")), Acknowledged)
        assert verified(backend_server, who, "r.bin") == 1
        assert db_rows(backend_server, "SELECT Crc FROM clients WHERE ID = ?", who.client_id) == [("crc32",)]
        assert send_file(client, who, "l.bin", later).cksum == zlib.crc32(later)
        client.send(CrcRetry(client_id=who.client_id, file_name="l.bin"))
        assert send_file(client, who, "l.bin", later).cksum == cksum(later)


@pytest.mark.parametrize("edition", EDITIONS, ids=EDITION_IDS)
def test_crc_bad_three_times_then_bad_final(backend_server, edition):
    data = b"never right" * 1000
    with RawClient(backend_server.address, edition=edition) as client:
        who = keyed(client)
        for _ in range(3):
            assert isinstance(send_file(client, who, "b.bin", data), FileReceived)
            client.send(CrcRetry(client_id=who.client_id, file_name="b.bin"))
        assert isinstance(send_file(client, who, "b.bin", data), FileReceived)
        assert isinstance(client.request(CrcAbort(client_id=who.client_id, file_name="b.bin")), Acknowledged)
    assert verified(backend_server, who, "b.bin") == 0


@pytest.mark.parametrize("edition", [e for e in EDITIONS if e.has_reconnect], ids=lambda e: e.name)
def test_a_reconnect_gets_a_fresh_key_of_the_editions_size(backend_server, edition):
    with RawClient(backend_server.address, edition=edition) as client:
        who = keyed(client)
    with RawClient(backend_server.address, edition=edition) as client:
        answer = client.request(Reconnect(client_id=who.client_id, name=who.name))
        assert isinstance(answer, Reconnected), answer
        aes_key = crypto.decrypt_aes_key(who.private_key, answer.encrypted_aes_key, edition.aes_key_size)
        assert aes_key != who.aes_key
        who.aes_key = aes_key
        assert isinstance(send_file(client, who, "again.bin", b"again"), FileReceived)


def test_the_2022_returning_client_sends_its_key_again(server):
    key = private_key()
    with RawClient(server.address, edition=EDITION_2022) as client:
        who = keyed(client, key=key)
    with RawClient(server.address, edition=EDITION_2022) as client:
        public = crypto.export_public_key(key)
        answer = client.request(SendPublicKey(client_id=who.client_id, name=who.name, public_key=public))
        assert isinstance(answer, PublicKeyReceived), answer
        fresh = crypto.decrypt_aes_key(key, answer.encrypted_aes_key, 16)
        assert fresh != who.aes_key
        who.aes_key = fresh
        assert isinstance(send_file(client, who, "back.bin", b"back"), FileReceived)
        # A different key is still key substitution.
        other = crypto.export_public_key(private_key())
        assert other != public
        refused = client.request(SendPublicKey(client_id=who.client_id, name=who.name, public_key=other))
        assert isinstance(refused, GeneralError)


# -- the first 1025: three kinds of client (docs/EDITIONS.md, "Telling the editions apart")


def _go_on_as_2023c(server, sock: socket.socket, text: bytes, client_id: bytes) -> None:
    """The rest of a 2023C session: 2102 with a 16-byte key, a file whole, 2103, 2104."""
    key = private_key()
    sock.sendall(request(1026, name(text) + crypto.export_public_key(key), client_id))
    _, code, payload = read_answer(sock)
    assert (code, len(payload), payload[:16]) == (2102, 144, client_id)
    aes_key = crypto.decrypt_aes_key(key, payload[16:], 16)
    plain = os.urandom(5000)
    ciphertext = crypto.encrypt(aes_key, plain)
    sock.sendall(request(1028, u32(len(ciphertext)) + name(b"c.bin") + ciphertext, client_id))
    _, code, payload = read_answer(sock)
    assert (code, payload[:16], int.from_bytes(payload[275:], "little")) == (2103, client_id, cksum(plain))
    sock.sendall(request(1029, name(b"c.bin"), client_id))
    assert read_answer(sock) == (3, 2104, client_id)
    assert db_rows(server, "SELECT Edition FROM clients WHERE ID = ?", client_id) == [("2023C",)]


def test_a_2023c_client_that_accepts_only_2100_is_registered(server):
    # Its header id is uninitialised memory; it writes the 278 bytes at once,
    # accepts only 2100 to its first 1025 and exits on anything else.
    text = unique_name("c3").encode()
    with socket.create_connection(server.address, timeout=IO_TIMEOUT) as sock:
        sock.sendall(request(1025, name(text), client_id=os.urandom(16)))
        version, code, client_id = read_answer(sock)
        assert (version, code, len(client_id)) == (3, 2100, 16), "server rejected register request"
        _go_on_as_2023c(server, sock, text, client_id)


def test_b0rik_reads_an_unexpected_answer_whole_and_asks_again(server):
    # b0rik (2023C): header id 16 x 'a', the 1025 in two writes; an answer it
    # does not expect is read whole and ignored, and it asks again.
    text = unique_name("borik").encode()
    register = request(1025, name(text), client_id=b"a" * 16)
    with socket.create_connection(server.address, timeout=IO_TIMEOUT) as sock:
        answers = []
        while not answers or answers[-1][1] != 2100:
            assert len(answers) < 3, answers
            sock.sendall(register[:23])
            sock.sendall(register[23:])
            answers.append(read_answer(sock))
        assert [code for _, code, _ in answers] == [2100]  # no answer to ignore
        _go_on_as_2023c(server, sock, text, answers[-1][2])


def test_a_2024a_client_reads_the_2100_header_alone_and_stays_aligned(server_factory):
    # A hold far longer than its round trip: the id of the 2100 is never sent.
    server = server_factory("--first-register-hold", "30")
    text = unique_name("d0").encode()
    key = private_key()
    with socket.create_connection(server.address, timeout=IO_TIMEOUT) as sock:
        sock.sendall(request(1025, name(text), client_id=b"0" * 16))
        head = _read(sock, HEADER)
        assert (head[0], int.from_bytes(head[1:3], "little"), int.from_bytes(head[3:7], "little")) == (3, 2100, 16)
        sock.sendall(request(1025, name(text), client_id=b"0" * 16))  # at once, the payload unread
        version, code, client_id = read_answer(sock)
        assert (version, code, len(client_id)) == (3, 1600, 16)
        sock.sendall(request(1026, name(text) + crypto.export_public_key(key), client_id))
        _, code, payload = read_answer(sock)
        assert (code, len(payload), payload[:16]) == (1602, 144, client_id)
        assert len(crypto.decrypt_aes_key(key, payload[16:])) == 32
    # The registration the first 1025 made was replaced by the second's.
    assert db_rows(server, "SELECT ID, Edition FROM clients WHERE Name = ?", text.decode()) == [(client_id, "2024A")]
    assert "a 2024A client, the id withheld" in server.log()


def test_a_2023c_client_refused_at_first_gets_the_2023c_form_when_it_asks_again(server):
    # A refusal has no payload to hold: it goes in the 2024A form, which a
    # 2024A client expects; b0rik reads it whole, ignores it and asks again.
    text = unique_name("taken").encode()
    with RawClient(server.address) as owner:
        make_identity(owner, text.decode())
    with socket.create_connection(server.address, timeout=IO_TIMEOUT) as sock:
        sock.sendall(request(1025, name(text), client_id=b"a" * 16))
        assert read_answer(sock) == (3, 1601, b"")
        sock.sendall(request(1025, name(text), client_id=b"a" * 16))
        assert read_answer(sock) == (3, 2101, b"")


def test_a_client_is_refused_in_another_edition(backend_server):
    with RawClient(backend_server.address, edition=EDITION_2023A) as client:
        who = keyed(client)
        assert isinstance(send_file(client, who, "a.bin", b"a"), FileReceived)
    with RawClient(backend_server.address, edition=V3) as client:
        answer = client.request(CrcOk(client_id=who.client_id, file_name="a.bin"))
        assert isinstance(answer, GeneralError)
    assert "registered in edition 2023A" in backend_server.log()


def test_names_are_unique_across_editions(backend_server):
    text = unique_name("shared")
    with RawClient(backend_server.address, edition=EDITION_2022) as client:
        keyed(client, text)
    with RawClient(backend_server.address, edition=V3) as client:
        assert isinstance(client.request(Register(client_id=ANY_ID, name=text)), RegistrationFailed)


def test_two_editions_upload_at_the_same_time(server):
    data_a, data_b = os.urandom(300_000), os.urandom(200_000)
    with RawClient(server.address, edition=EDITION_2022) as a, \
            RawClient(server.address, edition=EDITION_2023C) as b:
        who_a, who_b = keyed(a), keyed(b)
        cipher_a = crypto.encrypt(who_a.aes_key, data_a)
        # a's request is cut in two around b's whole upload
        first = a.conn.send(SendFilePacket(who_a.client_id, len(cipher_a), 0, 1, 1, "x.bin", content=cipher_a))
        a.send_raw(first[: len(first) // 2])
        assert send_file(b, who_b, "y.bin", data_b).cksum == cksum(data_b)
        a.send_raw(first[len(first) // 2 :])
        assert a.receive().cksum == cksum(data_a)


def test_a_2022_crc_bad_without_a_resend_gets_an_empty_2104(server):
    with RawClient(server.address, edition=EDITION_2022) as client:
        who = keyed(client)
        assert isinstance(send_file(client, who, "w.bin", b"wait"), FileReceived)
        client.send(CrcRetry(client_id=who.client_id, file_name="w.bin"))
        raw = client.sock.recv(64)  # after retry_ack_delay: 2104, no payload in 2022
        assert raw == bytes([3]) + (2104).to_bytes(2, "little") + bytes(4)


# -- the variants, on the real server ---------------------------------------------------------


def test_editions_variant_1_a_2022_register_with_the_bare_name(server):
    text = unique_name("bare").encode()
    with socket.create_connection(server.address, timeout=IO_TIMEOUT) as sock:
        sock.sendall(request(1100, text))  # payload_size = the name's length, no NUL
        version, code, client_id = read_answer(sock)
    assert (version, code, len(client_id)) == (3, 2100, 16)
    assert db_rows(server, "SELECT Edition FROM clients WHERE Name = ?", text.decode()) == [("2022",)]


def test_editions_variant_3_a_crc_ok_without_payload_then_its_payload(server):
    with RawClient(server.address, edition=EDITION_2022) as client:
        who = keyed(client)
        assert isinstance(send_file(client, who, "last.bin", b"last file"), FileReceived)
        # payload_size 0, then the 271 bytes of its payload anyway
        client.send_raw(request(1104, b"", who.client_id) + who.client_id + name(b"last.bin"))
        assert read_answer(client.sock) == (3, 2104, b"")
        assert client.sock.recv(1) == b""  # the tail ended the connection, unanswered
    assert verified(server, who, "last.bin") == 1


def test_editions_variant_6_a_new_upload_after_bad_final_is_a_new_attempt(server):
    data = b"again after giving up" * 100
    with RawClient(server.address, edition=EDITION_2023A) as client:
        who = keyed(client)
        assert isinstance(send_file(client, who, "g.bin", data), FileReceived)
        assert isinstance(client.request(CrcAbort(client_id=who.client_id, file_name="g.bin")), Acknowledged)
        assert send_file(client, who, "g.bin", data).cksum == cksum(data)
        assert isinstance(client.request(CrcOk(client_id=who.client_id, file_name="g.bin")), Acknowledged)
    assert verified(server, who, "g.bin") == 1


def test_protocol_variant_13_a_resend_that_keeps_the_901_code(server):
    data = b"resent under 901" * 500
    with RawClient(server.address) as client:
        who = keyed(client)
        assert send_file(client, who, "v.bin", data).cksum == cksum(data)
        client.send(CrcRetry(client_id=who.client_id, file_name="v.bin"))
        ciphertext = crypto.encrypt(who.aes_key, data)
        packets = [ciphertext[i : i + 1024] for i in range(0, len(ciphertext), 1024)]
        for number, content in enumerate(packets, start=1):
            fixed = u32(len(ciphertext)) + u32(len(data)) + u16(number) + u16(len(packets))
            client.send_raw(request(901, fixed + name(b"v.bin") + content, who.client_id))
        answer = client.receive()
        assert isinstance(answer, FileReceived) and answer.cksum == zlib.crc32(data)  # after a 901
        assert isinstance(client.request(CrcOk(client_id=who.client_id, file_name="v.bin")), Acknowledged)
    assert stored(server, who, "v.bin") == data


def test_editions_variant_2_the_register_headers_client_id_is_ignored(server):
    for header_id in (bytes(16), b"a" * 16, os.urandom(16)):
        with RawClient(server.address, edition=EDITION_2022) as client:
            answer = client.request(Register(client_id=header_id, name=unique_name("v2")))
            assert isinstance(answer, Registered) and answer.client_id != header_id


def test_editions_variant_4_a_reconnect_name_with_garbage_after_the_nul(server):
    with RawClient(server.address, edition=EDITION_2023C) as client:
        who = keyed(client)
    field = who.name.encode() + b"\0" + bytes(range(1, 200)) + b"\xff" * (254 - len(who.name) - 199)
    assert len(field) == 255
    with socket.create_connection(server.address, timeout=IO_TIMEOUT) as sock:
        sock.sendall(request(1027, field, who.client_id))
        version, code, payload = read_answer(sock)
    assert (code, payload[:16], len(payload)) == (2105, who.client_id, 144)


def test_editions_variant_7_the_same_name_twice_replaces_the_file(backend_server):
    with RawClient(backend_server.address, edition=EDITION_2023C) as client:
        who = keyed(client)
        for data in (b"first version", b"second version, longer"):
            assert send_file(client, who, "same.txt", data).cksum == cksum(data)
            assert isinstance(client.request(CrcOk(client_id=who.client_id, file_name="same.txt")), Acknowledged)
    assert stored(backend_server, who, "same.txt") == b"second version, longer"


def test_editions_variant_8_one_connection_requests_split_anyhow(server):
    # One connection for the whole session; every request written a few bytes at a time.
    with RawClient(server.address, edition=EDITION_2022) as client:
        def send(event):
            wire = client.conn.send(event)
            for i in range(0, len(wire), 7):
                client.send_raw(wire[i : i + 7])
            return client.receive()

        text = unique_name("split")
        registered = send(Register(client_id=ANY_ID, name=text))
        key = private_key()
        answer = send(SendPublicKey(client_id=registered.client_id, name=text,
                                    public_key=crypto.export_public_key(key)))
        aes_key = crypto.decrypt_aes_key(key, answer.encrypted_aes_key, 16)
        data = b"split into pieces" * 50
        ciphertext = crypto.encrypt(aes_key, data)
        received = send(SendFilePacket(registered.client_id, len(ciphertext), len(data), 1, 1,
                                       "s.bin", content=ciphertext))
        assert received.cksum == cksum(data)
        assert isinstance(send(CrcOk(client_id=registered.client_id, file_name="s.bin")), Acknowledged)
