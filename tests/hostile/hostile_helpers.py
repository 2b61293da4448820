"""What every docs/HOSTILE.md test checks besides its own case: the "Must not" column.

Unless a case says otherwise, docs/HOSTILE.md implies for every case: no crash, no
traceback, no hang of other connections, no write outside
``received_files/``, no change to other clients' rows or files. A
:class:`Guard` made at the start of a test registers a *bystander* client
with a verified file, and :meth:`Guard.check` at the end proves all of that:
the server process lives, the bystander's rows and files are byte for byte
what they were, the data folder holds nothing the server should not make, the
log has no traceback, and a fresh client completes a whole normal flow.
"""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import time
from pathlib import Path
from typing import Callable

from helpers import (
    ANY_ID,
    POLL_INTERVAL,
    START_TIMEOUT,
    RawClient,
    ServerProcess,
    make_identity,
    start_server,
    unique_name,
    upload,
)
from timing_helpers import HANG_TIMEOUT, wait_until
from protocol import (
    Acknowledged,
    ClientConnection,
    CrcOk,
    FileReceived,
    Register,
    Registered,
    SendFilePacket,
    cksum,
)

STRANGER = "127.0.0.2"
DB_FILES = {"defensive.db", "defensive.db-wal", "defensive.db-shm", "defensive.db-journal"}
#: The server's lock on its data folder (one server per folder).
LOCK_FILE = ".cipherdrop.lock"
TOP_LEVEL = DB_FILES | {"received_files", "port.info", LOCK_FILE}
_CLIENT_DIR = re.compile(r"^[0-9a-f]{32}$")
#: What server_factory puts beside a data folder: other data folders and logs.
_FACTORY_ENTRY = re.compile(r"^(server\d+|.+-server-\d+\.log)$")
TEMP_PREFIX = ".tmp-"


def db_rows(server: ServerProcess, sql: str, *args) -> list[tuple]:
    """Rows of a query on the server's database (read beside the server: WAL)."""
    with sqlite3.connect(server.data_dir / "defensive.db") as db:
        return db.execute(sql, args).fetchall()


def client_dir(server: ServerProcess, client_id: bytes) -> Path:
    """A client's folder under received_files/."""
    return server.data_dir / "received_files" / client_id.hex()


def client_files(server: ServerProcess, client_id: bytes) -> list[str]:
    """Names in a client's folder (temp files included), sorted."""
    folder = client_dir(server, client_id)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def temp_files(server: ServerProcess) -> list[Path]:
    """Every temp file under received_files/."""
    return list((server.data_dir / "received_files").rglob(f"{TEMP_PREFIX}*"))


def temp_files_gone(server: ServerProcess) -> bool:
    """True once no temp file is left under received_files/, waiting for it a while: an
    aborted upload's file is removed by the blob port's worker (server/blobport.py), and
    only a refusal's answer waits for that (a cut connection, a replaced upload or a
    deadline has none). AssertionError if one stays."""
    wait_until(lambda: temp_files(server) == [], "the aborted upload's temp file removed")
    return True


def file_count(server: ServerProcess, client_id: bytes) -> int:
    """How many rows the client has in ``files``."""
    return db_rows(server, "SELECT COUNT(*) FROM files WHERE ID = ?", client_id)[0][0]


