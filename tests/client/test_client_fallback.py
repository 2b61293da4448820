"""Servers that each refuse the standard layout in a way seen on the wire.

Each fake server below completes uploads with its own clients' layout only.
With the defaults the client notices the symptom, switches layout once (and
says so) and completes; with ``--strict`` it fails as it always did. Every
server keeps the client's key by client id, as variant 7 requires.
"""

from __future__ import annotations

import os
import random
import re
import socket
import struct
import threading
import time
import functools
import zlib
from dataclasses import dataclass, field

import pytest

from client.__main__ import ExitCode
from client.stall import (
    STALL_ANSWER_FACTOR, STALL_EVIDENCE, STALL_EVIDENCE_FLOOR, evidence_hold,
)
from client_fakes import write_transfer_info
from client_runs import TIMEOUT
from protocol import (
    NEED_DATA,
    Acknowledged,
    ConnectionClosed,
    CrcAbort,
    CrcOk,
    CrcRetry,
    CryptoError,
    Reconnect,
    FileContent,
    FilePacketEnded,
    FilePacketStarted,
    FileReceived,
    GeneralError,
    PublicKeyReceived,
    Reconnected,
    Register,
    Registered,
    SendPublicKey,
    RemoteProtocolError,
    ServerConnection,
    cksum,
    crypto,
)
from protocol.crypto import encrypt_aes_key, import_public_key, new_aes_key
from wire_by_hand import response

CLIENT_ID = bytes(range(16))
#: Behaviour 3: one request per connection, read with one receive of this size.
ONE_RECEIVE = 4290
#: Behaviour 4: every 828 payload is exactly this long (267 + 1,024).
FIXED_PAYLOAD = 1291
SIZES = {"100KB": 100_000, "5MB": 5_000_000}


@dataclass
class State:
    """What a fake server keeps between connections: the key, the file so far."""

    public_key: object = None
    aes_key: bytes = b""
    plain: bytearray = field(default_factory=bytearray)
    ciphertext: bytearray = field(default_factory=bytearray)
    uploads: int = 0
    #: The file the last 1603 was for, and the one the client confirmed.
    last: bytes = b""
    verified: bytes | None = None
    #: Pauses a pausing server took before reading a file.
    pauses: int = 0


def _answer(state: State, request):
    """The answer to any request but a file: 825 → 1600; 826 and 827 → a fresh
    AES key under the stored public key; 900 and 902 → 1604; 901 → none."""
    if isinstance(request, CrcRetry):
        return None
    if isinstance(request, (CrcOk, CrcAbort)):
        state.verified = state.last if isinstance(request, CrcOk) else None
        return Acknowledged(client_id=CLIENT_ID)
    if isinstance(request, Register):
        return Registered(client_id=CLIENT_ID)
    if isinstance(request, SendPublicKey):
        state.public_key = import_public_key(request.public_key)
    state.aes_key = new_aes_key()
    sealed = encrypt_aes_key(state.public_key, state.aes_key)
    kind = PublicKeyReceived if isinstance(request, SendPublicKey) else Reconnected
    return kind(client_id=CLIENT_ID, encrypted_aes_key=sealed)


def _file_done(state: State, name) -> FileReceived:
    state.uploads += 1
    answer = FileReceived(CLIENT_ID, len(state.ciphertext), name, cksum(bytes(state.plain)))
    state.last = bytes(state.plain)
    state.plain.clear()
    state.ciphertext.clear()
    return answer


def swapped_per_packet(sock: socket.socket, state: State) -> None:
    """Behaviour 2: reads total first, decrypts each packet on its own; persistent."""
    conn = ServerConnection()
    packet, content = None, bytearray()
    while True:
        data = sock.recv(1 << 16)
        conn.receive_data(data)
        while (event := conn.next_event()) is not NEED_DATA:
            if isinstance(event, ConnectionClosed):
                return
            if isinstance(event, FilePacketStarted):
                packet, content = event, bytearray()
            elif isinstance(event, FileContent):
                content += event.data
            elif isinstance(event, FilePacketEnded):
                total, number = packet.packet_number, packet.total_packets  # the other way round
                try:
                    state.plain += crypto.decrypt(state.aes_key, bytes(content))
                except CryptoError:
                    sock.sendall(conn.send(GeneralError()))
                    state.plain.clear()
                    continue
                state.ciphertext += content
                if number == total:
                    sock.sendall(conn.send(_file_done(state, packet.file_name)))
            elif (answer := _answer(state, event)) is not None:
                sock.sendall(conn.send(answer))


