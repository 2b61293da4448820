"""One upload's content streamed to its own object, in parts, as it arrives (a BlobWriter).

The server hands an S3 store's writes to its blob port's worker
(``slow_writes``): :meth:`S3Upload.write` runs there, never in the loop.
Content fills a part of :data:`PART_BYTES` in a spool file (an unnamed
temporary file, :func:`spool`: the page cache holds it, not the node's
memory); a full part is handed to the store's part uploaders
(:class:`PartUploaders`), which send it from its file (an UploadPart read
from it as it is sent, :meth:`~.client.S3Api.upload_part_from`), and the
next one fills meanwhile. At most :data:`MAX_PARTS_IN_FLIGHT` parts of one
upload are in flight, and :data:`MAX_PARTS_IN_FLIGHT_TOTAL` of all uploads
together: a write that would hand over one more waits for the upload's
oldest, or for any part to be sent, which holds the blob port's worker and
so the connections (the port's backpressure). A part's file is closed (and
so gone) once it is sent. Memory: no part is held; disk: a part filling per
upload, and at most ``MAX_PARTS_IN_FLIGHT_TOTAL`` parts being sent,
whatever the files' sizes and number. A part is sent whole, at the store's
pace: a slow client never holds a request to the store open.

A part's file is taken when the content outgrows :data:`GROWING_PART_BYTES`:
below, it fills a buffer in memory that grows with it (a small file costs no
file). The multipart upload is created with the first full part; content that
never fills one is sealed with one conditional PUT (``If-None-Match: *``:
a blob is never overwritten). :meth:`S3Upload.seal` sends the last part and
completes the upload: the object exists, under its blob key, from then on.
:meth:`S3Upload.abort` aborts the multipart upload (or deletes the sealed
object); if the store cannot be reached, the sweeper deletes it later.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, BinaryIO, Callable

from ...errors import BlobMissing, StorageFault

if TYPE_CHECKING:
    from .store import S3Blobs

log = logging.getLogger(__name__)

#: Bytes per part: S3's smallest but for the last (5 MiB to 5 GiB), so that an upload holds
#: the least memory; each is a round trip (docs/SCALING.md: as fast as minio's own PUT).
PART_BYTES = 5 * 1024 * 1024
#: Content an upload holds in a buffer that grows with it, below which it takes no part's
#: file (then the content so far is written into one, once).
GROWING_PART_BYTES = 1024 * 1024
#: Parts of one upload being sent at once (the next one fills meanwhile).
MAX_PARTS_IN_FLIGHT = 2
#: Parts handed over and not yet sent, all uploads together (the uploader threads, each with
#: a connection to the store): four uploads' worth, so that one upload's slow part does not
#: hold the others' (each more is a part's file and a thread, not memory).
MAX_PARTS_IN_FLIGHT_TOTAL = 8


#: How a part's spool file is named while it is created (it has no name after).
SPOOL_PREFIX = "cipherdrop-part-"


def spool() -> BinaryIO:
    """A new part's file: unnamed, in the temporary folder (``TMPDIR``), gone once closed.

    Raises:
        StorageFault: it cannot be created.
    """
    try:
        return tempfile.TemporaryFile(prefix=SPOOL_PREFIX)
    except OSError as exc:
        raise StorageFault(f"cannot spool a part of a received file: {exc}") from exc


def _write(part: BinaryIO, data: bytes | bytearray | memoryview) -> None:
    """Append to a part's file.

    Raises:
        StorageFault: the temporary folder took it not (full, say).
    """
    try:
        part.write(data)
    except OSError as exc:
        raise StorageFault(f"cannot spool a part of a received file: {exc}") from exc


class PartUploaders:
    """The threads that send parts, shared by a store's uploads (started on demand).

    At most ``threads`` parts are handed over and not yet sent: :meth:`submit`
    waits for one of them to end before taking one more (so no part waits on
    disk for a thread).
    """

    def __init__(self, threads: int = MAX_PARTS_IN_FLIGHT_TOTAL) -> None:
        self._threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="s3-parts")
        self._slots = threading.BoundedSemaphore(threads)
        self._lock = threading.Lock()
        #: Parts handed over and not yet sent, and the most at once so far (the cap's use).
        self.sending = 0
        self.peak_sending = 0

    def submit(self, send: Callable[[int, BinaryIO, int], str], number: int, part: BinaryIO,
               length: int) -> Future:
        """Send one part (``length`` bytes of its file) in a thread, once fewer than
        ``threads`` are; the future holds its answer (its ETag). The file is closed once
        sent (or failed)."""
        self._slots.acquire()
        with self._lock:
            self.sending += 1
            self.peak_sending = max(self.peak_sending, self.sending)
        try:
            future = self._pool.submit(self._send, send, number, part, length)
        except BaseException:
            part.close()
            self._ended()
            raise
        future.add_done_callback(self._ended)  # sent, failed or cancelled (an abort)
        return future

    @staticmethod
    def _send(send: Callable[[int, BinaryIO, int], str], number: int, part: BinaryIO,
              length: int) -> str:
        try:
            part.seek(0)
            return send(number, part, length)
        finally:
            part.close()

    def _ended(self, _future: Future | None = None) -> None:
        with self._lock:
            self.sending -= 1
        self._slots.release()

    def close(self) -> None:
        """Let the threads end once the parts being sent are; drop those waiting."""
        self._pool.shutdown(wait=False, cancel_futures=True)


class S3Upload:
    """An upload being written to ``blobs/<client>/<key>`` (a :class:`BlobWriter`)."""

    def __init__(self, store: S3Blobs, client_id: bytes, key: str) -> None:
        self._store = store
        self.client_id = client_id
        self.key = key
        self.object_name = store.blob_object(client_id, key)
        self.size = 0
        #: The part filling: in memory while it is small, then in its file; how much of it.
        self._part = bytearray()
        self._spool: BinaryIO | None = None
        self._filled = 0
        self._upload_id: str | None = None
        #: Parts in flight, oldest first: (number, its file, the future of its ETag). Their
        #: files are the uploaders' from then on (closed once sent).
        self._in_flight: deque[tuple[int, BinaryIO, Future]] = deque()
        self._sent: list[dict[str, Any]] = []
        #: The most parts of this upload in flight at once (for the figures).
        self.peak_in_flight = 0
        self.sealed = False
        self.aborted = False
        #: Set by the store when a path name reads this blob: abort leaves it.
        self.published = False

    @property
    def held(self) -> int:
        """Bytes of this upload in memory: the part filling while it is small."""
        return len(self._part)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append data; send each part that fills.

        Raises:
            StorageFault: after seal or abort, a part could not be spooled or sent.
        """
        if self.sealed or self.aborted:
            raise StorageFault("cannot write a received file: it is closed")
        view = memoryview(data).cast("B")
        self.size += len(view)
        part = self._spool
        if part is None:  # small so far: in memory
            if self._filled + len(view) < min(GROWING_PART_BYTES, PART_BYTES):
                self._part += view
                self._filled += len(view)
                return
            part = self._spool = self._spooled()
        while view:
            taken = min(PART_BYTES - self._filled, len(view))
            _write(part, view[:taken])
            self._filled += taken
            view = view[taken:]
            if self._filled == PART_BYTES:
                self._spool = None
                self._filled = 0
                self._send(part, PART_BYTES)
                if view:
                    part = self._spool = spool()

    def _spooled(self) -> BinaryIO:
        """A new part's file, the part filling in memory moved into it."""
        part = spool()
        _write(part, self._part)
        self._part = bytearray()
        return part

    def _send(self, part: BinaryIO, length: int) -> None:
        """Hand one part to the uploaders, after the oldest if this upload has too many out."""
        if self._upload_id is None:
            self._upload_id = self._store.request(
                "cannot start an upload", "create_multipart_upload",
                Key=self.object_name,
            )["UploadId"]
        while len(self._in_flight) >= MAX_PARTS_IN_FLIGHT:
            self._collect_oldest()
        number = len(self._sent) + len(self._in_flight) + 1
        future = self._store.uploaders.submit(self._send_part, number, part, length)
        self._in_flight.append((number, part, future))
        self.peak_in_flight = max(self.peak_in_flight, len(self._in_flight))

    def _send_part(self, number: int, part: BinaryIO, length: int) -> str:
        """In an uploader thread: one UploadPart read from its file; its ETag."""
        answer = self._store.request(
            "cannot send a part of a received file", "upload_part_from",
            Key=self.object_name, UploadId=self._upload_id, PartNumber=number, Body=part,
            ContentLength=length,
        )
        return str(answer["ETag"])

    def _collect_oldest(self) -> None:
        number, _, future = self._in_flight.popleft()
        try:
            etag = future.result()
        except StorageFault:
            raise
        except Exception as exc:  # an uploader's bug: this upload fails, the server goes on
            log.exception("unexpected error sending a part")
            raise StorageFault(f"cannot send a part of a received file: {exc}") from exc
        self._sent.append({"PartNumber": number, "ETag": etag})

    def seal(self) -> None:
        """Send what is left and complete the object (or PUT it whole if it never filled a part).

        Raises:
            StorageFault: aborted already, or the store did not take it.
        """
        if self.aborted:
            raise StorageFault("cannot sync a received file: it is discarded")
        if self.sealed:
            return
        if self._upload_id is None:
            self._store.request(
                "cannot store a received file", "put_object",
                Key=self.object_name, Body=self._whole(), IfNoneMatch="*",
            )
        else:
            if self._filled:
                part = self._spool if self._spool is not None else self._spooled()
                self._spool = None
                self._send(part, self._filled)
            while self._in_flight:
                self._collect_oldest()
            self._store.request(
                "cannot complete a received file", "complete_multipart_upload",
                Key=self.object_name, UploadId=self._upload_id,
                MultipartUpload={"Parts": self._sent},
            )
        self._release()
        self.sealed = True

    def _whole(self) -> bytes | bytearray:
        """The content of an upload that never filled a part (read back from its file if it
        has one: under a part)."""
        if self._spool is None:
            return self._part
        try:
            self._spool.seek(0)
            return self._spool.read()
        except OSError as exc:
            raise StorageFault(f"cannot read a spooled received file: {exc}") from exc

    def _release(self) -> None:
        """Let go of the part filling (the parts in flight keep their files until sent)."""
        self._part = bytearray()
        self._filled = 0
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def abort(self) -> None:
        """Drop the upload: abort the multipart upload, or delete the sealed object; never raises.

        Once published, nothing happens. Where the store cannot be reached,
        the blob is left to the sweeper (logged).
        """
        if self.aborted or self.published:
            return
        self.aborted = True
        self._release()
        self._store.forget(self)
        for _, part, future in self._in_flight:
            if future.cancel():
                part.close()  # never handed to a thread
        try:
            for _, _, future in self._in_flight:
                if not future.cancelled():
                    future.exception()  # wait: a part sent after the abort would linger
            self._in_flight.clear()
            if self.sealed:
                self._store.request("cannot delete a blob", "delete_object", Key=self.object_name)
            elif self._upload_id is not None:
                self._store.request(
                    "cannot abort an upload", "abort_multipart_upload",
                    Key=self.object_name, UploadId=self._upload_id,
                )
        except BlobMissing:
            pass  # gone already
        except StorageFault as exc:
            log.warning("blob %s is left to the sweeper: %s", self.key, exc)
