"""The client's layout options reproduce each variant of docs/PROTOCOL.md on purpose.

Our own server serves every variant, so an upload in each layout must arrive
whole and verified; a fake server checks the bytes of each layout.
"""

from __future__ import annotations

import socket
import threading

import pytest

from client.__main__ import ExitCode
from client_fakes import Keys, handshake_register, make_file, run_against, write_transfer_info
from protocol import (
    NEED_DATA,
    Acknowledged,
    CrcOk,
    CrcRetry,
    FileContent,
    FilePacketEnded,
    FilePacketStarted,
    FileReceived,
    PublicKeyReceived,
    Register,
    Registered,
    SendPublicKey,
    ServerConnection,
    cksum,
    crypto,
)
from protocol.crypto import encrypt_aes_key, import_public_key, new_aes_key

from test_client_e2e import address, new_user, run, stored

LAYOUTS = {
    "swapped": ("--field-order", "swapped"),
    "per-packet": ("--encrypt", "per-packet"),
    "swapped+per-packet": ("--field-order", "swapped", "--encrypt", "per-packet"),
    "padded": ("--pad-last-packet",),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_layout_is_served_whole_by_our_server(server, tmp_path, layout):
    home = new_user(tmp_path, address(server), f"layout-{layout}", size=100_000)
    result = run(home, "--packet-size", "1024", *LAYOUTS[layout])
    assert result.returncode == ExitCode.OK, result.stderr
    assert "refused the layout" not in result.stderr
    assert stored(server, home, "notes.txt") == (home / "notes.txt").read_bytes()


def test_the_bytes_of_swapped_per_packet_and_padded_packets(work, run_client):
    data = make_file(work, size=2500)
    keys = Keys()
    seen = {}

    def script(server):
        peer = server.accept()
        handshake_register(peer, keys)
        packets = [peer.next_request() for _ in range(3)]
        seen["packets"] = packets
        plain = b"".join(crypto.decrypt(keys.aes_key, p.content) for p in packets)
        peer.reply(FileReceived(keys.client_id, sum(len(p.content) for p in packets),
                                packets[0].fields.file_name, cksum(plain)))
        peer.expect(CrcOk)
        peer.reply(Acknowledged(client_id=keys.client_id))

    result = run_against(script, work, data, run_client, "--packet-size", "1024",
                         "--field-order", "swapped", "--encrypt", "per-packet")
    assert result.code == ExitCode.OK, result.err
    fields = [p.fields for p in seen["packets"]]
    # variant 5: total first; variant 6: content_size is each packet's own ciphertext
    assert [(f.packet_number, f.total_packets) for f in fields] == [(3, 1), (3, 2), (3, 3)]
    assert [f.content_size for f in fields] == [1040, 1040, 464]
    assert all(f.orig_file_size == 2500 for f in fields)


def test_the_last_packet_padded_with_zeros(work, run_client):
    data = make_file(work, size=2500)  # 2512 bytes of ciphertext: 1024 + 1024 + 464
    keys = Keys()
    seen = {}

    def script(server):
        peer = server.accept()
        handshake_register(peer, keys)
        packets = [peer.next_request() for _ in range(3)]
        seen["packets"] = packets
        ciphertext = b"".join(p.content for p in packets)[:2512]
        peer.reply(FileReceived(keys.client_id, 2512, packets[0].fields.file_name,
                                cksum(crypto.decrypt(keys.aes_key, ciphertext))))
        peer.expect(CrcOk)
        peer.reply(Acknowledged(client_id=keys.client_id))

    result = run_against(script, work, data, run_client, "--packet-size", "1024", "--pad-last-packet")
    assert result.code == ExitCode.OK, result.err
    last = seen["packets"][-1]
    assert len(last.content) == 1024 and last.content[464:] == bytes(560)
    assert all(p.fields.content_size == 2512 for p in seen["packets"])


def test_per_request_connections_against_our_server(server, tmp_path):
    home = new_user(tmp_path, address(server), "layout-per-request", size=100_000)
    for _ in range(2):  # first run, then a second run with me.info
        result = run(home, "--connection", "per-request", "--packet-size", "4000")
        assert result.returncode == ExitCode.OK, result.stderr
    assert stored(server, home, "notes.txt") == (home / "notes.txt").read_bytes()


#: A server that reads one request with a single receive of at most this many
#: bytes, answers, and closes (behaviour 3 of the issue).
ONE_RECEIVE = 4290


def test_a_server_that_reads_one_receive_per_connection(work, run_client):
    data = make_file(work, size=10_000)
    keys = Keys()
    state = {"ciphertext": b"", "connections": 0, "sizes": []}
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            with sock:
                state["connections"] += 1
                raw = sock.recv(ONE_RECEIVE)
                state["sizes"].append(len(raw))
                conn = ServerConnection()
                conn.receive_data(raw)
                events = []
                while (event := conn.next_event()) is not NEED_DATA:
                    events.append(event)
                if not events or (isinstance(events[0], FilePacketStarted) and not isinstance(events[-1], FilePacketEnded)):
                    continue  # the request did not fit one receive: the connection dies
                request, server_conn = events[0], ServerConnection()
                if isinstance(request, Register):
                    sock.sendall(server_conn.send(Registered(client_id=keys.client_id)))
                elif isinstance(request, SendPublicKey):
                    keys.aes_key = new_aes_key()
                    sealed = encrypt_aes_key(import_public_key(request.public_key), keys.aes_key)
                    sock.sendall(server_conn.send(PublicKeyReceived(keys.client_id, sealed)))
                elif isinstance(request, FilePacketStarted):
                    state["ciphertext"] += b"".join(e.data for e in events if isinstance(e, FileContent))
                    if request.packet_number == request.total_packets:
                        plain = crypto.decrypt(keys.aes_key, state["ciphertext"])
                        sock.sendall(server_conn.send(FileReceived(
                            keys.client_id, len(state["ciphertext"]), request.file_name, cksum(plain))))
                        state["ciphertext"] = b""
                elif isinstance(request, CrcRetry):
                    sock.sendall(b"\x00")  # a single byte, then the close
                else:
                    sock.sendall(server_conn.send(Acknowledged(client_id=keys.client_id)))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        write_transfer_info(work, f"127.0.0.1:{listener.getsockname()[1]}", "alice", data.name)
        result = run_client("--connection", "per-request", "--packet-size", "4000")
    finally:
        stop.set()
        thread.join(5)
        listener.close()
    assert result.code == ExitCode.OK, result.err
    assert max(state["sizes"]) <= ONE_RECEIVE and state["connections"] >= 2 + 3 + 1
