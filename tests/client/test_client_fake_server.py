"""The client against scripted fake servers: flows, retries, CRC, time-outs."""

from __future__ import annotations

import os
import stat
import struct
import time


from client.__main__ import ExitCode
from client.upload import SERVER_ERROR_MESSAGE
from protocol import (
    Acknowledged,
    CrcAbort,
    CrcOk,
    CrcRetry,
    FileReceived,
    GeneralError,
    ProtocolError,
    PublicKeyReceived,
    Reconnect,
    ReconnectRefused,
    Register,
    Registered,
    RegistrationFailed,
    SendPublicKey,
    ServerConnection,
)
from protocol.crypto import encrypt_aes_key, generate_private_key, new_aes_key

from client_fakes import (
    NAME,
    FakeServer,
    Keys,
    Packet,
    accept_upload,
    file_received,
    handshake_reconnect,
    handshake_register,
    make_file,
    refuse_upload,
    registered_folder,
    run_against,
    write_transfer_info,
)

SMALL_PACKET = "1024"


# -- the normal flows ------------------------------------------------------------


def test_first_run_registers_uploads_and_writes_me_info(work, run_client):
    data = make_file(work, size=5000)
    keys = Keys()
    seen = {}

    def script(server):
        peer = server.accept()
        seen["register"] = handshake_register(peer, keys)
        seen["file"] = accept_upload(peer, keys)
        peer.expect_closed()

    result = run_against(script, work, data, run_client, "--packet-size", SMALL_PACKET)

    assert result.code == ExitCode.OK, result.err
    assert seen["register"].name == NAME
    received = seen["file"]
    assert received.plaintext == data.read_bytes()
    # One CBC stream cut into packets: numbered from 1, same total and sizes.
    total = len(received.packets)
    assert total == -(-len(received.ciphertext) // 1024) == 5
    for number, packet in enumerate(received.packets, start=1):
        assert packet.fields.packet_number == number
        assert packet.fields.total_packets == total
        assert packet.fields.content_size == len(received.ciphertext) == 5008
        assert packet.fields.orig_file_size == 5000
        assert packet.fields.file_name.text == b"data.bin"
        assert packet.fields.client_id == keys.client_id
    me_info = (work / "me.info").read_text().splitlines()
    assert me_info[0] == NAME
    assert me_info[1] == keys.client_id.hex()
    assert (work / "priv.key").read_text().strip() == me_info[2]
    for name in ("me.info", "priv.key"):
        assert stat.S_IMODE((work / name).stat().st_mode) == 0o600
    assert "uploaded 'data.bin'" in result.err


def test_second_run_reconnects_with_me_info(work, run_client):
    data = make_file(work)
    keys = Keys()
    registered_folder(work, keys)

    def script(server):
        peer = server.accept()
        reconnect = handshake_reconnect(peer, keys)
        assert reconnect.client_id == keys.client_id and reconnect.name == NAME
        accept_upload(peer, keys)
        peer.expect_closed()

    result = run_against(script, work, data, run_client)
    assert result.code == ExitCode.OK, result.err


def test_several_files_in_one_session_each_with_a_fresh_key(work, run_client, tmp_path):
    files = [make_file(tmp_path, f"f{i}.bin", size) for i, size in enumerate((0, 15, 16, 70000))]
    keys = Keys()
    got = []

    def script(server):
        peer = server.accept()
        handshake_register(peer, keys)
        got.append(accept_upload(peer, keys))
        for _ in files[1:]:
            handshake_reconnect(peer, keys)
            got.append(accept_upload(peer, keys))
        peer.expect_closed()

    with FakeServer(script) as server:
        result = run_client("--server", server.address, "--name", NAME, *map(str, files))
    assert result.code == ExitCode.OK, result.err
    assert [g.plaintext for g in got] == [f.read_bytes() for f in files]
    assert [g.first.file_name.text for g in got] == [f.name.encode() for f in files]
    assert [len(g.ciphertext) for g in got] == [16, 16, 32, 70016]


def test_name_with_spaces_and_non_ascii_letters_goes_as_utf8(work, run_client):
    data = make_file(work, "rapport d'été ünïcødé.txt", 100)
    keys = Keys()
    seen = {}

    def script(server):
        peer = server.accept()
        handshake_register(peer, keys)
        seen["file"] = accept_upload(peer, keys)

    result = run_against(script, work, data, run_client)
    assert result.code == ExitCode.OK, result.err
    assert seen["file"].first.file_name.text == data.name.encode("utf-8")


# -- 1601 and 1606 ------------------------------------------------------------------


def test_taken_name_stops_with_exit_4(work, run_client):
    data = make_file(work)

    def script(server):
        peer = server.accept()
        peer.expect(Register)
        peer.reply(RegistrationFailed())
        peer.expect_closed()

    result = run_against(script, work, data, run_client)
    assert result.code == ExitCode.REGISTRATION_REFUSED
    assert "taken" in result.err and "'alice'" in result.err
    assert not (work / "me.info").exists()


def test_1606_registers_again_and_rewrites_me_info(work, run_client):
    data = make_file(work)
    old = Keys()
    registered_folder(work, old)
    new = Keys()

    def script(server):
        peer = server.accept()
        peer.expect(Reconnect)
        peer.reply(ReconnectRefused(client_id=os.urandom(16)))
        register = handshake_register(peer, new)
        assert register.name == NAME
        accept_upload(peer, new)

    result = run_against(script, work, data, run_client)
    assert result.code == ExitCode.OK, result.err
    assert (work / "me.info").read_text().splitlines()[1] == new.client_id.hex()
    assert SERVER_ERROR_MESSAGE not in result.err


# -- 1607 and unexpected replies ----------------------------------------------------


def test_1607_is_retried_then_succeeds(work, run_client):
    data = make_file(work)
    keys = Keys()

    def script(server):
        peer = server.accept()
        peer.expect(Register)
        peer.reply(GeneralError())
        handshake_register(peer, keys)
        accept_upload(peer, keys)

    result = run_against(script, work, data, run_client)
    assert result.code == ExitCode.OK, result.err
    assert result.err.splitlines().count(SERVER_ERROR_MESSAGE) == 1


def test_1607_four_times_is_fatal_and_names_the_step(work, run_client):
    data = make_file(work)
    keys = Keys()

    def script(server):
        peer = server.accept()
        peer.expect(Register)
        peer.reply(Registered(client_id=keys.client_id))
        for _ in range(4):
            peer.expect(SendPublicKey)
            peer.reply(GeneralError())
        peer.expect_closed()

    result = run_against(script, work, data, run_client)
    assert result.code == ExitCode.SERVER_ERROR
    assert result.err.splitlines().count(SERVER_ERROR_MESSAGE) == 4
    assert "sending the public key (826) failed after 4 attempts" in result.err
    assert "1607" in result.err


def test_unexpected_reply_counts_as_an_error(work, run_client):
    data = make_file(work)

    def script(server):
        peer = server.accept()
        for _ in range(4):
            peer.expect(Register)
            peer.reply(Acknowledged(client_id=bytes(16)))
        peer.expect_closed()

    result = run_against(script, work, data, run_client)
    assert result.code == ExitCode.SERVER_ERROR
    assert result.err.splitlines().count(SERVER_ERROR_MESSAGE) == 4
    assert "registration (825) failed" in result.err and "1604" in result.err


def test_aes_key_for_another_key_is_an_error(work, run_client):
    data = make_file(work)
    keys = Keys()

    def script(server):
        peer = server.accept()
        peer.expect(Register)
        peer.reply(Registered(client_id=keys.client_id))
        stranger = generate_private_key().public_key()
        for _ in range(4):
            peer.expect(SendPublicKey)
            peer.reply(
                PublicKeyReceived(
                    client_id=keys.client_id,
                    encrypted_aes_key=encrypt_aes_key(stranger, new_aes_key()),
                )
            )

    result = run_against(script, work, data, run_client)
    assert result.code == ExitCode.SERVER_ERROR
    assert "does not decrypt" in result.err


def test_malformed_reply_is_retried_on_a_new_connection(work, run_client):
    data = make_file(work)
    keys = Keys()

    def script(server):
        peer = server.accept()
        peer.expect(Register)
        # 1600 with a payload of 3 bytes: variant 11 says clients check sizes.
        peer.send_raw(struct.pack("<BHI", 3, 1600, 3) + b"abc")
        peer.expect_closed()
        peer = server.accept()
        handshake_register(peer, keys)
        accept_upload(peer, keys)

    result = run_against(script, work, data, run_client)
    assert result.code == ExitCode.OK, result.err
    assert result.err.splitlines().count(SERVER_ERROR_MESSAGE) == 1


def test_1607_after_upload_resends_on_a_new_connection_after_827(work, run_client):
    data = make_file(work, size=3000)
    keys = Keys()

    def script(server):
        peer = server.accept()
        handshake_register(peer, keys)
        refuse_upload(peer, keys)
        peer = server.accept()
        handshake_reconnect(peer, keys)
        received = accept_upload(peer, keys)
        assert received.plaintext == data.read_bytes()

    result = run_against(script, work, data, run_client, "--packet-size", SMALL_PACKET)
    assert result.code == ExitCode.OK, result.err
    assert result.err.splitlines().count(SERVER_ERROR_MESSAGE) == 1


def test_1607_in_the_middle_of_an_upload_stops_sending(work, run_client):
    data = make_file(work, size=4 * 1024 * 1024)
    keys = Keys()

    def script(server):
        peer = server.accept()
        handshake_register(peer, keys)
        first = peer.expect(Packet)
        assert first.fields.total_packets == 4097
        peer.reply(GeneralError())
        # The client notices and gives up this connection well before the end.
        count = 1
        try:
            while isinstance(peer.next_request(), Packet):
                count += 1
        except ProtocolError:
            pass  # closed in the middle of a packet
        assert count < 4097
        peer = server.accept()
        handshake_reconnect(peer, keys)
        accept_upload(peer, keys)

    # --strict: an early 1607 would otherwise switch the layout (tests/client/test_client_fallback.py)
    result = run_against(script, work, data, run_client, "--packet-size", SMALL_PACKET, "--strict")
    assert result.code == ExitCode.OK, result.err
    assert result.err.splitlines().count(SERVER_ERROR_MESSAGE) == 1


# -- CRC ------------------------------------------------------------------------------


def test_crc_mismatch_sends_901_and_resends_without_waiting(work, run_client):
    data = make_file(work, size=2000)
    keys = Keys()

    def script(server):
        peer = server.accept()
        handshake_register(peer, keys)
        received = peer.receive_file(keys.aes_key)
        peer.reply(file_received(keys, received, cksum_delta=1))
        retry = peer.expect(CrcRetry)
        assert retry.file_name.text == b"data.bin"
        # No 1604 after the 901: a client that waited for one would hang here.
        accept_upload(peer, keys)

    result = run_against(script, work, data, run_client)
    assert result.code == ExitCode.OK, result.err
    assert "cksum mismatch" in result.err
    assert SERVER_ERROR_MESSAGE not in result.err


def test_stray_1604_after_901_is_tolerated(work, run_client):
    data = make_file(work, size=2000)
    keys = Keys()

    def script(server):
        peer = server.accept()
        handshake_register(peer, keys)
        received = peer.receive_file(keys.aes_key)
        peer.reply(file_received(keys, received, cksum_delta=1))
        peer.expect(CrcRetry)
        peer.reply(Acknowledged(client_id=keys.client_id))  # variant 8
        accept_upload(peer, keys)

    result = run_against(script, work, data, run_client)
    assert result.code == ExitCode.OK, result.err
    assert SERVER_ERROR_MESSAGE not in result.err


def test_crc_mismatch_four_times_sends_902_and_exits_6(work, run_client):
    data = make_file(work, size=2000)
    keys = Keys()
    uploads = []

    def script(server):
        peer = server.accept()
        handshake_register(peer, keys)
        for attempt in range(4):
            if attempt:
                peer.expect(CrcRetry)
            received = peer.receive_file(keys.aes_key)
            uploads.append(received.plaintext)
            peer.reply(file_received(keys, received, cksum_delta=7))
        peer.expect(CrcAbort)
        peer.reply(Acknowledged(client_id=keys.client_id))
        peer.expect_closed()

    result = run_against(script, work, data, run_client)
    assert result.code == ExitCode.CHECKSUM
    assert uploads == [data.read_bytes()] * 4
    assert "gave up (902)" in result.err


def test_content_size_mismatch_is_a_crc_mismatch(work, run_client):
    data = make_file(work, size=100)
    keys = Keys()

    def script(server):
        peer = server.accept()
        handshake_register(peer, keys)
        received = peer.receive_file(keys.aes_key)
        reply = file_received(keys, received)
        peer.reply(
            FileReceived(
                client_id=keys.client_id,
                content_size=reply.content_size - 16,
                file_name=reply.file_name,
                cksum=reply.cksum,
            )
        )
        peer.expect(CrcRetry)
        accept_upload(peer, keys)

    result = run_against(script, work, data, run_client)
    assert result.code == ExitCode.OK, result.err
    assert "cksum mismatch" in result.err


# -- the network ----------------------------------------------------------------------


def test_a_server_that_never_answers_times_out(work, run_client):
    data = make_file(work)

    def script(server):
        peer = server.accept()
        peer.expect(Register)
        peer.expect_closed()

    result = run_against(script, work, data, run_client, "--timeout", "0.5")
    assert result.code == ExitCode.NETWORK
    assert "registration (825)" in result.err and "did not answer within 0.5 s" in result.err


def test_a_server_that_trickles_its_answer_is_bound_by_the_timeout(work, run_client):
    """--timeout bounds a whole answer: one byte every 0.7 × the time-out does not stretch it."""
    data = make_file(work)
    timeout = 1.0
    answer = ServerConnection().send(Registered(client_id=bytes(16)))
    trickle_time = len(answer) * 0.7 * timeout  # 16 s, about 20 × the time-out

    def script(server):
        peer = server.accept()
        peer.expect(Register)
        try:
            for byte in answer:
                peer.send_raw(bytes([byte]))
                time.sleep(0.7 * timeout)
        except OSError:  # the client gave up and closed: what the test wants
            pass

    started = time.monotonic()
    result = run_against(script, work, data, run_client, "--timeout", f"{timeout:g}")
    elapsed = time.monotonic() - started
    assert result.code == ExitCode.NETWORK, result.err
    assert "did not finish its answer within 1 s" in result.err  # part of it came
    assert elapsed < 5 * timeout < trickle_time / 3


def test_a_slow_answer_to_a_large_file_is_awaited_up_to_the_timeout(work, run_client):
    """A server that read the whole file may take long over it: no resend, no switch."""
    data = make_file(work, size=3 * 1024 * 1024)
    keys = Keys()
    # Longer than any wait guessed from the file's size (5 s plus 20 MB/s
    # before), well within --timeout.
    slow = 5.5

    def script(server):
        peer = server.accept()
        handshake_register(peer, keys)
        received = peer.receive_file(keys.aes_key)
        time.sleep(slow)
        peer.reply(file_received(keys, received))
        peer.expect(CrcOk)
        peer.reply(Acknowledged(client_id=keys.client_id))

    result = run_against(script, work, data, run_client, "--timeout", f"{3 * slow:g}")
    assert result.code == ExitCode.OK, result.err
    assert SERVER_ERROR_MESSAGE not in result.err and "refused the layout" not in result.err


def test_no_server_is_a_network_error(work, run_client):
    data = make_file(work)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    write_transfer_info(work, f"127.0.0.1:{port}", NAME, data.name)
    result = run_client()
    assert result.code == ExitCode.NETWORK
    assert "connection refused" in result.err


def test_server_closing_mid_upload_is_a_network_error(work, run_client):
    data = make_file(work, size=2 * 1024 * 1024)
    keys = Keys()

    def script(server):
        peer = server.accept()
        handshake_register(peer, keys)
        peer.expect(Packet)
        peer.close()

    result = run_against(script, work, data, run_client, "--packet-size", SMALL_PACKET)
    assert result.code == ExitCode.NETWORK
    assert "upload of 'data.bin'" in result.err


def test_upload_failing_four_times_is_fatal(work, run_client):
    data = make_file(work, size=3000)
    keys = Keys()

    def script(server):
        peer = server.accept()
        handshake_register(peer, keys)
        for attempt in range(4):
            if attempt:
                peer = server.accept()
                handshake_reconnect(peer, keys)
            refuse_upload(peer, keys)

    result = run_against(script, work, data, run_client)
    assert result.code == ExitCode.SERVER_ERROR
    assert result.err.splitlines().count(SERVER_ERROR_MESSAGE) == 4
    assert "error: upload of 'data.bin' failed after 4 attempts" in result.err


def test_a_file_has_one_retry_budget_across_its_resends(work, run_client):
    """Each upload of the file refused once (1607), each received one with another cksum:
    the retries are counted once for the file, never from 1 again."""
    data = make_file(work, size=3000)
    keys = Keys()

    def script(server):
        peer = server.accept()
        handshake_register(peer, keys)
        for upload in range(4):
            if upload:
                peer.expect(CrcRetry)
            refuse_upload(peer, keys)
            if upload == 3:
                return  # the budget is spent: the client gives up on the file
            peer = server.accept()
            handshake_reconnect(peer, keys)
            peer.reply(file_received(keys, peer.receive_file(keys.aes_key), cksum_delta=1))

    result = run_against(script, work, data, run_client)
    assert result.code == ExitCode.SERVER_ERROR, result.err
    assert "error: upload of 'data.bin' failed after 4 attempts" in result.err
    retries = [line for line in result.err.splitlines() if "(retry " in line]
    assert [line.split("(retry ")[1] for line in retries] == ["1 of 3)", "2 of 3)", "3 of 3)"]


def test_900_answered_with_1607_is_retried(work, run_client):
    data = make_file(work, size=3000)
    keys = Keys()

    def script(server):
        peer = server.accept()
        handshake_register(peer, keys)
        received = peer.receive_file(keys.aes_key)
        peer.reply(file_received(keys, received))
        for _ in range(3):
            peer.expect(CrcOk)
            peer.reply(GeneralError())
        peer.expect(CrcOk)
        peer.reply(Acknowledged(client_id=keys.client_id))

    result = run_against(script, work, data, run_client)
    assert result.code == ExitCode.OK, result.err
    assert result.err.splitlines().count(SERVER_ERROR_MESSAGE) == 3


def test_1607_then_close_during_an_upload_is_an_error_reply(work, run_client):
    data = make_file(work, size=8 * 1024 * 1024)
    keys = Keys()

    def script(server):
        peer = server.accept()
        handshake_register(peer, keys)
        peer.expect(Packet)
        peer.reply(GeneralError())
        peer.close()
        peer = server.accept()
        handshake_reconnect(peer, keys)
        accept_upload(peer, keys)

    # --strict: a 1607 at the first packet would otherwise switch the layout (test_client_fallback.py)
    result = run_against(script, work, data, run_client, "--packet-size", SMALL_PACKET, "--strict")
    assert result.code == ExitCode.OK, result.err
    assert result.err.splitlines().count(SERVER_ERROR_MESSAGE) == 1


def _1603_naming(file_name: str):
    """A server script: the first upload answered with a 1603 that names ``file_name``
    (the client closes), the upload again on a new connection accepted."""
    keys = Keys()

    def script(server):
        peer = server.accept()
        handshake_register(peer, keys)
        received = peer.receive_file(keys.aes_key)
        peer.reply(file_received(keys, received, file_name=file_name))
        peer.expect_closed()
        peer = server.accept()
        handshake_reconnect(peer, keys)
        accept_upload(peer, keys)

    return script


def test_1603_for_another_file_is_an_error(work, run_client):
    data = make_file(work, size=100)
    result = run_against(_1603_naming("other.bin"), work, data, run_client, "--verbose")
    assert result.code == ExitCode.OK, result.err
    assert result.err.splitlines().count(SERVER_ERROR_MESSAGE) == 1
    assert "1603 names the file 'other.bin'" in result.err


def _on_screen(text: str) -> None:
    """What the client wrote: no character but the line feeds can act on a terminal."""
    for line in text.splitlines():
        assert line.isprintable(), ascii(line)
    assert "\r" not in text


#: What a hostile server names the file in its 1603: a window title, a cleared
#: screen, a carriage return and a forged line, a C1 CSI and a bidi override.
HOSTILE_1603_NAME = "\x1b]0;owned\x07\x1b[2J\rok\nsummary: 1 file, 1 verified\u009b31m\u202eexe.bin"


def test_a_file_name_from_a_hostile_server_is_shown_escaped(work, run_client):
    # issue 22 point 5: the server is not authenticated; what it sends is a stranger's text
    data = make_file(work, size=100)
    result = run_against(_1603_naming(HOSTILE_1603_NAME), work, data, run_client, "--verbose")
    assert result.code == ExitCode.OK, result.err
    _on_screen(result.err + result.out)
    assert "1603 names the file '\\x1b]0;owned\\x07\\x1b[2J\\x0dok\\x0asummary" in result.err
    assert "\\u009b31m\\u202eexe.bin'" in result.err


def test_local_file_names_with_controls_are_shown_escaped(work, run_client, tmp_path):
    names = ["evil\x1b[31m\x07\u202etxt.exe", "cr\rforged\u009b.bin"]
    files = [make_file(tmp_path, name, size=3000) for name in names]
    keys = Keys()

    def script(server):
        peer = server.accept()
        handshake_register(peer, keys)
        for number, path in enumerate(files):
            if number:
                handshake_reconnect(peer, keys)
            received = accept_upload(peer, keys)
            assert received.first.file_name.text == path.name.encode()  # sent as it is

    with FakeServer(script) as server:
        result = run_client("--server", server.address, "--name", NAME, "--verbose", *map(str, files))
    assert result.code == ExitCode.OK, result.err
    _on_screen(result.err + result.out)
    summary = result.err[result.err.index("summary:"):]  # the summary names each file
    assert "evil\\x1b[31m\\x07\\u202etxt.exe" in summary and "cr\\x0dforged\\u009b.bin" in summary