def one_receive_per_connection(sock: socket.socket, state: State) -> None:
    """Behaviour 3: one receive of at most 4,290 bytes, one answer, then close."""
    conn = ServerConnection()
    conn.receive_data(sock.recv(ONE_RECEIVE))
    events = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
    if not events or (isinstance(events[0], FilePacketStarted) and not isinstance(events[-1], FilePacketEnded)):
        return  # cut: the connection dies unanswered
    request = events[0]
    if isinstance(request, FilePacketStarted):
        content = b"".join(e.data for e in events if isinstance(e, FileContent))
        state.ciphertext += content
        if request.packet_number == request.total_packets:
            state.plain += crypto.decrypt(state.aes_key, bytes(state.ciphertext))
            sock.sendall(conn.send(_file_done(state, request.file_name)))
    elif isinstance(request, CrcRetry):
        sock.sendall(b"\x00")
    else:
        sock.sendall(conn.send(_answer(state, request)))


def _one_request(sock: socket.socket) -> tuple[ServerConnection, list]:
    """Read until one whole request has arrived: its events (an 828's content included)."""
    conn = ServerConnection()
    events: list = []
    while not events or isinstance(events[-1], (FilePacketStarted, FileContent)):
        data = sock.recv(1 << 16)
        conn.receive_data(data)
        while (event := conn.next_event()) is not NEED_DATA:
            if isinstance(event, ConnectionClosed):
                return conn, []
            events.append(event)
    return conn, events


#: Behaviour 3': the lock under which a thread appends its packet.
_APPEND = threading.Lock()


def threaded_per_connection(sock: socket.socket, state: State) -> None:
    """Behaviour 3': one request per connection, answered (or closed after a
    non-final 828), each connection in a thread of its own that appends its
    packet in the order the threads get there."""
    conn, events = _one_request(sock)
    if not events:
        return
    request = events[0]
    threading.Event().wait(random.uniform(0, 0.002))  # threads run in any order
    with _APPEND:
        if isinstance(request, FilePacketStarted):
            state.ciphertext += b"".join(e.data for e in events if isinstance(e, FileContent))
            if request.packet_number == request.total_packets:
                try:
                    state.plain += crypto.decrypt(state.aes_key, bytes(state.ciphertext))
                except CryptoError:  # scrambled packets: garbage
                    state.plain += bytes(state.ciphertext)
                sock.sendall(conn.send(_file_done(state, request.file_name)))
        elif (answer := _answer(state, request)) is not None:
            sock.sendall(conn.send(answer))


def every_packet_a_whole_file(sock: socket.socket, state: State) -> None:
    """Behaviour 7: each 828 taken as the whole file (decrypted alone), answered
    1603 with zlib's CRC-32, or 1607 if it does not decrypt; persistent."""
    conn = ServerConnection()
    content = bytearray()
    while True:
        conn.receive_data(sock.recv(1 << 16))
        while (event := conn.next_event()) is not NEED_DATA:
            if isinstance(event, ConnectionClosed):
                return
            if isinstance(event, FilePacketStarted):
                packet, content = event, bytearray()
            elif isinstance(event, FileContent):
                content += event.data
            elif isinstance(event, FilePacketEnded):
                try:
                    plain = crypto.decrypt(state.aes_key, bytes(content))
                except CryptoError:
                    sock.sendall(conn.send(GeneralError()))
                    continue
                state.uploads += len(plain) == packet.orig_file_size  # a whole file indeed
                state.last = plain
                sock.sendall(conn.send(
                    FileReceived(CLIENT_ID, len(content), packet.file_name, zlib.crc32(plain))
                ))
            elif (answer := _answer(state, event)) is not None:
                sock.sendall(conn.send(answer))


