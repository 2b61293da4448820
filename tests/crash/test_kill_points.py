"""kill -9 at many points of a session, restart on the same folder, check (docs/HOSTILE.md G3).

Each case copies one prepared data folder (a client with its key and two
files uploaded and verified with 900: ``keep.bin`` and ``again.bin``), starts
``python -m server`` on it and runs this session until the server dies:

1. 827 → 1605;
2. ``victim.bin`` (v1, 10 packets of 16 KiB) → 1603;
3. 901 and an immediate resend (v2, same packets) → 1603 (variant 8: no 1604);
4. 900 → 1604;
5. ``again.bin`` anew (one packet) → 1603, then 902 → 1604.

The server dies by SIGKILL either at a crash point of its own
(``CIPHERDROP_CRASH_AT``, see server/crashpoints.py; counts follow the
session above: 1605 is response 1, the three 1603s are 2, 3, 5, the 1604s 4
and 6; the blobs written are v1, v2, again.bin; v1, a first upload, is committed
and published at once, while v2 and the new again.bin are pending versions of
stored names: v2 is published at its 900, again.bin dropped at its 902), or from the test
when the client reaches a step (timed kills: before the first packet, after
k packets, in the middle of a packet, after 901 or 900). Then the server is
restarted without the variable, and every time:

- ``PRAGMA integrity_check`` is ok;
- no ``.tmp-*`` file is left, and nothing had to be quarantined (the server
  never puts a file under its final name before its row);
- every file under a final name has a row, and every row a file, whose
  content is one complete upload of that name (v1, v2, the old or the new
  again.bin); a row with Verified=1 holds a content the client verified;
- ``keep.bin``, verified before the kill and never touched since, is intact
  with Verified=1, and so is the old ``again.bin``: its new version was never
  confirmed (902), so it never replaced the verified file;
- the client reconnects (827 → 1605), uploads victim.bin again (1603 with the
  right cksum) and verifies it (900 → 1604): one row, Verified=1, the new
  content.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import signal
import sqlite3
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from helpers import (
    Identity,
    RawClient,
    file_packets,
    make_identity,
    packet_bytes,
    reconnect,
    start_server,
    upload,
)

from protocol import (
    Acknowledged,
    ClientConnection,
    CrcAbort,
    CrcOk,
    CrcRetry,
    FileReceived,
    Reconnect,
    Reconnected,
    cksum,
    crypto,
)
from protocol.cksum import CrcFlavour
from server.crashpoints import ENVIRONMENT_VARIABLE
from server.storage.folder import QUARANTINE_DIR, RECEIVED_DIR, TEMP_PREFIX
from server.storage.names import stored_name
from server.storage.sweep import REPAIR_FINISHED

#: Ciphertext bytes per 828 of victim.bin; v1 and v2 have ten packets.
PACKET = 16 * 1024
VICTIM_SIZE = 150_000
#: How long a case waits for the killed server to be gone, or for a temp file.
WAIT = 10.0
_rng = random.Random(20240607)
KEEP = _rng.randbytes(30_000)
AGAIN_OLD = _rng.randbytes(20_000)
AGAIN_NEW = _rng.randbytes(40_000)
VICTIM_V1 = _rng.randbytes(VICTIM_SIZE)
VICTIM_V2 = _rng.randbytes(VICTIM_SIZE)
AFTER = _rng.randbytes(50_000)


@dataclass(frozen=True)
class KillPoint:
    """Where a case kills the server.

    ``crash_at``: the server's own crash point; ``step``: the client step at
    which the test sends SIGKILL, after a temp file holds ``wait_temp`` bytes.
    ``replies``: how many answers the client got before the server died
    (None where that is a race), which pins the point in the session.
    """

    name: str
    replies: int | None
    crash_at: str | None = None
    step: str | None = None
    wait_temp: int = 0
    per_request: bool = False


KILL_POINTS = [
    # crash points inside the server, in session order
    KillPoint("827-key-committed-before-1605", 0, crash_at="key.committed"),
    KillPoint("1605-queued-not-sent", 0, crash_at="response.queued:1"),
    KillPoint("v1-blob-begun-nothing-written", 1, crash_at="write.begun:1"),
    KillPoint("v1-after-first-write", 1, crash_at="write.appended:1"),
    KillPoint("v1-after-fourth-write", 1, crash_at="write.appended:4"),
    KillPoint("v1-after-ninth-write", 1, crash_at="write.appended:9"),
    KillPoint("v1-after-seal", 1, crash_at="write.sealed:1"),
    KillPoint("v1-after-row-commit-before-publish", 1, crash_at="upload.committed:1"),
    KillPoint("v1-placed-before-publish-durable", 1, crash_at="publish.placed:1"),
    KillPoint("v1-published-before-1603", 1, crash_at="publish.durable:1"),
    KillPoint("v1-1603-queued-not-sent", 1, crash_at="response.queued:2"),
    KillPoint("v1-1603-sent", None, crash_at="response.sent:2"),
    KillPoint("901-received", 2, crash_at="retry.received"),
    KillPoint("901-resend-blob-begun", 2, crash_at="write.begun:2"),
    KillPoint("901-resend-after-seal", 2, crash_at="write.sealed:2"),
    KillPoint("901-resend-kept-pending", 2, crash_at="upload.pending:1"),
    KillPoint("901-resend-1603-queued", 2, crash_at="response.queued:3"),
    KillPoint("900-before-install", 3, crash_at="verify.before_commit:1"),
    KillPoint("900-swap-durable-before-publish", 3, crash_at="upload.confirmed:1"),
    KillPoint("900-pending-placed-before-publish-durable", 3, crash_at="publish.placed:2"),
    KillPoint("900-pending-published-before-commit", 3, crash_at="publish.durable:2"),
    KillPoint("900-after-commit-before-1604", 3, crash_at="verify.committed:1"),
    KillPoint("900-1604-queued", 3, crash_at="response.queued:4"),
    KillPoint("reupload-verified-name-kept-pending", 4, crash_at="upload.pending:2"),
    KillPoint("902-before-pending-dropped", 5, crash_at="verify.before_commit:2"),
    KillPoint("902-after-commit", 5, crash_at="verify.committed:2"),
    # kills from outside, when the client reaches a step
    KillPoint("timed-connected-nothing-sent", 0, step="connected"),
    KillPoint("timed-1605-received-before-first-packet", 1, step="reconnected"),
    KillPoint("timed-v1-packet-1-sent", 1, step="victim.bin#1 packet 1"),
    KillPoint("timed-v1-packet-3-processed", 1, step="victim.bin#1 packet 3", wait_temp=2 * PACKET),
    KillPoint("timed-v1-packet-7-processed", 1, step="victim.bin#1 packet 7", wait_temp=6 * PACKET),
    KillPoint(
        "timed-v1-inside-packet-5", 1, step="victim.bin#1 packet 5 half", wait_temp=4 * PACKET
    ),
    KillPoint("timed-901-sent", 2, step="901 sent"),
    KillPoint("timed-901-resend-packet-4", 2, step="victim.bin#2 packet 4", wait_temp=3 * PACKET),
    KillPoint("timed-900-sent", None, step="900 sent"),
    KillPoint(
        "timed-per-request-client-packet-4",
        1,
        step="victim.bin#1 packet 4",
        wait_temp=3 * PACKET,
        per_request=True,
    ),
]


class ServerGone(Exception):
    """The server died under the client."""


@dataclass
class Session:
    """The client of a case: what it sent, and where it stopped."""

    identity: Identity
    address: tuple[str, int]
    on_step: Callable[[str], None]
    #: Every complete content sent per file name (what may be stored).
    contents: dict[str, list[bytes]] = field(default_factory=dict)
    #: Contents the client confirmed with 900.
    verified: dict[str, list[bytes]] = field(default_factory=dict)
    stopped_at: str = ""
    replies: int = 0
    #: The CRC flavour rule (docs/EDITIONS.md variant 5): what the next 1603
    #: carries, what the last one carried, what the client confirmed last.
    crc_next: CrcFlavour = CrcFlavour.CKSUM
    crc_answered: CrcFlavour = CrcFlavour.CKSUM
    crc_preferred: CrcFlavour = CrcFlavour.CKSUM

    def run(self, per_request: bool) -> None:
        """The session of the module docstring, until the server dies."""
        try:
            if per_request:
                self._per_request_session()
            else:
                self._session()
        except ServerGone as exc:
            self.stopped_at = str(exc)

    def _session(self) -> None:
        with self._connect() as client:
            self._reconnect(client)
            self._upload(client, "victim.bin", VICTIM_V1, PACKET, attempt=1)
            self._send(client, packet_bytes_of(self.identity, CrcRetry, "victim.bin"))
            self._after_crc_bad(VICTIM_V1, VICTIM_V2)
            self.on_step("901 sent")
            self._upload(client, "victim.bin", VICTIM_V2, PACKET, attempt=2)
            self._verify(client, "victim.bin", VICTIM_V2)
            self._upload(client, "again.bin", AGAIN_NEW, 1 << 20, attempt=1)
            self._send(client, packet_bytes_of(self.identity, CrcAbort, "again.bin"))
            self._expect(client, Acknowledged)
            self.crc_next = self.crc_preferred

    def _per_request_session(self) -> None:
        """docs/PROTOCOL.md variant 7: each request on a connection of its own."""
        with self._connect() as client:
            self._reconnect(client)
        self.contents.setdefault("victim.bin", []).append(VICTIM_V1)
        packets = file_packets(self.identity, "victim.bin", VICTIM_V1, PACKET)
        for number, packet in enumerate(packets, start=1):
            with self._connect() as client:
                self._send(client, packet_bytes(packet))
                self.on_step(f"victim.bin#1 packet {number}")
                if number < len(packets):
                    self._expect_close(client)
                else:
                    self._expect(client, FileReceived)
        with self._connect() as client:
            self._verify(client, "victim.bin", VICTIM_V1)

    # -- steps ------------------------------------------------------------------

    def _connect(self) -> RawClient:
        try:
            client = RawClient(self.address)
        except OSError as exc:
            raise ServerGone(f"connect: {exc}") from None
        self.on_step("connected")
        return client

    def _reconnect(self, client: RawClient) -> None:
        self._send(
            client, client.conn.send(Reconnect(client_id=self.identity.client_id, name=self.identity.name))
        )
        answer = self._expect(client, Reconnected)
        self.identity.aes_key = crypto.decrypt_aes_key(
            self.identity.private_key, answer.encrypted_aes_key
        )
        self.on_step("reconnected")

    def _upload(self, client, name: str, data: bytes, packet_size: int, attempt: int) -> None:
        self.contents.setdefault(name, []).append(data)
        for number, packet in enumerate(file_packets(self.identity, name, data, packet_size), 1):
            raw = packet_bytes(packet)
            half = len(raw) // 2
            self._send(client, raw[:half])
            self.on_step(f"{name}#{attempt} packet {number} half")
            self._send(client, raw[half:])
            self.on_step(f"{name}#{attempt} packet {number}")
        answer = self._expect(client, FileReceived)
        expected = cksum(data) if self.crc_next is CrcFlavour.CKSUM else zlib.crc32(data)
        assert answer.cksum == expected, f"the 1603 of a complete upload has the wrong {self.crc_next.value}"
        self.crc_answered = self.crc_next

    def _after_crc_bad(self, bad: bytes, resent: bytes) -> None:
        """Variant 5: the same plaintext again gets the other CRC, another one the same."""
        self.crc_next = self.crc_answered.other if resent == bad else self.crc_answered

    def _verify(self, client, name: str, data: bytes) -> None:
        self.verified.setdefault(name, []).append(data)
        self._send(client, packet_bytes_of(self.identity, CrcOk, name))
        self.on_step("900 sent")
        self._expect(client, Acknowledged)
        self.crc_preferred = self.crc_next = self.crc_answered

    def _send(self, client: RawClient, data: bytes) -> None:
        try:
            client.send_raw(data)
        except OSError as exc:
            raise ServerGone(f"send: {exc}") from None

    def _expect(self, client: RawClient, kind: type):
        try:
            event = client.receive(timeout=WAIT)
        except (OSError, TimeoutError) as exc:
            raise ServerGone(f"receive: {exc!r}") from None
        if not isinstance(event, kind):
            raise ServerGone(f"expected {kind.__name__}, got {event!r}")
        self.replies += 1
        return event

    def _expect_close(self, client: RawClient) -> None:
        try:
            client.receive(timeout=WAIT)
        except (OSError, TimeoutError) as exc:
            raise ServerGone(f"receive: {exc!r}") from None


def packet_bytes_of(identity: Identity, kind: type, name: str) -> bytes:
    """The wire bytes of a 900/901/902."""
    return ClientConnection().send(kind(client_id=identity.client_id, file_name=name))


# -- the prepared folder ---------------------------------------------------------


@dataclass
class Prepared:
    data_dir: Path
    identity: Identity


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Prepared:
    """One client with keep.bin and again.bin uploaded and verified; server stopped."""
    data_dir = tmp_path_factory.mktemp("crash") / "template"
    server = start_server(data_dir)
    try:
        with server.client() as client:
            identity = make_identity(client)
            for name, data in (("keep.bin", KEEP), ("again.bin", AGAIN_OLD)):
                assert isinstance(upload(client, identity, name, data, PACKET), FileReceived)
                answer = client.request(CrcOk(client_id=identity.client_id, file_name=name))
                assert isinstance(answer, Acknowledged)
    finally:
        assert server.stop() == 0
    return Prepared(data_dir, identity)


# -- checks ----------------------------------------------------------------------


def temp_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / RECEIVED_DIR).rglob(f"{TEMP_PREFIX}*"))


def wait_for_temp(folder: Path, size: int) -> None:
    """Until a temp file in folder holds at least size bytes."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        for path in folder.glob(f"{TEMP_PREFIX}*"):
            try:
                if path.stat().st_size >= size:
                    return
            except FileNotFoundError:
                pass
        time.sleep(0.005)
    raise AssertionError(f"no temp file of {size} bytes in {folder}")


