"""docs/HOSTILE.md F: resource exhaustion and fairness, on the real server.

Memory is the server process's own VmRSS / VmHWM from /proc/<pid>/status;
times are a normal client's whole flow (825, 826, 828 ×3, 900) measured in
the same test with and without the load.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import selectors
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import (
    ANY_ID,
    file_packets,
    make_identity,
    packet_bytes,
    private_key,
    raw_header,
    unique_name,
    upload,
)
from hostile_helpers import (
    STRANGER,
    Guard,
    flood_until_stalled,
    normal_flow,
    proc_status,
    small_window_client,
    wait_count,
)
from inprocess import InProcess
from timing_helpers import (
    HANG_TIMEOUT,
    load_bound,
    median_time,
    round_trip,
    timer_bound,
    wait_until,
    within_load,
)
from protocol import CrcRetry, FileReceived, GeneralError, Register, Registered, cksum
from protocol.codes import RequestCode
from server.limits import Limits

MIB = 1024 * 1024
#: Seconds without a reply to the hog that show the server parked it (a
#: busy server answers it thousands of times a second).
PARKED_QUIET = 1
IDLE_CONNECTIONS = 1000


def _raise_open_files(needed: int) -> None:
    """Raise this process's descriptor limit; the server subprocess inherits it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        assert hard == resource.RLIM_INFINITY or hard >= needed, f"hard limit {hard} < {needed}"
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _wait_all_closed(socks: list[socket.socket], timeout: float) -> float:
    """Wait until the server closed every socket; return when the last one closed."""
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    open_count = len(socks)
    try:
        while open_count and time.monotonic() < deadline:
            for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
                try:
                    data = key.fileobj.recv(4096)
                except ConnectionResetError:
                    data = b""
                except BlockingIOError:
                    continue
                if not data:
                    selector.unregister(key.fileobj)
                    open_count -= 1
    finally:
        selector.close()
    assert open_count == 0, f"{open_count} connections still open after {timeout} s"
    return time.monotonic()


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- F1: many idle connections, connection limits ---------------------------------------------


