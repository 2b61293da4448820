"""Start-up repair and the garbage sweep with several nodes sharing the metadata and the blobs.

Two nodes, each opened as the server opens its stores (``open_stores`` with
its node name) on one PostgreSQL database and one blob store: a bucket of
the session's radosgw, or one folder. Node a has work in flight (an upload
being received, a pending version waiting for its 900, a first upload whose
publish is owed); node b starts (its repair runs) and sweeps; a's work
survives and completes. What b itself left is still repaired
(server/storage/commit.py, "several nodes").
"""

from __future__ import annotations

import threading
import time

import pytest

from server.app import App
from server.limits import Limits
from server.peer import address_group
from server.storage.base import BlobStore, BlobWriter, MetadataStore, new_blob_key
from server.storage.commit import (
    Content, confirm_pending, keep_pending, publish_confirmed, publish_first, record_first,
    repair,
)
from server.storage.coordination import MemoryCoordination
from server.storage.factory import StoreUrls, open_stores
from server.storage.memory import MemoryBlobs, MemoryMetadata
from server.storage.s3.backend import location
from server.storage.s3.store import S3Blobs
from server.storage.s3.upload import PART_BYTES
from server.storage.sweep import GARBAGE_GRACE, Sweeper

ALICE = b"a" * 16
NOW = 1_700_000_000.0
#: Seconds a test waits for the blob port's worker at most.
WORKER_PATIENCE = 30.0
POLL = 0.01

Stores = tuple[MetadataStore, BlobStore]


@pytest.fixture(params=[
    pytest.param("s3", marks=pytest.mark.needed_in_ci),
    pytest.param("folder", marks=pytest.mark.needed_in_ci),
])
def node_stores(request, tmp_path, postgres_url):
    """Opens the stores as a named node would: one database, one blob store, for every node."""
    if request.param == "s3":
        blobs_url = request.getfixturevalue("s3_url")
    else:
        blobs_url = (tmp_path / "shared").as_uri()
    opened: list[MetadataStore] = []

    def open_as(node: str) -> Stores:
        data_dir = tmp_path / node
        data_dir.mkdir(exist_ok=True)
        metadata, blobs = open_stores(
            StoreUrls.given(postgres_url, blobs_url, data_dir), address_group, node
        )
        opened.append(metadata)
        return metadata, blobs

    yield open_as
    for metadata in opened:
        metadata.close()


def _register(metadata: MetadataStore) -> None:
    with metadata.transaction():
        metadata.insert_client(ALICE, "alice", NOW, "v3", "127.0.0.1")


def _sealed(blobs: BlobStore, data: bytes) -> BlobWriter:
    writer = blobs.begin(ALICE, new_blob_key())
    writer.write(data)
    writer.seal()
    return writer


def _published(metadata: MetadataStore, blobs: BlobStore, file_name: bytes, data: bytes) -> str:
    """A first upload, recorded and published: a stored file."""
    writer = _sealed(blobs, data)
    path_name = blobs.new_path_name(ALICE, file_name, writer.key)
    record_first(metadata, ALICE, file_name, path_name, writer.key, Content(len(data), 1))
    metadata.sync()
    publish_first(metadata, blobs, writer, ALICE, file_name, path_name)
    return path_name


def _owed(metadata: MetadataStore, blobs: BlobStore, file_name: bytes, data: bytes):
    """A first upload whose row is durable and whose publish has not run yet."""
    writer = _sealed(blobs, data)
    path_name = blobs.new_path_name(ALICE, file_name, writer.key)
    record_first(metadata, ALICE, file_name, path_name, writer.key, Content(len(data), 1))
    metadata.sync()
    return writer, path_name


def _read(blobs: BlobStore, path_name: str) -> bytes:
    with blobs.open(path_name) as file:
        return file.read()