def _answer_events(
    sock: socket.socket, conn: ServerConnection, state: State, packet, *,
    content_size_only: bool = False,
):
    """Drain ``conn``: keep each 828's content, answer the file (1603) at its last
    packet and any other request as :func:`_answer` does; the 828 under way is
    returned (its end needs its header). ``content_size_only``: the file is the
    first ``content_size`` bytes received (behaviour 4's last packet is zero-filled)."""
    while (event := conn.next_event()) is not NEED_DATA:
        if isinstance(event, FilePacketStarted):
            packet = event
        elif isinstance(event, FileContent):
            state.ciphertext += event.data
        elif isinstance(event, FilePacketEnded):
            if packet.packet_number == packet.total_packets:
                if content_size_only:
                    del state.ciphertext[packet.content_size:]
                state.plain += crypto.decrypt(state.aes_key, bytes(state.ciphertext))
                sock.sendall(conn.send(_file_done(state, packet.file_name)))
        elif (answer := _answer(state, event)) is not None:
            sock.sendall(conn.send(answer))
    return packet


#: Behaviour 8: the buffer each field of a request is read into with one receive.
FIELD_RECEIVE = 1 << 16
#: The fields of a request: the header's, then an 828's before its content.
HEADER_FIELDS = (16, 1, 2, 4)
PACKET_FIELDS = (4, 4, 2, 2, 255)


def one_receive_per_field(sock: socket.socket, state: State) -> None:
    """Behaviour 8: each field read with one receive (of at most 64 KiB): a
    large packet arrives cut, the stream is lost, 1607 and close; persistent."""
    conn = ServerConnection()
    packet = None

    def field(size: int) -> bytes:
        data = sock.recv(min(size, FIELD_RECEIVE))
        if len(data) < size:
            raise EOFError  # cut (or closed): what follows is not a request
        return data

    try:
        while True:
            header = b"".join(field(size) for size in HEADER_FIELDS)
            code, payload_size = struct.unpack("<HI", header[17:])
            payload = b""
            if code == 828:
                payload = b"".join(field(size) for size in PACKET_FIELDS)
                payload += field(payload_size - len(payload)) if payload_size > len(payload) else b""
            elif payload_size:
                payload = field(payload_size)
            conn.receive_data(header + payload)
            packet = _answer_events(sock, conn, state, packet)
    except EOFError:
        state.plain.clear()
        state.ciphertext.clear()
        sock.sendall(conn.send(GeneralError()))


#: Behaviour 8 behind a small receive buffer, reading slowly: a client that
#: sends faster than it reads fills its window, and a packet sent into a full
#: window goes out in pieces.
SMALL_SERVER_BUFFER = 16384
REQUEST_READ_PAUSE = 0.002


