"""docs/HOSTILE.md D: file transfer (828) and CRC (900/901/902), against the real server."""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import threading
import time

import pytest

from helpers import (
    ANY_ID,
    Identity,
    file_packets,
    make_identity,
    packet_bytes,
    reconnect,
    upload,
)
from hostile_helpers import (
    Guard,
    changed,
    client_dir,
    client_files,
    db_rows,
    file_count,
    proc_status,
    temp_files,
    temp_files_gone,
    verified_upload,
)
from timing_helpers import HANG_TIMEOUT, TIMER_EARLY, round_trip, timer_bound, wait_until
from protocol import (
    Acknowledged,
    ConnectionClosed,
    CrcAbort,
    CrcOk,
    CrcRetry,
    FileReceived,
    GeneralError,
    Register,
    Registered,
    SendFilePacket,
    cksum,
    crypto,
)
from protocol.names import NameField
from protocol.wire import REQUEST_HEADER_SIZE, RESPONSE_HEADER_SIZE

MIB = 1024 * 1024
#: D3 rounds: the fastest of this many replies per kind sheds what load adds.
D3_ROUNDS = 15
#: D3: the kinds' fastest replies may differ by this fraction of the fastest
#: (about 1 ms each; a kind that skips or adds a step shows as a multiple).
D3_SPREAD = 1.0
#: D8: 65535 packets take seconds; only a hang takes this long (s).
D8_HANG = 120


def _replies_then_sentinel(client) -> list:
    """Replies before a fresh 825's 1600, or until the server closed."""
    client.send(Register(client_id=ANY_ID, name=f"sentinel-{os.urandom(6).hex()}"))
    replies = []
    while True:
        event = client.receive()
        if isinstance(event, (Registered, ConnectionClosed)):
            return replies
        replies.append(event)


def _nothing_kept(server, identity, name: str = "d.bin") -> None:
    assert temp_files_gone(server)
    assert name not in client_files(server, identity.client_id)
    assert db_rows(server, "SELECT COUNT(*) FROM files WHERE ID = ? AND FileName = ?", identity.client_id, name) == [(0,)]


# -- D1: content_size refused at the first packet ------------------------------------------------


@pytest.mark.parametrize(
    "content_size, orig_size",
    [(112, 10), (5008, 5008), (5000, 4999), (0, 0), (16, 16)],
    ids=["orig-too-small", "no-padding-block", "not-a-multiple-of-16", "zero", "empty-needs-16"],
)
def test_d1_content_size_not_fitting_orig_size(server, content_size, orig_size):
    guard = Guard(server)
    with server.client() as client:
        identity = make_identity(client)
        packets = [changed(p, content_size=content_size, orig_file_size=orig_size)
                   for p in file_packets(identity, "d.bin", os.urandom(5000))]
        client.send(packets[0])
        assert isinstance(client.receive(), GeneralError)  # on that packet
        assert temp_files(server) == []  # nothing buffered or written
        for packet in packets[1:]:
            client.send(packet)
        assert _replies_then_sentinel(client) == []  # the rest of the attempt is dropped quietly
    _nothing_kept(server, identity)
    guard.check()


def test_d1_content_over_max_content_size(server_factory):
    server = server_factory("--max-content-size", "100000")
    guard = Guard(server)
    with server.client() as client:
        identity = make_identity(client)
        packets = file_packets(identity, "d.bin", os.urandom(200_000), 8192)
        client.send(packets[0])
        assert isinstance(client.receive(), GeneralError)
        assert temp_files(server) == []
        for packet in packets[1:]:
            client.send(packet)
        assert _replies_then_sentinel(client) == []
        _nothing_kept(server, identity)
        assert isinstance(upload(client, identity, "ok.bin", os.urandom(90_000), 8192), FileReceived)
    assert "is over the limit" in server.log()
    guard.check()


