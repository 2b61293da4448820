"""One upload's content streamed to its own object, in parts, as it arrives (a BlobWriter).

The server hands an S3 store's writes to its blob port's worker
(``slow_writes``): :meth:`S3Upload.write` runs there, never in the loop.
Content fills a part of :data:`PART_BYTES`; a full part is handed to the
store's part uploaders (:class:`PartUploaders`, at most
:data:`MAX_PARTS_IN_FLIGHT_TOTAL` at once for the whole server) and the
next one fills meanwhile. At most :data:`MAX_PARTS_IN_FLIGHT` parts of one
upload are in flight: a write that would start one more waits for the
oldest, which holds the blob port's worker and so the connection (the
port's backpressure). An upload holds at most ``MAX_PARTS_IN_FLIGHT + 1``
parts in memory, whatever the file's size.

The multipart upload is created with the first full part; content that
never fills one is sealed with one conditional PUT (``If-None-Match: *``:
a blob is never overwritten). :meth:`S3Upload.seal` sends the last part and
completes the upload: the object exists, under its blob key, from then on.
:meth:`S3Upload.abort` aborts the multipart upload (or deletes the sealed
object); if the store cannot be reached, the sweeper deletes it later.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable

from ...errors import BlobMissing, StorageFault

if TYPE_CHECKING:
    from .store import S3Blobs

log = logging.getLogger(__name__)

#: Bytes per part (S3 takes 5 MiB to 5 GiB; each is a round trip).
PART_BYTES = 8 * 1024 * 1024
#: Parts of one upload being sent at once (the next one fills meanwhile).
MAX_PARTS_IN_FLIGHT = 2
#: Parts being sent at once, all uploads together (the uploader threads).
MAX_PARTS_IN_FLIGHT_TOTAL = 8


class PartUploaders:
    """The threads that send parts, shared by a store's uploads (started on demand).

    At most ``threads`` parts are being sent at once; more wait their turn.
    """

    def __init__(self, threads: int = MAX_PARTS_IN_FLIGHT_TOTAL) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="s3-parts")
        self._lock = threading.Lock()
        #: Parts being sent now, and the most at once so far (the global cap's use).
        self.sending = 0
        self.peak_sending = 0

    def submit(self, send: Callable[..., str], *args: Any) -> Future:
        """Send one part in a thread; the future holds its answer (its ETag)."""
        return self._pool.submit(self._send, send, *args)

    def _send(self, send: Callable[..., str], *args: Any) -> str:
        with self._lock:
            self.sending += 1
            self.peak_sending = max(self.peak_sending, self.sending)
        try:
            return send(*args)
        finally:
            with self._lock:
                self.sending -= 1

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
        #: The part filling (zero-filled by calloc: its pages count once written), and
        #: how much of it is.
        self._part = bytearray(PART_BYTES)
        self._filled = 0
        #: A part sent, kept for the next one to fill: no allocation per part.
        self._spare: list[bytearray] = []
        self._upload_id: str | None = None
        #: Parts in flight, oldest first: (number, its buffer, the future of its ETag).
        self._in_flight: deque[tuple[int, bytearray, Future]] = deque()
        self._sent: list[dict[str, Any]] = []
        #: The most parts of this upload in flight at once (for the figures).
        self.peak_in_flight = 0
        self.sealed = False
        self.aborted = False
        #: Set by the store when a path name reads this blob: abort leaves it.
        self.published = False

    @property
    def held(self) -> int:
        """Bytes of this upload in memory: the part filling and the parts in flight."""
        return self._filled + sum(len(part) for _, part, _ in self._in_flight)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append data; send each part that fills.

        Raises:
            StorageFault: after seal or abort, or a part could not be sent.
        """
        if self.sealed or self.aborted:
            raise StorageFault("cannot write a received file: it is closed")
        view = memoryview(data).cast("B")
        self.size += len(view)
        while view:
            taken = min(PART_BYTES - self._filled, len(view))
            self._part[self._filled:self._filled + taken] = view[:taken]
            self._filled += taken
            view = view[taken:]
            if self._filled == PART_BYTES:
                self._send(self._part)  # handed over as it is: no copy
                self._part = self._spare.pop() if self._spare else bytearray(PART_BYTES)
                self._filled = 0

    def _send(self, part: bytearray) -> None:
        """Hand one part to the uploaders, after the oldest if this upload has too many out."""
        if self._upload_id is None:
            self._upload_id = self._store.request(
                "cannot start an upload", "create_multipart_upload",
                Key=self.object_name,
            )["UploadId"]
        while len(self._in_flight) >= MAX_PARTS_IN_FLIGHT:
            self._collect_oldest()
        number = len(self._sent) + len(self._in_flight) + 1
        future = self._store.uploaders.submit(self._send_part, number, part)
        self._in_flight.append((number, part, future))
        self.peak_in_flight = max(self.peak_in_flight, len(self._in_flight))

    def _send_part(self, number: int, part: bytearray) -> str:
        """In an uploader thread: one UploadPart; its ETag."""
        answer = self._store.request(
            "cannot send a part of a received file", "upload_part",
            Key=self.object_name, UploadId=self._upload_id, PartNumber=number, Body=part,
        )
        return str(answer["ETag"])

    def _collect_oldest(self) -> None:
        number, part, future = self._in_flight.popleft()
        try:
            etag = future.result()
        except StorageFault:
            raise
        except Exception as exc:  # an uploader's bug: this upload fails, the server goes on
            log.exception("unexpected error sending a part")
            raise StorageFault(f"cannot send a part of a received file: {exc}") from exc
        self._sent.append({"PartNumber": number, "ETag": etag})
        if len(part) == PART_BYTES and not self._spare:
            self._spare.append(part)

    def seal(self) -> None:
        """Send what is left and complete the object (or PUT it whole if it never filled a part).

        Raises:
            StorageFault: aborted already, or the store did not take it.
        """
        if self.aborted:
            raise StorageFault("cannot sync a received file: it is discarded")
        if self.sealed:
            return
        del self._part[self._filled:]  # the last part: what was written of it
        if self._upload_id is None:
            self._store.request(
                "cannot store a received file", "put_object",
                Key=self.object_name, Body=self._part, IfNoneMatch="*",
            )
        else:
            if self._part:
                self._send(self._part)
            while self._in_flight:
                self._collect_oldest()
            self._store.request(
                "cannot complete a received file", "complete_multipart_upload",
                Key=self.object_name, UploadId=self._upload_id,
                MultipartUpload={"Parts": self._sent},
            )
        self._release()
        self.sealed = True

    def _release(self) -> None:
        """Let go of the part buffers (the parts in flight keep theirs until sent)."""
        self._part = bytearray()
        self._filled = 0
        self._spare.clear()

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
        for _, _, future in self._in_flight:
            future.cancel()
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