class _SlowFields:
    """A server's socket with a small receive buffer, each request read a little late."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_SERVER_BUFFER)
        self._sock = sock

    def recv(self, size: int) -> bytes:
        if size == HEADER_FIELDS[0]:  # a request's first field
            time.sleep(REQUEST_READ_PAUSE)
        return self._sock.recv(size)

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)


def one_receive_per_field_slowly(sock: socket.socket, state: State) -> None:
    """Behaviour 8, reading slowly behind a small buffer."""
    one_receive_per_field(_SlowFields(sock), state)  # type: ignore[arg-type]


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        piece = sock.recv(size - len(data))
        if not piece:
            raise EOFError
        data += piece
    return data


def fixed_size_packets(sock: socket.socket, state: State) -> None:
    """Behaviour 4: reads a header, then every 828 payload as exactly 1,291 bytes;
    after a payload of another size the handler is stuck (reads no more, never answers)."""
    conn = ServerConnection()
    packet = None
    while True:
        try:
            header = _exactly(sock, 23)
            code, payload_size = struct.unpack("<HI", header[17:])
            payload = _exactly(sock, FIXED_PAYLOAD if code == 828 else payload_size)
        except EOFError:
            return
        if code == 828 and payload_size != FIXED_PAYLOAD:
            threading.Event().wait(30)  # the handler is stuck: no answer, ever
            return
        conn.receive_data(header + payload)
        packet = _answer_events(sock, conn, state, packet, content_size_only=True)


def standard(sock: socket.socket, state: State, *, plaintext_size=False, empty_ack=False,
             version=3, empty_1606=False, max_packet=None) -> None:
    """A persistent server with one habit of those seen on the wire (behaviours 1, 5, 6)."""
    conn = ServerConnection()

    def reply(response, *, raw: bytes | None = None) -> None:
        data = raw if raw is not None else conn.send(response)
        sock.sendall(bytes([version]) + data[1:])

    packet = None
    while True:
        data = sock.recv(1 << 16)
        conn.receive_data(data)
        while (event := conn.next_event()) is not NEED_DATA:
            if isinstance(event, ConnectionClosed):
                return
            if isinstance(event, FilePacketStarted):
                if max_packet is not None and event.bytes_in_packet > max_packet:
                    return  # behaviour 5: a large packet breaks its field-by-field reads
                packet = event
            elif isinstance(event, FileContent):
                state.ciphertext += event.data
            elif isinstance(event, FilePacketEnded):
                if packet.packet_number == packet.total_packets:
                    state.plain += crypto.decrypt(state.aes_key, bytes(state.ciphertext))
                    answer = _file_done(state, packet.file_name)
                    if plaintext_size:  # behaviour 1
                        answer = FileReceived(CLIENT_ID, len(state.last), answer.file_name, answer.cksum)
                    reply(answer)
            elif isinstance(event, Reconnect) and empty_1606:  # behaviour 6: no key kept
                reply(None, raw=response(1606, b""))
            elif (answer := _answer(state, event)) is not None:
                if empty_ack and isinstance(answer, Acknowledged):  # behaviour 1
                    reply(None, raw=response(1604, b""))
                else:
                    reply(answer)


class BehaviourServer:
    """A fake server on 127.0.0.1 running ``handler(sock, state)`` per connection."""

    def __init__(self, handler, *, one_at_a_time: bool = False) -> None:
        self.state = State()
        #: Serve each connection to its end before accepting the next.
        self._one_at_a_time = one_at_a_time
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self._handler = handler
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listener.getsockname()[1]}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            if self._one_at_a_time:
                self._serve(sock)
            else:
                threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            try:
                self._handler(sock, self.state)
            except OSError:
                pass

    def __enter__(self) -> BehaviourServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()


BEHAVIOURS = {
    "5-small-packets-only": (functools.partial(standard, max_packet=8192), "packets of 4000 bytes"),
    "swapped-per-packet": (swapped_per_packet, "swapped packet fields and per-packet encryption"),
    "one-receive-per-connection": (one_receive_per_connection, "one connection per request"),
    "threaded-per-connection": (threaded_per_connection, "one connection per request"),
    "fixed-1291-byte-packets": (fixed_size_packets, "1024-byte packets, the last zero-filled"),
    "every-packet-a-whole-file": (every_packet_a_whole_file, "the whole file in one packet"),
    "one-receive-per-field": (one_receive_per_field, "packets of 8192 bytes"),
    "one-receive-per-field-slowly": (one_receive_per_field_slowly, "packets of 8192 bytes"),
}


#: Behaviours that serve a file of one packet of the default size as it is.
ONE_PACKET_SERVED = ("swapped-per-packet", "every-packet-a-whole-file")


#: Behaviours the client copes with without a switch: (handler, what it sends).
TOLERATED = {
    "1-plaintext-size-empty-1604": functools.partial(standard, plaintext_size=True, empty_ack=True),
    "6-version-4-empty-1606": functools.partial(standard, version=4, empty_1606=True),
}


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("behaviour", sorted(TOLERATED))
def test_the_default_client_tolerates_and_completes(work, run_client, behaviour, size):
    data = os.urandom(SIZES[size])
    (work / "data.bin").write_bytes(data)
    with BehaviourServer(TOLERATED[behaviour]) as server:
        write_transfer_info(work, server.address, "alice", "data.bin")
        for run in (1, 2):  # fresh, then with me.info
            result = run_client()
            assert result.code == ExitCode.OK, result.err
            assert "refused the layout" not in result.err
            assert server.state.verified == data and server.state.uploads == run


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("behaviour", sorted(BEHAVIOURS))
def test_the_default_client_falls_back_and_completes(work, run_client, behaviour, size):
    handler, switch = BEHAVIOURS[behaviour]
    data = os.urandom(SIZES[size])
    (work / "data.bin").write_bytes(data)
    one_at_a_time = handler not in (fixed_size_packets, threaded_per_connection)
    with BehaviourServer(handler, one_at_a_time=one_at_a_time) as server:
        write_transfer_info(work, server.address, "alice", "data.bin")
        first = run_client()  # registers
        assert first.code == ExitCode.OK, first.err
        # A 100 KB file is one packet of the default size: only a server that
        # needs small or fixed packets makes the client switch for it.
        if SIZES[size] > 1024 * 1024 or behaviour not in ONE_PACKET_SERVED:
            assert switch in first.err
        assert server.state.verified == data and server.state.uploads == 1
        second = run_client()  # logs in again with me.info
        assert second.code == ExitCode.OK, second.err
        assert server.state.verified == data and server.state.uploads == 2


@pytest.mark.parametrize("behaviour", sorted(BEHAVIOURS))
def test_strict_keeps_the_standard_layout_and_fails(work, run_client, behaviour):
    handler, switch = BEHAVIOURS[behaviour]
    (work / "data.bin").write_bytes(os.urandom(3_000_000))  # several packets of the default size
    one_at_a_time = handler not in (fixed_size_packets, threaded_per_connection)
    with BehaviourServer(handler, one_at_a_time=one_at_a_time) as server:
        write_transfer_info(work, server.address, "alice", "data.bin")
        result = run_client("--strict", "--timeout", "2")
    assert result.code in (ExitCode.SERVER_ERROR, ExitCode.NETWORK), result.err
    assert switch not in result.err and server.state.verified is None


@pytest.mark.parametrize("size", sorted(SIZES))
def test_a_fallback_run_stays_near_the_servers_own_client(work, run_client, tmp_path, size):
    """Against a server that stops reading at a packet of another size, the switch
    comes from the kernel's evidence, not a time-out: the whole run stays within
    about twice a run of its own client's layout (measured in the same test)."""
    data = os.urandom(SIZES[size])
    own = tmp_path / "own-client"
    own.mkdir()
    for folder in (own, work):
        (folder / "data.bin").write_bytes(data)
    with BehaviourServer(fixed_size_packets) as server:
        for folder in (own, work):
            write_transfer_info(folder, server.address, f"alice-{folder.name}", "data.bin")
        started = time.monotonic()
        baseline = run_client("--strict", "--pad-last-packet", "--packet-size", "1024",
                              config_dir=own)
        own_seconds = time.monotonic() - started
        started = time.monotonic()
        result = run_client()
        seconds = time.monotonic() - started
    assert baseline.code == ExitCode.OK and result.code == ExitCode.OK, result.err
    assert "1024-byte packets" in result.err
    print(f"{size}: own client {own_seconds:.2f} s, ours with the switch {seconds:.2f} s")
    assert seconds < 2 * own_seconds + 2 * STALL_EVIDENCE


