"""HOSTILE.md: framing, identity, transfer and name attacks, and every limit."""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time

import pytest

from helpers import (
    ANY_ID,
    file_packets,
    make_identity,
    packet_bytes,
    raw_header,
    unique_name,
    upload,
)
from protocol import (
    Acknowledged,
    ConnectionClosed,
    CrcOk,
    FileReceived,
    GeneralError,
    Register,
    Registered,
    RegistrationFailed,
    SendFilePacket,
    cksum,
    crypto,
)
from protocol.codes import RequestCode

STRANGER = "127.0.0.2"


def rows(server, sql, *args):
    with sqlite3.connect(server.data_dir / "defensive.db") as db:
        return db.execute(sql, args).fetchall()


def client_files(server, identity) -> list[str]:
    folder = server.data_dir / "received_files" / identity.client_id.hex()
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- A: framing ------------------------------------------------------------------


def test_a1_partial_header_then_eof_is_dropped_silently(server):
    with server.client() as client:
        client.send_raw(b"\0" * 10)
        client.sock.shutdown(socket.SHUT_WR)
        assert client.sock.recv(100) == b""
    server.wait_log("closed: connection closed in the middle of a message")


def test_a1_a2_stall_and_silence_are_cut_at_the_message_deadline(server_factory):
    server = server_factory("--message-deadline", "1")
    with server.client() as silent, server.client() as partial:
        partial.send_raw(raw_header(RequestCode.REGISTER, 255) + b"abc")
        started = time.monotonic()
        assert silent.closed_within(3) and partial.closed_within(3)
        assert time.monotonic() - started < 3
    assert "timed out" in server.log()


def test_a2_slowloris_is_cut_while_others_are_served(server_factory):
    server = server_factory("--message-deadline", "1.5")
    slow = server.client()
    header = raw_header(RequestCode.REGISTER, 255)
    stop = threading.Event()

    def trickle():
        for byte in header:
            if stop.is_set():
                return
            try:
                slow.send_raw(bytes([byte]))
            except OSError:
                return
            time.sleep(0.3)

    thread = threading.Thread(target=trickle)
    thread.start()
    try:
        time.sleep(0.2)
        with server.client() as fast:
            started = time.monotonic()
            make_identity(fast)
            assert time.monotonic() - started < 1.0
        assert slow.closed_within(4)
    finally:
        stop.set()
        thread.join()
        slow.close()


def test_a3_huge_payload_size_is_1607_and_close_without_reading(server):
    with server.client() as client:
        client.send_raw(raw_header(RequestCode.REGISTER, 0xFFFFFFFF))
        assert isinstance(client.receive(), GeneralError)
        assert isinstance(client.receive(), ConnectionClosed)


def test_a3_packet_over_the_content_limit_closes(server_factory):
    server = server_factory("--max-content-size", "1000")
    with server.client() as client:
        client.send_raw(raw_header(RequestCode.SEND_FILE, 267 + 1000 + 65536 + 1))
        assert isinstance(client.receive(), GeneralError)
        assert isinstance(client.receive(), ConnectionClosed)


@pytest.mark.parametrize(
    "code, size",
    [(825, 10), (826, 416), (827, 0), (900, 254), (828, 100), (0, 0), (829, 5), (903, 255), (1600, 16), (65535, 1)],
)
def test_a4_wrong_size_or_unknown_code_is_1607_and_the_connection_goes_on(server, code, size):
    with server.client() as client:
        client.send_raw(raw_header(code, size) + b"\x01" * size)
        assert isinstance(client.receive(), GeneralError)
        assert isinstance(client.request(Register(client_id=ANY_ID, name=unique_name())), Registered)


def test_a4_six_errors_close_the_connection(server):
    with server.client() as client:
        for _ in range(5):
            client.send_raw(raw_header(829, 0))
            assert isinstance(client.receive(), GeneralError)
        client.send_raw(raw_header(829, 0))
        assert isinstance(client.receive(), GeneralError)
        assert isinstance(client.receive(), ConnectionClosed)