def proc_status(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` memory field (VmRSS, VmHWM...) in bytes."""
    text = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert found, f"{field} not in /proc/{pid}/status"
    return int(found.group(1)) * 1024


def wait_count(server: ServerProcess, text: str, count: int, timeout: float = HANG_TIMEOUT) -> None:
    """Wait until the log holds ``text`` exactly ``count`` times (more fails at once)."""
    deadline = time.monotonic() + timeout
    while True:
        found = server.log().count(text)
        assert found <= count, f"{text!r} logged {found} times, expected {count}"
        if found == count:
            return
        assert time.monotonic() < deadline, f"{text!r} logged {found} times, expected {count}"
        time.sleep(0.02)


def start_refused(data_dir: Path, *flags: str) -> ServerProcess:
    """Start a server that must refuse to start; it has exited when this returns.

    Fails at once (and kills it) if it listens instead.
    """
    server = start_server(data_dir, *flags, wait=False)
    deadline = time.monotonic() + START_TIMEOUT
    while server.process.poll() is None:
        if "listening on" in server.log():
            server.kill()
            raise AssertionError(f"the server started:\n{server.log()}")
        assert time.monotonic() < deadline, f"the server neither started nor exited:\n{server.log()}"
        time.sleep(POLL_INTERVAL)
    return server


def sentinel(client: RawClient) -> list:
    """Send a fresh 825 and return every reply that came before its 1600.

    The replies to what was sent before, in order, without waiting for a
    timeout: the 825 is answered after them.
    """
    client.send(Register(client_id=ANY_ID, name=unique_name("sentinel")))
    replies = []
    while True:
        event = client.receive()
        if isinstance(event, Registered):
            return replies
        assert type(event).__name__ != "ConnectionClosed", f"closed after {replies}"
        replies.append(event)


def changed(packet: SendFilePacket, **fields) -> SendFilePacket:
    """The same 828 with some fields replaced."""
    return SendFilePacket(**{**packet.__dict__, **fields})


def verified_upload(client: RawClient, identity, name: str, data: bytes) -> None:
    """Upload a file and confirm it with 900 (1603, then 1604)."""
    assert isinstance(upload(client, identity, name, data), FileReceived)
    assert isinstance(client.request(CrcOk(client_id=identity.client_id, file_name=name)), Acknowledged)


def normal_flow(server: ServerProcess, size: int = 10_000) -> float:
    """A whole first-run flow from a fresh client (825, 826, 828 ×n, 900); its time."""
    data = os.urandom(size)
    started = time.monotonic()
    with server.client() as client:
        identity = make_identity(client)
        answer = upload(client, identity, "normal.bin", data, 4096)
        assert isinstance(answer, FileReceived), answer
        assert answer.cksum == cksum(data)
        assert isinstance(
            client.request(CrcOk(client_id=identity.client_id, file_name="normal.bin")), Acknowledged
        )
    elapsed = time.monotonic() - started
    assert (client_dir(server, identity.client_id) / "normal.bin").read_bytes() == data
    assert db_rows(server, "SELECT Verified FROM files WHERE ID = ?", identity.client_id) == [(1,)]
    return elapsed


class Guard:
    """A bystander client and the checks of docs/HOSTILE.md's "Must not" column."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.data = os.urandom(4000)
        with server.client() as client:
            self.identity = make_identity(client, unique_name("bystander"))
            answer = upload(client, self.identity, "bystander.bin", self.data)
            assert isinstance(answer, FileReceived), answer
            ack = client.request(CrcOk(client_id=self.identity.client_id, file_name="bystander.bin"))
            assert isinstance(ack, Acknowledged), ack
        self._before = self._state()
        self._beside = set(os.listdir(server.data_dir.parent))

    def refresh(self) -> None:
        """Take the bystander's state anew (after the test used it on purpose)."""
        self._before = self._state()

    def _state(self) -> tuple:
        client_id = self.identity.client_id
        folder = client_dir(self.server, client_id)
        return (
            db_rows(self.server, "SELECT * FROM clients WHERE ID = ?", client_id),
            db_rows(self.server, "SELECT * FROM files WHERE ID = ?", client_id),
            db_rows(self.server, "SELECT * FROM key_bindings WHERE ID = ?", client_id),
            {p.name: p.read_bytes() for p in folder.iterdir()},
        )

    def check(
        self,
        *,
        tracebacks: int = 0,
        temps: bool = False,
        flow: bool = True,
        allowed: tuple[Path, ...] = (),
    ) -> float | None:
        """Everything docs/HOSTILE.md implies after a case; the normal flow's time.

        ``tracebacks`` is how many tracebacks the case logs on purpose,
        ``temps`` allows temp files of uploads still in progress, ``allowed``
        lists paths the test itself planted.
        """
        server = self.server
        assert server.process.poll() is None, f"server died:\n{server.log()}"
        assert self._state() == self._before, "the bystander's rows or files changed"
        check_tree(server, temps=temps, allowed=allowed)
        new_beside = set(os.listdir(server.data_dir.parent)) - self._beside
        assert all(_FACTORY_ENTRY.match(n) or server.data_dir.parent / n in allowed for n in new_beside), new_beside
        log = server.log()
        assert log.count("Traceback") == tracebacks, log
        elapsed = normal_flow(server) if flow else None
        assert server.log().count("Traceback") == tracebacks
        return elapsed


def check_tree(server: ServerProcess, *, temps: bool = False, allowed: tuple[Path, ...] = ()) -> None:
    """The data folder holds the database, port.info and received_files/<id>/<file> only."""
    data_dir = server.data_dir
    for entry in data_dir.iterdir():
        assert entry.name in TOP_LEVEL or entry in allowed, f"unexpected {entry}"
    root = data_dir / "received_files"
    for entry in root.iterdir():
        if entry in allowed:
            continue
        assert _CLIENT_DIR.match(entry.name) or entry.name == ".orphaned", f"unexpected {entry}"
        assert entry.is_dir() and not entry.is_symlink(), f"not a real folder: {entry}"
        if entry.name == ".orphaned":
            continue
        for item in entry.iterdir():
            if item in allowed:
                continue
            assert item.is_file() and not item.is_symlink(), f"not a regular file: {item}"
            assert temps or not item.name.startswith(TEMP_PREFIX), f"temp file left: {item}"


def small_window_client(server: ServerProcess) -> RawClient:
    """A connection whose receive window is tiny, so replies back up at once."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    # Small segments keep the server's send buffer small too (loopback's
    # 64 KiB MSS would let the kernel take megabytes of replies first).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.settimeout(10)
    sock.connect(server.address)
    client = RawClient.__new__(RawClient)
    client.sock = sock
    client.conn = ClientConnection()
    return client


def flood_until_stalled(
    client: RawClient,
    request: bytes,
    stall: float = 0.5,
    limit: float = HANG_TIMEOUT,
    sample: Callable[[], None] | None = None,
) -> int:
    """Send a request over and over without reading; stop once the server stops reading.

    Returns the bytes sent; ``sample`` is called every few milliseconds.

    Raises:
        ConnectionResetError, BrokenPipeError: the server closed it first.
    """
    client.sock.setblocking(False)
    burst = request * 64
    pending = memoryview(burst)
    sent = 0
    stalled_since = None
    deadline = time.monotonic() + limit
    next_sample = 0.0
    while time.monotonic() < deadline:
        if sample is not None and time.monotonic() >= next_sample:
            sample()
            next_sample = time.monotonic() + 0.02
        try:
            count = client.sock.send(pending)
            sent += count
            pending = pending[count:] or memoryview(burst)  # whole requests only
            stalled_since = None
        except BlockingIOError:
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > stall:
                return sent
            time.sleep(0.01)
    raise AssertionError("the server never stopped reading from a peer that does not read")
