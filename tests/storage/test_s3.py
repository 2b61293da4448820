"""The blob store in an S3 bucket (server/storage/s3/): its URL, streaming, sweeping, a real server.

Against the session's Ceph radosgw (tests/storage/conftest.py; the contract
cases run on it in test_storage_contract.py); the store's faults are
injected at the client, over the real store.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

from backends.ceph import ACCESS_KEY, SECRET_KEY
from backends.part_faults import DROP, STATUS, PartFaults
from helpers import (
    IO_TIMEOUT, POLL_INTERVAL, RawClient, file_packets, make_identity, server_env, upload,
)
from protocol import Acknowledged, CrcOk, FileReceived, GeneralError, cksum
from server.app import App
from server.errors import BadStoreUrl, BlobMissing, StorageFault, StoreUnusable
from server.limits import Limits
from server.loop import Server, create_listener
from server.peer import address_group
from server.storage.base import UnpublishedBlob, new_blob_key
from server.storage.commit import finish_repair, repair_pointers
from server.storage.factory import BLOB_BACKENDS, StoreUrls, blobs_url, open_stores, parse_url
from server.storage.s3.backend import location
from server.storage.s3.client import (
    MAX_ATTEMPTS, SEND_BLOCK_BYTES, AlreadyThere, Location, RequestFailed, S3Api, connect,
)
from server.storage.s3.store import MULTIPART_UPLOAD_AGE, S3Blobs
from server.storage.s3 import upload as s3_upload
from server.storage.s3.upload import MAX_PARTS_IN_FLIGHT, MAX_PARTS_IN_FLIGHT_TOTAL, PART_BYTES
from server.storage.sqlite import DB_NAME, SqliteMetadata
from server.storage.sweep import GARBAGE_GRACE, Sweeper

ALICE = b"a" * 16
#: Packets of the end-to-end uploads (the protocol's content is encrypted: a bit more).
PACKET = 64 * 1024
#: A file of a few parts, its last one short.
PARTS_AND_A_HALF = 3 * PART_BYTES + PART_BYTES // 2
CHUNK = 1024 * 1024
#: Uploads enough that their parts in flight exceed the store's cap.
UPLOADS_PAST_THE_CAP = MAX_PARTS_IN_FLIGHT_TOTAL // MAX_PARTS_IN_FLIGHT + 2

needs_ceph = pytest.mark.needed_in_ci


def _content(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + bytes(size % 256)


def _open(data_dir: Path, url: str):
    data_dir.mkdir(exist_ok=True)
    return open_stores(StoreUrls.given(None, url, data_dir), address_group)


def _uploads(client, bucket: str) -> list[dict]:
    return client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def _bucket(url: str) -> str:
    return url.split("/")[2]


# -- the URL ---------------------------------------------------------------------------


def test_an_s3_url_names_a_bucket_a_prefix_and_how_to_reach_the_store():
    url = blobs_url("s3://files-bucket/node/a/?endpoint=http://127.0.0.1:7480"
                    "&region=eu-west-3&addressing=path", Path("."))
    assert location(url) == Location("files-bucket", "node/a/", "http://127.0.0.1:7480",
                                     "eu-west-3", "path")
    assert location(blobs_url("s3://files-bucket/", Path("."))) == Location("files-bucket")


@pytest.mark.parametrize("text, message", [
    ("s3://x/p", "bucket"),
    ("s3://Files/p", "bucket"),
    ("s3://key:secret@files-bucket/p", "bucket"),
    ("s3://files-bucket/p?aws_secret_access_key=k", "no option"),
    ("s3://files-bucket/p?access_key=k", "no option"),
    ("s3://files-bucket/p?addressing=dns", "addressing"),
    ("s3://files-bucket/p?endpoint=ftp://127.0.0.1", "endpoint"),
    ("s3://files-bucket/p?region=eu%20west", "region"),
])
def test_an_s3_url_takes_no_credentials_and_no_option_s3_would_refuse(text, message):
    with pytest.raises(BadStoreUrl, match=message):
        blobs_url(text, Path("."))


def test_checking_an_s3_url_needs_no_s3_client_library(monkeypatch):
    monkeypatch.setitem(sys.modules, "minio", None)  # import minio raises ImportError
    BLOB_BACKENDS["s3"].check(parse_url("s3://files-bucket/p", BLOB_BACKENDS, "--blobs"))


#: Prints a node's RSS growth (bytes) from opening its S3 client, once the server is imported.
_CLIENT_RSS = """
import re
from server import __main__
from server.storage.s3.client import Location, connect
def rss():
    with open("/proc/self/status") as status:
        return int(re.search(r"VmRSS:\\s+(\\d+)", status.read()).group(1)) * 1024