def test_d1_over_the_disk_threshold(server_factory, tmpfs, tmp_path):
    """A claim larger than the free space is refused before any byte is written."""
    data_dir = tmp_path / "data"
    if tmpfs.mount(data_dir / "received_files", "2m"):
        server = server_factory("--min-free-disk", "0", data_dir=data_dir)
        claims = [0xFFFFFFEF, 3_000_000]  # 4 GiB - 16 of ciphertext, and just over 2 MiB
    else:  # no mount rights: the threshold flag stands in for a small disk
        server = server_factory("--min-free-disk", str(2**60), data_dir=data_dir)
        claims = [3_000_000]
    guard = Guard(server) if len(claims) == 2 else None
    with server.client() as client, server.client() as other:
        identity = make_identity(client)
        for claim in claims:
            first = changed(file_packets(identity, "d.bin", b"x" * 100)[0],
                             content_size=crypto.padded_size(claim), orig_file_size=claim, total_packets=9)
            client.send(first)
            assert isinstance(client.receive(), GeneralError)
            assert temp_files(server) == []
        if guard is not None:
            # room is reserved for uploads in progress: two 1.2 MB claims on 2 MiB do not both start
            second = make_identity(other)
            big = [file_packets(who, "big.bin", os.urandom(1_200_000), 65536) for who in (identity, second)]
            client.send(big[0][0])
            assert client.nothing_within(0.2)  # accepted, waiting for the next packet
            other.send(big[1][0])
            assert isinstance(other.receive(), GeneralError)
            for packet in big[0][1:]:
                client.send(packet)
            assert isinstance(client.receive(), FileReceived)
    assert "not enough disk space" in server.log()
    if guard is not None:
        guard.check()


# -- D2: inconsistent packet sequences ---------------------------------------------------------------


def _sequence(kind: str, p: list[SendFilePacket]) -> list[SendFilePacket]:
    last = p[-1]
    return {
        "number-0": [changed(p[0], packet_number=0)] + p[1:],
        "number-over-total": p[:2] + [changed(p[2], packet_number=7)] + p[3:],
        "total-0": [changed(x, total_packets=0) for x in p],
        "out-of-order": [p[0], p[2], p[3], p[4]],
        "duplicate": [p[0], p[1], p[1], p[2], p[3], p[4]],
        "name-changes": p[:2] + [changed(p[2], file_name=NameField.from_text("other.bin"))] + p[3:],
        "total-changes": p[:2] + [changed(x, total_packets=6) for x in p[2:]],
        "content-size-changes": p[:2] + [changed(x, content_size=x.content_size + 16) for x in p[2:]],
        "orig-size-changes": p[:2] + [changed(x, orig_file_size=x.orig_file_size - 1) for x in p[2:]],
        "sum-past-content-size": p[:-1] + [changed(last, content=last.content + b"\x01" * 32)],
        "middle-packet-too-long": [p[0], changed(p[1], content=p[1].content + p[2].content + p[3].content + p[4].content + b"\x05" * 16)] + p[2:],
        "last-packet-short": p[:-1] + [changed(last, content=last.content[:-16])],
        "packet-without-upload": p[1:],
    }[kind]


D2_KINDS = [
    "number-0", "number-over-total", "total-0", "out-of-order", "duplicate", "name-changes",
    "total-changes", "content-size-changes", "orig-size-changes", "sum-past-content-size",
    "middle-packet-too-long", "last-packet-short", "packet-without-upload",
]


@pytest.mark.parametrize("kind", D2_KINDS)
def test_d2_inconsistent_packet_sequence(server, kind):
    guard = Guard(server)
    data = os.urandom(5000)
    with server.client() as client:
        identity = make_identity(client)
        packets = file_packets(identity, "d.bin", data)
        assert len(packets) == 5
        for packet in _sequence(kind, packets):
            client.send(packet)
        replies = _replies_then_sentinel(client)
        assert replies and all(isinstance(r, GeneralError) for r in replies), replies
        _nothing_kept(server, identity)
        assert "other.bin" not in client_files(server, identity.client_id)
    # the client sends the file again, from packet 1: served
    with server.client() as client:
        reconnect(client, identity)
        answer = upload(client, identity, "d.bin", data)
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
    assert (client_dir(server, identity.client_id) / "d.bin").read_bytes() == data
    guard.check()


