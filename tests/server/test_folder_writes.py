"""A local folder's blob writes and aborts off the loop thread (server/blobport.py
``BufferedWriter``): a small upload is written by its round's job, a large one by the
blob port's worker, one chunk per ``hold_bytes`` (or when it pauses); a write held up by
the disk stalls no one else, and what an upload holds in memory stays bounded while its
writes are slow. The sweeper's deletions of garbage are the port's worker's too: a slow
one stalls no one. A 1607 that reports a failed upload (refused, or its publish failed)
waits for its file's removal, and that wait is the server's, not the client's idle time.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
from beside_upload import BASELINE_REQUESTS, round_trips_beside_an_upload
from helpers import (
    ANY_ID, RawClient, file_packets, make_identity, private_key, reconnect, unique_name, upload,
)
from loop_driving import PATIENCE, TURN_PAUSE, served_in_a_thread

from protocol import (
    ConnectionClosed, FileReceived, GeneralError, Reconnect, Reconnected, Register, Registered,
    cksum, crypto,
)
from server import app as app_module
from server import blobport
from server.storage import commit, new_blob_key, sweep
from server.storage.base import UnpublishedBlob
from server.storage.folder import TEMP_PREFIX, FolderBlobs, TempFile

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
    each write takes ``write_pause``, each removal ``abort_pause``; the publish of a name
    ending ``fails.bin`` fails."""

    write_pause = 0.0
    abort_pause = 0.0

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
            time.sleep(self.abort_pause)
            real_abort()

        writer.write = write  # type: ignore[method-assign]
        writer.abort = abort  # type: ignore[method-assign]
        return writer

    def publish(self, key: str, path_name: str) -> None:
        if path_name.endswith("fails.bin"):
            from server.errors import StorageFault

            raise StorageFault("cannot install a received file: Input/output error")
        super().publish(key, path_name)


class SlowlyRemoved(NotedFolder):
    """Each removal of an upload's file takes ABORT_PAUSE (a disk under load)."""

    abort_pause = 0.3


class SlowlyRemovedSlowStore(SlowlyRemoved):
    """A store whose writes, seals and publishes are all the port's worker's (a distant
    store, ``slow_writes``), each removal taking ABORT_PAUSE."""

    slow_writes = True


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


@pytest.fixture
def slowly_removed(tmp_path):
    store = SlowlyRemoved(tmp_path)
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


def test_a_small_uploads_held_buffer_is_the_size_of_its_content_not_hold_bytes(
    noted, monkeypatch
):
    # a buffer of hold_bytes is zeroed and its pages faulted in by the loop thread: for an
    # upload of a few KiB that was most of its loop CPU beside the metadata's
    server, _store = noted
    sizes: list[int] = []
    real_spare = blobport.BlobPort.spare

    def spare(port, size, most=None) -> bytearray:
        buffer = real_spare(port, size, most)
        sizes.append(len(buffer))
        return buffer

    monkeypatch.setattr(blobport.BlobPort, "spare", spare)
    with RawClient(server.address[:2]) as client:
        identity = make_identity(client)
        answer = upload(client, identity, "small.bin", SMALL, PACKET)
    assert isinstance(answer, FileReceived) and answer.cksum == cksum(SMALL)
    ciphertext = len(crypto.encrypt(identity.aes_key, SMALL))
    assert sizes and max(sizes) <= crypto.CbcDecryptor.most_output(ciphertext) < HOLD, sizes


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
    bound = HOLD + BEHIND + 2 * PACKET + blobport.CHUNK_OVERHEAD  # the queued chunk's objects
    assert bound < len(LARGE)
    assert held and max(held) <= bound, (max(held), bound)


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


class SweptSlowly(NotedFolder):
    """The noted folder store, each deletion of garbage noted, then waiting until the test
    opens :attr:`gate`; :attr:`deleting` is set while one is under way."""

    def __init__(self, data_dir) -> None:
        super().__init__(data_dir)
        self.gate = threading.Event()
        self.deleting = threading.Event()

    def delete_unpublished(self, blob: UnpublishedBlob) -> None:
        self.calls.append(("delete", threading.current_thread().name))
        self.deleting.set()
        try:
            self.gate.wait(PATIENCE)
            super().delete_unpublished(blob)
        finally:
            self.deleting.clear()


#: Seconds between two sweeps in the test (its grace is none): a sweep begins at once.
SWEEP_INTERVAL = 0.05
#: A client id whose folder holds the garbage.
GARBAGE_OWNER = bytes(range(16))


def _garbage_files(store: FolderBlobs) -> list:
    return sorted(store.root.glob(f"*/{TEMP_PREFIX}*"))


