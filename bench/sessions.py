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
1604: a figure it does move), errors, p50/p99 of a session's time, and the
machine's load beside them (the 1-minute load average, and the share of the
cores other processes used during the run). Each run starts once its servers'
earlier connections have left TIME_WAIT (up to a minute: see
``common.settle``), or the kernel's part grows run after run. Then a verdict
per target: ≤ 1.8 ms of server CPU per session, ≥ 400 sessions/s, no error
(issue 13). When other processes used more than 10 % of the cores in the
noisiest run, the verdicts are refused (exit status 2): each row says what
it would be, marked "noisy: no verdict".

    python bench/sessions.py                       # N = 200, 3 runs
    python bench/sessions.py --clients 200 1000 --runs 3
    python bench/sessions.py --postgres            # issue 26's targets table
    python bench/sessions.py --metadata postgresql://cipherdrop@db.example/bench

With ``--postgres`` (a throwaway cluster from the installed binaries,
tests/backends/postgres.py) or ``--metadata URL``, N is 200 and 1000 unless
given, and each N runs in three setups side by side, their runs interleaved
(run 1 of each, then run 2 of each...; each setup and N has servers of its
own): SQLite; PostgreSQL; and two ``python -m server`` processes
(``--node-name a200`` and ``b200`` for N = 200, one blob folder) sharing the PostgreSQL
database, the clients split across them in turn. The server CPU per session
is then the loop processes' plus the database's backends' (the stores' and
the coordinations', from /proc, when the database is on this machine), and
the round trips and statements per session are read from the line each
store logs at its close, the coordination's round trips (those the loop
waited for) from its own line. Then bench/fairness.py's four uploads of 256 MiB
(``--upload-mib``) beside the 827 probe, on PostgreSQL. The targets of
issue 26 come with them, row by row: sessions/s on PostgreSQL ÷ on SQLite
≥ 0.6; two processes ÷ one, on PostgreSQL, ≥ 1.5; loop CPU per session on
PostgreSQL ≤ 2.5 ms; no error across every N; the 827's p99 beside the
uploads ≤ 50 ms; and no answered file lost across a node kill and a
database restart, which tests/server/test_two_nodes.py judges (its row says
so).