def test_d2_first_packet_again_restarts_the_upload(server):
    """(1, 1, 2...): a new first packet replaces the upload (a client's resend); never appended."""
    guard = Guard(server)
    first, second = os.urandom(5000), os.urandom(5000)
    with server.client() as client:
        identity = make_identity(client)
        a, b = file_packets(identity, "d.bin", first), file_packets(identity, "d.bin", second)
        for packet in a[:3] + b:
            client.send(packet)
        answer = client.receive()
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(second)
        assert _replies_then_sentinel(client) == []
    assert (client_dir(server, identity.client_id) / "d.bin").read_bytes() == second
    assert file_count(server, identity.client_id) == 1 and temp_files_gone(server)
    guard.check()


# -- D3: decryption failures all look the same ---------------------------------------------------------


def _failing_upload(identity, kind: str) -> list[SendFilePacket]:
    data = os.urandom(3000)
    if kind == "bad-padding":  # tampered last block
        packets = file_packets(identity, "d.bin", data)
        last = packets[-1]
        packets[-1] = changed(last, content=last.content[:-1] + bytes([last.content[-1] ^ 0x55]))
        return packets
    if kind == "wrong-key":
        stranger = Identity(identity.name, identity.client_id, None, crypto.new_aes_key())
        return file_packets(stranger, "d.bin", data)
    if kind == "not-a-multiple-of-16":  # variant 6, the last packet's stream cut short
        packets = file_packets(identity, "d.bin", data, per_packet=True)
        cut = packets[-1].content[:-5]
        packets[-1] = changed(packets[-1], content=cut, content_size=len(cut))
        return packets
    raise ValueError(kind)


def test_d3_decryption_failures_are_indistinguishable(server_factory):
    # many failures on purpose: lift the budget that would refuse them after a few
    server = server_factory(
        "--max-decryption-failures-per-key", "100", "--max-decryption-failures-per-hour", "100"
    )
    guard = Guard(server)
    kinds = ["bad-padding", "wrong-key", "not-a-multiple-of-16"]
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    with server.client() as client:
        identity = make_identity(client)
    for round_number in range(D3_ROUNDS):
        # each kind first, second and third in turn: a refusal that comes right after
        # another (whose removal the blob port's worker has just done) must not stand for
        # its kind
        turn = round_number % len(kinds)
        with server.client() as client:  # a new connection each round: 6 errors close one
            client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reconnect(client, identity)
            for kind in kinds[turn:] + kinds[:turn]:
                packets = _failing_upload(identity, kind)
                raw = b"".join(packet_bytes(p) for p in packets[:-1])
                client.send_raw(raw)
                assert client.nothing_within(0.005), kind
                last = packet_bytes(packets[-1])
                client.sock.settimeout(10)
                started = time.perf_counter()
                client.send_raw(last)
                head = client.sock.recv(RESPONSE_HEADER_SIZE, socket.MSG_WAITALL)  # the whole reply
                times[kind].append(time.perf_counter() - started)
                assert head == b"\x03" + (1607).to_bytes(2, "little") + bytes(4), (kind, head)  # 1607, no payload
                assert temp_files(server) == []  # at once: the 1607 waited for its removal
            assert client.nothing_within(0.05)
    assert file_count(server, identity.client_id) == 0
    # the fastest of each kind: load on the machine only ever adds time
    fastest = {kind: min(t) for kind, t in times.items()}
    print(f"\nD3: time to 1607 (fastest of {D3_ROUNDS}, ms): "
          + ", ".join(f"{k} {v * 1000:.2f}" for k, v in fastest.items()))
    spread = max(fastest.values()) - min(fastest.values())
    assert spread <= D3_SPREAD * min(fastest.values()), fastest  # comparable timing
    log = server.log()
    assert len(re.findall(r"-> 1607 refused .*: decryption failed$", log, re.MULTILINE)) == 3 * D3_ROUNDS  # one text
    assert "padding" not in log.lower()
    guard.check()


# -- D4: the client goes away mid-file ------------------------------------------------------------------


@pytest.mark.parametrize("where", ["between-packets", "inside-a-packet"])
def test_d4_disconnect_after_packet_k_keeps_the_previous_version(server, where):
    guard = Guard(server)
    with server.client() as client:
        identity = make_identity(client)
        verified_upload(client, identity, "d.bin", b"verified version")
        packets = file_packets(identity, "d.bin", os.urandom(50_000), 8192)
        for packet in packets[:3]:
            client.send(packet)
        if where == "inside-a-packet":
            client.send_raw(packet_bytes(packets[3])[:1000])
        wait_until(lambda: len(temp_files(server)) == 1, "the upload's temp file")
    server.wait_log("connection closed in the middle of the file")
    wait_until(lambda: client_files(server, identity.client_id) == ["d.bin"], "the temp file removed")
    assert (client_dir(server, identity.client_id) / "d.bin").read_bytes() == b"verified version"
    assert db_rows(server, "SELECT FileName, Verified FROM files WHERE ID = ?", identity.client_id) == [("d.bin", 1)]
    guard.check()


