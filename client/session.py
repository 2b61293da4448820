"""A blocking TCP session over :class:`protocol.ClientConnection`.

Each request goes out in one gathered write of its whole bytes (some servers
in the wild read a whole request per ``recv``): the header and an 828's
content are passed to ``sendmsg`` side by side, never joined. Replies are read until one whole
response has arrived. Every socket operation has a time-out, so a server that
stops answering ends in :class:`NetworkError`, never in a hang; the time-out
of an answer is a deadline for the whole answer, so a server that trickles it
byte by byte cannot stretch it either, nor can one that reads a request a
little at a time: a send has a floor under its rate (client/send_rate.py).
"""

from __future__ import annotations

import logging
import select
import socket
import time

from protocol import ClientConnection, ConnectionClosed, NEED_DATA, RemoteProtocolError
from protocol.buffer import BytesLike
from protocol.codes import RequestCode
from protocol.editions import EDITION_2023C, EDITION_2024A, V3, Edition
from protocol.printable import quoted

from .config import ServerAddress
from . import foreign
from .errors import MalformedReply, NetworkError, NotAServer
from .send_rate import DEFAULT_MIN_RATE, SendRate
from .stall import ReadingWatch, StallClock, evidence_hold

log = logging.getLogger(__name__)

#: Seconds a connect may take, a send may make no progress (or its rate's
#: window lasts, client/send_rate.py), or a whole reply may take.
DEFAULT_TIMEOUT = 30.0
RECV_SIZE = 64 * 1024
#: select() time-out of a poll that must not wait.
_NO_WAIT = 0
#: Seconds between two looks at the server's window while a request waits for
#: room in it (``Session.whole_requests``).
ROOM_POLL = 0.001


def describe(event: object, edition: Edition = V3) -> str:
    """A short name of a request or response (or of its class) for logs, with
    its code in ``edition``: ``1603 FileReceived`` (``2103 FileReceived`` in 2022)."""
    kind = event if isinstance(event, type) else type(event)
    message = edition.request_for(kind) or edition.response_for(kind)
    code = message.code if message is not None else getattr(event, "code", None)
    return f"{int(code)} {kind.__name__}" if code is not None else kind.__name__


def _worth_logging(request) -> bool:
    """Every request but the middle packets of a file (thousands of lines)."""
    number = getattr(request, "packet_number", None)
    return number is None or number in (1, request.total_packets)