@pytest.mark.parametrize("size", sorted(SIZES))
def test_the_switch_waits_a_hold_scaled_from_the_servers_answers(work, run_client, size):
    """The evidence that the server stopped reading is held for the hold that
    its answers in the run set (client/stall.py), not a fixed second: a server
    that answers in a few ms is given up after a fraction of STALL_EVIDENCE."""
    data = os.urandom(SIZES[size])
    (work / "data.bin").write_bytes(data)
    with BehaviourServer(fixed_size_packets) as server:
        write_transfer_info(work, server.address, "alice", "data.bin")
        assert run_client().code == ExitCode.OK  # registers
        result = run_client("-v")
    assert result.code == ExitCode.OK, result.err
    assert server.state.verified == data and server.state.uploads == 2
    before_switch = result.err.split("refused the layout", 1)[0]
    answers = [int(ms) for ms in re.findall(r"<- \d+ \w+ \(after (\d+) ms\)", before_switch)]
    stop = re.search(r"stay unread for ([\d.]+) s \(its slowest answer took (\d+) ms\)",
                     before_switch)
    assert answers and stop, result.err
    hold, slowest = float(stop[1]), int(stop[2])
    assert slowest == max(answers)
    # Both printed rounded: the slowest answer to the ms, the hold to 2 digits.
    rounding = STALL_ANSWER_FACTOR * 0.0005 + 0.01
    assert hold == pytest.approx(evidence_hold(slowest / 1000), abs=rounding)