def test_the_loop_answers_another_client_while_the_sweeper_deletes_garbage(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(app_module, "GARBAGE_GRACE", SWEEP_INTERVAL)
    monkeypatch.setattr(sweep, "GARBAGE_GRACE", 0.0)
    store = SweptSlowly(tmp_path)
    for _ in range(3):  # sealed blobs no row points at (an upload a crash cut short)
        writer = store.begin(GARBAGE_OWNER, new_blob_key())
        writer.write(b"no row points at it")
        writer.seal()
    assert len(_garbage_files(store)) == 3
    try:
        for server in _serve(tmp_path, store):
            assert store.deleting.wait(PATIENCE), "the sweeper never began deleting"
            with RawClient(server.address[:2]) as client:
                identity = make_identity(client)
                reconnect(client, identity)  # 827 -> 1602 (asserted)
                # answered while the sweep's first deletion waits on the gate
                assert store.deleting.is_set()
                store.gate.set()
                kept = upload(client, identity, "kept.bin", SMALL, PACKET)
            assert isinstance(kept, FileReceived) and kept.cksum == cksum(SMALL)
            give_up = time.monotonic() + PATIENCE
            while _garbage_files(store):
                assert time.monotonic() < give_up, "the garbage was never deleted"
                time.sleep(TURN_PAUSE)
            time.sleep(10 * SWEEP_INTERVAL)  # more sweeps: the stored file stays
            stored = list(store.root.glob(f"{identity.client_id.hex()}/*"))
            assert [path.read_bytes() for path in stored] == [SMALL]
    finally:
        store.gate.set()
    deleted_in = {thread for call, thread in store.calls if call == "delete"}
    assert deleted_in == {"blob-writes"}, store.calls


def test_the_loop_serves_while_the_garbage_start_up_repair_found_is_deleted(tmp_path):
    # start-up repair decides before serving (rows, pointers, what is moved aside); its
    # deletions of garbage go to the blob port's worker (held at a gate here), as the
    # sweeper's do, and the loop answers meanwhile
    store = SweptSlowly(tmp_path)
    for _ in range(3):  # sealed blobs no row points at (an upload a crash cut short)
        writer = store.begin(GARBAGE_OWNER, new_blob_key())
        writer.write(b"no row points at it")
        writer.seal()
    found: list[int] = []

    def start_up(app) -> None:  # as server/__main__.py starts: repair, then serve
        report = commit.repair_pointers(app.metadata, app.blobs)
        found.append(report.unpublished_deleted)
        app.sweeper.finish_repair(report)

    try:
        with served_in_a_thread(tmp_path, store, start_up) as (server, _db):
            assert found == [3]
            assert store.deleting.wait(PATIENCE), "the garbage's deletion never began"
            with RawClient(server.address[:2]) as client:
                identity = make_identity(client)  # answered while the deletion waits
                assert store.deleting.is_set() and len(_garbage_files(store)) == 3
                store.gate.set()
                kept = upload(client, identity, "kept.bin", SMALL, PACKET)
            assert isinstance(kept, FileReceived) and kept.cksum == cksum(SMALL)
            assert server.app.uploads.port.settle()
            assert _garbage_files(store) == []
    finally:
        store.gate.set()
    deleted_in = {thread for call, thread in store.calls if call == "delete"}
    assert deleted_in == {"blob-writes"}, store.calls


class RemovalFinishedSlowly(NotedFolder):
    """The noted folder store, each end of a client's deletion (its folder deleted from
    the trash) noted, then waiting until the test opens :attr:`gate`; :attr:`removing` is
    set once one began."""

    def __init__(self, data_dir) -> None:
        super().__init__(data_dir)
        self.gate = threading.Event()
        self.removing = threading.Event()

    def finish_removal(self, client_id: bytes) -> None:
        self.calls.append(("finish removal", threading.current_thread().name))
        self.removing.set()
        self.gate.wait(PATIENCE)
        super().finish_removal(client_id)


def test_the_loop_serves_while_the_files_of_a_deletion_a_crash_cut_are_deleted(tmp_path):
    # a client's deletion cut after its folder went to the trash: start-up repair deletes
    # its rows before serving, and its files where the sweeper's deletions go (the blob
    # port's worker, held at a gate here) while the loop answers
    store = RemovalFinishedSlowly(tmp_path)
    writer = store.begin(GARBAGE_OWNER, new_blob_key())
    writer.write(b"a file of a client being deleted")
    writer.seal()
    store.publish(writer.key, store.new_path_name(GARBAGE_OWNER, b"gone.bin", writer.key))
    store.begin_removal(GARBAGE_OWNER)  # the crash: its rows and its trash are left
    found: list[tuple[bytes, ...]] = []

    def start_up(app) -> None:  # as server/__main__.py starts: repair, then serve
        report = commit.repair_pointers(app.metadata, app.blobs)
        found.append(report.removed)
        app.sweeper.finish_repair(report)

    try:
        with served_in_a_thread(tmp_path, store, start_up) as (server, _db):
            assert found == [(GARBAGE_OWNER,)]
            assert store.removing.wait(PATIENCE), "the deletion's end never began"
            with RawClient(server.address[:2]) as client:
                identity = make_identity(client)  # answered while the deletion waits
                assert store.pending_removals() == [GARBAGE_OWNER]
                store.gate.set()
                kept = upload(client, identity, "kept.bin", SMALL, PACKET)
            assert isinstance(kept, FileReceived) and kept.cksum == cksum(SMALL)
            assert server.app.uploads.port.settle()
            assert store.pending_removals() == []
    finally:
        store.gate.set()
    finished_in = {thread for call, thread in store.calls if call == "finish removal"}
    assert finished_in == {"blob-writes"}, store.calls


@pytest.mark.parametrize("layout", ["one-packet", "packets", "out-of-order"])
def test_a_refused_uploads_file_is_gone_when_its_refusal_arrives(slowly_removed, layout):
    # its removal is the blob port's worker's (slow here): the 1607 waits for it
    server, store = slowly_removed
    with RawClient(server.address[:2]) as client:
        identity = make_identity(client)
        packets = file_packets(identity, "refused.bin", LARGE[: 4 * PACKET], PACKET)
        if layout == "one-packet":
            packets = file_packets(identity, "refused.bin", SMALL, PACKET)
        if layout == "out-of-order":  # the third after the first: the attempt fails there
            sent = [packets[0], packets[2]]
        else:  # a plaintext size that is not the file's: refused at its end
            sent = [dataclasses.replace(packet, orig_file_size=packet.orig_file_size + 3)
                    for packet in packets]
        for packet in sent:
            client.send(packet)
        answer = client.receive()
        left = _garbage_files(store)  # at once: no waiting
    assert isinstance(answer, GeneralError), answer
    assert left == []
    assert ("abort", "blob-writes") in store.calls, store.calls


@pytest.mark.parametrize("kind", [SlowlyRemoved, SlowlyRemovedSlowStore], ids=["folder", "slow"])
@pytest.mark.parametrize("data", [SMALL, LARGE], ids=["small", "large"])
def test_a_failed_publishs_file_is_gone_when_its_1607_arrives(tmp_path, kind, data):
    # the store refuses the publish: the upload's file is removed by the blob port's
    # worker (slow here), and the 1607 that reports it waits for that, as a refusal's does
    store = kind(tmp_path)
    for server in _serve(tmp_path, store):
        with RawClient(server.address[:2]) as client:
            identity = make_identity(client)
            answer = upload(client, identity, "fails.bin", data, PACKET)
            left = _garbage_files(store)  # at once: no waiting
            kept = upload(client, identity, "kept.bin", SMALL, PACKET)
    assert isinstance(answer, GeneralError), answer
    assert left == []
    assert ("abort", "blob-writes") in store.calls, store.calls
    assert isinstance(kept, FileReceived) and kept.cksum == cksum(SMALL)


def test_a_failed_publish_answered_behind_a_refusal_still_waiting_is_a_1607(slowly_removed):
    # the refusal's 1607 waits for its file's removal (slow); the next upload's publish
    # fails meanwhile, its answer held behind it: still a 1607 when the two go
    server, store = slowly_removed
    with RawClient(server.address[:2]) as client:
        identity = make_identity(client)
        (refused,) = file_packets(identity, "refused.bin", SMALL, PACKET)
        client.send(dataclasses.replace(refused, orig_file_size=len(SMALL) + 3))
        for packet in file_packets(identity, "fails.bin", SMALL, PACKET):
            client.send(packet)
        answers = [client.receive(), client.receive()]
        left = _garbage_files(store)
    assert [type(answer) for answer in answers] == [GeneralError, GeneralError], answers
    assert left == []


class RemovedAtTheGate(NotedFolder):
    """The noted folder store, each removal of an upload's file waiting until the test opens
    :attr:`gate`; :attr:`removing` is set once one began."""

    def __init__(self, data_dir) -> None:
        super().__init__(data_dir)
        self.gate = threading.Event()
        self.removing = threading.Event()

    def begin(self, client_id: bytes, key: str) -> TempFile:
        writer = super().begin(client_id, key)
        noted_abort = writer.abort

        def abort() -> None:
            self.removing.set()
            self.gate.wait(PATIENCE)
            noted_abort()

        writer.abort = abort  # type: ignore[method-assign]
        return writer


#: The idle timeout in the test below: far less than the removal it waits for.
SHORT_IDLE = 1.0


def test_no_idle_close_while_a_refusal_waits_for_the_servers_removal_of_its_file(tmp_path):
    # the 1607 waits for the file's removal (the blob port's worker, held at a gate): the
    # client waits for the server, it is not idle. Another connection, silent from a later
    # moment, is closed for idleness first: the refused one's idle deadline passed by then.
    store = RemovedAtTheGate(tmp_path)

    def tune(app) -> None:
        app.limits = dataclasses.replace(app.limits, idle_timeout=SHORT_IDLE)

    key = private_key()  # made before: the connection's idle time runs meanwhile
    try:
        with served_in_a_thread(tmp_path, store, tune) as (server, _db):
            address = server.address[:2]
            with RawClient(address) as client, RawClient(address) as clock:
                identity = make_identity(client, key=key)
                # one packet, its plaintext size not the file's: refused at its end (a
                # request that succeeded before it, a packet, would restart the idle time)
                (packet,) = file_packets(identity, "refused.bin", SMALL, PACKET)
                client.send(dataclasses.replace(packet, orig_file_size=len(SMALL) + 3))
                assert store.removing.wait(PATIENCE), "the refused file's removal never began"
                assert isinstance(clock.request(Register(ANY_ID, unique_name())), Registered)
                assert isinstance(clock.receive(PATIENCE), ConnectionClosed)  # idle: closed
                store.gate.set()
                assert isinstance(client.receive(PATIENCE), GeneralError)  # not closed
                assert _garbage_files(store) == []
                again = Reconnect(client_id=identity.client_id, name=identity.name)
                assert isinstance(client.request(again), Reconnected)
                # its own silence still counts: idle again, it is closed
                assert isinstance(client.receive(PATIENCE), ConnectionClosed)
    finally:
        store.gate.set()


class RecordedBlob:
    """A blob writer noting the size of each write it is handed (a :class:`BlobWriter`)."""

    key = "recorded"

    def __init__(self) -> None:
        self.size = 0
        self.writes: list[int] = []

    def write(self, data) -> None:
        self.writes.append(len(data))
        self.size += len(data)

    def seal(self) -> None:
        pass

    def abort(self) -> None:
        pass


#: What a streaming upload takes in each loop round of the test: a few rounds fill HOLD.
PIECE = HOLD // 4
STREAMING_ROUNDS = 10


def test_a_streaming_upload_wakes_the_worker_once_per_hold_bytes_not_once_per_round():
    # each handoff is a wakeup of the worker (and the GIL passed back and forth): an upload
    # that takes content every round holds on until hold_bytes, not one chunk per round;
    # a round that brings it nothing hands over what it holds
    port = blobport.BlobPort(hold_bytes=HOLD)
    blob = RecordedBlob()
    writer = port.buffer(blob)
    for _ in range(STREAMING_ROUNDS):
        writer.write(bytes(PIECE))
        port.hand_over_held()  # the loop round's end
    assert port.settle()
    full, rest = divmod(STREAMING_ROUNDS * PIECE, HOLD)
    assert blob.writes == [HOLD] * full, blob.writes
    assert writer.held == rest
    port.hand_over_held()  # a round with nothing for it: the upload paused
    assert port.settle()
    assert blob.writes == [HOLD] * full + [rest], blob.writes
    assert writer.held == 0 and blob.size == STREAMING_ROUNDS * PIECE
    port.close()


#: A receive's content at the port's own sizes that does not divide its held buffer (the loop
#: receives up to 1 MiB at once, server/loop.py), and how many such receives stream in.
UNEVEN_RECEIVE = 600 * 1024
UNEVEN_RECEIVES = 10


def test_a_streaming_upload_hands_over_full_buffers_whatever_its_receives_sizes():
    # each handoff wakes the worker, and a held buffer is charged whole once queued: a
    # receive that does not fit what is left of the buffer is split across it and the
    # next, so a streaming upload hands over one full buffer per HOLD_BYTES, not its
    # buffer each time a receive overflows it (a partial chunk charged a whole buffer
    # parks the connection at the next handoff)
    port = blobport.BlobPort()
    blob = RecordedBlob()
    writer = port.buffer(blob)
    for _ in range(UNEVEN_RECEIVES):
        writer.write(bytes(UNEVEN_RECEIVE))
        assert not writer.behind
        assert port.settle()  # the worker keeps up: what is measured is the handoffs
    full, rest = divmod(UNEVEN_RECEIVES * UNEVEN_RECEIVE, port.hold_bytes)
    assert blob.writes == [port.hold_bytes] * full, blob.writes
    assert writer.held == rest
    port.close()


class GatedBlob(RecordedBlob):
    """A recorded blob whose writes wait until the test opens :attr:`gate`."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def write(self, data) -> None:
        self.gate.wait(PATIENCE)
        super().write(data)


#: Tiny handoffs tried before the test gives up waiting for the blob to be behind.
TINY_HANDOFFS = 64


def test_a_queued_chunk_is_charged_the_buffer_it_keeps_alive():
    # an upload that trickles tiny packets, a pause between them, hands the worker a whole
    # held buffer with a few bytes in it at each pause: while the worker is behind, what
    # bounds the connection is the memory those chunks keep alive, not their content
    # (else one buffer a pause piles up)
    port = blobport.BlobPort(behind_bytes=BEHIND, hold_bytes=HOLD)
    blob = GatedBlob()
    writer = port.buffer(blob)
    handoffs = 0
    while not writer.behind and handoffs < TINY_HANDOFFS:
        writer.write(bytes(TINY_PACKET))
        port.hand_over_held()  # the round that brought it
        port.hand_over_held()  # a round that brought nothing: the pause
        handoffs += 1
    charged = HOLD + blobport.CHUNK_OVERHEAD  # the whole buffer, and its objects
    assert writer.behind, writer.queued.queued
    assert handoffs == BEHIND // charged + 1, handoffs
    blob.gate.set()
    assert port.settle()
    assert blob.writes == [TINY_PACKET] * handoffs and not writer.behind
    port.close()


def test_one_chunk_being_written_leaves_a_streaming_upload_read_at_the_default_sizes():
    # the held buffer is charged whole once queued: at the port's own sizes one chunk in
    # the worker's hands must not park the connection (reading overlaps writing), two do
    port = blobport.BlobPort()
    blob = GatedBlob()
    writer = port.buffer(blob)
    piece = bytes(PACKET)
    while writer.queued.queued == 0:
        writer.write(piece)
    assert writer.queued.queued and not writer.behind, writer.queued.queued
    queued_once = writer.queued.queued
    while writer.queued.queued == queued_once:
        writer.write(piece)
    assert writer.behind, writer.queued.queued
    blob.gate.set()
    assert port.settle()
    assert not writer.behind
    port.close()


@pytest.mark.parametrize("per_packet", [False, True], ids=["one-stream", "per-packet"])
def test_a_small_upload_in_several_packets_costs_no_handoff_of_its_own(
    noted, monkeypatch, per_packet
):
    # its held buffer (the size of what is left of it) takes all its content, each packet's
    # padding included where each packet is encrypted on its own: the round's job writes
    # it, no chunk goes to the blob port's worker
    server, _store = noted
    submitted: list[int] = []
    real_submit = blobport.BlobPort.submit

    def submit(port, writer, chunk, spare=None) -> None:
        submitted.append(len(chunk))
        real_submit(port, writer, chunk, spare)

    monkeypatch.setattr(blobport.BlobPort, "submit", submit)
    with RawClient(server.address[:2]) as client:
        identity = make_identity(client)
        answer = upload(client, identity, "small.bin", SMALL, 256, per_packet=per_packet)
    assert isinstance(answer, FileReceived) and answer.cksum == cksum(SMALL)
    assert submitted == []


def test_a_small_uploads_buffer_does_not_push_whole_ones_out_of_the_spares(noted):
    # a small upload's buffer is its own size: kept as a spare, only a request of that size
    # could take it, and it would push out a whole buffer a streaming upload reuses
    server, _store = noted
    port = server.app.uploads.port
    whole = [port.spare(port.hold_bytes, most=port.hold_bytes)
             for _ in range(blobport.SPARE_BUFFERS)]
    for buffer in whole:
        port.keep_spare(buffer)
    with RawClient(server.address[:2]) as client:
        identity = make_identity(client)
        for number in range(blobport.SPARE_BUFFERS):
            answer = upload(client, identity, f"small{number}.bin", SMALL, PACKET)
            assert isinstance(answer, FileReceived) and answer.cksum == cksum(SMALL)
    assert port.settle()
    taken = [port.spare(port.hold_bytes, most=port.hold_bytes)
             for _ in range(blobport.SPARE_BUFFERS)]
    assert all(any(buffer is mine for mine in whole) for buffer in taken)