class Session:
    """One server, one connection at a time, opened when first needed.

    ``reset`` drops the connection (after a broken stream); the next request
    opens a new one. ``first_request`` is the code of the first request sent
    on the current connection: docs/PROTOCOL.md variant 7 makes it decide how a
    server treats the connection.
    """

    def __init__(
        self,
        address: ServerAddress,
        timeout: float = DEFAULT_TIMEOUT,
        edition: Edition = V3,
        *,
        per_request: bool = False,
        min_rate: float = DEFAULT_MIN_RATE,
    ) -> None:
        self.address = address
        self.timeout = timeout
        #: Bytes per second a send must average over each ``timeout`` of
        #: sending (client/send_rate.py); 0: no floor.
        self.min_rate = min_rate
        self._send_rate = SendRate(min_rate, timeout)
        self.edition = edition
        #: One connection per request (docs/PROTOCOL.md variant 7): each
        #: request opens a new one; what came back on the last one is dropped.
        self.per_request = per_request
        #: Requests sent and replies read on the current connection.
        self.requests_on_connection = 0
        self.replies_on_connection = 0
        self._sock: socket.socket | None = None
        self._conn = self._new_connection()
        self.first_request: RequestCode | None = None
        self.connections_opened = 0
        self._eof = False
        #: The connection's first bytes until they are a known answer (client/foreign.py).
        self._first_bytes = b""
        #: End a send or a wait for an answer as soon as the kernel shows, for
        #: a hold scaled from the server's answers, that the server stopped
        #: reading (client/stall.py): set while a layout the server may have
        #: dropped is tried.
        self.watch_reading = False
        self._watch: ReadingWatch | None = None
        #: Send each request only when the server's window can take all of it
        #: at once, so that it arrives whole: set for a server that reads a
        #: request's field with one receive (a request sent into a full
        #: window goes out in pieces, and it reads a piece).
        self.whole_requests = False
        #: Seconds from the end of a request to the end of its answer: the
        #: slowest of the run (None before the first answer), and when the
        #: request now awaiting its answer was sent.
        self.slowest_answer: float | None = None
        self._sent_at: float | None = None
        #: The server closed the connection after a whole reply (not inside one).
        self._closed_between_replies = False

    # -- connection ----------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether a connection is open now."""
        return self._sock is not None

    def _connect(self) -> socket.socket:
        try:
            sock = socket.create_connection(
                (self.address.host, self.address.port), timeout=self.timeout
            )
        except socket.gaierror as exc:
            raise NetworkError(
                f"cannot resolve {quoted(self.address.host)}: {exc.strerror}"
            ) from None
        except ConnectionRefusedError:
            raise NetworkError(
                f"cannot connect to {self.address}: connection refused (is the server running?)"
            ) from None
        except TimeoutError:
            raise NetworkError(
                f"cannot connect to {self.address}: no answer within {self.timeout:g} s"
            ) from None
        except OSError as exc:
            raise NetworkError(f"cannot connect to {self.address}: {exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._watch = ReadingWatch(sock)
        self.connections_opened += 1
        log.debug("connected to %s", self.address)
        return sock

    def reset(self) -> None:
        """Close the connection; the next request opens a fresh one."""
        if self._sock is not None:
            log.debug("closing the connection to %s", self.address)
            self._sock.close()
        self._sock = None
        self._conn = self._new_connection()
        self.first_request = None
        self.requests_on_connection = 0
        self.replies_on_connection = 0
        self._eof = False
        self._first_bytes = b""
        self._closed_between_replies = False
        self._sent_at = None
        self._send_rate = SendRate(self.min_rate, self.timeout)

    def _new_connection(self) -> ClientConnection:
        # An answer of the other 1025-series edition: a 2023C client reads it
        # whole, a 2024A client its header alone, and each asks again
        # (docs/EDITIONS.md, "Telling the editions apart").
        return ClientConnection(
            self.edition,
            skip_unknown=self.edition is EDITION_2023C,
            header_only_unknown=self.edition is EDITION_2024A,
        )

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info) -> None:
        self.reset()

    # -- requests and replies --------------------------------------------------

    def describe(self, event: object) -> str:
        """:func:`describe` with the codes of this session's edition."""
        return describe(event, self.edition)

    def send_more(self, content: BytesLike) -> None:
        """More content of the request just sent (a file sent whole, in pieces).

        Raises:
            NetworkError: the connection broke.
        """
        self._send_bytes(b"", content)
        self._sent_at = time.monotonic()

    def send(self, request, *, content_length: int | None = None) -> None:
        """Send one whole request in a single write.

        Raises:
            NetworkError: cannot connect, or the connection broke.
        """
        head, content = self._conn.send_parts(request, content_length=content_length)
        if self.per_request and self.first_request is not None:
            self.reset()
        self.requests_on_connection += 1
        if self._sock is None:
            self._sock = self._connect()
        if self.first_request is None:
            self.first_request = request.code
        if _worth_logging(request):
            log.debug("-> %s (%d bytes)", self.describe(request), len(head) + len(content))
        if self.whole_requests:
            self._await_room(len(head) + len(content))
        self._send_bytes(head, content)
        self._sent_at = time.monotonic()

    def _await_room(self, size: int) -> None:
        """Wait until the server's window can take ``size`` bytes at once,
        watching its reading as a send does (``watch_reading``).

        Raises:
            NetworkError: it could not within the time-out, or the server
                stopped reading (``timed_out``).
        """
        if self._sock is None or self._watch is None:
            return
        stall = self._stall_clock()
        started = time.monotonic()
        next_look = started + stall.probe
        while not self._watch.has_room(self._sock, size):
            now = time.monotonic()
            if now - started >= self.timeout:
                raise NetworkError(
                    f"the server stopped reading: the window of {self.address} had no room"
                    f" for a request of {size} bytes for {self.timeout:g} s",
                    timed_out=True,
                )
            if self.watch_reading and now >= next_look:
                self._check_reading(stall, now, waiting=size)
                next_look = now + stall.probe
            time.sleep(ROOM_POLL)

    def _send_bytes(self, head: bytes, content: BytesLike) -> None:
        """Head and content in one gathered write (no copy of the content).

        Each wait ends within the time-out and at the end of the send rate's
        window, which is then weighed (client/send_rate.py).
        """
        sock = self._sock
        if sock is None:
            raise NetworkError(f"not connected to {self.address}")
        parts = [memoryview(head)] + ([memoryview(content).cast("B")] if len(content) else [])
        parts = [part for part in parts if len(part)]
        progress = time.monotonic()
        stall = self._stall_clock()
        self._send_rate.begin(progress)
        try:
            while parts:
                now = time.monotonic()
                self._weigh_send_rate(0, now)
                wait = stall.probe if self.watch_reading else self.timeout
                sock.settimeout(min(wait, self._send_rate.time_left(now)))
                try:
                    sent = sock.sendmsg(parts)
                except TimeoutError:
                    now = time.monotonic()
                    if now - progress >= self.timeout:
                        raise NetworkError(
                            f"the server stopped reading: a send to {self.address} made no"
                            f" progress for {self.timeout:g} s",
                            timed_out=True,
                        ) from None
                    if self.watch_reading:
                        self._check_reading(stall, now)
                    continue
                progress = time.monotonic()
                if self._watch is not None:
                    self._watch.sent += sent
                stall.look(False, progress)
                self._weigh_send_rate(sent, progress)
                while parts and sent >= len(parts[0]):
                    sent -= len(parts[0])
                    parts.pop(0)
                if parts:
                    parts[0] = parts[0][sent:]
        except OSError as exc:
            raise NetworkError(
                f"the connection to {self.address} broke while sending: {exc.strerror or exc}",
                closed=True,
            ) from None
        finally:
            self._send_rate.end(time.monotonic())
            if self._sock is not None:
                self._sock.settimeout(self.timeout)

    def _weigh_send_rate(self, sent: int, now: float) -> None:
        """Count ``sent`` bytes in the send rate's window, and weigh it if it is over.

        Raises:
            NetworkError: the window fell under ``min_rate`` (``timed_out``).
        """
        rate = self._send_rate.sent(sent, now)
        if rate is not None:
            raise NetworkError(
                f"the server at {self.address} reads too slowly: {rate:.0f} bytes/s over"
                f" {self.timeout:g} s of sending, under the floor of {self.min_rate:g}"
                " bytes/s (--min-rate)",
                timed_out=True,
                too_slow=True,
            )

    def _stall_clock(self) -> StallClock:
        """A clock for one send or wait, its hold scaled from the server's answers."""
        return StallClock(evidence_hold(self.slowest_answer))

    def _check_reading(self, stall: StallClock, now: float, waiting: int = 0) -> None:
        """One look at whether the server stopped reading (``waiting``: bytes
        held back until its window can take them, ReadingWatch.stopped_reading).

        Raises:
            NetworkError: it has shown it for the clock's hold (``timed_out``).
        """
        if self._sock is None or self._watch is None:
            return
        if self._watch.has_read(self._sock):
            return  # it took the layout: a stop now is it holding back (client/stall.py)
        if stall.look(self._watch.stopped_reading(self._sock, waiting), now):
            slowest = self.slowest_answer
            pace = (
                f"its slowest answer took {slowest * 1000:.0f} ms"
                if slowest is not None
                else "it has not answered yet"
            )
            raise NetworkError(
                f"the server at {self.address} stopped reading: bytes it received stay"
                f" unread for {stall.hold:.2g} s ({pace})",
                timed_out=True,
            )

    def _wait_readable(self, deadline: float, stall: StallClock) -> None:
        """Wait until the reply is readable or the deadline, watching the server's reading."""
        while self._sock is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            readable, _, _ = select.select([self._sock], [], [], min(left, stall.probe))
            if readable:
                return
            self._check_reading(stall, time.monotonic())

    def receive(self, timeout: float | None = None):
        """Wait for the next whole response and return its event.

        The whole response must arrive within ``timeout`` seconds (the
        session's time-out otherwise): one deadline per answer, however the
        server spreads its bytes.

        Raises:
            NetworkError: the server closed the connection or did not answer
                within the time-out.
            MalformedReply: the server sent something docs/PROTOCOL.md forbids.
        """
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        stall = self._stall_clock()
        try:
            while True:
                event = self._next_event()
                if event is not NEED_DATA:
                    return event
                if self.watch_reading:
                    self._wait_readable(deadline, stall)
                self._recv(deadline, wait)
        finally:
            if self._sock is not None:
                self._sock.settimeout(self.timeout)

    def answer_or_close(self):
        """The answer to the request just sent, or None if the server closed
        the connection without one (as it does after a non-final 828 or a 901
        on a per-request connection, docs/PROTOCOL.md variant 7).

        Raises:
            NetworkError: no answer and no close within the time-out, or the
                connection broke in the middle of an answer.
            MalformedReply: as :meth:`receive`.
        """
        try:
            return self.receive()
        except NetworkError:
            if self._closed_between_replies:
                return None
            raise

    def poll(self):
        """A response that has already arrived, or None, without waiting.

        Raises:
            NetworkError, MalformedReply: as :meth:`receive`.
        """
        event = self._next_event()
        if event is NEED_DATA and self._readable():
            self._recv()
            event = self._next_event()
        return None if event is NEED_DATA else event

    def request(self, request):
        """Send a request and wait for its response.

        Raises:
            NetworkError, MalformedReply: as :meth:`send` and :meth:`receive`.
        """
        self.send(request)
        return self.receive()

    def _readable(self) -> bool:
        if self._sock is None:
            return False
        readable, _, _ = select.select([self._sock], [], [], _NO_WAIT)
        return bool(readable)

    def _recv(self, deadline: float | None = None, wait: float | None = None) -> None:
        """One ``recv``; with a ``deadline`` (of ``time.monotonic``), ended by it."""
        if self._sock is None:
            raise NetworkError(f"not connected to {self.address}")
        try:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self._sock.settimeout(left)
            data = self._sock.recv(RECV_SIZE)
        except TimeoutError:
            waited = self.timeout if wait is None else wait
            silent = self.replies_on_connection == 0 and not self._first_bytes
            hint = f" ({foreign.SILENCE_HINT})" if silent else ""
            # Part of an answer came (a server that trickles it): say so.
            verb = "did not finish its answer" if self._conn.in_message else "did not answer"
            raise NetworkError(
                f"the server at {self.address} {verb} within {waited:g} s{hint}",
                timed_out=True,
            ) from None
        except OSError as exc:
            raise NetworkError(
                f"the connection to {self.address} broke: {exc.strerror or exc}", closed=True
            ) from None
        self._eof = not data
        if self.replies_on_connection == 0 and len(self._first_bytes) < foreign.TELLING_SIZE:
            self._check_first_bytes(data)
        self._conn.receive_data(data)

    def _check_first_bytes(self, data: bytes) -> None:
        """Stop at once when a connection's first bytes are another protocol's.

        Raises:
            NotAServer: they are (client/foreign.py).
        """
        self._first_bytes = (self._first_bytes + data)[: foreign.TELLING_SIZE]
        verdict = foreign.recognise(self._first_bytes)
        if verdict is not None:
            raise NotAServer(f"{self.address} is not a cipherdrop server ({verdict})")

    @property
    def reply_carried_id(self) -> bool:
        """Whether the last reply carried its client id (some 1604s and 1606s come empty)."""
        return self._conn.reply_carried_id

    def _next_event(self):
        try:
            event = self._conn.next_event()
        except RemoteProtocolError as exc:
            if self._eof:
                raise NetworkError(
                    f"the server at {self.address} closed the connection in the middle of a reply",
                    closed=True,
                ) from None
            raise MalformedReply(f"malformed reply: {exc}") from None
        if isinstance(event, ConnectionClosed):
            self._closed_between_replies = True
            raise NetworkError(f"the server at {self.address} closed the connection", closed=True)
        if event is not NEED_DATA:
            self.replies_on_connection += 1
            took = self._time_answer()
            after = f" (after {took * 1000:.0f} ms)" if took is not None else ""
            log.debug("<- %s%s", self.describe(event), after)
        return event

    def _time_answer(self) -> float | None:
        """Count the reply that ended the wait for the request last sent in
        ``slowest_answer``; the seconds it took (None: a second reply to it)."""
        if self._sent_at is None:
            return None
        took, self._sent_at = time.monotonic() - self._sent_at, None
        if self.slowest_answer is None or took > self.slowest_answer:
            self.slowest_answer = took
        return took