#: A slow server's reads: this many bytes, then a pause (about 1 MB/s).
SLOW_READ, SLOW_READ_PAUSE = 16384, 0.016
#: Its receive buffer, set as many servers set theirs (no autotuning).
SLOW_SERVER_BUFFER = 65536


class _SlowlyRead:
    """A server's socket read slowly but without a stop (a busy or small server)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_SERVER_BUFFER)
        self._sock = sock

    def recv(self, size: int) -> bytes:
        time.sleep(SLOW_READ_PAUSE)
        return self._sock.recv(min(size, SLOW_READ))

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)


def test_a_server_that_reads_slowly_has_not_stopped_reading(work, run_client):
    """A server that keeps reading, however slowly, is no evidence against the
    layout: its window opens a little at each read and the bytes it acknowledges
    grow. Only a server whose reading makes no progress at all for the hold
    (client/stall.py evidence_hold) is taken to have dropped the layout."""
    data = os.urandom(3_000_000)  # several default packets, read for about 3 s
    (work / "data.bin").write_bytes(data)
    with BehaviourServer(standard_slowly_read, one_at_a_time=True) as server:
        write_transfer_info(work, server.address, "alice", "data.bin")
        result = run_client()
    assert result.code == ExitCode.OK, result.err
    assert "refused the layout" not in result.err
    assert server.state.verified == data and server.state.uploads == 1


def standard_slowly_read(sock: socket.socket, state: State) -> None:
    """The standard server, reading about 1 MB/s."""
    standard(_SlowlyRead(sock), state)  # type: ignore[arg-type]


#: A healthy server on a loaded machine: each answer takes this long, and it
#: reads nothing of a file for PAUSE (three times the shortest hold, a fifth
#: of the server's slowest answer times STALL_ANSWER_FACTOR), then all of it.
ANSWER_DELAY, PAUSE = 0.015, 0.3
#: The answers that give a key: a file comes next.
KEY_ANSWERS = (1602, 1605)


class _PausesBeforeEachFile:
    """A server's socket that answers slowly and pauses before reading a file."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._pause = False
        self.pauses = 0

    def recv(self, size: int) -> bytes:
        if self._pause:
            self._pause = False
            self.pauses += 1
            time.sleep(PAUSE)
        return self._sock.recv(size)

    def sendall(self, data: bytes) -> None:
        time.sleep(ANSWER_DELAY)
        self._sock.sendall(data)
        self._pause = int.from_bytes(data[1:3], "little") in KEY_ANSWERS


def standard_paused_before_each_file(sock: socket.socket, state: State) -> None:
    """The standard server, answering in ANSWER_DELAY and pausing PAUSE before a file."""
    paused = _PausesBeforeEachFile(sock)
    try:
        standard(paused, state)  # type: ignore[arg-type]
    finally:
        state.pauses += paused.pauses


@pytest.mark.parametrize("size", sorted(SIZES))
def test_a_server_that_pauses_then_reads_everything_has_not_stopped_reading(
    work, run_client, size
):
    """A pause longer than the shortest hold, on a server whose answers show it
    is slow (a loaded machine): the hold is scaled from its answers, so the
    client waits it out and switches nothing, whether the file was all sent
    (100 kB: the wait for its answer) or the send is blocked (5 MB)."""
    data = os.urandom(SIZES[size])
    (work / "data.bin").write_bytes(data)
    assert PAUSE > 2 * STALL_EVIDENCE_FLOOR
    with BehaviourServer(standard_paused_before_each_file, one_at_a_time=True) as server:
        write_transfer_info(work, server.address, "alice", "data.bin")
        for run in (1, 2):  # fresh (825, 826), then with me.info (827)
            result = run_client()
            assert result.code == ExitCode.OK, result.err
            assert "refused the layout" not in result.err
            assert server.state.verified == data and server.state.uploads == run
    assert server.state.pauses == 2


#: A server whose store is behind: it reads this much of a file at full speed, then nothing
#: for HELD_BACK seconds (past the longest hold, and its looks), then the rest.
READ_BEFORE_HOLDING_BACK = 3 * 1024 * 1024
HELD_BACK = 2.5 * STALL_EVIDENCE


