"""One upload's content streamed to its own object, in parts, as it arrives (a BlobWriter).

The server hands an S3 store's writes to its blob port's worker
(``slow_writes``): :meth:`S3Upload.write` runs there, never in the loop.
Content fills a part of :data:`PART_BYTES`; a full part is handed to the
store's part uploaders (:class:`PartUploaders`) and the next one fills
meanwhile. At most :data:`MAX_PARTS_IN_FLIGHT` parts of one upload are in
flight, and :data:`MAX_PARTS_IN_FLIGHT_TOTAL` of all uploads together: a
write that would hand over one more waits for the upload's oldest, or for
any part to be sent, which holds the blob port's worker and so the
connections (the port's backpressure). A part's buffer is let go once it is
sent. Memory: a part filling per upload, and at most
``MAX_PARTS_IN_FLIGHT_TOTAL`` parts being sent, whatever the files' sizes
and number.

A part's buffer is taken when the content outgrows :data:`GROWING_PART_BYTES`:
below, it fills a buffer that grows with it (a small file costs no
whole part's buffer, whose zeroing and page faults would be most of its
CPU). The multipart upload is created with the first full part; content that
never fills one is sealed with one conditional PUT (``If-None-Match: *``:
a blob is never overwritten). :meth:`S3Upload.seal` sends the last part and
completes the upload: the object exists, under its blob key, from then on.
:meth:`S3Upload.abort` aborts the multipart upload (or deletes the sealed
object); if the store cannot be reached, the sweeper deletes it later.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable

from ...errors import BlobMissing, StorageFault

if TYPE_CHECKING:
    from .store import S3Blobs

log = logging.getLogger(__name__)

#: Bytes per part: S3's smallest but for the last (5 MiB to 5 GiB), so that an upload holds
#: the least memory; each is a round trip (docs/SCALING.md: as fast as minio's own PUT).
PART_BYTES = 5 * 1024 * 1024
#: Content an upload holds in a buffer that grows with it, below which it takes no whole
#: part's buffer (then the content so far is copied into one, once).
GROWING_PART_BYTES = 1024 * 1024
#: Parts of one upload being sent at once (the next one fills meanwhile).
MAX_PARTS_IN_FLIGHT = 2
#: Parts handed over and not yet sent, all uploads together (the uploader threads): as many
#: as one upload may have, which keeps the store busy; each more is a part's memory.
MAX_PARTS_IN_FLIGHT_TOTAL = 2


#: glibc's ``mallopt`` option: the size from which an allocation is its own mmap.
_M_MMAP_THRESHOLD = -3


def unmap_sent_parts() -> None:
    """Have the C allocator give each part buffer its own mapping, unmapped when freed.

    glibc raises its mmap threshold to the size of the first mapped block freed;
    part buffers then come from its heaps, where freed ones stay resident after
    the uploads end (README.md, "The cluster"). A fixed threshold turns that
    off. Without glibc: nothing.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, PART_BYTES)