@pytest.mark.parametrize("model", ["one-connection", "per-request"])
def test_d4_timeout_after_packet_k_leaves_nothing(server_factory, model):
    # a one-connection client idles out; a per-request upload stops progressing
    idle = 1.0
    server = server_factory("--idle-timeout", str(idle), "--message-deadline", str(idle))
    guard = Guard(server)
    with server.client() as client:
        identity = make_identity(client)
    packets = file_packets(identity, "d.bin", os.urandom(50_000), 8192)
    with server.client() as client:
        if model == "one-connection":
            reconnect(client, identity)
        for packet in packets[:3]:
            client.send(packet)
        wait_until(lambda: len(temp_files(server)) == 1, "the upload's temp file")
        assert client.closed_within(idle + HANG_TIMEOUT)  # idle between packets (or per-request: closed at once)
    wait_until(lambda: not temp_files(server), "temp file removed")
    _nothing_kept(server, identity)
    guard.check()


# -- D5: a valid multi-packet upload -------------------------------------------------------------------


def test_d5_valid_100_kb_binary_upload(server, tmp_path):
    # "temp + fsync + os.replace + dir fsync" cannot be seen from outside a
    # healthy run; test_g_faults.py fails each of those steps in the real
    # server and gets 1607, which shows each one is on the path.
    guard = Guard(server)
    data = bytes(range(256)) * 400  # every byte value, 102,400 bytes
    sent_name = NameField.parse(b"report.bin\0kept as sent".ljust(255, b"\x01"))
    with server.client() as client:
        identity = make_identity(client)
        packets = file_packets(identity, sent_name, data, 4000)
        for packet in packets:
            client.send(packet)
        answer = client.receive()
        # the row is committed (Verified 0) before the reply
        assert db_rows(server, "SELECT FileName, PathName, Verified FROM files WHERE ID = ?", identity.client_id) == [
            ("report.bin", f"received_files/{identity.client_id.hex()}/report.bin", 0)
        ]
    assert isinstance(answer, FileReceived)
    assert answer.client_id == identity.client_id
    assert answer.content_size == crypto.padded_size(len(data)) == sum(len(p.content) for p in packets)
    assert answer.file_name.raw == sent_name.raw  # byte for byte, garbage after the NUL included
    plain = tmp_path / "plain.bin"
    plain.write_bytes(data)
    expected = int(subprocess.run(["cksum", str(plain)], capture_output=True, text=True, check=True).stdout.split()[0])
    assert answer.cksum == expected == cksum(data)  # of the plaintext, as cksum(1) prints it
    assert (client_dir(server, identity.client_id) / "report.bin").read_bytes() == data
    assert temp_files_gone(server)
    guard.check(allowed=(plain,))


# -- D6: 900, 901, 902 ------------------------------------------------------------------------------------


