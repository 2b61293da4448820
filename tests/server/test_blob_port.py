"""Blob work off the loop thread (server/blobport.py): a slow store stalls no one else.

A blob store whose every write sleeps finishes a large upload while the loop
answers another client's 827s as promptly as before the upload began; the
uploading connection is not read while its blob is behind, so what it holds
stays bounded. A store whose seal and publish sleep too stalls no one either:
they run in the port's worker, and only the upload's own answer waits for them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from beside_upload import BASELINE_REQUESTS, round_trips_beside_an_upload
from helpers import RawClient, file_packets, make_identity, upload
from loop_driving import PATIENCE, run_until, served_in_a_thread

from protocol import FileReceived, cksum, crypto
from server import blobport
from server.app import App
from server.blobport import BlobPort
from server.limits import Limits
from server.loop import Server, create_listener
from server.session import Session
from server.storage.folder import FolderBlobs, TempFile
from server.storage.memory import MemoryBlobs
from server.storage.sqlite import DB_NAME, SqliteMetadata

#: How long each write of the slow store takes.
WRITE_PAUSE = 0.15
PACKET = 64 * 1024
BIG = bytes(range(256)) * (24 * PACKET // 256)  # 24 packets: at least 24 slow writes
#: The port's bound in the test: a few packets, so that backpressure shows.
BEHIND = 2 * PACKET
#: Answers that may wait for the seal (it waits for the writes still queued).
SEAL_STALLS = 2
#: Answers a loaded machine may hold as long of its own (one seen in CI beside benchmarks,
#: where the client thread shares the test's process): a loop that waited on the store's
#: writes would hold about one per write, 24.
MACHINE_STALLS = 3


class SlowFolder(FolderBlobs):
    """The folder store, each write of an upload taking ``write_pause`` (a distant store)."""

    slow_writes = True
    write_pause = WRITE_PAUSE

    def begin(self, client_id: bytes, key: str) -> TempFile:
        writer = super().begin(client_id, key)
        real_write = writer.write

        def slow_write(data) -> None:
            time.sleep(self.write_pause)
            real_write(data)

        writer.write = slow_write  # type: ignore[method-assign]
        return writer


#: How long the seal and the publish of the slower store take: far more than a round trip.
SEAL_PAUSE = 1.0


class SlowerFolder(SlowFolder):
    """The slow store, its seal and its publish taking SEAL_PAUSE each; it notes when
    (monotonic) the first seal began and the last publish ended."""

    def __init__(self, data_dir) -> None:
        super().__init__(data_dir)
        self.sealing: list[float] = []
        self.published: list[float] = []

    def begin(self, client_id: bytes, key: str) -> TempFile:
        writer = super().begin(client_id, key)
        real_seal = writer.seal

        def slow_seal() -> None:
            self.sealing.append(time.monotonic())
            time.sleep(SEAL_PAUSE)
            real_seal()

        writer.seal = slow_seal  # type: ignore[method-assign]
        return writer

    def publish(self, key: str, path_name: str) -> None:
        time.sleep(SEAL_PAUSE)
        super().publish(key, path_name)
        self.published.append(time.monotonic())


#: How long each write and publish of the brisk store take: a round trip to a near store.
BRISK_PAUSE = 0.02


class BriskFolder(SlowFolder):
    """The folder store, each write and publish taking BRISK_PAUSE."""

    write_pause = BRISK_PAUSE

    def publish(self, key: str, path_name: str) -> None:
        time.sleep(BRISK_PAUSE)
        super().publish(key, path_name)


def _serve(tmp_path, store: FolderBlobs):
    """A server on ``store``, its loop in a thread of its own (SQLite's with it)."""

    def tune(app) -> None:
        app.uploads.port.behind_bytes = BEHIND

    with served_in_a_thread(tmp_path, store, tune) as (server, _db):
        yield server


@pytest.fixture
def brisk_server(tmp_path):
    """A server on the brisk store."""
    yield from _serve(tmp_path, BriskFolder(tmp_path))


@pytest.fixture
def slow_server(tmp_path):
    """A server on the slow store."""
    yield from _serve(tmp_path, SlowFolder(tmp_path))


@pytest.fixture
def slower(tmp_path):
    """A server on the slower store, and the store."""
    store = SlowerFolder(tmp_path)
    for server in _serve(tmp_path, store):
        yield server, store


def test_the_loop_answers_another_client_while_a_slow_store_finishes_a_large_upload(
    slow_server,
):
    beside = round_trips_beside_an_upload(slow_server.address[:2], "big.bin", BIG, PACKET)
    received = beside.answer
    assert isinstance(received, FileReceived) and received.cksum == cksum(BIG)
    # the upload took its slow writes' time; the other client was answered all along
    assert beside.took >= len(BIG) // PACKET * WRITE_PAUSE / 2
    assert len(beside.during) >= BASELINE_REQUESTS, (beside.during, beside.took)
    # as promptly as before it: an answer that waited for a slow write took
    # that long; only the seal, which waits for the few writes still queued,
    # may hold the loop (once)
    waited = beside.waited(WRITE_PAUSE)
    assert len(waited) <= SEAL_STALLS + MACHINE_STALLS, (beside.baseline, beside.round_trips)


def test_the_loop_answers_another_client_while_a_slow_store_seals_and_publishes(slower):
    server, store = slower
    data = BIG[: 4 * PACKET]
    beside = round_trips_beside_an_upload(server.address[:2], "sealed.bin", data, PACKET)
    received = beside.answer
    assert isinstance(received, FileReceived) and received.cksum == cksum(data)
    # the round trips made while the store sealed and published the file
    (sealing,), (published,) = store.sealing, store.published
    meanwhile = [took for began, took in beside.during
                 if sealing <= began <= published - SEAL_PAUSE]
    assert len(meanwhile) >= BASELINE_REQUESTS, (beside.during, sealing, published)
    # none waited for the seal or the publish
    slow = beside.slow(SEAL_PAUSE)
    assert all(took < slow for took in meanwhile), (beside.baseline, meanwhile)


class GatedFolder(FolderBlobs):
    """The folder store with slow writes, each waiting until the test opens :attr:`gate`."""

    slow_writes = True

    def __init__(self, data_dir) -> None:
        super().__init__(data_dir)
        self.gate = threading.Event()

    def begin(self, client_id: bytes, key: str) -> TempFile:
        writer = super().begin(client_id, key)
        real_write = writer.write

        def gated_write(data) -> None:
            self.gate.wait(PATIENCE)
            real_write(data)

        writer.write = gated_write  # type: ignore[method-assign]
        return writer


@pytest.fixture
def gated(tmp_path):
    """A server on the gated store, its loop turned by the test; and the store."""
    store = GatedFolder(tmp_path)
    db = SqliteMetadata.open(tmp_path / DB_NAME)
    app = App.build(db, store, Limits())
    app.uploads.port.behind_bytes = BEHIND
    server = Server(app, create_listener("127.0.0.1", 0))
    yield server, store
    store.gate.set()
    server.close()
    db.close()


def _unread(sock: socket.socket) -> bool:
    """Whether bytes wait in the server's socket (not read)."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False


def test_a_connection_parked_behind_its_blob_does_not_wake_the_loop(gated):
    """While its blob is behind, the uploading connection is not read, and its socket,
    readable, is not in the loop's selector either: else every select() would end at once
    for it, and the loop would spin, taking the CPU the other clients' answers need, for
    as long as the store is slow. Once the blob caught up, the upload goes on."""
    server, store = gated
    answer: list = []
    with RawClient(server.address[:2]) as uploader:

        def send() -> None:
            identity = make_identity(uploader)
            answer.append(upload(uploader, identity, "big.bin", BIG, PACKET))

        sending = threading.Thread(target=send, daemon=True)
        sending.start()
        # parked (and no longer in the backlog, which resumes it once more), bytes waiting
        run_until(server, lambda: any(
            _unread(parked.sock) and parked not in server._backlog for parked in server._parked
        ))
        (parked,) = server._parked
        reported = [key.data for key, _ in server._selector.select(0)]
        assert parked not in reported
        store.gate.set()
        run_until(server, lambda: bool(answer))
        sending.join(PATIENCE)
    (received,) = answer
    assert isinstance(received, FileReceived) and received.cksum == cksum(BIG)


def test_a_slow_stores_upload_is_decrypted_into_the_chunks_it_queues(brisk_server, monkeypatch):
    # an S3 store's path: no buffer of the decryptor's own per upload (CbcDecryptor.update)
    # and no copy of it per receive; each chunk queued is a view of a buffer that comes back
    # to the port's spares once written
    copied: list[int] = []
    handed: list[tuple[int, bool]] = []
    buffers: dict[int, bytearray] = {}  # kept alive: no id reused
    real_update, real_submit = crypto.CbcDecryptor.update, BlobPort.submit

    def update(decryptor, ciphertext):
        copied.append(len(ciphertext))
        return real_update(decryptor, ciphertext)

    def submit(port, writer, chunk, spare=None) -> None:
        handed.append((len(chunk), spare is not None))
        if spare is not None:
            buffers[id(spare)] = spare
        real_submit(port, writer, chunk, spare)

    monkeypatch.setattr(crypto.CbcDecryptor, "update", update)
    monkeypatch.setattr(BlobPort, "submit", submit)
    with RawClient(brisk_server.address[:2]) as client:
        identity = make_identity(client)
        answer = upload(client, identity, "big.bin", BIG, PACKET)
    assert isinstance(answer, FileReceived) and answer.cksum == cksum(BIG)
    assert not copied, copied
    content = [size for size, lent in handed if lent]
    assert sum(content) >= len(BIG) - PACKET, handed  # all but a packet's padded tail
    assert len(buffers) < len(content), (len(buffers), len(content))


def test_a_blob_behind_is_caught_up_and_written_in_order():
    port = BlobPort(behind_bytes=4)
    blobs = MemoryBlobs()
    client_id = b"\1" * 16
    path_name = f"memory/{client_id.hex()}/f"
    writer = port.wrap(blobs.begin(client_id, "ab" * 16))
    resumed = []
    for part in (b"one ", b"two ", b"three"):
        writer.write(memoryview(part))
    port.when_caught_up(writer, lambda: resumed.append(True))
    writer.seal()  # waits for the worker
    assert writer.queued == 0 and not writer.behind and writer.size == len(b"one two three")
    port.on_ready()
    assert resumed == [True]
    blobs.publish(writer.key, path_name)
    with blobs.open(path_name) as file:
        assert file.read() == b"one two three"
    port.close()


def test_the_port_over_its_total_bound_resumes_its_waiters_once_drained():
    # three blobs, none behind on its own, together over the port's bound
    port = BlobPort(behind_bytes=4096, total_bytes=1024)
    blobs = MemoryBlobs()
    writers = [port.wrap(blobs.begin(bytes([index]) * 16, f"{index:02x}" * 16))
               for index in range(1, 4)]
    resumed = []
    gate = threading.Event()
    port.run(lambda: gate.wait(PATIENCE), None)  # the worker held: nothing written yet
    for writer in writers:
        writer.write(b"12345678")
    assert port.over and not any(writer.behind for writer in writers)
    assert port.peak_queued == 3 * (8 + blobport.CHUNK_OVERHEAD)
    port.when_drained(lambda: resumed.append(True))
    port.on_ready()
    assert resumed == []  # not drained yet
    gate.set()
    assert port.settle()
    assert not port.over
    port.on_ready()
    assert resumed == [True]
    port.close()


#: How long the abort of the store in the test takes (an S3 AbortMultipartUpload).
ABORT_PAUSE = 0.5
_STOPPING_PROCESS = f"""
import pathlib, sys, time
from server.blobport import BlobPort
from server.session import Session

done = pathlib.Path(sys.argv[1])

def abort():
    time.sleep({ABORT_PAUSE})
    done.write_text("aborted")

port = BlobPort()
port.run(abort, None)  # an upload dropped by the stop: its abort queued
port.close()
"""


def test_a_stopping_server_lets_the_queued_store_calls_end_before_it_exits(tmp_path):
    """The worker is a daemon thread: the process's exit would cut the aborts queued by the
    stop (an S3 multipart upload left open), unless closing the port waits for them."""
    done = tmp_path / "aborted"
    root = str(Path(__file__).resolve().parents[2])
    environment = {**os.environ, "PYTHONPATH": root}
    subprocess.run(
        [sys.executable, "-c", _STOPPING_PROCESS, str(done)], check=True, env=environment,
        cwd=root, timeout=60,
    )
    assert done.read_text() == "aborted"


#: Clients uploading at once, and the packets of each one's file.
UPLOADERS = 6
UPLOADER_PACKETS = 4
#: Rounds whose end finds an upload's answer still waiting for its blob.
HELD_ROUNDS = 2


def test_answers_waiting_for_their_blobs_are_released_only_once_it_is_done(
    brisk_server, monkeypatch
):
    """A job the worker ends releases only the answers that waited for it: the others are
    not released (for nothing, in a durable round) at every write of every upload."""
    fruitless = []
    real_release = Session.release

    def counting_release(self, unstored, pending=frozenset()):
        held = len(self._held_answers)
        real_release(self, unstored, pending)
        if held and len(self._held_answers) == held:
            fruitless.append(self)

    monkeypatch.setattr(Session, "release", counting_release)
    data = BIG[: UPLOADER_PACKETS * 1024]
    address = brisk_server.address[:2]
    answers: list = []

    def send(index: int) -> None:
        with RawClient(address) as client:
            identity = make_identity(client)
            answers.append(upload(client, identity, f"f{index}.bin", data, 1024))

    threads = [threading.Thread(target=send, args=(index,)) for index in range(UPLOADERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == UPLOADERS
    assert all(isinstance(answer, FileReceived) and answer.cksum == cksum(data)
               for answer in answers)
    # held at most twice each (the round of its last packet, its seal not done; the round
    # that hands its publish to the worker), not at every job the worker ends
    assert len(fruitless) <= HELD_ROUNDS * UPLOADERS, len(fruitless)


def test_tiny_chunks_queued_behind_a_stuck_store_count_their_objects_too():
    # one-byte receives while the worker is stuck: each chunk's objects weigh more than
    # its content, and the blob must be behind long before a million of them pile up
    port = blobport.BlobPort()
    blob_writes = threading.Event()

    class Stuck:
        key = "stuck"

        def write(self, data) -> None:
            blob_writes.wait(60)

        def seal(self) -> None:
            pass

        def abort(self) -> None:
            pass

    writer = port.wrap(Stuck())
    chunks = 0
    while not writer.behind and chunks < port.behind_bytes:
        writer.write(b"x")
        chunks += 1
    assert writer.behind, chunks
    assert chunks <= port.behind_bytes // blobport.CHUNK_OVERHEAD + 1, chunks
    blob_writes.set()
    assert port.settle()
    port.close()


#: Two sizes of buffer asked of the spares in turn (a QueuedWriter's receives of two sizes,
#: neither fitting the other's slack).
SMALL_SPARE, LARGE_SPARE = 4096, 65536
#: Requests of each size in the test.
SPARE_REQUESTS = 10


def test_a_spare_that_does_not_fit_a_request_is_kept_for_a_later_one():
    # receives of two sizes in turn, each buffer written then given back: the two first
    # buffers serve every later request; none is dropped for not fitting the size asked
    port = blobport.BlobPort()
    made: dict[int, bytearray] = {}  # kept alive: no id reused
    for _ in range(SPARE_REQUESTS):
        for size in (SMALL_SPARE, LARGE_SPARE):
            buffer = port.spare(size, most=size + size // blobport.SPARE_SLACK_DIVISOR)
            assert size <= len(buffer)
            made[id(buffer)] = buffer
            port.keep_spare(buffer)
    assert len(made) == 2, len(made)
    port.close()


def test_the_spares_stay_bounded_and_the_latest_are_kept():
    port = blobport.BlobPort()
    old = [bytearray(SMALL_SPARE) for _ in range(blobport.SPARE_BUFFERS)]
    for buffer in old:
        port.keep_spare(buffer)
    latest = bytearray(LARGE_SPARE)
    port.keep_spare(latest)  # past the bound: the one kept longest goes, not this one
    assert port.spare(LARGE_SPARE) is latest, "the latest buffer kept was dropped"
    taken = [port.spare(SMALL_SPARE) for _ in range(blobport.SPARE_BUFFERS)]
    kept = [buffer for buffer in taken if any(buffer is mine for mine in old)]
    assert len(kept) == blobport.SPARE_BUFFERS - 1, len(kept)
    assert not any(buffer is old[0] for buffer in taken)
    port.close()


def _writers_submitted_to(monkeypatch) -> list:
    """The writers whose chunks go to any blob port from now on, each once, in order."""
    writers: list = []
    real_submit = BlobPort.submit

    def submit(port_, writer, chunk, spare=None) -> None:
        if writer not in writers:
            writers.append(writer)
        real_submit(port_, writer, chunk, spare)

    monkeypatch.setattr(BlobPort, "submit", submit)
    return writers


#: Clients each sending one small file at once (one packet each, below its blob's own
#: bound), and all blobs' bound in that test: two of those files.
SMALL_FILE_CLIENTS = 10
SMALL_FILE = BIG[:PACKET - 1024]


def test_a_burst_of_small_files_queues_no_more_than_all_blobs_bound(gated, monkeypatch):
    """Each small file comes whole in the request that brings it, so its own blob is never
    behind: while the store is stuck, the loop stops taking requests once all blobs'
    queued chunks are over their bound, instead of queueing every client's file."""
    server, store = gated
    port = server.app.uploads.port
    port.total_bytes = 2 * len(SMALL_FILE)
    writers = _writers_submitted_to(monkeypatch)
    answers: list = []

    def send(index: int) -> None:
        with RawClient(server.address[:2]) as client:
            identity = make_identity(client)
            answers.append(upload(client, identity, f"small{index}.bin", SMALL_FILE, PACKET))

    threads = [threading.Thread(target=send, args=(index,), daemon=True)
               for index in range(SMALL_FILE_CLIENTS)]
    for thread in threads:
        thread.start()
    # every client has either its file queued or its connection parked
    run_until(server, lambda: sum(1 for writer in writers if writer.queued)
              + len(server._parked) >= SMALL_FILE_CLIENTS)
    largest_chunk = max(writer.queued for writer in writers)
    assert port.peak_queued <= port.total_bytes + 2 * largest_chunk, (
        port.peak_queued, len(writers))
    store.gate.set()
    run_until(server, lambda: len(answers) == SMALL_FILE_CLIENTS)
    for thread in threads:
        thread.join(PATIENCE)
    assert all(isinstance(answer, FileReceived) and answer.cksum == cksum(SMALL_FILE)
               for answer in answers)
    assert not server._parked


def test_an_upload_under_way_keeps_its_own_bound_past_all_blobs_bound(gated, monkeypatch):
    """All blobs' bound stops new files, not a file under way: its connection is read up to
    its own blob's bound (and parked then), past the port's total (up to twice it)."""
    server, store = gated
    port = server.app.uploads.port
    port.total_bytes = BEHIND  # full past twice it: the blob is behind before
    writers = _writers_submitted_to(monkeypatch)
    answer: list = []
    with RawClient(server.address[:2]) as uploader:

        def send() -> None:
            identity = make_identity(uploader)
            answer.append(upload(uploader, identity, "big.bin", BIG, PACKET))

        sending = threading.Thread(target=send, daemon=True)
        sending.start()
        run_until(server, lambda: bool(server._parked))
        (writer,) = writers
        assert port.over
        assert writer.behind, (writer.queued, port.total_bytes, port.behind_bytes)
        store.gate.set()
        run_until(server, lambda: bool(answer))
        sending.join(PATIENCE)
    (received,) = answer
    assert isinstance(received, FileReceived) and received.cksum == cksum(BIG)


def test_first_packets_each_replacing_the_last_queue_no_more_than_twice_all_blobs_bound(
    gated, monkeypatch
):
    """A connection whose every request is the first packet of a new file (each replacing
    the upload before it, so the connection is always streaming one) is held to all blobs'
    bound too, past twice it: while the store is stuck, the content of the files it drops
    does not queue without end."""
    server, store = gated
    port = server.app.uploads.port
    port.total_bytes = 2 * PACKET
    writers = _writers_submitted_to(monkeypatch)
    answers: list = []
    files = 3 * SMALL_FILE_CLIENTS
    with RawClient(server.address[:2]) as client:

        def send() -> None:
            identity = make_identity(client)
            for index in range(files):  # each a file of two packets, its first one only
                client.send(file_packets(identity, f"f{index}.bin", BIG[: 2 * PACKET], PACKET)[0])
            answers.append(upload(client, identity, "last.bin", SMALL_FILE, PACKET))

        sending = threading.Thread(target=send, daemon=True)
        sending.start()
        # every first packet is queued, or the connection parked
        run_until(server, lambda: len(writers) >= files or bool(server._parked))
        largest_chunk = max(writer.queued for writer in writers)
        assert port.peak_queued <= 2 * port.total_bytes + 2 * largest_chunk, (
            port.peak_queued, len(writers))
        store.gate.set()
        run_until(server, lambda: bool(answers))
        sending.join(PATIENCE)
    (answer,) = answers
    assert isinstance(answer, FileReceived) and answer.cksum == cksum(SMALL_FILE), answer
    assert not server._parked
