"""Sessions benchmark: the server's CPU per session and its session rate, N clients at once.

A session is one client's whole flow on its own connection: connect, 825 (a
new name), 826 (a public key) → 1602 with the RSA-encrypted AES key, one
64 KiB file in one 828 → 1603 with its cksum, 900 → 1604, close. Every answer
is checked (its code, the client id, the cksum).

The load generator is meant to cost little, so that the server and not the
generator is measured: RSA key pairs are made beforehand, and each client's
825, 826, 828 (header and fixed fields) and 900 bytes are built before the
clock starts; during the run it only splices in the client id the server
gave, decrypts the AES key and encrypts the file (which the flow cannot do
earlier). One process drives every connection from one ``selectors`` loop.
The server is the real ``python -m server`` at its default log level.

Prints, per N (the median of ``--runs`` runs): the server's CPU milliseconds
per session (utime + stime from /proc/<pid>/stat, the run's delta ÷ sessions:
a figure the machine's load moves less; the kernel's part, stime, beside
it), sessions per second (N over the time from the first connect to the last
1604: a figure it does move), errors, and p50/p99 of a session's time. Each
run starts once the earlier runs' connections have left TIME_WAIT (up to a
minute: see ``common.settle``), or the kernel's part grows run after run.
Then the machine's load average and the share of the cores other processes
used during the runs (the noisiest run's), and a verdict per
target: ≤ 1.8 ms of server CPU per session, ≥ 400 sessions/s, no error. When
other processes used more than 10 % of the cores the verdicts are refused
("noisy: no verdict", exit status 2): the figures are printed, not judged.

    python bench/sessions.py                       # N = 200, 3 runs
    python bench/sessions.py --clients 200 1000 --runs 3
    python bench/sessions.py --postgres            # and beside it, on PostgreSQL
    python bench/sessions.py --metadata postgresql://cipherdrop@db.example/bench

With ``--postgres`` (a throwaway cluster from the installed binaries,
tests/backends/postgres.py) or ``--metadata URL``, every N runs on SQLite and
then on PostgreSQL, in the same run; the server CPU per session is then the
loop process's plus the database's backends' (from /proc, when the database
is on this machine), and the round trips and statements per session are read
from the line the store logs at its close. The verdicts of issue 26 come
with them: sessions/s on PostgreSQL ÷ on SQLite ≥ 0.6, loop CPU per session
on PostgreSQL ≤ 2.5 ms, no error.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import selectors
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from common import (
    REPO,
    Check, Quietness, cpu_seconds, median, percentile, print_table, raise_fd_limit, report,
    settle, start_server, system_seconds,
)

from protocol import (
    NEED_DATA, Acknowledged, ClientConnection, CrcOk, FileReceived, PublicKeyReceived,
    Register, Registered, SendFilePacket, SendPublicKey, cksum, crypto,
)
from protocol.codes import CLIENT_ID_SIZE

FILE_SIZE = 64 * 1024
FILE_NAME = "file.bin"
#: Key pairs the clients share (making one is the client's cost, not the server's).
KEY_POOL = 8
#: The targets of issue 13 (point 5).
TARGET_CPU_MS = 1.8
TARGET_RATE = 400.0
#: The targets of issue 26: PostgreSQL's rate against SQLite's, side by side, and its loop CPU.
TARGET_POSTGRES_RATIO = 0.6
TARGET_POSTGRES_LOOP_CPU_MS = 2.5
#: The line the PostgreSQL store logs at its close (server/storage/postgres/store.py).
_DATABASE_COUNTS = re.compile(r"database: (\d+) round trip\(s\), (\d+) statement\(s\)")
#: How the store names itself to PostgreSQL (its backends are found by it).
_APPLICATION_NAME = "cipherdrop-server"
SESSION_DEADLINE = 120.0
SELECT_TIMEOUT = 1.0
RECV_SIZE = 65536
#: Descriptors: N client sockets here, N accepted ones in the server, and spare.
FD_MARGIN = 512
_MS = 1000.0
_ZERO_ID = bytes(CLIENT_ID_SIZE)
#: Where a request's bytes carry the client id: the first field of its header.
_ID_FIELD = slice(0, CLIENT_ID_SIZE)


@dataclass
class Shared:
    """What every session of a run uses."""

    keys: list  # (private key, exported public key)
    payload: bytes
    expected_cksum: int
    run: int


def _with_id(template: bytes, client_id: bytes) -> bytes:
    """A prebuilt request with the client id the server gave spliced into its header."""
    return client_id + template[_ID_FIELD.stop:]


class ClientSession:
    """One client's flow, its requests built before the clock starts."""

    def __init__(self, index: int, shared: Shared) -> None:
        self.shared = shared
        name = f"r{shared.run}c{index}"
        self.private_key, public_key = shared.keys[index % len(shared.keys)]
        builder = ClientConnection()
        self.register = builder.send(Register(client_id=_ZERO_ID, name=name))
        self.send_key = builder.send(SendPublicKey(client_id=_ZERO_ID, name=name,
                                                   public_key=public_key))
        content_size = crypto.padded_size(len(shared.payload))
        self.file_head, _ = builder.send_parts(
            SendFilePacket(client_id=_ZERO_ID, content_size=content_size,
                           orig_file_size=len(shared.payload), packet_number=1,
                           total_packets=1, file_name=FILE_NAME),
            content_length=content_size,
        )
        self.crc_ok = builder.send(CrcOk(client_id=_ZERO_ID, file_name=FILE_NAME))
        self.conn = ClientConnection()
        self.out = bytearray()
        self.client_id = _ZERO_ID
        self.expect: type = Registered
        self.error: str | None = None
        self.done = False
        self.started = self.finished = 0.0
        self.sock: socket.socket | None = None

    def connect(self, address: tuple[str, int], source: str | None = None) -> socket.socket:
        """Open the connection (from ``source``, a local address, if given) and queue the 825
        (the clock is running)."""
        self.started = time.perf_counter()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.setblocking(False)
        code = self.sock.connect_ex(address)
        if code not in (0, errno.EINPROGRESS):
            raise OSError(code, os.strerror(code))
        self.out += self.register
        return self.sock

    def fail(self, message: str) -> None:
        self.error = message
        self.done = True

    def on_writable(self) -> None:
        assert self.sock is not None
        try:
            sent = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.fail(f"send: {exc}")
            return
        del self.out[:sent]

    def on_readable(self) -> None:
        assert self.sock is not None
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
            self.out += _with_id(self.send_key, self.client_id)
        elif event.client_id != self.client_id:
            self.fail(f"{type(event).__name__} for another client id")
        elif isinstance(event, PublicKeyReceived):
            aes_key = crypto.decrypt_aes_key(self.private_key, event.encrypted_aes_key)
            self.expect = FileReceived
            self.out += _with_id(self.file_head, self.client_id)
            self.out += crypto.encrypt(aes_key, self.shared.payload)
        elif isinstance(event, FileReceived):
            if event.cksum != self.shared.expected_cksum:
                self.fail("cksum mismatch")
                return
            self.expect = Acknowledged
            self.out += _with_id(self.crc_ok, self.client_id)
        else:
            self.finished = time.perf_counter()
            self.done = True

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def database_backends(url: str | None) -> list[int]:
    """The server's backends in the database at ``url`` (none for SQLite, or one elsewhere)."""
    if url is None:
        return []
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        rows = db.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
            " AND datname = current_database()", (_APPLICATION_NAME,),
        ).fetchall()
    return [pid for (pid,) in rows if Path(f"/proc/{pid}").exists()]


