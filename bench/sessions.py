"""Sessions benchmark: N concurrent clients, each running the whole flow on its own connection.

Each client connects and sends 825 (a new name), 826 (a public key), one
64 KiB file in one 828, then 900, checking every answer (1600, 1602, 1603 with
the right cksum, 1604). All N start at once; the load generator is one
process driving every connection from one ``selectors`` loop, and it reuses a
few RSA key pairs made beforehand (key generation is the client's cost, not
the server's). The server is the real ``python -m server`` at its default log
level.

Prints, per N (the median of ``--runs`` runs): sessions completed per second
(N over the time from the first connect to the last 1604), errors, p50/p99 of
one session's time (connect to 1604), and the server's CPU seconds per session
(from /proc). Targets: zero errors and ≥ 300 sessions/s, for N = 200 and
N = 1000. Exits 1 if one is missed.

    python bench/sessions.py                     # N = 200
    python bench/sessions.py --clients 200 1000 --runs 3
"""

from __future__ import annotations

import argparse
import errno
import os
import selectors
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import (
    Check, cpu_seconds, median, percentile, print_table, raise_fd_limit, report,
    start_server,
)

from protocol import (
    NEED_DATA, Acknowledged, ClientConnection, CrcOk, FileReceived, PublicKeyReceived,
    Register, Registered, SendFilePacket, SendPublicKey, cksum, crypto,
)

FILE_SIZE = 64 * 1024
KEY_POOL = 8
TARGET_RATE = 300.0
SESSION_DEADLINE = 120.0
RECV_SIZE = 65536
#: Descriptors: N client sockets here, N accepted ones in the server, and spare.
FD_MARGIN = 512


@dataclass
class Shared:
    """What every session of a run uses."""

    keys: list  # (private key, exported public key)
    payload: bytes
    expected_cksum: int
    run: int