def test_d6_crc_requests(server_factory):
    delay = 0.3
    server = server_factory("--retry-ack-delay", str(delay))
    guard = Guard(server)
    baseline = round_trip(server)
    data = os.urandom(5000)

    def verified():
        return db_rows(server, "SELECT FileName, Verified FROM files WHERE ID = ?", identity.client_id)

    with server.client() as client:
        identity = make_identity(client)
        ok = CrcOk(client_id=identity.client_id, file_name="d.bin")
        assert isinstance(upload(client, identity, "d.bin", data), FileReceived)
        assert isinstance(client.request(ok), Acknowledged)
        assert isinstance(client.request(ok), Acknowledged)  # idempotent
        assert verified() == [("d.bin", 1)]
        for request in (CrcOk, CrcRetry, CrcAbort):  # a file never uploaded
            assert isinstance(client.request(request(client_id=identity.client_id, file_name="nope")), GeneralError)
        for _ in range(3):  # 901 and the resend at once: no reply for the 901
            client.send(CrcRetry(client_id=identity.client_id, file_name="d.bin"))
            answer = upload(client, identity, "d.bin", data)
            assert isinstance(answer, FileReceived), answer
            assert verified() == [("d.bin", 1)]  # a pending version: the verified file stays
        started = time.monotonic()  # before the 901: the delay starts later
        client.send(CrcRetry(client_id=identity.client_id, file_name="d.bin"))
        assert isinstance(client.receive(), Acknowledged)  # 901 then silence: 1604 after the delay
        assert verified() == [("d.bin", 1)]
        assert delay - TIMER_EARLY <= time.monotonic() - started <= timer_bound(delay, baseline)
        assert isinstance(upload(client, identity, "d.bin", data), FileReceived)
        answer = client.request(CrcAbort(client_id=identity.client_id, file_name="d.bin"))
        assert isinstance(answer, Acknowledged) and answer.client_id == identity.client_id
        assert client.nothing_within(0.5)  # no stray reply
        # 902 gave the pending version up: the verified file stays as it was
        assert verified() == [("d.bin", 1)]
        # decision 5: a first upload given up is kept, not verified
        fresh = os.urandom(3000)
        assert isinstance(upload(client, identity, "first.bin", fresh), FileReceived)
        answer = client.request(CrcAbort(client_id=identity.client_id, file_name="first.bin"))
        assert isinstance(answer, Acknowledged)
    assert db_rows(server, "SELECT Verified FROM files WHERE ID = ? AND FileName = 'first.bin'",
                   identity.client_id) == [(0,)]
    assert (client_dir(server, identity.client_id) / "first.bin").read_bytes() == fresh
    assert (client_dir(server, identity.client_id) / "d.bin").read_bytes() == data
    guard.check()


# -- D7: the same name twice at once -----------------------------------------------------------------------


def test_d7_same_client_same_name_from_two_connections(server):
    guard = Guard(server)
    data_a, data_b = os.urandom(50_000), os.urandom(50_000)
    with server.client() as a, server.client() as b:
        identity = make_identity(a)
        reconnect(b, identity)
        packets_a = file_packets(identity, "same.bin", data_a, 4096)
        packets_b = file_packets(identity, "same.bin", data_b, 4096)
        a.send(packets_a[0])
        time.sleep(0.1)
        b.send(packets_b[0])
        assert isinstance(b.receive(), GeneralError)  # serialised: the holder goes on
        for packet in packets_a[1:]:
            a.send(packet)
        assert isinstance(a.receive(), FileReceived)
    assert file_count(server, identity.client_id) == 1
    assert (client_dir(server, identity.client_id) / "same.bin").read_bytes() == data_a
    guard.check()


def test_d7_same_client_same_name_interleaved(server):
    guard = Guard(server)
    datas = [os.urandom(200_000), os.urandom(200_000)]
    with server.client() as setup:
        identity = make_identity(setup)
    clients = [server.client(), server.client()]
    try:
        for client in clients:
            reconnect(client, identity)
        wires = [[packet_bytes(p) for p in file_packets(identity, "same.bin", d, 4096)] for d in datas]
        barrier = threading.Barrier(2)
        answers = [None, None]

        def send(index):
            barrier.wait(5)
            for raw in wires[index]:
                clients[index].send_raw(raw)
            answers[index] = _replies_then_sentinel(clients[index])

        threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        for client in clients:
            client.close()
    stored = (client_dir(server, identity.client_id) / "same.bin").read_bytes()
    assert stored in datas  # one complete upload, never interleaved bytes
    winner = datas.index(stored)
    assert [type(r) for r in answers[winner]][-1:] == [FileReceived]
    assert all(isinstance(r, (GeneralError, FileReceived)) for r in answers[0] + answers[1])
    assert file_count(server, identity.client_id) == 1 and temp_files_gone(server)
    guard.check()


