"""Replies real servers vary in, which the client accepts (issue: a reference client).

Each fake server answers as one seen on the wire: a 1603 with the plaintext
size, a 1604 or a 1606 without the client id, a version byte other than 3.
What proves a file (its cksum) and what names a client (an id that is there)
are still checked.
"""

from __future__ import annotations

from client.__main__ import ExitCode
from client_fakes import (
    Keys,
    file_received,
    handshake_register,
    make_file,
    registered_folder,
    run_against,
)
from protocol import CrcOk, FileReceived, Reconnect, ServerConnection
from wire_by_hand import response

SMALL_PACKET = "1024"


def test_a_1603_with_the_plaintext_size_and_an_empty_1604(work, run_client):
    data = make_file(work, size=100_000)
    keys = Keys()

    def script(server):
        peer = server.accept()
        handshake_register(peer, keys)
        received = peer.receive_file(keys.aes_key)
        answer = file_received(keys, received)
        peer.reply(FileReceived(keys.client_id, len(received.plaintext), answer.file_name, answer.cksum))
        peer.expect(CrcOk)
        peer.send_raw(response(1604, b""))  # no client id
        peer.expect_closed()

    result = run_against(script, work, data, run_client, "--packet-size", SMALL_PACKET)
    assert result.code == ExitCode.OK, result.err


def test_a_wrong_cksum_is_still_a_mismatch_whatever_the_size_field_says(work, run_client):
    data = make_file(work, size=5000)
    keys = Keys()

    def script(server):
        peer = server.accept()
        handshake_register(peer, keys)
        for _ in range(4):  # the upload and its 3 resends
            received = peer.receive_file(keys.aes_key)
            answer = file_received(keys, received, cksum_delta=1)
            peer.reply(FileReceived(keys.client_id, len(received.plaintext), answer.file_name, answer.cksum))
            peer.next_request()  # 901, or 902 at the end
        peer.send_raw(response(1604, b""))
        peer.expect_closed()

    result = run_against(script, work, data, run_client, "--packet-size", SMALL_PACKET)
    assert result.code == ExitCode.CHECKSUM, result.err


def test_a_1604_naming_another_client_is_still_refused(work, run_client):
    data = make_file(work, size=5000)
    keys = Keys()

    def script(server):
        peer = server.accept()
        handshake_register(peer, keys)
        received = peer.receive_file(keys.aes_key)
        peer.reply(file_received(keys, received))
        for _ in range(4):  # the 900 and its 3 retries, each answered with a stranger's id
            peer.expect(CrcOk)
            peer.send_raw(response(1604, b"x" * 16))

    result = run_against(script, work, data, run_client, "--packet-size", SMALL_PACKET)
    assert result.code == ExitCode.SERVER_ERROR, result.err
    assert "carries client id" in result.err


def test_a_server_version_byte_other_than_3_and_an_empty_1606(work, run_client):
    data = make_file(work, size=5000)
    keys = Keys()
    registered_folder(work, keys)

    def script(server):
        peer = server.accept()
        peer.expect(Reconnect)
        peer.send_raw(response(1606, b"", version=4))  # unknown: register again
        handshake_register_v4(peer, keys)
        received = peer.receive_file(keys.aes_key)
        sent = ServerConnection().send(file_received(keys, received))
        peer.send_raw(bytes([4]) + sent[1:])
        peer.expect(CrcOk)
        peer.send_raw(response(1604, keys.client_id, version=4))
        peer.expect_closed()

    result = run_against(script, work, data, run_client, "--packet-size", SMALL_PACKET)
    assert result.code == ExitCode.OK, result.err


def handshake_register_v4(peer, keys: Keys) -> None:
    """825 → 1600, 826 → 1602, every answer with version byte 4."""
    real_reply = peer.reply

    def reply_v4(response) -> None:
        peer.send_raw(bytes([4]) + peer.conn.send(response)[1:])

    peer.reply = reply_v4
    try:
        handshake_register(peer, keys)
    finally:
        peer.reply = real_reply