class ClientSession:
    """One client's flow, driven by readiness events."""

    def __init__(self, index: int, shared: Shared, address: tuple[str, int]) -> None:
        self.index = index
        self.shared = shared
        self.name = f"r{shared.run}c{index}"
        self.private_key, self.public_key = shared.keys[index % len(shared.keys)]
        self.conn = ClientConnection()
        self.out = bytearray()
        self.client_id = bytes(16)
        self.error: str | None = None
        self.done = False
        self.started = time.perf_counter()
        self.finished = 0.0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        code = self.sock.connect_ex(address)
        if code not in (0, errno.EINPROGRESS):
            raise OSError(code, os.strerror(code))
        self.expect = Registered
        self.queue(Register(client_id=bytes(16), name=self.name))

    def queue(self, request) -> None:
        self.out += self.conn.send(request)

    def fail(self, message: str) -> None:
        self.error = message
        self.done = True

    def on_writable(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.fail(f"send: {exc}")
            return
        del self.out[:sent]

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.fail(f"recv: {exc}")
            return
        if not data:
            self.fail(f"closed while waiting for {self.expect.__name__}")
            return
        self.conn.receive_data(data)
        while not self.done:
            event = self.conn.next_event()
            if event is NEED_DATA:
                return
            self.on_reply(event)

    def on_reply(self, event) -> None:
        if not isinstance(event, self.expect):
            self.fail(f"expected {self.expect.__name__}, got {type(event).__name__}")
        elif isinstance(event, Registered):
            self.client_id = event.client_id
            self.expect = PublicKeyReceived
            self.queue(SendPublicKey(client_id=self.client_id, name=self.name,
                                     public_key=self.public_key))
        elif isinstance(event, PublicKeyReceived):
            aes_key = crypto.decrypt_aes_key(self.private_key, event.encrypted_aes_key)
            content = crypto.encrypt(aes_key, self.shared.payload)
            self.expect = FileReceived
            self.queue(SendFilePacket(
                client_id=self.client_id, content_size=len(content),
                orig_file_size=len(self.shared.payload), packet_number=1,
                total_packets=1, file_name="file.bin", content=content,
            ))
        elif isinstance(event, FileReceived):
            if event.cksum != self.shared.expected_cksum:
                self.fail("cksum mismatch")
                return
            self.expect = Acknowledged
            self.queue(CrcOk(client_id=self.client_id, file_name="file.bin"))
        else:
            self.finished = time.perf_counter()
            self.done = True

    def close(self) -> None:
        self.sock.close()


def run_once(address: tuple[str, int], count: int, shared: Shared, server_pid: int) -> dict:
    """Start ``count`` sessions at once and drive them all to the end."""
    selector = selectors.DefaultSelector()
    cpu_before = cpu_seconds(server_pid)
    started = time.perf_counter()
    sessions = []
    for index in range(count):
        session = ClientSession(index, shared, address)
        sessions.append(session)
        selector.register(session.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, session)
    interest = {session: selectors.EVENT_READ | selectors.EVENT_WRITE for session in sessions}
    live = count
    deadline = started + SESSION_DEADLINE
    while live and time.perf_counter() < deadline:
        for key, mask in selector.select(1.0):
            session = key.data
            if session.done:
                continue
            if mask & selectors.EVENT_WRITE:
                session.on_writable()
            if mask & selectors.EVENT_READ and not session.done:
                session.on_readable()
            if session.done:
                live -= 1
                selector.unregister(session.sock)
                session.close()
                continue
            wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if session.out else 0)
            if wanted != interest[session]:
                selector.modify(session.sock, wanted, session)
                interest[session] = wanted
    elapsed = max(s.finished for s in sessions if s.finished) - started if any(
        s.finished for s in sessions) else float("nan")
    cpu = cpu_seconds(server_pid) - cpu_before
    errors = [s.error or "not finished in time" for s in sessions if s.error or not s.finished]
    for session in sessions:
        if not session.done:
            session.close()
    selector.close()
    times = [s.finished - s.started for s in sessions if s.finished and not s.error]
    return {
        "rate": (count - len(errors)) / elapsed if elapsed == elapsed else 0.0,
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "p50": percentile(times, 0.50),
        "p99": percentile(times, 0.99),
        "cpu_per_session": cpu / count,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[200],
                        help="concurrent clients N (several values: one row each)")
    parser.add_argument("--runs", type=int, default=3, help="runs per N (median)")
    args = parser.parse_args()
    largest = max(args.clients)
    raise_fd_limit(2 * largest + FD_MARGIN)

    keys = []
    for _ in range(KEY_POOL):
        private = crypto.generate_private_key()
        keys.append((private, crypto.export_public_key(private)))
    payload = os.urandom(FILE_SIZE)
    rows, checks = [], []
    run = 0
    with tempfile.TemporaryDirectory(prefix="cipherdrop-sessions-") as temp:
        flags = ["--max-connections", str(largest + FD_MARGIN)]
        with start_server(Path(temp) / "server", *flags) as server:
            for count in args.clients:
                results = []
                for _ in range(args.runs):
                    run += 1
                    shared = Shared(keys, payload, cksum(payload), run)
                    result = run_once(server.address, count, shared, server.pid)
                    results.append(result)
                    print(f"N={count} run {len(results)}: {result['rate']:.0f} sessions/s,"
                          f" {result['errors']} errors {result['first_error']}", flush=True)
                rate = median([r["rate"] for r in results])
                errors = sum(r["errors"] for r in results)
                rows.append([
                    count, f"{rate:.0f}", errors,
                    f"{median([r['p50'] for r in results]) * 1000:.0f}",
                    f"{median([r['p99'] for r in results]) * 1000:.0f}",
                    f"{median([r['cpu_per_session'] for r in results]) * 1000:.2f}",
                ])
                checks.append(Check(f"N={count}: zero errors", str(errors), errors == 0))
                checks.append(Check(f"N={count}: ≥ {TARGET_RATE:.0f} sessions/s",
                                    f"{rate:.0f}/s", rate >= TARGET_RATE))
    print()
    print_table(
        f"825, 826, one {FILE_SIZE // 1024} KiB file, 900 per client; median of {args.runs} runs"
        " (errors: total)",
        ["N", "sessions/s", "errors", "p50 ms", "p99 ms", "server CPU ms/session"], rows,
    )
    return report(checks)


if __name__ == "__main__":
    sys.exit(main())