def file_rows(data_dir: Path) -> dict[str, tuple[str, int]]:
    db = sqlite3.connect(data_dir / "defensive.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = db.execute("SELECT FileName, PathName, Verified FROM files").fetchall()
    finally:
        db.close()
    names = [row[0] for row in rows]
    assert len(names) == len(set(names)), f"duplicate rows: {rows}"
    return {name: (path_name, verified) for name, path_name, verified in rows}


def check_folder(data_dir: Path, session: Session) -> None:
    """What a restarted server must hold, whatever the point of the kill."""
    assert temp_files(data_dir) == []
    received = data_dir / RECEIVED_DIR
    assert not (received / QUARANTINE_DIR).exists(), "a final file had no row"
    client_hex = session.identity.client_id.hex()
    assert [p.name for p in received.iterdir()] == [client_hex]
    folder = received / client_hex
    on_disk = {path.name: path.read_bytes() for path in folder.iterdir()}
    rows = file_rows(data_dir)
    by_stored = {stored_name(name.encode()): name for name in session.contents}
    assert set(on_disk) <= set(by_stored), f"unexpected files: {sorted(on_disk)}"
    assert {by_stored[stored] for stored in on_disk} == set(rows), (sorted(on_disk), rows)
    for stored, content in on_disk.items():
        name = by_stored[stored]
        path_name, verified = rows[name]
        assert path_name == f"{RECEIVED_DIR}/{client_hex}/{stored}"
        assert content in session.contents[name], f"{name}: not one complete upload"
        if verified:
            assert content in session.verified.get(name, []), f"{name}: Verified=1, never verified"
    assert on_disk["keep.bin"] == KEEP and rows["keep.bin"][1] == 1
    assert on_disk["again.bin"] == AGAIN_OLD and rows["again.bin"][1] == 1


# -- the test --------------------------------------------------------------------


def killed_session(point: KillPoint, data_dir: Path, identity: Identity, monkeypatch) -> Session:
    """Run the session on an armed (or watched) server until it is killed."""
    if point.crash_at:
        monkeypatch.setenv(ENVIRONMENT_VARIABLE, point.crash_at)
    server = start_server(data_dir)
    monkeypatch.delenv(ENVIRONMENT_VARIABLE, raising=False)
    folder = data_dir / RECEIVED_DIR / identity.client_id.hex()
    killed_at: list[str] = []

    def on_step(step: str) -> None:
        if step == point.step and not killed_at:
            if point.wait_temp:
                wait_for_temp(folder, point.wait_temp)
            server.kill()
            killed_at.append(step)

    session = Session(identity, server.address, on_step)
    try:
        session.run(point.per_request)
        returncode = server.process.wait(WAIT)
    finally:
        if server.process.poll() is None:
            server.kill()
    assert returncode == -signal.SIGKILL, f"the server was not killed ({returncode}):\n{server.log()}"
    assert session.stopped_at, "the session ran to its end: the kill came too late"
    if point.replies is not None:
        assert session.replies == point.replies, f"killed elsewhere: {session.stopped_at}"
    if point.crash_at:
        assert "crash point" in server.log()
    else:
        assert killed_at == [point.step]
    return session


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS, ids=[p.name for p in KILL_POINTS])
def test_kill_9_then_restart_is_consistent(point, prepared, tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    shutil.copytree(prepared.data_dir, data_dir)
    identity = dataclasses.replace(prepared.identity)
    session = killed_session(point, data_dir, identity, monkeypatch)
    session.contents.setdefault("keep.bin", []).append(KEEP)
    session.contents.setdefault("again.bin", []).insert(0, AGAIN_OLD)
    session.verified.setdefault("keep.bin", []).append(KEEP)
    session.verified.setdefault("again.bin", []).append(AGAIN_OLD)

    restarted = start_server(data_dir)
    try:
        assert "crash point" not in restarted.log()
        restarted.wait_log(REPAIR_FINISHED)  # its deletions are done while it serves
        check_folder(data_dir, session)
        with restarted.client() as client:
            reconnect(client, identity)
            answer = upload(client, identity, "victim.bin", AFTER, PACKET)
            # The CRC the client confirmed last, as the database kept it through the crash.
            with sqlite3.connect(data_dir / "defensive.db") as db:
                (flavour,) = db.execute(
                    "SELECT Crc FROM clients WHERE ID = ?", (identity.client_id,)
                ).fetchone()
            expected = cksum(AFTER) if flavour == "cksum" else zlib.crc32(AFTER)
            assert isinstance(answer, FileReceived) and answer.cksum == expected
            answer = client.request(CrcOk(client_id=identity.client_id, file_name="victim.bin"))
            assert isinstance(answer, Acknowledged)
    finally:
        assert restarted.stop() == 0
    assert "Traceback" not in restarted.log()
    session.contents["victim.bin"] = [AFTER]
    session.verified["victim.bin"] = [AFTER]
    check_folder(data_dir, session)
    assert file_rows(data_dir)["victim.bin"][1] == 1