def test_a4_max_skip_payload_closes_beyond_the_cap(server_factory):
    server = server_factory("--max-skip-payload", "100")
    with server.client() as client:
        client.send_raw(raw_header(826, 416))
        assert isinstance(client.receive(), GeneralError)
        assert isinstance(client.receive(), ConnectionClosed)


def test_a6_http_request_times_out_tls_and_random_close(server_factory):
    server = server_factory("--message-deadline", "1")
    with server.client() as http:
        http.send_raw(b"GET / HTTP/1.1\r\n\r\n")
        assert http.closed_within(3)
    for junk in (bytes.fromhex("160301020001000100") + os.urandom(300), os.urandom(65536)):
        with server.client() as client:
            try:
                client.send_raw(junk)
            except OSError:
                pass
            assert client.closed_within(3)
    with server.client() as client:  # still serving
        assert isinstance(client.request(Register(client_id=ANY_ID, name=unique_name())), Registered)


# -- C: identity -----------------------------------------------------------------


def test_c6_stranger_address_is_refused_before_decryption(server):
    with server.client() as client:
        victim = make_identity(client)
        upload(client, victim, "v.txt", b"victim data")
    with server.client(source=STRANGER) as stranger:
        assert isinstance(upload(stranger, victim, "v.txt", b"evil"), GeneralError)
        assert isinstance(stranger.request(CrcOk(client_id=victim.client_id, file_name="v.txt")), GeneralError)
    assert rows(server, "SELECT Verified FROM files") == [(0,)]
    assert (server.data_dir / "received_files" / victim.client_id.hex() / "v.txt").read_bytes() == b"victim data"
    assert "key is bound to another address" in server.log()
    with server.client() as same_address:  # a per-request client of the owner works
        assert isinstance(same_address.request(CrcOk(client_id=victim.client_id, file_name="v.txt")), Acknowledged)


def test_c6_key_unused_past_the_window_is_dead(server_factory):
    server = server_factory("--key-window", "1")
    with server.client() as client:
        identity = make_identity(client)
        time.sleep(1.3)
        assert isinstance(upload(client, identity, "late.txt", b"x"), GeneralError)
        # a fresh 827 revives it
        from helpers import reconnect

        reconnect(client, identity)
        assert isinstance(upload(client, identity, "late.txt", b"x"), FileReceived)


def test_c2_826_from_another_address_than_825_is_refused(server):
    from protocol import SendPublicKey
    from helpers import private_key

    name = unique_name()
    with server.client() as client:
        registered = client.request(Register(client_id=ANY_ID, name=name))
    with server.client(source=STRANGER) as stranger:
        answer = stranger.request(SendPublicKey(
            client_id=registered.client_id, name=name,
            public_key=crypto.export_public_key(private_key())))
    assert isinstance(answer, GeneralError)
    assert rows(server, "SELECT PublicKey FROM clients") == [(None,)]


def test_c7_replayed_upload_under_an_old_key_is_not_accepted_as_is(server):
    from helpers import reconnect

    data = os.urandom(5000)
    with server.client() as client:
        identity = make_identity(client)
        captured = file_packets(identity, "c7.bin", data)
        for packet in captured:
            client.send(packet)
        assert isinstance(client.receive(), FileReceived)
        reconnect(client, identity)
        for packet in captured:  # replay under the new key
            client.send(packet)
        answer = client.receive()
    assert isinstance(answer, GeneralError) or answer.cksum != cksum(data)


# -- D: transfer ------------------------------------------------------------------


def _no_leftovers(server, identity):
    assert [n for n in client_files(server, identity) if n.startswith(".tmp-")] == []