before = rss()
api = connect(Location("files-bucket", endpoint="http://127.0.0.1:9", addressing="path"))
print(rss() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_a_nodes_s3_client_costs_less_memory_than_one_uploads_parts_in_flight():
    environment = {**server_env(), "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                   "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    grown = int(subprocess.run([sys.executable, "-c", _CLIENT_RSS], env=environment,
                               capture_output=True, text=True, check=True).stdout)
    assert 0 < grown < MAX_PARTS_IN_FLIGHT * PART_BYTES


# -- the client (server/storage/s3/client.py) ---------------------------------------------


class _PagedUploads:
    """A minio client's part that lists multipart uploads by pages of two, as S3 does by
    1000, and answers nothing else."""

    def __init__(self, keys: list[str]) -> None:
        Upload = pytest.importorskip("minio.datatypes").Upload  # noqa: N806 (minio's class)
        self.asked: list[tuple[str | None, str | None]] = []

        self._uploads = []
        for number, key in enumerate(keys):
            element = ET.fromstring(f"<Upload><Key>{key}</Key><UploadId>id{number}</UploadId>"
                                    "<Initiated>2026-12-07T00:00:00.000Z</Initiated></Upload>")
            self._uploads.append(Upload(element))

    def _list_multipart_uploads(self, bucket, prefix=None, key_marker=None,
                                upload_id_marker=None):
        assert (key_marker, upload_id_marker) not in self.asked, "a page asked again"
        self.asked.append((key_marker, upload_id_marker))
        start = 0
        if key_marker is not None:
            start = next(index for index, upload in enumerate(self._uploads)
                         if (upload.object_name, upload.upload_id)
                         == (key_marker, upload_id_marker)) + 1
        page = self._uploads[start:start + 2]
        return SimpleNamespace(uploads=page, is_truncated=start + 2 < len(self._uploads),
                               next_upload_id_marker=None)  # as minio 7.2 parses it: never


def test_every_page_of_multipart_uploads_is_listed():
    keys = [f"node/blobs/{ALICE.hex()}/{new_blob_key()}" for _ in range(5)]
    blobs = S3Blobs(Location("files-bucket", "node/"), client=S3Api(_PagedUploads(keys)))
    try:
        assert [upload["Key"] for upload in blobs._multipart_uploads("blobs/")] == keys
    finally:
        blobs.close()


@pytest.mark.parametrize("kind, code, seen_as", [
    ("S3Error", "NoSuchKey", BlobMissing),
    ("S3Error", "PreconditionFailed", AlreadyThere),
    ("InvalidResponseError", 412, AlreadyThere),  # a 412 without an XML body
    ("S3Error", "AccessDenied", StorageFault),
    ("ServerError", 503, StorageFault),
])
def test_a_failed_request_is_the_seams_error(kind, code, seen_as):
    errors = pytest.importorskip("minio.error")
    made = {
        "S3Error": lambda: errors.S3Error(None, code, "the store's message", "/files-bucket/k",
                                          "request", "host"),
        "InvalidResponseError": lambda: errors.InvalidResponseError(code, "text/plain", ""),
        "ServerError": lambda: errors.ServerError(f"HTTP status code {code}", code),
    }[kind]

    class Failing:
        def _put_object(self, *_):
            raise made()

    blobs = S3Blobs(Location("files-bucket"), client=S3Api(Failing()))
    try:
        with pytest.raises(StorageFault) as raised:
            blobs.request("cannot store", "put_object", Key="k", Body=b"x", IfNoneMatch="*")
        assert type(raised.value) is seen_as
    finally:
        blobs.close()


def test_without_credentials_the_store_is_refused_in_one_line(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SECRET_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    with pytest.raises(StoreUnusable, match="AWS_ACCESS_KEY_ID") as raised:
        connect(Location("files-bucket", endpoint="http://127.0.0.1:9"))
    assert "\n" not in str(raised.value)


@needs_ceph
def test_the_keys_may_come_from_the_shared_credentials_file(tmp_path, s3_url, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    credentials = tmp_path / "credentials"
    credentials.write_text(f"[drop]\naws_access_key_id = {ACCESS_KEY}\n"
                           f"aws_secret_access_key = {SECRET_KEY}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_PROFILE", "drop")
    metadata, blobs = _open(tmp_path, s3_url)  # the bucket answered: the keys were taken
    assert blobs.unpublished() == []
    metadata.close()


class _CountedReads:
    """A part's file whose reads are counted."""

    def __init__(self, file) -> None:
        self._file = file
        self.reads = 0

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        return self._file.read(size)

    def tell(self) -> int:
        return self._file.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)


@needs_ceph
def test_a_part_is_read_from_its_file_in_blocks_of_the_send_block(tmp_path, s3_url):
    # urllib3 reads a file body 16 KiB at a time unless told: a read and a send per 16 KiB
    # were most of a node's part threads' CPU.
    where = location(blobs_url(s3_url, tmp_path))
    api = connect(where)
    key = f"{where.prefix}blobs/{ALICE.hex()}/{new_blob_key()}"
    started = api.create_multipart_upload(Bucket=where.bucket, Key=key)["UploadId"]
    with tempfile.TemporaryFile() as spooled:
        spooled.write(_content(PART_BYTES))
        spooled.seek(0)
        counted = _CountedReads(spooled)
        api.upload_part_from(Bucket=where.bucket, Key=key, UploadId=started, PartNumber=1,
                             Body=counted, ContentLength=PART_BYTES)
    api.abort_multipart_upload(Bucket=where.bucket, Key=key, UploadId=started)
    assert counted.reads <= -(-PART_BYTES // SEND_BLOCK_BYTES) + 1  # and the empty read at the end


# -- streaming, aborting, sweeping (the store on radosgw) --------------------------------


@needs_ceph
def test_an_upload_streams_in_parts_as_it_arrives_at_most_two_in_flight(tmp_path, s3_url,
                                                                         ceph_gateway):
    metadata, blobs = _open(tmp_path, s3_url)
    client = ceph_gateway.client()
    data = _content(PARTS_AND_A_HALF)
    writer = blobs.begin(ALICE, new_blob_key())
    for start in range(0, len(data), CHUNK):
        writer.write(memoryview(data)[start:start + CHUNK])
        assert writer.held <= (MAX_PARTS_IN_FLIGHT + 1) * PART_BYTES
    (upload_,) = _uploads(client, _bucket(s3_url))  # before the seal: parts are in the store
    parts = client.list_parts(Bucket=_bucket(s3_url), Key=upload_["Key"],
                              UploadId=upload_["UploadId"])["Parts"]
    assert len(parts) >= len(data) // PART_BYTES - MAX_PARTS_IN_FLIGHT
    assert 1 <= writer.peak_in_flight <= MAX_PARTS_IN_FLIGHT
    writer.seal()
    path_name = blobs.new_path_name(ALICE, b"big", writer.key)
    blobs.publish(writer.key, path_name)
    with blobs.open(path_name) as file:
        assert file.read() == data
    assert _uploads(client, _bucket(s3_url)) == []
    metadata.close()


@needs_ceph
def test_parts_of_many_uploads_are_sent_at_most_the_cap_at_once(tmp_path, s3_url):
    metadata, blobs = _open(tmp_path, s3_url)
    writers = [blobs.begin(ALICE, new_blob_key()) for _ in range(UPLOADS_PAST_THE_CAP)]
    data = _content(MAX_PARTS_IN_FLIGHT * PART_BYTES)

    def write(writer) -> None:  # each upload in its own thread, as if from its own port
        for start in range(0, len(data), CHUNK):
            writer.write(memoryview(data)[start:start + CHUNK])
        writer.seal()

    threads = [threading.Thread(target=write, args=(writer,)) for writer in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(writer.sealed for writer in writers)
    assert 1 < blobs.uploaders.peak_sending <= MAX_PARTS_IN_FLIGHT_TOTAL
    metadata.close()


class _SlowStore:
    """The part of the S3 API whose UploadPart takes a while (the writer runs ahead)."""

    SEND_SECONDS = 0.1

    def create_multipart_upload(self, **_: object) -> dict:
        return {"UploadId": "u"}

    def upload_part_from(self, PartNumber: int, **_: object) -> dict:  # noqa: N803 (S3's name)
        time.sleep(self.SEND_SECONDS)
        return {"ETag": f"e{PartNumber}"}

    def complete_multipart_upload(self, **_: object) -> dict:
        return {}


#: Small parts for the memory test (the store is a fake: S3's 5 MiB minimum does not apply).
SMALL_PART = 256 * 1024
PARTS_PER_UPLOAD = 6


def test_many_uploads_hold_no_part_in_memory_and_at_most_the_cap_of_parts_in_flight(
        monkeypatch):
    # The blob port's one worker writes every upload, a part at a time, faster than the
    # store takes them: the parts handed over wait for the cap, in their files; a node's
    # memory holds none of them.
    monkeypatch.setattr(s3_upload, "PART_BYTES", SMALL_PART)
    monkeypatch.setattr(s3_upload, "GROWING_PART_BYTES", SMALL_PART // 4)
    blobs = S3Blobs(Location("bucket"), client=_SlowStore())
    uploads = MAX_PARTS_IN_FLIGHT_TOTAL + 2  # each could have MAX_PARTS_IN_FLIGHT in flight
    chunk = _content(SMALL_PART)
    files = _open_files()
    tracemalloc.start()
    try:
        writers = [blobs.begin(ALICE, new_blob_key()) for _ in range(uploads)]
        for _ in range(PARTS_PER_UPLOAD):
            for writer in writers:
                writer.write(chunk)
                assert writer.held < SMALL_PART // 4
        for writer in writers:
            writer.seal()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        blobs.close()
    assert all(writer.sealed for writer in writers)
    # Not one part's content (a part filling per upload, and the parts in flight, were).
    assert peak < SMALL_PART, peak
    assert blobs.uploaders.peak_sending == MAX_PARTS_IN_FLIGHT_TOTAL
    assert _open_files() == files  # every part's file is closed, and so gone


def _open_files() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


def test_a_part_that_cannot_be_spooled_fails_its_upload_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(s3_upload.tempfile, "tempdir", str(tmp_path / "missing"))
    blobs = S3Blobs(Location("bucket"), client=_SlowStore())
    try:
        writer = blobs.begin(ALICE, new_blob_key())
        with pytest.raises(StorageFault, match="cannot spool a part"):
            writer.write(_content(PART_BYTES))
        writer.abort()
    finally:
        blobs.close()


class _RecordingStore:
    """The part of the S3 API that notes each request's operation, and the content
    sent (parts by their numbers: two may be in flight, so they end in either order)."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.sent: list[bytes] = []
        self.parts: dict[int, bytes] = {}

    def put_object(self, Body: bytes, **_: object) -> dict:  # noqa: N803 (the S3 API's name)
        self.requests.append("put_object")
        self.sent.append(bytes(Body))
        return {}

    def create_multipart_upload(self, **_: object) -> dict:
        self.requests.append("create_multipart_upload")
        return {"UploadId": "u"}

    def upload_part_from(self, PartNumber: int, Body, ContentLength: int,  # noqa: N803
                         **_: object) -> dict:
        self.requests.append("upload_part")
        self.parts[PartNumber] = Body.read(ContentLength)
        return {"ETag": f"e{PartNumber}"}

    def complete_multipart_upload(self, **_: object) -> dict:
        self.requests.append("complete_multipart_upload")
        return {}


def test_a_small_upload_takes_no_whole_part_buffer_and_is_one_put():
    # A part's buffer is zeroed and faulted in page by page: for a 64 KiB file it was
    # most of the CPU the store spent on it.
    store = _RecordingStore()
    blobs = S3Blobs(Location("bucket"), client=store)
    data = _content(PACKET)
    tracemalloc.start()
    try:
        writer = blobs.begin(ALICE, new_blob_key())
        for start in range(0, len(data), PACKET // 4):
            writer.write(memoryview(data)[start:start + PACKET // 4])
        writer.seal()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        blobs.close()
    assert writer.sealed and store.requests == ["put_object"] and store.sent == [data]
    assert peak < PART_BYTES // 8, peak


@pytest.mark.parametrize("size", [SMALL_PART // 2, SMALL_PART, 2 * SMALL_PART + 3])
def test_an_upload_outgrowing_its_growing_buffer_sends_its_content_in_order(monkeypatch, size):
    monkeypatch.setattr(s3_upload, "PART_BYTES", SMALL_PART)
    store = _RecordingStore()
    blobs = S3Blobs(Location("bucket"), client=store)
    data = _content(size)
    try:
        writer = blobs.begin(ALICE, new_blob_key())
        for start in range(0, size, SMALL_PART // 3):
            writer.write(memoryview(data)[start:start + SMALL_PART // 3])
        writer.seal()
    finally:
        blobs.close()
    assert sorted(store.parts) == list(range(1, len(store.parts) + 1))
    assert b"".join(store.sent + [store.parts[number] for number in sorted(store.parts)]) == data
    assert store.requests.count("upload_part") == size // SMALL_PART + (size > SMALL_PART)


@needs_ceph
def test_an_aborted_upload_leaves_no_multipart_upload_and_no_object(tmp_path, s3_url,
                                                                     ceph_gateway):
    metadata, blobs = _open(tmp_path, s3_url)
    client = ceph_gateway.client()
    writer = blobs.begin(ALICE, new_blob_key())
    writer.write(_content(PART_BYTES + 1))
    assert len(_uploads(client, _bucket(s3_url))) == 1
    writer.abort()
    assert _uploads(client, _bucket(s3_url)) == [] and blobs.unpublished() == []
    assert client.list_objects_v2(Bucket=_bucket(s3_url)).get("KeyCount") == 0
    metadata.close()


@needs_ceph
def test_a_multipart_upload_a_crash_abandoned_is_swept_once_old_enough(
    tmp_path, s3_url, ceph_gateway,
):
    metadata, crashed = _open(tmp_path / "before", s3_url)
    client = ceph_gateway.client()
    abandoned = crashed.begin(ALICE, new_blob_key())
    abandoned.write(_content(PART_BYTES))  # one part sent; then the node is gone
    metadata.close()
    metadata, after = _open(tmp_path / "after", s3_url)
    assert after.unpublished() == []  # it may be another server's upload in progress
    now = [time.time() + MULTIPART_UPLOAD_AGE]  # old enough to be listed
    blobs = S3Blobs(location(blobs_url(s3_url, tmp_path)), clock=lambda: now[0])
    assert blobs.unpublished() == [UnpublishedBlob(ALICE, abandoned.key)]
    sweeper = Sweeper(metadata, blobs, lambda: now[0], set)
    assert sweeper.sweep() == 0 and len(_uploads(client, _bucket(s3_url))) == 1
    now[0] += GARBAGE_GRACE
    assert sweeper.sweep() == 1
    assert _uploads(client, _bucket(s3_url)) == [] and blobs.unpublished() == []
    metadata.close()


# -- a real server -----------------------------------------------------------------------


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + IO_TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(POLL_INTERVAL)


@needs_ceph
@pytest.mark.slow
def test_a_server_on_s3_stores_confirms_replaces_a_file_and_admin_verify_reads_it(
    server_factory, s3_url, tmp_path,
):
    server = server_factory("--blobs", s3_url, "--log-level", "DEBUG")
    first, second = _content(PARTS_AND_A_HALF), _content(PART_BYTES // 3)[::-1]
    with server.client() as client:
        identity = make_identity(client)
        for version in (first, second):
            answer = upload(client, identity, "report.bin", version, PACKET)
            assert isinstance(answer, FileReceived) and answer.cksum == cksum(version)
            ok = client.request(CrcOk(client_id=identity.client_id, file_name="report.bin"))
            assert isinstance(ok, Acknowledged)
    verify = subprocess.run(
        [sys.executable, "-m", "server", "admin", "verify", "--data-dir", str(server.data_dir),
         "--blobs", s3_url], capture_output=True, text=True, timeout=120, env=server_env(),
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert server.stop() == 0
    assert ACCESS_KEY not in server.log() and SECRET_KEY not in server.log()
    again = server_factory("--blobs", s3_url, data_dir=server.data_dir)  # repair keeps it
    assert again.stop() == 0 and "WARNING" not in again.log(), again.log()
    metadata, blobs = _open(server.data_dir, s3_url)
    (entry,) = blobs.stored()
    with blobs.open(entry.path_name) as file:
        assert file.read() == second
    assert blobs.unpublished() == []  # the first version's blob went with its replacement
    metadata.close()


@needs_ceph
@pytest.mark.slow
def test_a_server_on_s3_aborts_the_multipart_upload_of_a_cut_upload(server_factory, s3_url,
                                                                     ceph_gateway):
    server = server_factory("--blobs", s3_url)
    client_s3 = ceph_gateway.client()
    with server.client() as client:
        identity = make_identity(client)
        packets = file_packets(identity, "cut.bin", _content(3 * PART_BYTES), PACKET)
        for packet in packets[: len(packets) // 2]:
            client.send(packet)
        _wait_for(lambda: _uploads(client_s3, _bucket(s3_url)), "no part reached the store")
    _wait_for(lambda: not _uploads(client_s3, _bucket(s3_url)), "the upload was not aborted")
    with server.client() as client:  # and the server goes on
        make_identity(client)


# -- a store fault (injected at the client) -------------------------------------------------


class _WatchedApi:
    """The store's S3 API, noting the thread of each request; its PUTs of blobs fail while
    ``failing`` is set (as a store's internal error would)."""

    def __init__(self, api) -> None:
        self._api = api
        self.failing = False
        #: (operation, the thread that sent it), in order.
        self.requests: list[tuple[str, threading.Thread]] = []

    def __getattr__(self, operation: str):
        def request(**params):
            self.requests.append((operation, threading.current_thread()))
            if (self.failing and operation == "put_object"
                    and "/blobs/" in f"/{params['Key']}"):
                raise RequestFailed("injected: the store failed", "InternalError")
            return getattr(self._api, operation)(**params)

        return request


@pytest.fixture
def watched_server(tmp_path, s3_url):
    """A server in this process (its loop's thread, and the API), its blobs on radosgw
    through :class:`_WatchedApi`."""
    where = location(blobs_url(s3_url, tmp_path))
    api = _WatchedApi(connect(where))
    blobs = S3Blobs(where, client=api)
    ready: list[Server] = []
    started = threading.Event()

    def run() -> None:  # SQLite's connection lives in the loop's thread
        db = SqliteMetadata.open(tmp_path / DB_NAME)
        ready.append(Server(App.build(db, blobs, Limits()), create_listener("127.0.0.1", 0)))
        started.set()
        try:
            ready[0].serve_forever()
        finally:
            db.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(30)
    yield ready[0], thread, api
    ready[0].stop()
    thread.join(30)
    blobs.close()


@needs_ceph
def test_the_loop_sends_no_request_to_the_store_for_an_upload(watched_server):
    server, loop_thread, api = watched_server
    with RawClient(server.address[:2]) as client:
        identity = make_identity(client)
        api.requests.clear()
        assert isinstance(upload(client, identity, "first.bin", b"a first upload"), FileReceived)
        assert isinstance(upload(client, identity, "FIRST.bin", b"its name by case"), FileReceived)
    sent = [operation for operation, _ in api.requests]
    assert sent.count("put_object") == 4  # two blobs, two names
    assert [operation for operation, thread in api.requests if thread is loop_thread] == []


@needs_ceph
def test_a_store_fault_answers_1607_and_the_server_goes_on(watched_server):
    server, _, api = watched_server
    address = server.address[:2]
    with RawClient(address) as client:
        identity = make_identity(client)
        api.failing = True
        assert isinstance(upload(client, identity, "f.bin", b"small file"), GeneralError)
        api.failing = False
    with RawClient(address) as client:
        identity = make_identity(client)
        assert isinstance(upload(client, identity, "f.bin", b"small file"), FileReceived)


# -- a part sent again (faults injected between the node and the store) ----------------------


@pytest.fixture
def part_faults(ceph_gateway):
    """A relay in front of radosgw that fails UploadParts as told (tests/backends/part_faults.py)."""
    relay = PartFaults(ceph_gateway.endpoint)
    yield relay
    relay.close()


def _through(url: str, relay: PartFaults, ceph_gateway) -> str:
    return url.replace(ceph_gateway.endpoint, relay.endpoint)


@needs_ceph
@pytest.mark.slow
@pytest.mark.parametrize("how", [STATUS, DROP])
def test_a_part_sent_again_after_a_store_fault_is_read_again_from_its_start(
    server_factory, s3_url, ceph_gateway, part_faults, tmp_path, how,
):
    # The first UploadPart is answered 503 once its body is read, or its connection drops
    # half-way: the client library sends it again, from its file, which must be read from
    # the part's first byte again (a part sent from where the first attempt stopped would be
    # short, or another part's bytes).
    server = server_factory("--blobs", _through(s3_url, part_faults, ceph_gateway))
    data = _content(PARTS_AND_A_HALF)
    part_faults.fail(1, how)
    with server.client() as client:
        identity = make_identity(client)
        answer = upload(client, identity, "report.bin", data, PACKET)
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(data), answer
        ok = client.request(CrcOk(client_id=identity.client_id, file_name="report.bin"))
        assert isinstance(ok, Acknowledged), ok
    parts = -(-len(data) // PART_BYTES)
    assert part_faults.failed == 1 and part_faults.parts == parts + 1
    assert server.stop() == 0 and "Traceback" not in server.log()
    metadata, blobs = _open(tmp_path / "reader", s3_url)
    (entry,) = blobs.stored()
    with blobs.open(entry.path_name) as file:
        assert file.read() == data
    assert _uploads(ceph_gateway.client(), _bucket(s3_url)) == []
    metadata.close()


def _blob_objects(ceph_gateway, url: str) -> list[str]:
    listed = ceph_gateway.client().list_objects_v2(Bucket=_bucket(url), Prefix="node/blobs/")
    return [entry["Key"] for entry in listed.get("Contents", [])]


@needs_ceph
@pytest.mark.slow
@pytest.mark.parametrize("how", [STATUS, DROP])
def test_a_part_the_store_never_takes_refuses_the_upload_and_leaves_nothing(
    server_factory, s3_url, ceph_gateway, part_faults, how,
):
    server = server_factory("--blobs", _through(s3_url, part_faults, ceph_gateway))
    part_faults.fail(1000, how)  # every attempt of every part
    with server.client() as client:
        identity = make_identity(client)
        answer = upload(client, identity, "report.bin", _content(PARTS_AND_A_HALF), PACKET)
        assert isinstance(answer, GeneralError), answer
    assert part_faults.failed >= MAX_ATTEMPTS and part_faults.parts == part_faults.failed
    client_s3 = ceph_gateway.client()
    _wait_for(lambda: not _uploads(client_s3, _bucket(s3_url)), "the upload was not aborted")
    assert _blob_objects(ceph_gateway, s3_url) == []
    with server.client() as client:  # the server goes on: a small file is one PUT
        identity = make_identity(client)
        assert isinstance(upload(client, identity, "small.bin", b"a small file"), FileReceived)
    assert server.stop() == 0
    assert "Traceback" not in server.log()
    assert "cannot send a part of a received file" in server.log()


@needs_ceph
def test_a_removal_cut_before_its_names_went_has_none_of_them_set_aside(tmp_path, s3_url):
    # the marker is put (the decision), the crash comes before its names are deleted:
    # start-up repair deletes the client's rows and leaves its names and blobs to
    # finish_repair (the server's while it serves), never taking them for files without rows
    metadata, blobs = _open(tmp_path, s3_url)
    client = b"c" * 16
    writer = blobs.begin(client, new_blob_key())
    writer.write(b"a file of a client being deleted")
    writer.seal()
    path_name = blobs.new_path_name(client, b"gone.bin", writer.key)
    blobs.publish(writer.key, path_name)
    blobs.request("cannot begin a removal", "put_object",  # begin_removal's first step only
                  Key=blobs._removal_marker(client), Body=b"")
    report = repair_pointers(metadata, blobs)
    assert (report.removed, report.blobs_set_aside) == ((client,), 0)
    finish_repair(blobs, report)
    assert blobs.pending_removals() == [] and not blobs.exists(path_name)
    assert blobs.stored() == [] and blobs.unpublished() == []
    metadata.close()