def test_d7_one_client_streams_two_names_at_once(server):
    # Serialised per client *and name*: files of other names stream side by
    # side on other connections (a client's --jobs), each complete and verified.
    guard = Guard(server)
    datas = {"x.bin": os.urandom(40_000), "y.bin": os.urandom(40_000)}
    with server.client() as a, server.client() as b:
        identity = make_identity(a)
        reconnect(b, identity)  # the client's one key, now for both connections
        packets = {name: file_packets(identity, name, data, 4096) for name, data in datas.items()}
        for first, second in zip(packets["x.bin"], packets["y.bin"]):
            a.send(first)  # the two uploads interleave packet by packet
            b.send(second)
        for client, name in ((a, "x.bin"), (b, "y.bin")):
            answer = client.receive()
            assert isinstance(answer, FileReceived) and answer.cksum == cksum(datas[name]), answer
            assert isinstance(client.request(CrcOk(client_id=identity.client_id, file_name=name)),
                              Acknowledged)
    for name, data in datas.items():
        assert (client_dir(server, identity.client_id) / name).read_bytes() == data
    assert db_rows(server, "SELECT FileName, Verified FROM files WHERE ID = ? ORDER BY FileName",
                   identity.client_id) == [("x.bin", 1), ("y.bin", 1)]
    guard.check()


def test_d7_uploads_at_once_per_client_are_bounded(server_factory):
    server = server_factory("--max-uploads-per-client", "2")
    guard = Guard(server)
    data = os.urandom(20_000)
    clients = [server.client() for _ in range(3)]
    try:
        identity = make_identity(clients[0])
        for client in clients[1:]:
            reconnect(client, identity)  # persistent connections, one key
        packets = {name: file_packets(identity, name, data, 4096) for name in ("a", "b", "c")}
        for client, name in zip(clients[:2], packets):
            client.send(packets[name][0])
        wait_until(lambda: len(temp_files(server)) == 2, "two uploads stream")
        clients[2].send(packets["c"][0])
        assert isinstance(clients[2].receive(), GeneralError)  # a third name at once
        wait_until(lambda: "too many uploads of this client in progress" in server.log(),
                   "the refusal is logged")
        for client, name in zip(clients[:2], packets):
            for packet in packets[name][1:]:
                client.send(packet)
            assert isinstance(client.receive(), FileReceived)
        # the two are done: the third name may come now
        for packet in packets["c"]:
            clients[2].send(packet)
        assert isinstance(clients[2].receive(), FileReceived)
    finally:
        for client in clients:
            client.close()
    assert file_count(server, identity.client_id) == 3
    guard.check()


def test_d7_pending_versions_count_toward_the_uploads_per_client(server_factory):
    # Each later version of a stored name waits for its 900 as a temp file:
    # one connection must not hold more of them than --max-uploads-per-client.
    limit = 2
    server = server_factory("--max-uploads-per-client", str(limit))
    guard = Guard(server)
    names = [f"v{number}.bin" for number in range(limit + 1)]
    with server.client() as client:
        identity = make_identity(client)
        for name in names:
            verified_upload(client, identity, name, b"stored version")
        for name in names[:limit]:  # new versions, no verdict: pending
            assert isinstance(upload(client, identity, name, b"new version"), FileReceived)
        assert len(temp_files(server)) == limit
        assert isinstance(upload(client, identity, names[limit], b"new version"), GeneralError)
        assert len(temp_files(server)) == limit
        # a verdict frees its place: the refused name may come now
        assert isinstance(
            client.request(CrcOk(client_id=identity.client_id, file_name=names[0])), Acknowledged
        )
        assert isinstance(upload(client, identity, names[limit], b"new version"), FileReceived)
    wait_until(lambda: not temp_files(server), "the pending versions dropped with their connection")
    guard.check()


@pytest.mark.parametrize("verdict", ["900 on a new connection", "none"])
def test_d9_a_per_request_pending_version_outlives_its_connection_until_the_idle_timeout(
    server_factory, verdict
):
    idle = 3.0
    server = server_factory("--idle-timeout", str(idle))
    guard = Guard(server)
    with server.client() as client:
        identity = make_identity(client)
        verified_upload(client, identity, "p.bin", b"stored version")
    (packet,) = file_packets(identity, "p.bin", b"new version", 1 << 16)
    with server.client() as client:  # per-request: the 828 alone on its connection
        client.send(packet)
        assert isinstance(client.receive(), FileReceived)
    stored = client_dir(server, identity.client_id) / "p.bin"
    crc_ok = CrcOk(client_id=identity.client_id, file_name="p.bin")
    if verdict == "none":
        wait_until(lambda: not temp_files(server), "the pending version dropped at the idle timeout",
                   timeout=idle + HANG_TIMEOUT)
        server.wait_log("no verdict in time")
        with server.client() as client:
            assert isinstance(client.request(crc_ok), GeneralError)
        assert stored.read_bytes() == b"stored version"
    else:
        assert len(temp_files(server)) == 1  # its connection closed; the version waits
        with server.client() as client:
            assert isinstance(client.request(crc_ok), Acknowledged)
        assert stored.read_bytes() == b"new version"
    guard.check()