``--postgres-socket`` (with ``--postgres``) adds the one-process PostgreSQL
setup once more, its store and coordination connecting through the
cluster's unix socket (``postgresql://USER@/DB?host=FOLDER``) instead of TCP
on 127.0.0.1, side by side: each N's loop CPU per session and sessions/s
through the socket ÷ over TCP, and the loop CPU target through the socket.
``--compare-with CHECKOUT`` adds the one-process PostgreSQL setup once more,
run by the server of another checkout (``git worktree add /tmp/before
COMMIT``): a change's before and after, side by side in one run.
``--profile DIR`` runs every server under cProfile, timed by CPU time (what
dominates the loop's CPU per session: ``python -m pstats DIR/FILE.prof``).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import re
import selectors
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import fairness
from common import (
    REPO,
    Check, Quietness, add_compare_with, cpu_seconds, median, percentile, print_table,
    raise_fd_limit, report, settle, start_server, system_seconds,
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
#: The targets of issue 26 (its table): PostgreSQL's rate against SQLite's, side by side,
#: two processes' rate against one's, the loop CPU, and the 827 beside big uploads.
TARGET_POSTGRES_RATIO = 0.6
TARGET_NODES_RATIO = 1.5
TARGET_POSTGRES_LOOP_CPU_MS = 2.5
TARGET_UPLOADS_P99_MS = 50.0
#: The target of issue 26 judged by a test, not here: files answered, then lost.
LOST_FILES_TEST = "tests/server/test_two_nodes.py"
DEFAULT_CLIENTS = (200,)
ISSUE_26_CLIENTS = (200, 1000)
UPLOAD_RUNS = 3
#: The setups' labels, and the two server processes sharing one database.
SQLITE = "sqlite"
POSTGRESQL = "postgresql"
NODES = 2
NODE_NAMES = ("a", "b")
POSTGRESQL_NODES = f"postgresql, {NODES} nodes"
POSTGRESQL_SOCKET = "postgresql, unix socket"
#: The line the PostgreSQL store logs at its close (server/storage/postgres/store.py).
_DATABASE_COUNTS = re.compile(r"database: (\d+) round trip\(s\), (\d+) statement\(s\)")
#: The line the coordination logs at its close (server/storage/postgres/coordination.py):
#: the round trips it waited for (what it sent without waiting is not one).
_COORDINATION_COUNTS = re.compile(r"coordination: (\d+) round trip\(s\)")
#: How the store ("cipherdrop-server") and the coordination ("cipherdrop coordination
#: NODE") name themselves to PostgreSQL: their backends are found by it.
_APPLICATION_NAMES = "cipherdrop%"
#: A server's backends on PostgreSQL (its store's and its coordination's), waited for
#: after its start this long at most, looked for this often.
BACKENDS_PER_SERVER = 2
BACKENDS_WAIT = 10.0
BACKENDS_POLL = 0.05
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
    """The servers' backends in the database at ``url``, their store's and their
    coordination's (none for SQLite, or for a database elsewhere)."""
    if url is None:
        return []
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        rows = db.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s"
            " AND datname = current_database()", (_APPLICATION_NAMES,),
        ).fetchall()
    return [pid for (pid,) in rows if Path(f"/proc/{pid}").exists()]


def _new_backends(url: str | None, before: set[int], servers: int) -> list[int]:
    """The backends that servers just started opened: a server accepts connections before
    its store and its coordination have connected, so they are waited for (each server
    has both), up to :data:`BACKENDS_WAIT` seconds."""
    if url is None:
        return []
    given_up = time.monotonic() + BACKENDS_WAIT
    while True:
        found = [pid for pid in database_backends(url) if pid not in before]
        if len(found) >= BACKENDS_PER_SERVER * servers or time.monotonic() >= given_up:
            return found
        time.sleep(BACKENDS_POLL)


def _cpu_of(pids: Sequence[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def _cpu_by_pid(pids: Sequence[int]) -> dict[int, float]:
    """The CPU seconds of those of ``pids`` still running (a backend may end: a server's
    connection made for its start-up alone, or one it made again)."""
    found = {}
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            found[pid] = cpu_seconds(pid)
    return found


def _system_of(pids: Sequence[int]) -> float:
    return sum(system_seconds(pid) for pid in pids)


def run_once(
    addresses: Sequence[tuple[str, int]], count: int, shared: Shared,
    server_pids: Sequence[int], backends: list[int] | None = None, sources: Sequence[str] = (),
) -> dict:
    """Start ``count`` sessions at once, split in turn across the servers at ``addresses``,
    and drive them all to the end.

    ``server_pids``: the server's processes (a cluster's nodes), their CPU summed;
    ``sources``: local addresses the sessions connect from, in turn (none: the kernel's).
    """
    backends = backends or []
    sessions = [ClientSession(index, shared) for index in range(count)]  # before the clock
    selector = selectors.DefaultSelector()
    both = selectors.EVENT_READ | selectors.EVENT_WRITE
    cpu_before, system_before = _cpu_of(server_pids), _system_of(server_pids)
    database_before = _cpu_by_pid(backends)
    started = time.perf_counter()
    interest = {}
    for index, session in enumerate(sessions):
        address = addresses[index % len(addresses)]
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
    system = _system_of(server_pids) - system_before
    database_after = _cpu_by_pid(backends)
    database = sum(database_after[pid] - database_before[pid]
                   for pid in database_after if pid in database_before)
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


@dataclass
class Setup:
    """Where the metadata is, and how many server processes share it."""

    label: str
    url: str | None  # None: SQLite in each server's data folder
    nodes: int = 1
    #: Whose server: this checkout's, or another's (``--compare-with``).
    checkout: Path = REPO


@dataclass
class Figures:
    """The medians of one setup at one N."""

    loop_ms: float
    rate: float
    errors: int


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=None,
                        help="concurrent clients N (several values: one row each; default"
                        f" {DEFAULT_CLIENTS[0]}, or {' and '.join(map(str, ISSUE_26_CLIENTS))}"
                        " on PostgreSQL)")
    parser.add_argument("--runs", type=int, default=3, help="runs per N (median)")
    parser.add_argument("--metadata", metavar="URL",
                        help="also run with the metadata in this PostgreSQL database"
                        " (postgresql://…; the password in ~/.pgpass or PGPASSWORD)")
    parser.add_argument("--postgres", action="store_true",
                        help="also run on PostgreSQL, in a throwaway cluster started here")
    parser.add_argument("--postgres-socket", action="store_true",
                        help="with --postgres: the one-process setup once more, through the"
                        " cluster's unix socket instead of TCP on 127.0.0.1, side by side")
    parser.add_argument("--upload-mib", type=int, default=fairness.DEFAULT_SIZE_MIB,
                        help="on PostgreSQL: each of the four uploads beside the 827 probe"
                        " (bench/fairness.py; 0: not run)")
    parser.add_argument("--upload-runs", type=int, default=UPLOAD_RUNS,
                        help="on PostgreSQL: runs of the four uploads (median)")
    add_compare_with(parser, "on PostgreSQL: the one-process setup run a second time, side by"
                     " side")
    parser.add_argument("--profile", metavar="DIR", type=Path,
                        help="run each server under cProfile, its statistics written to"
                        " DIR/SETUP-N-NODE.prof at its stop (the CPU figures then include"
                        " the profiler's)")
    args = parser.parse_args()
    if args.postgres_socket and not args.postgres:
        parser.error("--postgres-socket needs --postgres (its cluster's socket)")
    on_postgres = args.postgres or args.metadata is not None
    if args.clients is None:
        args.clients = list(ISSUE_26_CLIENTS if on_postgres else DEFAULT_CLIENTS)
    largest = max(args.clients)
    raise_fd_limit(2 * largest + FD_MARGIN)

    keys = []
    for _ in range(KEY_POOL):
        private = crypto.generate_private_key()
        keys.append((private, crypto.export_public_key(private)))
    payload = os.urandom(FILE_SIZE)
    cluster = None
    setups = [Setup(SQLITE, None)]
    if args.postgres:
        sys.path.insert(0, str(REPO / "tests"))
        from backends.postgres import PostgresCluster

        cluster = PostgresCluster.start()
        setups += [Setup(POSTGRESQL, cluster.database("bench_one")),
                   Setup(POSTGRESQL_NODES, cluster.database("bench_two"), NODES)]
        if args.postgres_socket:
            cluster.database("bench_socket")
            setups.append(Setup(POSTGRESQL_SOCKET, cluster.url("bench_socket", unix=True)))
    elif args.metadata:
        setups += [Setup(POSTGRESQL, args.metadata),
                   Setup(POSTGRESQL_NODES, args.metadata, NODES)]
    if on_postgres and args.compare_with:
        url = cluster.database("bench_compared") if cluster else args.metadata
        setups.append(Setup(f"{POSTGRESQL} ({args.compare_with.name})", url,
                            checkout=args.compare_with))
    try:
        rows, figures, quiet = _measure(args, setups, keys, payload)
        uploads = None
        if on_postgres and args.upload_mib:
            uploads, quiet = _probe_beside_uploads(args, setups[1].url, quiet)
    finally:
        if cluster is not None:
            cluster.stop()
    print()
    print_table(
        f"825, 826, one {FILE_SIZE // 1024} KiB file, 900 per client; median of {args.runs} runs"
        " (errors: total; server CPU = loop + database backends, per session; N split across"
        " the nodes)",
        ["metadata", "N", "server CPU ms/session", "loop", "of it kernel", "database",
         "round trips/session", "statements/session", "coordination round trips/session",
         "sessions/s", "errors", "p50 ms",
         "p99 ms", "load", "others' share"], rows,
    )
    if uploads is not None:
        print()
        print_table(f"on PostgreSQL: 827 → 1605 round trip while {fairness.UPLOADS} uploads of"
                    f" {args.upload_mib} MiB stream in",
                    ["", "round trips", "p50 ms", "p99 ms", "max ms"],
                    uploads.rows + [uploads.median_row()])
    if args.postgres_socket:
        print()
        print_table("on PostgreSQL, one process: through the unix socket ÷ over TCP",
                    ["N", "loop CPU ms/session", "sessions/s"],
                    _socket_rows(args.clients, figures))
    checks = _sqlite_checks(args.clients, figures)
    if on_postgres:
        checks += _postgres_checks(args, figures, uploads)
    return report(checks, quiet)


@dataclass
class Group:
    """One setup's servers for one N, started once and measured ``--runs`` times."""

    setup: Setup
    count: int
    servers: list
    backends: list[int]
    results: list[dict] = field(default_factory=list)
    #: The round trips and statements its stores logged at their close, and the round
    #: trips its coordinations waited for.
    database_counts: tuple[int, int, int] = (0, 0, 0)

    @property
    def ports(self) -> list[int]:
        return [server.port for server in self.servers]


def _measure(
    args: argparse.Namespace, setups: list[Setup], keys: list, payload: bytes
) -> tuple[list, dict[tuple[str, int], Figures], Quietness]:
    """Every setup at every N, ``args.runs`` runs each, interleaved (run 1 of each, then run
    2 of each...): the table's rows, the medians, the noisiest run's quietness.

    Each (setup, N) has servers of its own, on ports of their own, so that a run waits
    only for its own earlier run's connections to leave TIME_WAIT (``settle``).
    """
    quiet: Quietness | None = None  # the noisiest run's: it decides the verdict
    with tempfile.TemporaryDirectory(prefix="cipherdrop-sessions-") as temp, \
            contextlib.ExitStack() as stack:
        groups = []
        for count in args.clients:
            for setup in setups:
                folder = Path(temp) / f"{len(groups)}"
                before = set(database_backends(setup.url))
                servers = [
                    stack.enter_context(start_server(
                        folder / f"server{node}", *flags,
                        profile=_profile_path(args.profile, setup, count, node),
                        checkout=setup.checkout,
                    ))
                    for node, flags in enumerate(_server_flags(args, setup, count, folder))
                ]
                backends = _new_backends(setup.url, before, len(servers))
                groups.append(Group(setup, count, servers, backends))
        serial = 0  # the names of a run's clients are new in every database
        for run in range(1, args.runs + 1):
            for group in groups:
                serial += 1
                waited = settle(group.ports)
                shared = Shared(keys, payload, cksum(payload), serial)
                with Quietness() as this_run:  # the settling wait is not measured
                    result = run_once([server.address for server in group.servers],
                                      group.count, shared,
                                      [server.pid for server in group.servers], group.backends)
                result["load"] = this_run.load_average[0]
                result["others"] = this_run.others_share
                if quiet is None or this_run.others_share > quiet.others_share:
                    quiet = this_run
                group.results.append(result)
                print(f"{group.setup.label} N={group.count} run {run}: {result['cpu_ms']:.2f} ms"
                      f" loop CPU/session ({result['system_ms']:.2f} in the kernel),"
                      f" {result['database_ms']:.2f} ms database,"
                      f" {result['rate']:.0f} sessions/s,"
                      f" {result['errors']} errors {result['first_error']}"
                      f" (after {waited:.0f} s for TIME_WAIT to clear; load"
                      f" {result['load']:.2f}, others {result['others']:.0%})", flush=True)
        for group in groups:
            for server in group.servers:
                server.stop()  # the store logs its round trips at its close
            group.database_counts = _database_counts(group.servers)
    assert quiet is not None  # at least one run
    rows = []
    figures: dict[tuple[str, int], Figures] = {}
    for group in sorted(groups, key=lambda g: (setups.index(g.setup), g.count)):
        results = group.results
        loop_ms = median([r["cpu_ms"] for r in results])
        database_ms = median([r["database_ms"] for r in results])
        rate = median([r["rate"] for r in results])
        errors = sum(r["errors"] for r in results)
        figures[group.setup.label, group.count] = Figures(loop_ms, rate, errors)
        trips, statements, coordination = group.database_counts
        sessions = group.count * len(results)
        rows.append([
            group.setup.label, group.count, f"{loop_ms + database_ms:.2f}", f"{loop_ms:.2f}",
            f"{median([r['system_ms'] for r in results]):.2f}",
            f"{database_ms:.2f}" if group.backends else "-",
            f"{trips / sessions:.1f}" if trips else "-",
            f"{statements / sessions:.1f}" if trips else "-",
            f"{coordination / sessions:.1f}" if coordination else "-",
            f"{rate:.0f}", errors,
            f"{median([r['p50'] for r in results]) * _MS:.0f}",
            f"{median([r['p99'] for r in results]) * _MS:.0f}",
            f"{median([r['load'] for r in results]):.2f}",
            f"{median([r['others'] for r in results]):.0%}",
        ])
    return rows, figures, quiet


def _server_flags(
    args: argparse.Namespace, setup: Setup, count: int, temp: Path
) -> list[list[str]]:
    """Each server's flags: on PostgreSQL, its URL; with several nodes, their names and
    one blob folder they share. The nodes of each N run at once on one database: their
    names carry N (a name is one node's while it runs)."""
    flags = ["--max-connections", str(max(args.clients) + FD_MARGIN)]
    if setup.url is None:
        return [flags]
    flags += ["--metadata", setup.url]
    if setup.nodes == 1:
        return [flags]
    shared_blobs = ["--blobs", (temp / "blobs").as_uri()]
    return [flags + shared_blobs + ["--node-name", f"{NODE_NAMES[node]}{count}"]
            for node in range(setup.nodes)]


def _profile_path(folder: Path | None, setup: Setup, count: int, node: int) -> Path | None:
    """Where a server's cProfile statistics go (``--profile``), or None."""
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^a-z0-9]+", "-", setup.label)
    return folder.resolve() / f"{name}-{count}-{node}.prof"


def _database_counts(servers: list) -> tuple[int, int, int]:
    """The round trips and statements the servers' stores logged at their close, and the
    round trips their coordinations did (a server that logs none: 0)."""
    trips = statements = coordination = 0
    for server in servers:
        text = server.log_path.read_text()
        found = _DATABASE_COUNTS.findall(text)
        if found:
            trips += int(found[-1][0])
            statements += int(found[-1][1])
        coordinated = _COORDINATION_COUNTS.findall(text)
        if coordinated:
            coordination += int(coordinated[-1])
    return trips, statements, coordination


def _probe_beside_uploads(
    args: argparse.Namespace, url: str | None, quiet: Quietness
) -> tuple[fairness.StreamRuns, Quietness]:
    """bench/fairness.py's streams on PostgreSQL; the noisier quietness of the two."""
    assert url is not None
    with tempfile.TemporaryDirectory(prefix="cipherdrop-sessions-uploads-") as temp, \
            Quietness() as during:
        found = fairness.probe_beside_uploads(
            Path(temp), args.upload_mib, args.upload_runs, "--metadata", url,
            label="postgresql, 827 beside four uploads: ",
        )
        during.sample()
    return found, during if during.others_share > quiet.others_share else quiet


def _sqlite_checks(clients: list[int], figures: dict[tuple[str, int], Figures]) -> list[Check]:
    """Issue 13's targets, on SQLite."""
    checks = []
    for count in clients:
        found = figures[SQLITE, count]
        checks += [
            Check(f"{SQLITE} N={count}: zero errors", str(found.errors), found.errors == 0),
            Check(f"{SQLITE} N={count}: ≤ {TARGET_CPU_MS} ms server CPU/session",
                  f"{found.loop_ms:.2f} ms", found.loop_ms <= TARGET_CPU_MS),
            Check(f"{SQLITE} N={count}: ≥ {TARGET_RATE:.0f} sessions/s", f"{found.rate:.0f}/s",
                  found.rate >= TARGET_RATE),
        ]
    return checks


def _socket_rows(clients: list[int], figures: dict[tuple[str, int], Figures]) -> list[list]:
    """Per N: the loop CPU per session and the sessions/s through the unix socket ÷ over TCP."""
    rows = []
    for count in clients:
        socket_, tcp = figures[POSTGRESQL_SOCKET, count], figures[POSTGRESQL, count]
        rows.append([
            count, f"{socket_.loop_ms:.2f} ÷ {tcp.loop_ms:.2f} = {socket_.loop_ms / tcp.loop_ms:.2f}",
            f"{socket_.rate:.0f} ÷ {tcp.rate:.0f} = {socket_.rate / tcp.rate:.2f}",
        ])
    return rows


def _postgres_checks(
    args: argparse.Namespace, figures: dict[tuple[str, int], Figures],
    uploads: fairness.StreamRuns | None,
) -> list[Check]:
    """Issue 26's targets table, row by row."""
    checks = []
    for count in args.clients:
        one, sqlite, two = (figures[label, count]
                            for label in (POSTGRESQL, SQLITE, POSTGRESQL_NODES))
        ratio = one.rate / sqlite.rate if sqlite.rate else float("nan")
        checks.append(Check(
            f"N={count}: sessions/s, one process, PostgreSQL ÷ SQLite ≥ {TARGET_POSTGRES_RATIO}",
            f"{ratio:.2f} ({one.rate:.0f} ÷ {sqlite.rate:.0f})", ratio >= TARGET_POSTGRES_RATIO))
    for count in args.clients:
        one, two = figures[POSTGRESQL, count], figures[POSTGRESQL_NODES, count]
        ratio = two.rate / one.rate if one.rate else float("nan")
        checks.append(Check(
            f"N={count}: sessions/s, {NODES} processes ÷ one, on PostgreSQL ≥ {TARGET_NODES_RATIO}",
            f"{ratio:.2f} ({two.rate:.0f} ÷ {one.rate:.0f})", ratio >= TARGET_NODES_RATIO))
    transports = [(POSTGRESQL, "")] + (
        [(POSTGRESQL_SOCKET, " through its unix socket")] if args.postgres_socket else [])
    for label, how in transports:
        for count in args.clients:
            loop_ms = figures[label, count].loop_ms
            checks.append(Check(
                f"N={count}: loop CPU/session on PostgreSQL{how} ≤ {TARGET_POSTGRES_LOOP_CPU_MS} ms",
                f"{loop_ms:.2f} ms", loop_ms <= TARGET_POSTGRES_LOOP_CPU_MS))
    errors = sum(found.errors for found in figures.values())
    checks.append(Check(
        f"errors across N = {', '.join(map(str, args.clients))} (every setup, every run)",
        str(errors), errors == 0))
    if uploads is not None:
        p99 = median(uploads.p99s)
        checks.append(Check(
            f"827 round trip p99 beside {fairness.UPLOADS} uploads of {args.upload_mib} MiB,"
            f" on PostgreSQL ≤ {TARGET_UPLOADS_P99_MS:.0f} ms (errors: {uploads.errors})",
            f"{p99:.1f} ms", p99 <= TARGET_UPLOADS_P99_MS and uploads.errors == 0))
    checks.append(Check("answered-then-lost files across a node kill and a database restart"
                        " = 0", "-", False, judged_by=LOST_FILES_TEST))
    return checks


if __name__ == "__main__":
    sys.exit(main())