def test_d1_content_size_not_fitting_orig_size(server):
    with server.client() as client:
        identity = make_identity(client)
        bad = file_packets(identity, "d1.bin", b"x" * 100)[0]
        bad = SendFilePacket(**{**bad.__dict__, "orig_file_size": 10})
        assert isinstance(client.request(bad), GeneralError)
    _no_leftovers(server, identity)
    assert rows(server, "SELECT COUNT(*) FROM files") == [(0,)]


def test_d1_content_over_max_content_size(server_factory):
    server = server_factory("--max-content-size", "1024")
    with server.client() as client:
        identity = make_identity(client)
        assert isinstance(upload(client, identity, "big", os.urandom(2000), 512), GeneralError)
        assert isinstance(upload(client, identity, "ok", os.urandom(1000), 512), FileReceived)


def test_d1_not_enough_disk_space(server_factory):
    server = server_factory("--min-free-disk", str(2**60))
    with server.client() as client:
        identity = make_identity(client)
        assert isinstance(upload(client, identity, "x", b"abc"), GeneralError)
    assert client_files(server, identity) == []


def test_d2_out_of_order_gets_one_1607_per_attempt_and_no_file(server):
    with server.client() as client:
        identity = make_identity(client)
        packets = file_packets(identity, "d2.bin", os.urandom(5000))
        for packet in [packets[0], packets[2], packets[3], packets[4]]:
            client.send(packet)
        assert isinstance(client.receive(), GeneralError)
        assert client.nothing_within(0.5)  # the rest of the attempt is dropped quietly
        _no_leftovers(server, identity)
        # the client retries from packet 1 and succeeds on the same connection
        assert isinstance(upload(client, identity, "d2.bin", b"fine"), FileReceived)
    assert rows(server, "SELECT COUNT(*) FROM files") == [(1,)]


def test_d2_packet_without_an_upload_is_1607(server):
    with server.client() as client:
        identity = make_identity(client)
        packets = file_packets(identity, "x.bin", os.urandom(3000))
        assert isinstance(client.request(packets[1]), GeneralError)


def test_d3_tampered_last_block_is_1607_and_leaves_nothing(server):
    with server.client() as client:
        identity = make_identity(client)
        packets = file_packets(identity, "d3.bin", os.urandom(3000))
        last = packets[-1]
        content = last.content[:-1] + bytes([last.content[-1] ^ 0x55])
        packets[-1] = SendFilePacket(**{**last.__dict__, "content": content})
        for packet in packets:
            client.send(packet)
        assert isinstance(client.receive(), GeneralError)
    assert client_files(server, identity) == []
    assert rows(server, "SELECT COUNT(*) FROM files") == [(0,)]


def test_d4_disconnect_mid_upload_keeps_the_previous_version(server):
    with server.client() as client:
        identity = make_identity(client)
        upload(client, identity, "d4.bin", b"verified version")
        client.request(CrcOk(client_id=identity.client_id, file_name="d4.bin"))
        packets = file_packets(identity, "d4.bin", os.urandom(5000))
        for packet in packets[:2]:
            client.send(packet)
        time.sleep(0.2)
        assert any(n.startswith(".tmp-") for n in client_files(server, identity))
    server.wait_log("closed: peer closed")
    time.sleep(0.1)
    assert client_files(server, identity) == ["d4.bin"]
    assert (server.data_dir / "received_files" / identity.client_id.hex() / "d4.bin").read_bytes() == b"verified version"
    assert rows(server, "SELECT Verified FROM files") == [(1,)]


def test_d7_same_client_same_name_from_two_connections(server):
    data_a, data_b = os.urandom(5000), os.urandom(5000)
    with server.client() as a, server.client() as b:
        identity = make_identity(a)
        packets_a = file_packets(identity, "same.bin", data_a)
        packets_b = file_packets(identity, "same.bin", data_b)
        a.send(packets_a[0])
        time.sleep(0.1)
        b.send(packets_b[0])
        assert isinstance(b.receive(), GeneralError)  # serialised: the holder wins
        for packet in packets_a[1:]:
            a.send(packet)
        assert isinstance(a.receive(), FileReceived)
    assert rows(server, "SELECT COUNT(*) FROM files") == [(1,)]
    assert (server.data_dir / "received_files" / identity.client_id.hex() / "same.bin").read_bytes() == data_a