def test_a_node_starting_leaves_another_node_s_work_and_repairs_its_own(node_stores):
    meta_a, blobs_a = node_stores("a")
    _register(meta_a)
    kept = _published(meta_a, blobs_a, b"kept", b"version 1")
    pending = _sealed(blobs_a, b"version 2")  # its 1603 went; the 900 is still to come
    keep_pending(meta_a, ALICE, b"kept", pending.key)
    owed, owed_path = _owed(meta_a, blobs_a, b"owed", b"owed content")
    receiving = blobs_a.begin(ALICE, new_blob_key())
    receiving.write(bytes(PART_BYTES))  # a part in the store already, more to come
    meta_a.sync()

    crashed_b, crashed_blobs = node_stores("b")  # what b left when it was killed
    mine = _published(crashed_b, crashed_blobs, b"b's", b"b's file")
    given_up = _sealed(crashed_blobs, b"never confirmed")
    keep_pending(crashed_b, ALICE, b"b's", given_up.key)
    cut = _sealed(crashed_blobs, b"never answered")
    record_first(crashed_b, ALICE, b"cut", crashed_blobs.new_path_name(ALICE, b"cut", cut.key),
                 cut.key, Content(1, 1))
    crashed_b.sync()

    meta_b, blobs_b = node_stores("b")  # b starts again
    report = repair(meta_b, blobs_b, "b")
    assert (report.rows_removed, report.unpublished_deleted, report.blobs_set_aside) == (1, 0, 0)
    now = [NOW]
    sweeper = Sweeper(meta_b, blobs_b, lambda: now[0], lambda: {receiving.key})
    assert sweeper.sweep() == 0
    now[0] += GARBAGE_GRACE
    assert sweeper.sweep() == 2  # b's own: the version it gave up, the upload it cut
    assert meta_b.file_row(ALICE, b"cut") is None
    assert meta_b.file_row(ALICE, b"b's").pending_key is None and _read(blobs_b, mine) == b"b's file"

    # a's work survives b's start and sweep, and completes.
    assert meta_a.file_row(ALICE, b"kept").pending_key == pending.key
    confirm_pending(meta_a, ALICE, b"kept", pending.key, Content(9, 2))
    meta_a.sync()
    publish_confirmed(blobs_a, pending, kept)
    publish_first(meta_a, blobs_a, owed, ALICE, b"owed", owed_path)
    receiving.write(b"the end")
    receiving.seal()
    received = blobs_a.new_path_name(ALICE, b"received", receiving.key)
    record_first(meta_a, ALICE, b"received", received, receiving.key, Content(1, 1))
    meta_a.sync()
    publish_first(meta_a, blobs_a, receiving, ALICE, b"received", received)
    assert _read(blobs_b, kept) == b"version 2"
    assert _read(blobs_b, owed_path) == b"owed content"
    assert _read(blobs_b, received) == bytes(PART_BYTES) + b"the end"


class PublishingWhileListed:
    """Node b's blob store, while node a publishes a first upload during b's listing of names."""

    def __init__(self, blobs: BlobStore, publish) -> None:
        self._blobs = blobs
        self._publish = publish

    def stored(self):
        self._publish()
        return self._blobs.stored()

    def __getattr__(self, name: str):
        return getattr(self._blobs, name)


def test_a_file_another_node_publishes_during_repair_is_not_set_aside(node_stores):
    meta_a, blobs_a = node_stores("a")
    _register(meta_a)
    meta_b, blobs_b = node_stores("b")
    published: list[str] = []
    listing = PublishingWhileListed(
        blobs_b, lambda: published.append(_published(meta_a, blobs_a, b"new", b"fresh"))
    )
    report = repair(meta_b, listing, "b")
    assert report.blobs_set_aside == 0
    assert _read(blobs_b, published[0]) == b"fresh"


def test_the_sweeping_node_finds_what_another_node_left_since_it_started(node_stores):
    meta_a, blobs_a = node_stores("a")
    _register(meta_a)
    meta_b, blobs_b = node_stores("b")
    repair(meta_b, blobs_b, "b")  # b has listed the store once
    killed = _sealed(blobs_a, b"sealed; a was killed before its row was durable")
    now = [NOW]
    sweeper = Sweeper(meta_b, blobs_b, lambda: now[0], set)
    assert sweeper.sweep() == 0
    now[0] += GARBAGE_GRACE
    assert sweeper.sweep() == 1
    assert killed.key not in {blob.key for blob in blobs_b.unpublished()}


def test_a_name_another_node_published_is_not_given_again(node_stores):
    meta_a, blobs_a = node_stores("a")
    _register(meta_a)
    meta_b, blobs_b = node_stores("b")
    mine = blobs_b.begin(ALICE, new_blob_key())  # b makes the client's folder, if any
    theirs = _published(meta_a, blobs_a, b"f", b"a's")
    recorded = meta_b.file_row_and_path_names(ALICE, b"f")[1]
    assert blobs_b.new_path_name(ALICE, b"f", mine.key, recorded) != theirs
    mine.abort()


# -- the sweep: one node at a time, off the loop for a slow store ---------------------------