def test_d7_two_clients_same_file_name_stay_apart(server):
    guard = Guard(server)
    with server.client() as a, server.client() as b:
        alice, bob = make_identity(a), make_identity(b)
        assert isinstance(upload(a, alice, "report.pdf", b"alice"), FileReceived)
        assert isinstance(upload(b, bob, "report.pdf", b"bob"), FileReceived)
    assert (client_dir(server, alice.client_id) / "report.pdf").read_bytes() == b"alice"
    assert (client_dir(server, bob.client_id) / "report.pdf").read_bytes() == b"bob"
    guard.check()


# -- D8: 65,535 packets -------------------------------------------------------------------------------------


def test_d8_65535_packets_of_one_byte(server):
    """The most packets a file can have, all but the last carrying one ciphertext byte.

    content_size is a multiple of 16, so 65,535 one-byte packets cannot make a
    whole file: 65,534 packets carry one byte and the last the other two of
    65,536 (a 65,535-byte file).
    """
    guard = Guard(server)
    pid = server.process.pid
    data = os.urandom(65535)
    with server.client() as client:
        identity = make_identity(client)
        ciphertext = crypto.encrypt(identity.aes_key, data)
        total = 65535
        chunks = [ciphertext[i : i + 1] for i in range(total - 1)] + [ciphertext[total - 1 :]]
        template = bytearray(packet_bytes(file_packets(identity, "d8.bin", data, len(ciphertext))[0]))
        fixed_end = len(template) - len(ciphertext)
        payload_at, number_at = REQUEST_HEADER_SIZE - 4, REQUEST_HEADER_SIZE + 8
        struct.pack_into("<HH", template, number_at, 1, total)
        head = template[:fixed_end]
        wire = bytearray()
        for number, chunk in enumerate(chunks, start=1):
            struct.pack_into("<I", head, payload_at, fixed_end - REQUEST_HEADER_SIZE + len(chunk))
            struct.pack_into("<H", head, number_at, number)
            wire += head
            wire += chunk
        hwm_before = proc_status(pid, "VmHWM")
        started = time.monotonic()
        client.sock.settimeout(D8_HANG)  # sendall's timeout is for all of it: a hang bound, not a speed
        client.sock.sendall(wire)
        answer = client.receive(D8_HANG)
        elapsed = time.monotonic() - started
    hwm_growth = proc_status(pid, "VmHWM") - hwm_before
    print(f"\nD8: {total} packets ({len(wire) / MIB:.1f} MiB on the wire) in {elapsed:.1f} s; "
          f"server VmHWM growth {hwm_growth / MIB:.2f} MiB")
    assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
    assert (client_dir(server, identity.client_id) / "d8.bin").read_bytes() == data
    assert hwm_growth < 16 * MIB  # per-packet state does not pile up
    guard.check()


def test_d8_interleaved_clients_keep_their_own_state(server):
    """Thousands of small packets from two clients at once still give two whole files."""
    guard = Guard(server)
    datas = [os.urandom(20_000), os.urandom(20_000)]
    with server.client() as a, server.client() as b:
        identities = [make_identity(a), make_identity(b)]
        wires = [b"".join(packet_bytes(p) for p in file_packets(who, "d8.bin", d, 16))
                 for who, d in zip(identities, datas)]
        threads = [threading.Thread(target=c.send_raw, args=(w,)) for c, w in zip((a, b), wires)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        answers = [a.receive(30), b.receive(30)]
    for who, data, answer in zip(identities, datas, answers):
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
        assert (client_dir(server, who.client_id) / "d8.bin").read_bytes() == data
    guard.check()