class PartUploaders:
    """The threads that send parts, shared by a store's uploads (started on demand).

    At most ``threads`` parts are handed over and not yet sent: :meth:`submit`
    waits for one of them to end before taking one more (so no part waits in
    memory for a thread). A sent part's buffer is the next part's to fill
    (:meth:`buffer`: no new mapping, no page faults, per part); they are let
    go when no upload is open.
    """

    def __init__(self, threads: int = MAX_PARTS_IN_FLIGHT_TOTAL) -> None:
        unmap_sent_parts()
        self._threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="s3-parts")
        self._slots = threading.BoundedSemaphore(threads)
        self._lock = threading.Lock()
        #: Parts handed over and not yet sent, and the most at once so far (the cap's use).
        self.sending = 0
        self.peak_sending = 0
        #: Uploads begun and not yet sealed or aborted, and the buffers of their sent parts.
        self._open = 0
        self._free: list[bytearray] = []

    def buffer(self) -> bytearray:
        """A part's buffer to fill: a sent part's, or a new one."""
        with self._lock:
            if self._free:
                return self._free.pop()
        return bytearray(PART_BYTES)  # calloc: its pages count once written

    def opened(self) -> None:
        """An upload began."""
        with self._lock:
            self._open += 1

    def closed(self) -> None:
        """An upload was sealed or aborted; the last one lets the spare buffers go."""
        with self._lock:
            self._open -= 1
            if not self._open:
                self._free.clear()

    def submit(self, send: Callable[[int, bytearray], str], number: int,
               part: bytearray) -> Future:
        """Send one part in a thread, once fewer than ``threads`` are; the future holds its
        answer (its ETag)."""
        self._slots.acquire()
        with self._lock:
            self.sending += 1
            self.peak_sending = max(self.peak_sending, self.sending)
        try:
            future = self._pool.submit(self._send, send, number, part)
        except BaseException:
            self._ended()
            raise
        future.add_done_callback(self._ended)  # sent, failed or cancelled (an abort)
        return future

    def _send(self, send: Callable[[int, bytearray], str], number: int,
              part: bytearray) -> str:
        try:
            return send(number, part)
        finally:
            if len(part) == PART_BYTES:
                with self._lock:
                    if self._open and len(self._free) < self._threads:
                        self._free.append(part)

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
        #: The part filling (growing with the content until a part's buffer is taken), and
        #: how much of it is.
        self._part = bytearray()
        self._filled = 0
        store.uploaders.opened()
        self._open = True
        self._upload_id: str | None = None
        #: Parts in flight, oldest first: (number, its size, the future of its ETag). Their
        #: buffers are the uploaders' from then on.
        self._in_flight: deque[tuple[int, int, Future]] = deque()
        self._sent: list[dict[str, Any]] = []
        #: The most parts of this upload in flight at once (for the figures).
        self.peak_in_flight = 0
        self.sealed = False
        self.aborted = False
        #: Set by the store when a path name reads this blob: abort leaves it.
        self.published = False

    @property
    def held(self) -> int:
        """Bytes of this upload in memory: the part filling and the parts being sent."""
        return self._filled + sum(size for _, size, future in self._in_flight
                                  if not future.done())

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append data; send each part that fills.

        Raises:
            StorageFault: after seal or abort, or a part could not be sent.
        """
        if self.sealed or self.aborted:
            raise StorageFault("cannot write a received file: it is closed")
        view = memoryview(data).cast("B")
        self.size += len(view)
        if len(self._part) < PART_BYTES:  # growing: the upload has no part's buffer yet
            if self._filled + len(view) < min(GROWING_PART_BYTES, PART_BYTES):
                self._part += view
                self._filled += len(view)
                return
            self._take_part_buffer()
        while view:
            taken = min(PART_BYTES - self._filled, len(view))
            self._part[self._filled:self._filled + taken] = view[:taken]
            self._filled += taken
            view = view[taken:]
            if self._filled == PART_BYTES:
                self._send(self._part)  # handed over as it is: no copy
                self._part = self._store.uploaders.buffer()
                self._filled = 0

    def _take_part_buffer(self) -> None:
        """Move the content so far into a whole part's buffer (it outgrew the growing one)."""
        part = self._store.uploaders.buffer()
        part[:self._filled] = self._part
        self._part = part

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
        self._in_flight.append((number, len(part), future))
        self.peak_in_flight = max(self.peak_in_flight, len(self._in_flight))

    def _send_part(self, number: int, part: bytearray) -> str:
        """In an uploader thread: one UploadPart; its ETag."""
        answer = self._store.request(
            "cannot send a part of a received file", "upload_part",
            Key=self.object_name, UploadId=self._upload_id, PartNumber=number, Body=part,
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
        """Let go of the part filling (the parts in flight keep theirs until sent)."""
        self._part = bytearray()
        self._filled = 0
        if self._open:
            self._open = False
            self._store.uploaders.closed()

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