class _HoldsBackMidFile:
    """A server's socket that stops reading a file once, in its middle, for HELD_BACK."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        #: Bytes of the file read so far (None: not in a file, or held back already).
        self._read: int | None = None
        self.holds = 0

    def recv(self, size: int) -> bytes:
        if self._read is not None and self._read >= READ_BEFORE_HOLDING_BACK:
            self._read = None
            self.holds += 1
            time.sleep(HELD_BACK)
        data = self._sock.recv(size)
        if self._read is not None:
            self._read += len(data)
        return data

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)
        if int.from_bytes(data[1:3], "little") in KEY_ANSWERS:
            self._read = 0


def standard_held_back_mid_file(sock: socket.socket, state: State) -> None:
    """The standard server, holding back once in the middle of a file."""
    held = _HoldsBackMidFile(sock)
    try:
        standard(held, state)  # type: ignore[arg-type]
    finally:
        state.pauses += held.holds


def test_a_server_that_holds_back_after_reading_much_of_a_file_has_not_dropped_the_layout(
    work, run_client
):
    """A server that read megabytes of the file in the standard layout took it; a stop
    after that, longer than any hold, is the server holding back (its store is behind,
    its machine loaded: ours stops reading a connection whose blob is behind), not a
    layout dropped: the client waits (up to --timeout) and switches nothing. A server
    that drops the layout stops within the first packet (the 1,291-byte one above)."""
    data = os.urandom(SIZES["5MB"])
    (work / "data.bin").write_bytes(data)
    assert READ_BEFORE_HOLDING_BACK < len(data) and HELD_BACK < float(TIMEOUT)
    with BehaviourServer(standard_held_back_mid_file, one_at_a_time=True) as server:
        write_transfer_info(work, server.address, "alice", "data.bin")
        result = run_client()
    assert result.code == ExitCode.OK, result.err
    assert "refused the layout" not in result.err
    assert server.state.verified == data and server.state.uploads == 1
    assert server.state.pauses == 1


def test_a_zlib_crc_is_reported_as_what_it_is(work, run_client):
    """A server that answers zlib's CRC-32: the log and the summary name that
    checksum and the value the server sent, never a cksum it did not send."""
    files = {"a.bin": os.urandom(50_000), "b.bin": os.urandom(70_000)}
    for name, data in files.items():
        (work / name).write_bytes(data)
    with BehaviourServer(every_packet_a_whole_file) as server:
        write_transfer_info(work, server.address, "alice", "a.bin")
        result = run_client(*(str(work / name) for name in files))
    assert result.code == ExitCode.OK, result.err
    for name, data in files.items():
        assert f"CRC-32 (zlib) {zlib.crc32(data)} verified" in result.err
        assert f"  {name}: " in result.err and "sent, CRC-32 (zlib) verified" in result.err
        assert f"cksum {cksum(data)} verified" not in result.err


def refuse_every_packet(sock: socket.socket, state: State) -> None:
    """Answers 1607 to every 828 at once, whatever its layout; the rest as usual."""
    conn = ServerConnection()
    while True:
        conn.receive_data(sock.recv(1 << 16))
        try:
            while (event := conn.next_event()) is not NEED_DATA:
                if isinstance(event, ConnectionClosed):
                    return
                if isinstance(event, FilePacketStarted):
                    sock.sendall(conn.send(GeneralError()))
                elif not isinstance(event, (FileContent, FilePacketEnded)):
                    if (answer := _answer(state, event)) is not None:
                        sock.sendall(conn.send(answer))
        except RemoteProtocolError:  # the client gave the file up halfway
            return


def test_a_server_that_refuses_every_layout_ends_the_ladder(work, run_client):
    """Each layout is tried once, then the file's 3 retries: a bounded run, exit 1."""
    (work / "data.bin").write_bytes(os.urandom(SIZES["5MB"]))
    with BehaviourServer(refuse_every_packet) as server:
        write_transfer_info(work, server.address, "alice", "data.bin")
        result = run_client()
    assert result.code == ExitCode.SERVER_ERROR, result.err
    switches = [line for line in result.err.splitlines() if "refused the layout" in line]
    assert len(switches) == len(set(switches)) == 3, result.err
    assert "failed after 4 attempts" in result.err