def test_d7_two_clients_same_file_name_stay_apart(server):
    with server.client() as a, server.client() as b:
        alice, bob = make_identity(a), make_identity(b)
        upload(a, alice, "report.pdf", b"alice")
        upload(b, bob, "report.pdf", b"bob")
    assert (server.data_dir / "received_files" / alice.client_id.hex() / "report.pdf").read_bytes() == b"alice"
    assert (server.data_dir / "received_files" / bob.client_id.hex() / "report.pdf").read_bytes() == b"bob"


def test_d8_many_one_byte_packets(server):
    data = os.urandom(3000)
    with server.client() as client:
        identity = make_identity(client)
        packets = file_packets(identity, "tiny.bin", data, 1)
        client.send_raw(b"".join(packet_bytes(p) for p in packets))
        answer = client.receive()
    assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)


# -- E: names -----------------------------------------------------------------------

ESCAPING_NAMES = [
    "../../etc/passwd", "..", ".", "/etc/passwd", "C:\\Windows\\win.ini", "\\\\host\\share\\x",
    "..\\..\\x.txt", "a/b/c.txt", "CON", "NUL.txt", "COM1", "name.", "name ", "a:stream",
    ".tmp-123", "tab\there", "new\nline",
]


def test_e1_e3_names_never_leave_the_client_folder(server):
    root = (server.data_dir / "received_files").resolve()
    with server.client() as client:
        identity = make_identity(client)
        for index, name in enumerate(ESCAPING_NAMES):
            answer = upload(client, identity, name, f"content {index}".encode())
            assert isinstance(answer, FileReceived), name
            assert answer.file_name.text == name.encode()
    folder = root / identity.client_id.hex()
    everything = [p for p in root.rglob("*")]
    assert all(p.parent == folder or p == folder for p in everything), everything
    assert len(list(folder.iterdir())) == len(ESCAPING_NAMES)
    kept = {name for (name,) in rows(server, "SELECT FileName FROM files")}
    assert kept == set(ESCAPING_NAMES)
    for (name, path_name) in rows(server, "SELECT FileName, PathName FROM files"):
        index = ESCAPING_NAMES.index(name)
        assert (server.data_dir / path_name).read_bytes() == f"content {index}".encode()


def test_e2_empty_and_unterminated_file_names_are_1607(server):
    with server.client() as client:
        identity = make_identity(client)
        for field in (bytes(255), b"x" * 255):
            client.send_raw(raw_header(RequestCode.CRC_OK, 255, identity.client_id) + field)
            assert isinstance(client.receive(), GeneralError)
        good = file_packets(identity, "ok", b"abc")[0]
        raw = packet_bytes(good)
        client.send_raw(raw[:23 + 12] + bytes(255) + raw[23 + 12 + 255:])
        assert isinstance(client.receive(), GeneralError)
        assert isinstance(client.request(good), FileReceived)


def test_e2_non_ascii_name_stored_safely_db_keeps_the_bytes(server):
    names = [b"caf\xc3\xa9.txt", b"\xe9t\xe9.txt"]  # UTF-8, then Windows-1252
    with server.client() as client:
        identity = make_identity(client)
        for name in names:
            assert isinstance(upload(client, identity, name, b"x"), FileReceived)
    kept = {bytes(n) if isinstance(n, bytes) else n.encode() for (n,) in rows(server, "SELECT FileName FROM files")}
    assert kept == set(names)
    assert sorted(client_files(server, identity)) == sorted(["café.txt", "%E9t%E9.txt"])


