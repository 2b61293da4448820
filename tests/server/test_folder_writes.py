"""A local folder's blob writes and aborts off the loop thread (server/blobport.py
``BufferedWriter``): a small upload is written by its round's job, a large one by the
blob port's worker, one chunk per loop round; a write held up by the disk stalls no one
else, and what an upload holds in memory stays bounded while its writes are slow.
"""

from __future__ import annotations

import threading
import time

import pytest
from beside_upload import BASELINE_REQUESTS, round_trips_beside_an_upload
from helpers import RawClient, file_packets, make_identity, packet_bytes, upload
from loop_driving import served_in_a_thread
from protocol import FileReceived, GeneralError, cksum, crypto
from server import blobport
from server.storage.folder import FolderBlobs, TempFile

PACKET = 64 * 1024
#: Content per packet of an upload in tiny packets: a few per loop turn.
TINY_PACKET = 16
SMALL = b"small upload" * 100
#: Several times the bounds below: the port's worker writes most of it.
LARGE = bytes(range(256)) * (48 * PACKET // 256)
#: How long each write of the throttled folder takes (a disk under writeback throttling).
WRITE_PAUSE = 0.15
#: The port's bounds in the tests: a few packets, so that backpressure shows.
BEHIND = 2 * PACKET
HOLD = 2 * PACKET
#: Answers that may wait for a write: the round that seals the upload writes what it
#: holds, after the writes still queued (no request is taken while a round commits).
SEAL_STALLS = 2


class NotedFolder(FolderBlobs):
    """The folder store, noting the thread of each write and removal of an upload's file;
    each write takes ``write_pause``; the publish of a name ending ``fails.bin`` fails."""

    write_pause = 0.0

    def __init__(self, data_dir) -> None:
        super().__init__(data_dir)
        self.calls: list[tuple[str, str]] = []

    def begin(self, client_id: bytes, key: str) -> TempFile:
        writer = super().begin(client_id, key)
        real_write, real_abort = writer.write, writer.abort

        def write(data) -> None:
            self.calls.append(("write", threading.current_thread().name))
            time.sleep(self.write_pause)
            real_write(data)

        def abort() -> None:
            self.calls.append(("abort", threading.current_thread().name))
            real_abort()

        writer.write = write  # type: ignore[method-assign]
        writer.abort = abort  # type: ignore[method-assign]
        return writer

    def publish(self, key: str, path_name: str) -> None:
        if path_name.endswith("fails.bin"):
            from server.errors import StorageFault

            raise StorageFault("cannot install a received file: Input/output error")
        super().publish(key, path_name)


class ThrottledFolder(NotedFolder):
    """Each write of an upload's file takes WRITE_PAUSE."""

    write_pause = WRITE_PAUSE


def _serve(tmp_path, store: FolderBlobs):
    def tune(app) -> None:
        app.uploads.port.behind_bytes = BEHIND
        app.uploads.port.hold_bytes = HOLD

    with served_in_a_thread(tmp_path, store, tune) as (server, _db):
        yield server


@pytest.fixture
def noted(tmp_path):
    store = NotedFolder(tmp_path)
    for server in _serve(tmp_path, store):
        yield server, store


@pytest.fixture
def throttled(tmp_path):
    store = ThrottledFolder(tmp_path)
    for server in _serve(tmp_path, store):
        yield server, store


#: The threads that do blob work: the blob port's worker and the round worker's.
WORKERS = {"blob-writes", "round-storage"}


@pytest.mark.parametrize("data", [SMALL, LARGE], ids=["small", "large"])
def test_the_loop_thread_neither_writes_nor_removes_an_uploads_file(noted, data):
    server, store = noted
    with RawClient(server.address[:2]) as client:
        identity = make_identity(client)
        stored = upload(client, identity, "kept.bin", data, PACKET)
        failed = upload(client, identity, "fails.bin", data, PACKET)
    assert isinstance(stored, FileReceived) and stored.cksum == cksum(data)
    assert isinstance(failed, GeneralError)  # its publish failed: its file is removed
    assert server.app.uploads.port.settle()
    assert {call for call, _ in store.calls} == {"write", "abort"}, store.calls
    assert {thread for _, thread in store.calls} <= WORKERS, store.calls
    if data is SMALL:  # written by the round's job: no handoff of its own
        assert {thread for call, thread in store.calls if call == "write"} == {"round-storage"}


def test_the_loop_answers_another_client_while_a_folder_write_is_held_up(throttled):
    server, _store = throttled
    beside = round_trips_beside_an_upload(server.address[:2], "big.bin", LARGE, PACKET)
    received = beside.answer
    assert isinstance(received, FileReceived) and received.cksum == cksum(LARGE)
    assert len(beside.during) >= BASELINE_REQUESTS, beside.round_trips
    waited = beside.waited(WRITE_PAUSE)
    assert len(waited) <= SEAL_STALLS, (beside.baseline, beside.round_trips)


def test_what_an_upload_holds_stays_bounded_while_its_writes_are_slow(throttled, monkeypatch):
    server, _store = throttled
    held: list[int] = []
    real_took = blobport.BufferedWriter.took

    def took(writer, size) -> None:
        real_took(writer, size)
        held.append(writer.queued.queued + writer.held)

    monkeypatch.setattr(blobport.BufferedWriter, "took", took)
    with RawClient(server.address[:2]) as client:
        identity = make_identity(client)
        answer = upload(client, identity, "big.bin", LARGE, PACKET)
    assert isinstance(answer, FileReceived) and answer.cksum == cksum(LARGE)
    # the connection is not read while the blob is behind: at most what is held, the
    # port's bound and a packet's worth past it, far less than the upload
    bound = HOLD + BEHIND + 2 * PACKET
    assert bound < len(LARGE)
    assert held and max(held) <= bound, (max(held), bound)


def test_the_memory_queued_for_a_slow_folder_stays_bounded_with_tiny_packets(
    throttled, monkeypatch
):
    # each round of a few tiny packets hands the worker a whole held buffer with a few bytes
    # in it: what bounds the connection is the memory the queued chunks keep alive, not
    # their content (else they pile up, one buffer a round, while the writes are slow)
    server, _store = throttled
    kept = {"queued": 0, "most": 0, "largest": 0}
    lock = threading.Lock()
    real_submit, real_write = blobport.BlobPort.submit, blobport._write

    def submit(port, writer, chunk, spare=None) -> None:
        size = len(chunk if spare is None else spare)
        with lock:
            kept["queued"] += size
            kept["most"] = max(kept["most"], kept["queued"])
            kept["largest"] = max(kept["largest"], size)
        real_submit(port, writer, chunk, spare)

    def write(shared, writer, data, spare=None) -> None:
        size = len(data if spare is None else spare)
        real_write(shared, writer, data, spare)
        with lock:
            kept["queued"] -= size

    monkeypatch.setattr(blobport.BlobPort, "submit", submit)
    monkeypatch.setattr(blobport, "_write", write)
    data = bytes(range(256)) * 4
    with RawClient(server.address[:2]) as client:
        identity = make_identity(client)
        packets = file_packets(identity, "tiny.bin", data, TINY_PACKET)
        client.send_raw(b"".join(packet_bytes(packet) for packet in packets))
        answer = client.receive()
    assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
    # not read while behind: the port's bound, and the buffers one step and the round's
    # end hand over past it
    bound = BEHIND + 2 * kept["largest"]
    assert kept["largest"] and kept["most"] <= bound, (kept, bound)


def test_a_folder_uploads_content_is_decrypted_into_reused_held_buffers(noted, monkeypatch):
    # no copy out of the decryptor's own buffer (CbcDecryptor.update), and the held
    # buffers handed to the worker come back for reuse: a few for the whole upload
    server, _store = noted
    copied: list[int] = []
    buffers: dict[int, bytearray] = {}  # kept alive: no id reused
    handed: list[int] = []
    real_update, real_submit = crypto.CbcDecryptor.update, blobport.BlobPort.submit

    def update(decryptor, ciphertext):
        copied.append(len(ciphertext))
        return real_update(decryptor, ciphertext)

    def submit(port, writer, chunk, spare=None) -> None:
        handed.append(len(chunk))
        if spare is not None:
            buffers[id(spare)] = spare
        real_submit(port, writer, chunk, spare)

    monkeypatch.setattr(crypto.CbcDecryptor, "update", update)
    monkeypatch.setattr(blobport.BlobPort, "submit", submit)
    with RawClient(server.address[:2]) as client:
        identity = make_identity(client)
        answer = upload(client, identity, "big.bin", LARGE, PACKET)
    assert isinstance(answer, FileReceived) and answer.cksum == cksum(LARGE)
    assert not copied, copied
    assert len(handed) > 2 * blobport.SPARE_BUFFERS, handed
    assert len(buffers) <= blobport.SPARE_BUFFERS + 1, (len(buffers), len(handed))