def test_f1_thousand_silent_and_slow_connections_do_not_delay_a_normal_client(server_factory):
    _raise_open_files(IDLE_CONNECTIONS * 2 + 256)
    deadline = 4.0
    server = server_factory("--message-deadline", str(deadline), "--idle-timeout", str(deadline))
    guard = Guard(server)
    for _ in range(4):
        private_key()  # the test's RSA key pairs are made on first use: not in the timings
    normal_flow(server)  # warm up
    without = [normal_flow(server) for _ in range(3)]
    socks = []
    stop = threading.Event()
    try:
        for _ in range(IDLE_CONNECTIONS):
            socks.append(socket.create_connection(server.address, timeout=5))
        slow = socks[: IDLE_CONNECTIONS // 2]  # slowloris: a header byte now and then
        header = raw_header(RequestCode.REGISTER, 255)

        def trickle():
            for byte in header:
                for sock in slow:
                    try:
                        sock.send(bytes([byte]))
                    except OSError:
                        pass
                if stop.wait(0.5):
                    return

        thread = threading.Thread(target=trickle)
        thread.start()
        server.wait_log(rf"connected \({IDLE_CONNECTIONS} open\)")
        all_open = time.monotonic()  # every idle connection's timer runs by now
        with_load = [normal_flow(server) for _ in range(3)]
        # the load was there all along: the server closed none of them yet
        assert "timed out" not in server.log(), "measured too late: the deadline already hit"
        print(f"\nF1: normal flow {statistics.median(without) * 1000:.0f} ms alone, "
              f"{statistics.median(with_load) * 1000:.0f} ms with {IDLE_CONNECTIONS} idle connections "
              f"(max {max(with_load) * 1000:.0f} ms)")
        assert within_load(max(with_load), statistics.median(without)), (without, with_load)
        last = _wait_all_closed(socks, deadline + HANG_TIMEOUT)
        assert last - all_open <= timer_bound(deadline, statistics.median(without)), "not closed by the deadline"
    finally:
        stop.set()
        for sock in socks:
            sock.close()
    log = server.log()
    assert log.count("timed out: no request") >= IDLE_CONNECTIONS // 2 - 5
    assert log.count("timed out: message not completed in time") >= IDLE_CONNECTIONS // 2 - 5
    guard.check()


def _closes(server) -> int:
    """Connections the log says closed: one line each, or counted in a silent-churn summary."""
    log = server.log()
    silent = re.findall(r"(\d+) connections closed without sending a byte", log)
    return log.count(" closed: ") + sum(int(count) for count in silent)


def test_f1_over_max_connections_is_accepted_and_closed_at_once(server_factory):
    server = server_factory("--max-connections", "50")
    guard = Guard(server)
    baseline = round_trip(server)  # connect, one request, its reply
    closes_before = _closes(server)
    with server.client() as session:
        identity = make_identity(session)
        idle = [server.client() for _ in range(49)]
        try:
            server.wait_log(r"connected \(50 open\)")
            for _ in range(5):
                with server.client() as extra:  # closed at once, not left waiting in a queue
                    started = time.monotonic()
                    assert extra.closed_within(HANG_TIMEOUT)
                    assert time.monotonic() - started <= load_bound(baseline)
            # established sessions keep working
            data = os.urandom(5000)
            for packet in file_packets(identity, "f1.bin", data):
                session.send(packet)
            answer = session.receive()
            assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
        finally:
            for client in idle:
                client.close()
    assert server.log().count("refused: 50 connections open") == 5
    # the session and the 49 idle ones are gone (refused ones log no close; silent
    # ones are counted in the periodic summary): room again
    wait_until(lambda: _closes(server) >= closes_before + 50, "the 50 connections closed")
    guard.check()


def test_f1_per_address_limit_does_not_lock_out_other_addresses(server_factory):
    server = server_factory("--max-connections-per-address", "10")
    guard = Guard(server)
    with server.client() as session:
        identity = make_identity(session)
        many = [server.client(source=f"127.1.{i // 250}.{i % 250 + 1}") for i in range(150)]
        same = [server.client(source=STRANGER) for _ in range(20)]
        try:
            wait_count(server, "refused: 10 connections open from this address", 10)
            # accept-and-close: every refused one is closed (the close follows its log line)
            def closed_ones():
                found = [c for c in same if c.closed_within(0.01)]
                return found if len(found) >= 10 else None

            refused = wait_until(closed_ones, "the 10 refused connections closed")
            assert len(refused) == 10  # one address over its limit: those are closed at once
            for client in many[::15]:  # other addresses are served meanwhile
                assert isinstance(client.request(Register(client_id=ANY_ID, name=unique_name())), Registered)
            data = os.urandom(3000)
            for packet in file_packets(identity, "f1.bin", data):
                session.send(packet)
            assert isinstance(session.receive(), FileReceived)
        finally:
            for client in many + same:
                client.close()
    guard.check()


# -- F2: a peer that never reads --------------------------------------------------------------


def test_f2_peer_that_never_reads_cannot_grow_the_server(server_factory):
    idle_timeout = 3.0
    # The hog and the normal flow share 127.0.0.1: without the round shares
    # (tested in tests/server/test_round_shares.py) the only reason the server
    # stops reading from the hog is its full out buffer, the case under test.
    server = server_factory(
        "--max-outgoing", "65536", "--idle-timeout", str(idle_timeout),
        "--requests-per-address-per-round", "0", "--durable-files-per-address-per-round", "0",
    )
    guard = Guard(server)
    pid = server.process.pid
    normal_flow(server)  # warm up
    alone = median_time(lambda: normal_flow(server))  # the baseline: no hog yet
    key = private_key()  # before it connects: its idle timeout would count the making
    hog = small_window_client(server)
    # a flood of requests that succeed (a refusal would count toward
    # --max-errors and close it sooner): 901 for its own file, a 1604 each
    hog_identity = make_identity(hog, key=key)
    assert isinstance(upload(hog, hog_identity, "hog.bin", b"hog"), FileReceived)
    request = hog.conn.send(CrcRetry(client_id=hog_identity.client_id, file_name="hog.bin"))
    rss_before = proc_status(pid, "VmRSS")
    peak = [rss_before]
    port = hog.sock.getsockname()[1]
    try:
        try:
            sent = flood_until_stalled(hog, request, sample=lambda: peak.append(proc_status(pid, "VmRSS")))
        except (ConnectionResetError, BrokenPipeError):
            sent = None  # on a loaded machine the server may give up before we see the stall
        else:
            # the stall is in our socket; the server may still be answering what
            # its receive buffer holds (a 1604 each): parked once that stops
            def parked() -> bool:
                answered = server.log().count(f":{port} 901 ")
                for _ in range(PARKED_QUIET * 20):
                    peak.append(proc_status(pid, "VmRSS"))
                    time.sleep(0.05)
                return server.log().count(f":{port} 901 ") == answered

            wait_until(parked, "the server stopped reading from the hog")
            # others are served while the hog is parked, as fast as without it
            parked = normal_flow(server)
            assert within_load(parked, alone), (alone, parked)
            # it is closed once the idle timeout passes without it reading
            # (reading now would let the server go on: it must not read)
            with pytest.raises((ConnectionResetError, BrokenPipeError)):
                deadline = time.monotonic() + idle_timeout + HANG_TIMEOUT
                while time.monotonic() < deadline:
                    try:
                        hog.sock.send(request)
                    except BlockingIOError:
                        pass  # still full: not closed yet
                    time.sleep(0.01)
        # closed for not reading (not by the hang bound above)
        server.wait_log(rf":{port} \S+ closed: timed out: peer does not read")
    finally:
        hog.close()
    growth = max(peak) - rss_before
    print(f"\nF2: {(sent or 0) / MIB:.1f} MiB of requests sent before the server stopped reading; "
          f"server VmRSS {rss_before / MIB:.1f} MiB before, growth {growth / MIB:.2f} MiB")
    assert growth < 8 * MIB
    guard.check()


@pytest.fixture
def inprocess(tmp_path):
    started = []

    def start(**limits) -> InProcess:
        # A hog's closing line is read from the log: no log budget (LOAD_FLAGS too).
        limits = {"log_lines_per_address": 0, **limits}
        server = InProcess(tmp_path / f"data{len(started)}", Limits(**limits))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _closing_line(caplog: pytest.LogCaptureFixture, port: int) -> str:
    """The in-process server's closing line for the connection from ``port``, once logged."""

    def logged() -> str | None:
        for record in list(caplog.records):  # the loop's thread appends meanwhile
            line = record.getMessage()
            if re.match(rf"\S+:{port} .*? closed: ", line):
                return line
        return None

    return wait_until(logged, f"a closing line for the connection from port {port}")


def test_f2_outgoing_buffer_bound_in_process(inprocess, caplog):
    """The channel's own buffers, which the kernel hides from an outside client."""
    caplog.set_level(logging.INFO)
    max_outgoing = 1024
    server = inprocess(max_outgoing=max_outgoing, idle_timeout=1.5)
    # its RSA key made before it connects: the hog's short idle timeout would
    # count the making (seconds on a loaded machine)
    key = private_key()
    # small segments: with loopback's 64 KiB MSS a receiver that opens its window
    # again sends no update, and the sender's zero-window probes back off for
    # longer than the test waits
    hog = small_window_client(server)
    port = hog.sock.getsockname()[1]
    # requests that succeed (a refusal would count toward --max-errors): 901 for
    # its own file, a 1604 each
    hog_identity = make_identity(hog, key=key)
    assert isinstance(upload(hog, hog_identity, "hog.bin", b"hog"), FileReceived)
    request = hog.conn.send(CrcRetry(client_id=hog_identity.client_id, file_name="hog.bin"))
    (channel,) = [c for c in list(server.server.channels) if c.peer.port == port]
    channel.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    deadline = time.monotonic() + HANG_TIMEOUT
    hog.sock.setblocking(False)
    burst = memoryview(request * 64)
    pending = burst[:0]
    peak_out = peak_in = 0
    others_served = False
    # whole requests only, never reading: the server must stop reading and close it
    while time.monotonic() < deadline and not channel.closed:
        peak_out = max(peak_out, len(channel._out))
        peak_in = max(peak_in, len(channel.session._decoder._buffer))
        if not others_served and len(channel._out) >= max_outgoing:
            with server.client() as other:  # others are served meanwhile
                assert isinstance(other.request(Register(client_id=ANY_ID, name=unique_name())), Registered)
            others_served = True
        try:
            pending = pending or burst
            pending = pending[hog.sock.send(pending):]
        except BlockingIOError:
            time.sleep(0.01)
        except OSError:
            break  # the server closed it
    # the loop's thread logs the close after ``closed`` turns true: wait for its line
    closing = _closing_line(caplog, port)
    assert others_served
    assert peak_out < max_outgoing + 64  # bounded: one response past the bound at most
    assert peak_in < 1100 * 1024  # at most one receive's worth plus a message
    assert re.search(r" closed: timed out: peer does not read \(", closing), closing
    assert not any(r.exc_info for r in caplog.records)
    hog.close()


# -- F3: one slow 64 MiB upload among many ------------------------------------------------------


def test_f3_many_uploads_while_one_sends_64_mib_slowly(server):
    guard = Guard(server)
    pid = server.process.pid
    hwm_before = proc_status(pid, "VmHWM")
    data = os.urandom(64 * MIB)
    normal_flow(server)  # warm up
    with ThreadPoolExecutor(8) as pool:  # the baseline: the same 24 flows without the upload
        alone = list(pool.map(lambda _: normal_flow(server), range(24)))
    with server.client() as slow:
        identity = make_identity(slow)
        raw = packet_bytes(file_packets(identity, "big.bin", data, len(data) + 16)[0])
        flows_done = threading.Event()
        sent = [0]

        def send_slowly():
            for i in range(0, len(raw), MIB):
                if i + MIB >= len(raw):  # the last MiB only once the others are done:
                    flows_done.wait(HANG_TIMEOUT)  # the upload is in progress during all of them
                slow.send_raw(raw[i : i + MIB])
                sent[0] = i + MIB
                time.sleep(0.04)  # about 20 MiB/s: some three seconds for the file

        sender = threading.Thread(target=send_slowly)
        sender.start()
        wait_until(lambda: sent[0] >= 4 * MIB, "the big upload under way")
        sent_before = sent[0]
        with ThreadPoolExecutor(8) as pool:
            times = list(pool.map(lambda _: normal_flow(server), range(24)))
        sent_during = sent[0] - sent_before
        flows_done.set()
        sender.join()
        answer = slow.receive(HANG_TIMEOUT)
    assert sent_during > 0, "the big upload did not move while the others ran: not a fairness test"
    assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
    hwm_growth = proc_status(pid, "VmHWM") - hwm_before
    print(f"\nF3: 24 flows (8 at a time): median {statistics.median(alone) * 1000:.0f} ms alone; "
          f"during a 64 MiB upload median {statistics.median(times) * 1000:.0f} ms, "
          f"max {max(times) * 1000:.0f} ms; server VmHWM growth {hwm_growth / MIB:.1f} MiB")
    assert within_load(max(times), statistics.median(alone)), (alone, times)
    assert hwm_growth < 32 * MIB  # the file is streamed, never held
    guard.check()


def test_f1_descriptor_exhaustion_pauses_accepting_and_recovers(server):
    """The server runs out of descriptors (EMFILE): it pauses accepting, it does not spin or die."""
    guard = Guard(server)
    pid = server.process.pid
    with server.client() as session:
        identity = make_identity(session)
        in_use = len(os.listdir(f"/proc/{pid}/fd"))
        limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 10, limits[1]))
        idle = []
        try:
            for _ in range(30):  # the kernel queues what the server cannot accept
                idle.append(socket.create_connection(server.address, timeout=5))
            server.wait_log("accept failed: Too many open files; pausing accepts")
            cpu_before = _cpu_seconds(pid)
            time.sleep(1.0)
            assert _cpu_seconds(pid) - cpu_before < 0.3  # paused, not spinning on accept
            # the established session is still served: what needs no new descriptor works,
            # what does is refused cleanly
            assert isinstance(session.request(Register(client_id=ANY_ID, name=unique_name())), Registered)
            data = os.urandom(3000)
            for packet in file_packets(identity, "f1.bin", data):
                session.send(packet)
            answer = session.receive()
            assert isinstance(answer, (FileReceived, GeneralError)), answer
        finally:
            for sock in idle:
                sock.close()
            resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
        time.sleep(1.5)  # the pause ends; accepting resumes
        for packet in file_packets(identity, "f1.bin", data):
            session.send(packet)
        answer = session.receive()
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
    guard.check()


def test_f_a_client_over_its_byte_quota_is_refused(server_factory):
    # What a client keeps counts whether verified, unverified or a new version
    # waiting for its 900: files never confirmed cannot grow without bound.
    quota = 30_000
    server = server_factory("--max-bytes-per-client", str(quota))
    guard = Guard(server)
    with server.client() as client:
        identity = make_identity(client)
        # no 900: an unverified file counts too
        assert isinstance(upload(client, identity, "a.bin", os.urandom(20_000)), FileReceived)
        assert isinstance(upload(client, identity, "b.bin", os.urandom(20_000)), GeneralError)
        assert isinstance(upload(client, identity, "c.bin", os.urandom(5_000)), FileReceived)
        # a new version of a stored name is held beside the stored one until its 900
        assert isinstance(upload(client, identity, "c.bin", os.urandom(5_000)), GeneralError)
        assert isinstance(upload(client, identity, "d.bin", os.urandom(4_000)), FileReceived)
    with server.client() as other:  # the quota is each client's own
        stranger = make_identity(other)
        assert isinstance(upload(other, stranger, "b.bin", os.urandom(20_000)), FileReceived)
    assert server.log().count("over the client's quota") == 2
    guard.check()