def test_e4_planted_symlink_at_the_final_name_is_replaced_not_followed(server, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"untouched")
    with server.client() as client:
        identity = make_identity(client)
        upload(client, identity, "first", b"makes the folder")
        folder = server.data_dir / "received_files" / identity.client_id.hex()
        (folder / "target.txt").symlink_to(outside)
        assert isinstance(upload(client, identity, "target.txt", b"new"), FileReceived)
    assert outside.read_bytes() == b"untouched"
    assert not (folder / "target.txt").is_symlink()


# -- limits ---------------------------------------------------------------------------


def test_max_connections_accept_and_close(server_factory):
    server = server_factory("--max-connections", "2")
    with server.client() as one, server.client() as two:
        time.sleep(0.2)
        with server.client() as three:
            assert three.closed_within(2)
        assert isinstance(one.request(Register(client_id=ANY_ID, name=unique_name())), Registered)
        assert isinstance(two.request(Register(client_id=ANY_ID, name=unique_name())), Registered)
    assert "2 connections open" in server.log()


def test_max_connections_per_address(server_factory):
    server = server_factory("--max-connections-per-address", "1")
    with server.client() as one:
        time.sleep(0.1)
        with server.client() as two:
            assert two.closed_within(2)
        with server.client(source=STRANGER) as other:
            assert isinstance(other.request(Register(client_id=ANY_ID, name=unique_name())), Registered)
        assert isinstance(one.request(Register(client_id=ANY_ID, name=unique_name())), Registered)


def test_idle_timeout(server_factory):
    server = server_factory("--idle-timeout", "1")
    with server.client() as client:
        client.request(Register(client_id=ANY_ID, name=unique_name()))
        started = time.monotonic()
        assert client.closed_within(4)
        assert 0.8 < time.monotonic() - started < 3
    server.wait_log("timed out: idle")


def test_message_deadline_with_slow_828_content(server_factory):
    server = server_factory("--message-deadline", "1", "--min-content-rate", "100000")
    with server.client() as client:
        identity = make_identity(client)
        raw = packet_bytes(file_packets(identity, "slow", os.urandom(500_000), 1_000_000)[0])
        client.send_raw(raw[:400])
        started = time.monotonic()
        for i in range(400, len(raw), 2000):  # ~20 kB/s, under the minimum rate
            try:
                client.send_raw(raw[i : i + 2000])
            except OSError:
                break
            time.sleep(0.1)
            if time.monotonic() - started > 6:
                break
        assert client.closed_within(2)
    assert time.monotonic() - started < 6
    server.wait_log("message not completed in time")
    _no_leftovers(server, identity)


def test_max_clients_and_registration_rate(server_factory):
    server = server_factory("--max-clients", "2")
    with server.client() as client:
        for expected in (Registered, Registered, RegistrationFailed):
            assert isinstance(client.request(Register(client_id=ANY_ID, name=unique_name())), expected)
    server = server_factory("--registrations-per-minute", "2")
    with server.client() as client:
        for expected in (Registered, Registered, RegistrationFailed):
            assert isinstance(client.request(Register(client_id=ANY_ID, name=unique_name())), expected)
    with server.client(source=STRANGER) as other:
        assert isinstance(other.request(Register(client_id=ANY_ID, name=unique_name())), Registered)


def test_max_errors_flag(server_factory):
    server = server_factory("--max-errors", "2")
    with server.client() as client:
        client.send_raw(raw_header(829, 0) * 2)
        assert isinstance(client.receive(), GeneralError)
        assert isinstance(client.receive(), GeneralError)
        assert isinstance(client.receive(), ConnectionClosed)


def test_retry_ack_delay_flag(server_factory):
    server = server_factory("--retry-ack-delay", "0.2")
    from protocol import CrcRetry

    with server.client() as client:
        identity = make_identity(client)
        upload(client, identity, "f", b"x")
        client.send(CrcRetry(client_id=identity.client_id, file_name="f"))
        started = time.monotonic()
        assert isinstance(client.receive(), Acknowledged)
        assert time.monotonic() - started < 0.8