class Watched(MemoryBlobs):
    """Memory blobs that say which threads list and delete them."""

    def __init__(self, slow: bool) -> None:
        super().__init__()
        self.slow_writes = slow
        self.listed_in: list[threading.Thread] = []
        self.deleted_in: list[threading.Thread] = []

    def unpublished(self):
        self.listed_in.append(threading.current_thread())
        return super().unpublished()

    def delete_unpublished(self, blob) -> None:
        self.deleted_in.append(threading.current_thread())
        super().delete_unpublished(blob)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _sweep_and_wait(app: App) -> None:
    """The timer's sweep; then the loop's part, until it is over (the loop would be woken)."""
    app._sweep_garbage_periodically()
    deadline = time.monotonic() + WORKER_PATIENCE
    while app.sweeper.under_way:
        assert time.monotonic() < deadline, "the sweep never ended"
        app.uploads.port.run_finished()
        time.sleep(POLL)


def test_a_slow_store_is_listed_and_swept_in_the_blob_port_s_worker():
    clock, blobs = Clock(), Watched(slow=True)
    app = App.build(MemoryMetadata(), blobs, Limits(), clock=clock)
    garbage = _sealed(blobs, b"no row points at it")
    _sweep_and_wait(app)
    clock.now += GARBAGE_GRACE
    _sweep_and_wait(app)
    assert garbage.key not in {blob.key for blob in blobs.unpublished()}
    loop = threading.current_thread()
    assert blobs.listed_in[:2] and loop not in blobs.listed_in[:2]
    assert blobs.deleted_in and loop not in blobs.deleted_in
    app.uploads.close()


def test_a_quick_store_is_swept_in_the_loop_thread_at_once():
    clock, blobs = Clock(), Watched(slow=False)
    app = App.build(MemoryMetadata(), blobs, Limits(), clock=clock)
    _sealed(blobs, b"no row points at it")
    app._sweep_garbage_periodically()
    clock.now += GARBAGE_GRACE
    app._sweep_garbage_periodically()
    assert not app.sweeper.under_way and blobs.unpublished() == []
    assert set(blobs.listed_in) == {threading.current_thread()}
    app.uploads.close()


def test_only_the_purge_leader_sweeps_the_blob_store_the_nodes_share():
    clock, blobs, metadata = Clock(), Watched(slow=False), MemoryMetadata()
    first = MemoryCoordination(clock, "a")
    leader = App.build(metadata, blobs, Limits(), clock=clock, coordination=first)
    other = App.build(metadata, blobs, Limits(), clock=clock, coordination=first.join("b"))
    assert leader.coordination.may_run_purges()
    other._sweep_garbage_periodically()
    assert blobs.listed_in == []
    leader._sweep_garbage_periodically()
    assert len(blobs.listed_in) == 1
    for app in (leader, other):
        app.uploads.close()


def test_the_stores_of_a_node_record_which_node_pointed_a_row_at_a_blob(node_stores):
    meta_a, blobs_a = node_stores("a")
    meta_b, _ = node_stores("b")
    _register(meta_a)
    _published(meta_a, blobs_a, b"f", b"one")
    assert meta_b.file_row(ALICE, b"f").node == "a"
    with meta_b.transaction():
        meta_b.set_pending(ALICE, b"f", new_blob_key())
    meta_b.sync()
    assert meta_a.file_row(ALICE, b"f").node == "b"
    with meta_a.transaction():
        meta_a.set_pending(ALICE, b"f", None)  # cleared: whose it was stays
    meta_a.sync()
    assert meta_b.file_row(ALICE, b"f").node == "b"


@pytest.mark.needed_in_ci
def test_a_multipart_upload_a_killed_node_abandoned_is_swept_after_the_grace_period(
    tmp_path, postgres_url, s3_url, ceph_gateway,
):
    urls = StoreUrls.given(postgres_url, s3_url, tmp_path)
    meta_a, killed = open_stores(urls, address_group, "a")
    abandoned = killed.begin(ALICE, new_blob_key())
    abandoned.write(bytes(PART_BYTES))  # one part sent; then the node is killed
    meta_a.close()
    meta_b, _ = open_stores(urls, address_group, "b")
    now = [time.time() + GARBAGE_GRACE]  # its lease lapsed long ago; no upload is live
    blobs = S3Blobs(location(urls.blobs), clock=lambda: now[0])
    sweeper = Sweeper(meta_b, blobs, lambda: now[0], set)
    assert sweeper.sweep() == 0  # found: its grace begins
    now[0] += GARBAGE_GRACE
    assert sweeper.sweep() == 1
    bucket = location(urls.blobs).bucket
    client = ceph_gateway.client()
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    meta_b.close()