def _cpu_of(pids: Sequence[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def run_once(
    address: tuple[str, int], count: int, shared: Shared, server_pids: Sequence[int],
    backends: list[int] | None = None, sources: Sequence[str] = (),
) -> dict:
    """Start ``count`` sessions at once and drive them all to the end.

    ``server_pids``: the server's processes (a cluster's nodes), their CPU summed;
    ``sources``: local addresses the sessions connect from, in turn (none: the kernel's).
    """
    backends = backends or []
    sessions = [ClientSession(index, shared) for index in range(count)]  # before the clock
    selector = selectors.DefaultSelector()
    both = selectors.EVENT_READ | selectors.EVENT_WRITE
    cpu_before = _cpu_of(server_pids)
    system_before = sum(system_seconds(pid) for pid in server_pids)
    database_before = _cpu_of(backends)
    started = time.perf_counter()
    interest = {}
    for index, session in enumerate(sessions):
        source = sources[index % len(sources)] if sources else None
        selector.register(session.connect(address, source), both, session)
        interest[session] = both
    live = count
    deadline = started + SESSION_DEADLINE
    while live and time.perf_counter() < deadline:
        for key, mask in selector.select(SELECT_TIMEOUT):
            session = key.data
            if mask & selectors.EVENT_WRITE:
                session.on_writable()
            if mask & selectors.EVENT_READ and not session.done:
                session.on_readable()
            if session.done:
                live -= 1
                selector.unregister(key.fileobj)
                session.close()
                continue
            wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if session.out else 0)
            if wanted != interest[session]:
                selector.modify(key.fileobj, wanted, session)
                interest[session] = wanted
    cpu = _cpu_of(server_pids) - cpu_before
    system = sum(system_seconds(pid) for pid in server_pids) - system_before
    database = _cpu_of(backends) - database_before
    finished = [s.finished for s in sessions if s.finished]
    elapsed = max(finished) - started if finished else float("nan")
    errors = [s.error or "not finished in time" for s in sessions if s.error or not s.finished]
    for session in sessions:
        if not session.done:
            session.close()
    selector.close()
    times = [s.finished - s.started for s in sessions if s.finished and not s.error]
    return {
        "rate": len(times) / elapsed if finished else 0.0,
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "p50": percentile(times, 0.50),
        "p99": percentile(times, 0.99),
        "cpu_ms": cpu / count * _MS,
        "system_ms": system / count * _MS,
        "database_ms": database / count * _MS,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[200],
                        help="concurrent clients N (several values: one row each)")
    parser.add_argument("--runs", type=int, default=3, help="runs per N (median)")
    parser.add_argument("--metadata", metavar="URL",
                        help="also run with the metadata in this PostgreSQL database"
                        " (postgresql://…; the password in ~/.pgpass or PGPASSWORD)")
    parser.add_argument("--postgres", action="store_true",
                        help="also run on PostgreSQL, in a throwaway cluster started here")
    args = parser.parse_args()
    largest = max(args.clients)
    raise_fd_limit(2 * largest + FD_MARGIN)

    keys = []
    for _ in range(KEY_POOL):
        private = crypto.generate_private_key()
        keys.append((private, crypto.export_public_key(private)))
    payload = os.urandom(FILE_SIZE)
    cluster = None
    stores: list[tuple[str, str | None]] = [("sqlite", None)]
    if args.postgres:
        sys.path.insert(0, str(REPO / "tests"))
        from backends.postgres import PostgresCluster

        cluster = PostgresCluster.start()
        stores.append(("postgresql", cluster.database("bench")))
    elif args.metadata:
        stores.append(("postgresql", args.metadata))
    try:
        rows, checks, quiet = _measure(args, stores, keys, payload)
    finally:
        if cluster is not None:
            cluster.stop()
    print()
    print_table(
        f"825, 826, one {FILE_SIZE // 1024} KiB file, 900 per client; median of {args.runs} runs"
        " (errors: total; server CPU = loop + database backends)",
        ["metadata", "N", "server CPU ms/session", "loop", "of it kernel", "database",
         "round trips/session", "statements/session", "sessions/s", "errors", "p50 ms",
         "p99 ms"], rows,
    )
    return report(checks, quiet)


def _measure(
    args: argparse.Namespace, stores: list[tuple[str, str | None]], keys: list, payload: bytes
) -> tuple[list, list[Check], Quietness]:
    """Every store, every N, ``args.runs`` runs each: the table's rows, the checks, the
    noisiest run's quietness."""
    rows: list = []
    checks: list[Check] = []
    rates: dict[tuple[str, int], float] = {}
    quiet: Quietness | None = None  # the noisiest run's: it decides the verdict
    run = 0
    for store, url in stores:
        with tempfile.TemporaryDirectory(prefix="cipherdrop-sessions-") as temp:
            flags = ["--max-connections", str(max(args.clients) + FD_MARGIN)]
            if url is not None:
                flags += ["--metadata", url]
            store_rows = []
            with start_server(Path(temp) / "server", *flags) as server:
                backends = database_backends(url)
                sessions = 0
                for count in args.clients:
                    results = []
                    for _ in range(args.runs):
                        run += 1
                        waited = settle()
                        shared = Shared(keys, payload, cksum(payload), run)
                        with Quietness() as this_run:  # the settling wait is not measured
                            result = run_once(server.address, count, shared, [server.pid],
                                              backends)
                        sessions += count
                        if quiet is None or this_run.others_share > quiet.others_share:
                            quiet = this_run
                        results.append(result)
                        print(f"{store} N={count} run {len(results)}: {result['cpu_ms']:.2f} ms"
                              f" loop CPU/session ({result['system_ms']:.2f} in the kernel),"
                              f" {result['database_ms']:.2f} ms database,"
                              f" {result['rate']:.0f} sessions/s,"
                              f" {result['errors']} errors {result['first_error']}"
                              f" (after {waited:.0f} s for TIME_WAIT to clear)", flush=True)
                    loop_ms = median([r["cpu_ms"] for r in results])
                    database_ms = median([r["database_ms"] for r in results])
                    rate = median([r["rate"] for r in results])
                    rates[store, count] = rate
                    errors = sum(r["errors"] for r in results)
                    store_rows.append([
                        store, count, f"{loop_ms + database_ms:.2f}", f"{loop_ms:.2f}",
                        f"{median([r['system_ms'] for r in results]):.2f}",
                        f"{database_ms:.2f}" if backends else "-", "", "",
                        f"{rate:.0f}", errors,
                        f"{median([r['p50'] for r in results]) * _MS:.0f}",
                        f"{median([r['p99'] for r in results]) * _MS:.0f}",
                    ])
                    checks.extend(_checks(store, count, loop_ms, rate, errors, rates))
            if url is not None:  # the store logs its round trips at its close
                found = _DATABASE_COUNTS.findall(server.log_path.read_text())
                if found:
                    trips, statements = (int(value) for value in found[-1])
                    for row in store_rows:
                        row[6] = f"{trips / sessions:.1f}"
                        row[7] = f"{statements / sessions:.1f}"
            rows.extend(store_rows)
    assert quiet is not None  # at least one run
    return rows, checks, quiet


def _checks(
    store: str, count: int, loop_ms: float, rate: float, errors: int,
    rates: dict[tuple[str, int], float],
) -> list[Check]:
    """The verdicts of one row: issue 13's on SQLite, issue 26's on PostgreSQL."""
    found = [Check(f"{store} N={count}: zero errors", str(errors), errors == 0)]
    if store == "sqlite":
        return found + [
            Check(f"N={count}: ≤ {TARGET_CPU_MS} ms server CPU/session",
                  f"{loop_ms:.2f} ms", loop_ms <= TARGET_CPU_MS),
            Check(f"N={count}: ≥ {TARGET_RATE:.0f} sessions/s", f"{rate:.0f}/s",
                  rate >= TARGET_RATE),
        ]
    ratio = rate / rates["sqlite", count] if rates.get(("sqlite", count)) else float("nan")
    return found + [
        Check(f"{store} N={count}: ≤ {TARGET_POSTGRES_LOOP_CPU_MS} ms loop CPU/session",
              f"{loop_ms:.2f} ms", loop_ms <= TARGET_POSTGRES_LOOP_CPU_MS),
        Check(f"{store} N={count}: sessions/s ÷ SQLite's ≥ {TARGET_POSTGRES_RATIO}",
              f"{ratio:.2f}", ratio >= TARGET_POSTGRES_RATIO),
    ]


if __name__ == "__main__":
    sys.exit(main())
