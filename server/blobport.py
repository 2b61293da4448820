"""Blob work off the loop thread: a worker writes, seals and publishes; the loop learns of it
through its selector.

For a blob store whose calls may wait long (``BlobStore.slow_writes``, a
network round trip), an upload's content is handed to
:meth:`QueuedWriter.write`, which copies it and queues it for one worker
thread; the loop goes on at once. The worker writes it to the store's own
:class:`~server.storage.BlobWriter`, in order, and tells the loop through a
socketpair registered in the loop's selector (:meth:`BlobPort.on_ready`)
when a blob that was behind has caught up.

For a local folder (``BlobStore.buffered_writes``), whose writes go to the
page cache and are usually quick, a handoff per packet would cost more than
it saves, yet a write blocked by writeback throttling must not stall the
loop: :class:`BufferedWriter` holds an upload's content in a buffer of
``hold_bytes`` (1 MiB less ``CHUNK_OVERHEAD``, a few receives) and hands it
to the worker in one chunk once full, or at the end of a loop round that
brought the upload nothing (:meth:`BlobPort.hand_over_held`: it paused, or
its connection is not read), so a streaming upload costs one handoff (a
wakeup of the worker, the GIL passed back and forth) per ``hold_bytes``, not
per round or per receive: a receive that does not fit what is left of the
buffer is split across it and the next (:meth:`BufferedWriter.room` lends the
rest, ``IncomingFile.most_content``), never handed over half full and charged
a whole buffer. The content is decrypted
straight into the held buffer (``IncomingFile.receive_into``), and a buffer
once written comes back to the port for reuse (``SPARE_BUFFERS``: a spare
that fits no request now stays for a later one; past them, the one kept
longest goes), so its pages do not fault in again. A small upload's buffer is
no larger than what is left of it (its content's bound from the first
packet), and full only with no room left. What it holds when the upload
completes is written by the round's job, just before the blob's seal
(server/roundjob.py), so an upload that arrives within one round costs no
handoff of its own. Its abort goes to the worker too.

Backpressure: a blob whose queued chunks keep more than ``behind_bytes`` of
memory alive is *behind* (:attr:`QueuedWriter.behind`); the loop then stops
reading the connection that streams it (``LoopPort.may_take_request`` says
no) until the worker has caught up to half that, so a connection holds at
most about ``behind_bytes`` plus one receive, whatever the store's speed and
the worker's share of the CPU. All blobs together are bound too: while
their chunks keep more than ``total_bytes`` alive (:attr:`BlobPort.over`),
the loop takes no request of a connection that streams no upload (its next
one may start a file) until the worker has written down to half that
(:meth:`BlobPort.when_drained`); uploads under way keep their own bound, up to
``TOTAL_CEILING_FACTOR`` times ``total_bytes`` (:attr:`BlobPort.full`: a connection whose
every request is a new file's first packet, each replacing the upload before it, is
always streaming one). A
small file comes whole in the request that brings it, before its own blob
can be behind: a burst of hundreds of them would otherwise queue them all
at once, and the node's heap would keep that room after. A chunk is charged what it keeps alive
(:func:`_kept`): a held buffer handed over at a round's end counts whole,
however few bytes of content it carries (a round of a few one-byte packets).

Sealing, publishing and aborting go to the same worker, after the blob's
writes (:meth:`QueuedWriter.seal_later`, :meth:`BlobPort.run`,
:meth:`QueuedWriter.abort`): the loop never waits for them. A job's end is
reported in the loop thread: :meth:`BlobPort.on_ready` collects the jobs
done, and :meth:`BlobPort.run_finished` calls what waits on them, when the
loop may call the stores again (not while a round's commit is under way).
The answers that report such a job are held until it is done
(server/installs.py: a seal, a publish, the abort of a refused upload or of
one whose seal or publish failed), and the client's idle deadline waits
meanwhile (server/session.py, Rule 5); the sweeper's deletions of garbage
are such jobs too, and so are those of the garbage start-up repair found
and of the files of a client deletion a crash cut, while the loop serves
(server/storage/sweep.py ``Sweeper.finish_repair``).
The write order of server/storage/commit.py is kept.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import weakref
from typing import Callable

from . import crashpoints
from .errors import StorageFault
from .storage import BlobWriter

log = logging.getLogger(__name__)

#: Bytes of memory the chunks queued for one blob keep alive past which its connection is
#: not read: enough to keep the worker busy while the loop reads the next (each upload
#: holds as much again).
BEHIND_BYTES = 1024 * 1024
#: Bytes a queued chunk's own objects keep alive besides its content (a buffer's header, a
#: view, the queue's tuple: about 300), charged with each: a trickle of one-byte receives
#: while the worker is stuck reaches the behind bound in a few thousand chunks, not millions.
CHUNK_OVERHEAD = 512
#: Bytes a :class:`BufferedWriter` holds in memory at most before handing them to the
#: worker (or at the end of a loop round that brought its upload nothing): the size of its
#: buffer, filled to the brim (a receive that does not fit is split across it and the
#: next), so one handoff per this much of a streaming upload. The buffer is charged whole
#: once queued, with ``CHUNK_OVERHEAD``, and fits ``BEHIND_BYTES``: one chunk being written
#: leaves its blob not behind, so the connection is read while the worker writes (the next
#: one parks it).
HOLD_BYTES = BEHIND_BYTES - CHUNK_OVERHEAD
#: A held buffer with less free room than this is full: handed over. A receive is split
#: across a buffer's end down to this much room (a page), so each piece makes progress
#: (more than the block a decryption holds back, server/packets.py).
FULL_BELOW = 4096
#: Bytes of memory the chunks queued for all blobs together keep alive past which no request
#: of a connection that streams no upload is taken (no new file starts): four uploads' own
#: bound. A burst of small files, each queued whole in its one request, is held to it.
TOTAL_BEHIND_BYTES = 4 * BEHIND_BYTES
#: Times ``total_bytes`` all blobs' queued chunks may keep alive before the connections
#: streaming an upload are parked too (:attr:`BlobPort.full`): each new file's first packet
#: replaces the upload before it, so a connection sending only such is always streaming
#: one, and the content of the files it drops would otherwise queue without end.
TOTAL_CEILING_FACTOR = 2
#: Buffers the port keeps for reuse once written: a new one's pages fault in at each
#: first touch, a reused one's are mapped already. Past them, the one kept longest goes (a
#: buffer that fits no request now stays for a later one until then: memory stays bounded).
SPARE_BUFFERS = 4
#: A queued chunk decrypted into a spare (:meth:`QueuedWriter.room`) takes one at most this
#: fraction larger than itself (1/4): the queue's bound counts content, not buffers.
SPARE_SLACK_DIVISOR = 4
#: Seconds a stop waits for the worker to finish what is queued (aborts, seals, publishes).
STOP_PATIENCE = 60.0
#: Bytes the loop reads off the wake-up socket at once.
_WAKE_READ = 4096


class QueuedWriter:
    """A :class:`BlobWriter` whose writes the port's worker does (itself a BlobWriter)."""

    def __init__(self, port: BlobPort, inner: BlobWriter) -> None:
        self._port = port
        self.inner = inner
        self.key = inner.key
        #: Bytes handed to :meth:`write` (written or queued).
        self.size = 0
        #: Bytes of memory the chunks queued and not yet written keep alive (:func:`_kept`;
        #: guarded by the port's lock).
        self.queued = 0
        #: The first write that failed; later writes, seal and abort see it.
        self.error: StorageFault | None = None
        #: Set by :meth:`abort`: queued writes are dropped.
        self.cancelled = False
        #: The buffer :meth:`room` lent (loop thread), until :meth:`took` queues it.
        self._room: bytearray | None = None

    @property
    def behind(self) -> bool:
        """The chunks waiting to be written keep more than ``behind_bytes`` alive."""
        return self.queued > self._port.behind_bytes

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue a copy of ``data`` (it may be a view of a buffer the loop reuses).

        Raises:
            StorageFault: an earlier write of this blob failed.
        """
        if self.error is not None:
            raise self.error
        chunk = bytes(data)
        self.size += len(chunk)
        self._port.submit(self, chunk)

    def room(self, size: int) -> memoryview:
        """A view of at least ``size`` bytes to fill then queue with :meth:`took` (a
        decryption straight into the chunk the worker writes: no copy, and no buffer of
        the decryptor's own per upload).

        Raises:
            StorageFault: an earlier write of this blob failed.
        """
        if self.error is not None:
            raise self.error
        if self._room is None or len(self._room) < size:
            self._room = self._port.spare(size, most=size + size // SPARE_SLACK_DIVISOR)
        return memoryview(self._room)

    def took(self, size: int) -> None:
        """The first ``size`` bytes of :meth:`room` were filled: queue them; their buffer
        goes back to the port's spares once written."""
        buffer = self._room
        if buffer is None or not size:
            return
        self._room = None
        self.size += size
        self._port.submit(self, memoryview(buffer)[:size], buffer)

    def seal(self) -> None:
        """Wait for the queued writes, then seal in this thread (tools and tests; the loop
        uses :meth:`seal_later`).

        Raises:
            StorageFault: a write or the seal failed.
        """
        self._port.wait_written(self)
        self._seal_now()

    def _seal_now(self) -> None:
        if self.error is not None:
            raise self.error
        self.inner.seal()

    def seal_later(self, done: Callable[[StorageFault | None], None] | None = None) -> None:
        """Seal in the worker, after the queued writes; ``done(error)`` then, in the loop
        thread (:meth:`BlobPort.run_finished`). A seal that fails is this blob's
        :attr:`error`: a later job of it (a publish) fails with it."""

        def seal() -> None:
            try:
                self._seal_now()
            except StorageFault as exc:
                self.error = self.error or exc
                raise

        self._port.run(seal, done)

    def check(self) -> None:
        """Raises the error of a write or seal of this blob that failed, if one did.

        Raises:
            StorageFault: that error.
        """
        if self.error is not None:
            raise self.error

    def then(
        self, action: Callable[[], None], done: Callable[[StorageFault | None], None]
    ) -> None:
        """Call ``action`` in the worker after what is queued for this blob (its seal
        included: :meth:`seal_later`); ``done(error)`` then, in the loop thread."""
        self._port.run(action, done)

    def abort(self) -> None:
        """Drop what is queued; the worker aborts after a write in progress (never raises)."""
        self.cancelled = True
        self._room = None
        self._port.run(self.inner.abort, None)


class BufferedWriter:
    """A :class:`BlobWriter` of a store with quick writes (a local folder): its content is
    held in a buffer of the port's ``hold_bytes``, and queued for the port's worker once the
    buffer is full or at the end of a loop round that brought it nothing
    (:meth:`BlobPort.hand_over_held`); what is held when the upload completes is written
    where it is sealed (the round's job), never in the loop thread.
    """

    def __init__(
        self, port: BlobPort, inner: BlobWriter, let_go: Callable[[], None] = lambda: None,
        most: int | None = None,
    ) -> None:
        self._port = port
        #: The most room the upload asks for in all (its content and a piece's scratch;
        #: None: unknown): a held buffer is no larger than what is left of it.
        self._most = most
        #: The writes handed to the worker, in order.
        self.queued = QueuedWriter(port, inner)
        self.inner = inner
        self.key = inner.key
        #: What the store lets go of at once when the upload is aborted (its name).
        self._let_go = let_go
        #: The buffer content is held in (one of the port's spares), its first ``held`` bytes.
        self._buffer: bytearray | None = None
        #: Bytes held in memory, not yet queued for the worker.
        self.held = 0
        #: Content came in during this loop round: what is held waits for more (loop thread).
        self.took_this_round = False
        #: Bytes handed to :meth:`write` (written, queued or held).
        self.size = 0

    @property
    def behind(self) -> bool:
        """More than the port's ``behind_bytes`` wait for the worker (as for
        :class:`QueuedWriter`)."""
        return self.queued.behind

    def room(self, size: int) -> memoryview:
        """A view of the free bytes after what is held, to fill then tell :meth:`took` (a
        decryption straight into the held buffer: no copy): ``size`` of them or more if the
        buffer has them, else the rest of the buffer, at least ``FULL_BELOW``: the caller
        fills it with a part of its content and asks again for the rest (so every buffer
        handed over is full, whatever the receives' sizes).

        Raises:
            StorageFault: an earlier write of this blob failed.
        """
        self.queued.check()
        if self._buffer is not None and len(self._buffer) - self.held < min(size, FULL_BELOW):
            self.hand_over()
        if self._buffer is None:
            wanted = self._buffer_size(size)
            self._buffer = self._port.spare(wanted, most=wanted)
        return memoryview(self._buffer)[self.held :]

    def _full(self) -> bool:
        """Whether the held buffer is full: less than ``FULL_BELOW`` free in a whole one,
        none in a small upload's (its rest waits for the round's job, no handoff)."""
        if self._buffer is None:
            return False
        free = len(self._buffer) - self.held
        return free < FULL_BELOW if len(self._buffer) >= self._port.hold_bytes else free == 0

    def _buffer_size(self, size: int) -> int:
        """A new held buffer's size: ``hold_bytes`` (at least ``FULL_BELOW``), or what is
        left of the upload if less (a small upload's buffer is not a megabyte zeroed, its
        pages faulted in, for a few KiB); never less than ``size`` up to a whole buffer, so
        each piece makes progress."""
        whole = max(self._port.hold_bytes, FULL_BELOW)
        left = whole if self._most is None else min(whole, self._most - self.size)
        return max(min(size, whole), left)

    def took(self, size: int) -> None:
        """``size`` bytes of :meth:`room` were filled: hold them; queue the buffer once
        full (``FULL_BELOW``)."""
        self.held += size
        self.size += size
        crashpoints.reached("write.appended")
        if self._full():
            self.hand_over()
        elif self.held:
            self.took_this_round = True
            self._port.holding.add(self)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Hold a copy of ``data`` (across buffers if it does not fit); queue each buffer
        once full.

        Raises:
            StorageFault: an earlier write of this blob failed.
        """
        with memoryview(data) as rest:
            while rest:
                with self.room(len(rest)) as room:
                    size = min(len(room), len(rest))
                    room[:size] = rest[:size]
                self.took(size)
                rest = rest[size:]

    def hand_over(self) -> None:
        """Queue what is held for the port's worker (loop thread); the buffer goes back
        to the port's spares once written."""
        self._port.holding.discard(self)
        self.took_this_round = False
        buffer, held = self._buffer, self.held
        if buffer is not None and held:
            self._buffer, self.held = None, 0
            self.queued.size += held
            self._port.submit(self.queued, memoryview(buffer)[:held], buffer)

    def complete(self) -> None:
        """The content is all in: what is held stays held, for :meth:`seal` (loop thread)."""
        self._port.holding.discard(self)

    def seal(self) -> None:
        """Wait for the queued writes, write what is held, then seal (the round's job). A
        whole buffer goes back to the port's spares; a small upload's (its own size, quick
        to make) does not, or it would push out the whole ones streaming uploads reuse.

        Raises:
            StorageFault: a write or the seal failed.
        """
        self._port.wait_written(self.queued)
        self.queued.check()
        buffer, held = self._buffer, self.held
        self._buffer, self.held = None, 0
        if buffer is not None:
            try:
                if held:
                    with memoryview(buffer)[:held] as view:
                        self.inner.write(view)
            except StorageFault as exc:
                self.queued.error = exc
                raise
            finally:
                if len(buffer) >= self._port.hold_bytes:
                    self._port.keep_spare(buffer)
        self.inner.seal()

    def abort(self) -> None:
        """Drop what is held and queued; the worker removes the blob (never raises)."""
        self._port.holding.discard(self)
        self._buffer, self.held = None, 0
        self._let_go()
        self.queued.abort()


class _Shared:
    """What the worker thread and the loop share (the worker never holds the port itself,
    so that a port nobody uses any more is collected and its worker stops)."""

    def __init__(self, behind_bytes: int, total_bytes: int) -> None:
        self.behind_bytes = behind_bytes
        self.total_bytes = total_bytes
        #: Bytes of memory all blobs' queued chunks keep alive (guarded by the lock), and
        #: the most at once so far (the bound's use).
        self.queued = 0
        self.peak_queued = 0
        #: What the loop waits on to take requests again, once the queue drained to half
        #: ``total_bytes``; set when it did (both guarded by the lock).
        self.draining: list[Callable[[], None]] = []
        self.drained = False
        self.jobs: queue.SimpleQueue[_Chunk | _Job | None] = queue.SimpleQueue()
        #: Buffers written and free for reuse, the latest kept last (guarded by the lock:
        #: the worker keeps them, the loop takes them; :func:`_keep_spare`).
        self.spares: list[bytearray] = []
        #: Jobs done since the loop last looked (guarded by the lock).
        self.finished: list[_Job] = []
        self.lock = threading.Condition()
        #: Blobs the loop waits on to resume a connection, with what to call.
        self.waiting: dict[QueuedWriter, Callable[[], None]] = {}
        #: Blobs caught up since the loop last looked (guarded by the lock).
        self.caught_up: list[QueuedWriter] = []
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.thread: threading.Thread | None = None
        self.stopped = False

    def wake(self) -> None:
        try:
            self.wake_w.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # a wake-up is pending already

    def stop(self) -> None:
        """Let the worker end once the queue is done; close the sockets."""
        if self.stopped:
            return
        self.stopped = True
        self.jobs.put(None)
        self.wake_r.close()
        self.wake_w.close()


#: A chunk for the worker: the writer, its bytes, and the buffer they are a view of, kept
#: for reuse once written (or None).
_Chunk = tuple["QueuedWriter", "bytes | bytearray | memoryview", "bytearray | None"]


class _Job:
    """A store call for the worker (a seal, a publish, an abort) and what waits on its end."""

    __slots__ = ("action", "done", "error")

    def __init__(
        self, action: Callable[[], None], done: Callable[[StorageFault | None], None] | None
    ) -> None:
        self.action = action
        self.done = done
        #: Why the call failed, once it ran.
        self.error: StorageFault | None = None


def _work(shared: _Shared) -> None:
    """The worker thread: write each queued chunk, run each job, in order, until told to stop."""
    while True:
        job = shared.jobs.get()
        if job is None:
            return
        if isinstance(job, _Job):
            _run(shared, job)
        else:
            _write(shared, *job)


def _run(shared: _Shared, job: _Job) -> None:
    try:
        job.action()
    except StorageFault as exc:
        job.error = exc
    except Exception as exc:  # a store's bug: that file fails, the server goes on
        log.exception("unexpected error in a blob store call")
        job.error = StorageFault(f"blob store: {exc}")
    if job.done is None:
        return
    with shared.lock:
        shared.finished.append(job)
        if not shared.stopped:
            shared.wake()


def _write(
    shared: _Shared,
    writer: QueuedWriter,
    data: bytes | bytearray | memoryview,
    spare: bytearray | None = None,
) -> None:
    if not writer.cancelled and writer.error is None:
        try:
            writer.inner.write(data)
        except StorageFault as exc:
            writer.error = exc
        except Exception as exc:  # a store's bug: the upload fails, the server goes on
            log.exception("unexpected error writing a blob")
            writer.error = StorageFault(f"cannot write a received file: {exc}")
    size = _kept(data, spare)
    if spare is not None and isinstance(data, memoryview):
        data.release()
    with shared.lock:
        if spare is not None:
            _keep_spare(shared.spares, spare)
        writer.queued -= size
        shared.queued -= size
        if writer in shared.waiting and writer.queued <= shared.behind_bytes // 2:
            shared.caught_up.append(writer)
            if not shared.stopped:
                shared.wake()
        if shared.draining and shared.queued <= shared.total_bytes // 2:
            shared.drained = True
            if not shared.stopped:
                shared.wake()
        shared.lock.notify_all()


def _keep_spare(spares: list[bytearray], buffer: bytearray) -> None:
    """Keep a written buffer for reuse, the latest last; past ``SPARE_BUFFERS`` the one
    kept longest goes (memory stays bounded, and the sizes asked lately are kept)."""
    spares.append(buffer)
    if len(spares) > SPARE_BUFFERS:
        del spares[0]


def _kept(chunk: bytes | bytearray | memoryview, spare: bytearray | None) -> int:
    """The bytes of memory a queued chunk keeps alive until written: the whole buffer it is
    a view of (``spare``), however little of it is content, else the chunk itself; and its
    objects (``CHUNK_OVERHEAD``), so that many tiny chunks count too."""
    return (len(spare) if spare is not None else len(chunk)) + CHUNK_OVERHEAD


class BlobPort:
    """One worker thread for every blob write, and a socketpair to wake the loop.

    The thread starts with the first write; :meth:`close` (or the port's end)
    stops it once what is queued is written.
    """

    def __init__(self, behind_bytes: int = BEHIND_BYTES, hold_bytes: int = HOLD_BYTES,
                 total_bytes: int = TOTAL_BEHIND_BYTES) -> None:
        self._shared = _Shared(behind_bytes, total_bytes)
        #: Bytes a :class:`BufferedWriter` holds at most before handing them to the worker.
        self.hold_bytes = hold_bytes
        #: The buffered writers holding bytes, handed over at the end of a round that
        #: brought them nothing (loop thread).
        self.holding: set[BufferedWriter] = set()
        weakref.finalize(self, self._shared.stop)

    @property
    def behind_bytes(self) -> int:
        """Bytes queued for one blob past which its connection is not read."""
        return self._shared.behind_bytes

    @behind_bytes.setter
    def behind_bytes(self, value: int) -> None:
        self._shared.behind_bytes = value

    @property
    def total_bytes(self) -> int:
        """Bytes queued for all blobs together past which no request is taken."""
        return self._shared.total_bytes

    @total_bytes.setter
    def total_bytes(self, value: int) -> None:
        self._shared.total_bytes = value

    @property
    def over(self) -> bool:
        """All blobs' queued chunks keep more than ``total_bytes`` alive."""
        return self._shared.queued > self._shared.total_bytes

    @property
    def full(self) -> bool:
        """All blobs' queued chunks keep more than ``TOTAL_CEILING_FACTOR`` times
        ``total_bytes`` alive: no connection's request is taken, an upload's under way
        neither."""
        return self._shared.queued > TOTAL_CEILING_FACTOR * self._shared.total_bytes

    @property
    def peak_queued(self) -> int:
        """The most bytes all blobs' queued chunks kept alive at once so far."""
        return self._shared.peak_queued

    def wrap(self, writer: BlobWriter) -> QueuedWriter:
        """The store's writer, its writes done by the worker."""
        return QueuedWriter(self, writer)

    def buffer(self, writer: BlobWriter, most: int | None = None) -> BufferedWriter:
        """The writer of a store with quick writes, held then written off the loop thread
        (:class:`BufferedWriter`); its store's ``let_go`` (if any) runs at an abort, here.
        ``most``: the most room the upload asks for in all (None: unknown)."""
        return BufferedWriter(self, writer, getattr(writer, "let_go", lambda: None), most)

    def hand_over_held(self) -> None:
        """Queue for the worker what each buffered upload that took no content in this
        loop round holds (it paused, or its connection is not read); one still streaming
        holds on until ``hold_bytes`` (the loop, at each round's end)."""
        for writer in list(self.holding):
            if writer.took_this_round:
                writer.took_this_round = False
            else:
                writer.hand_over()

    def fileno(self) -> int:
        """What the loop's selector watches: readable when a blob caught up."""
        return self._shared.wake_r.fileno()

    def spare(self, size: int, most: int | None = None) -> bytearray:
        """A buffer of at least ``size`` bytes (and at most ``most``, if given): the spare
        one kept latest that fits, else a new one of ``size``; the spares that do not fit
        stay for a later request (loop thread)."""
        shared = self._shared
        with shared.lock:
            spares = shared.spares
            for at in range(len(spares) - 1, -1, -1):
                if size <= len(spares[at]) <= (most or len(spares[at])):
                    return spares.pop(at)
        return bytearray(size)

    def keep_spare(self, buffer: bytearray) -> None:
        """Keep a written buffer for reuse (:meth:`spare`): ``SPARE_BUFFERS`` at most, the
        one kept longest dropped past them."""
        with self._shared.lock:
            _keep_spare(self._shared.spares, buffer)

    def submit(
        self,
        writer: QueuedWriter,
        chunk: bytes | bytearray | memoryview,
        spare: bytearray | None = None,
    ) -> None:
        """Queue one chunk for the worker (after :meth:`close`: write it at once); ``spare``,
        the buffer ``chunk`` is a view of, is kept for reuse once written."""
        shared = self._shared
        if shared.stopped:  # in order after what the worker still has
            self.wait_written(writer)
            self._count(writer, _kept(chunk, spare))
            _write(shared, writer, chunk, spare)
            return
        self._count(writer, _kept(chunk, spare))
        self._start()
        shared.jobs.put((writer, chunk, spare))

    def _count(self, writer: QueuedWriter, kept: int) -> None:
        """Charge a chunk queued to its blob and to all blobs' total."""
        shared = self._shared
        with shared.lock:
            writer.queued += kept
            shared.queued += kept
            shared.peak_queued = max(shared.peak_queued, shared.queued)

    def run(
        self, action: Callable[[], None], done: Callable[[StorageFault | None], None] | None
    ) -> None:
        """Call ``action`` in the worker, after everything queued before; then
        ``done(error)`` in the loop thread (:meth:`run_finished`). After
        :meth:`close`: both at once, here."""
        job = _Job(action, done)
        shared = self._shared
        if shared.stopped:  # in order after what the worker still has
            if shared.thread is not None:
                shared.thread.join()
            _run(shared, job)
            self.run_finished()
            return
        self._start()
        shared.jobs.put(job)

    def settle(self, patience: float = STOP_PATIENCE) -> bool:
        """Block until what was queued before is done, up to ``patience`` seconds (tests,
        tools: an abort's removal is the worker's); whether it was."""
        if self._shared.thread is None or self._shared.stopped:
            return True
        done = threading.Event()
        self.run(done.set, None)
        return done.wait(patience)

    def run_finished(self) -> int:
        """Call what waits on the jobs done (loop thread, the stores free); return how many."""
        shared = self._shared
        with shared.lock:
            finished, shared.finished = shared.finished, []
        for job in finished:
            if job.done is not None:
                job.done(job.error)
        return len(finished)

    def _start(self) -> None:
        shared = self._shared
        if shared.thread is None:
            shared.thread = threading.Thread(
                target=_work, args=(shared,), name="blob-writes", daemon=True
            )
            shared.thread.start()

    def wait_written(self, writer: QueuedWriter) -> None:
        """Block until nothing of ``writer`` is queued or being written."""
        shared = self._shared
        with shared.lock:
            shared.lock.wait_for(lambda: writer.queued == 0)
            if writer in shared.waiting and not shared.stopped:  # the loop resumes its waiter
                shared.caught_up.append(writer)
                shared.wake()

    def when_caught_up(self, writer: QueuedWriter, resume: Callable[[], None]) -> None:
        """Call ``resume`` (in the loop thread, from :meth:`on_ready`) once ``writer`` caught up."""
        shared = self._shared
        with shared.lock:
            shared.waiting[writer] = resume
            if writer.queued <= shared.behind_bytes // 2:
                shared.caught_up.append(writer)
                shared.wake()

    def when_drained(self, resume: Callable[[], None]) -> None:
        """Call ``resume`` (in the loop thread, from :meth:`on_ready`) once all blobs' queued
        chunks keep at most half ``total_bytes`` alive."""
        shared = self._shared
        with shared.lock:
            shared.draining.append(resume)
            if shared.queued <= shared.total_bytes // 2:
                shared.drained = True
                shared.wake()

    def on_ready(self) -> None:
        """The loop's selector saw the wake-up socket: resume what waited on blobs caught up,
        and on the queue drained."""
        shared = self._shared
        try:
            while shared.wake_r.recv(_WAKE_READ):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        with shared.lock:
            ready, shared.caught_up = shared.caught_up, []
            actions = [shared.waiting.pop(writer) for writer in ready if writer in shared.waiting]
            if shared.drained:
                actions += shared.draining
                shared.draining, shared.drained = [], False
        for action in actions:
            action()

    def close(self, patience: float = STOP_PATIENCE) -> None:
        """Stop the worker once what is queued is done (writes of dropped blobs are skipped),
        waiting for it up to ``patience`` seconds: it is a daemon thread, and the process's
        exit would cut the aborts a stop queues (an S3 multipart upload left open); close
        the sockets."""
        shared = self._shared
        shared.stop()
        thread = shared.thread
        if thread is None or thread is threading.current_thread():
            return
        thread.join(patience)
        if thread.is_alive():
            log.warning(
                "blob store calls still under way after %g s at the stop: what they leave"
                " is swept later", patience,
            )
