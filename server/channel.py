"""One connection: a non-blocking socket, a ServerConnection, an out buffer.

The loop calls :meth:`Channel.on_readable` / :meth:`Channel.on_writable`; the
channel feeds what it read to the decoder, drains every complete event, hands
requests to the handlers and queues the responses. Responses are written on
EVENT_WRITE, which is registered only while some are pending; while more than
``max_outgoing`` bytes wait, the channel neither reads nor decodes (a peer that
does not read cannot make the server buffer without bound).

A turn handles at most ``MAX_REQUESTS_PER_TURN`` requests: a peer that
pipelines cheap requests cannot hold the loop while others wait. What is left
stays in the decoder's buffer, the channel stops reading and tells the loop
(``on_backlog``), which resumes it next round (:meth:`Channel.resume`).

Refused requests (1607, and the answers handlers mark ``Outcome.refused``)
count toward ``max_errors`` and do not reset the idle timer: only a request
that succeeds keeps a connection alive.

This is the per-connection boundary of STYLE.md: protocol errors become 1607
(or 1601) here, server faults become 1607, and any other exception is logged
with its traceback, answered 1607 where possible and closes this connection
only.

Connection model (PROTOCOL.md variant 7): a connection whose first request is
an 828 or a 900–902 is *per-request*: a request that gets no reply (a
non-final 828, a 901) closes it. On a one-connection client a 901 arms a
timer: 1604 if no 828 starts within ``retry_ack_delay`` (variant 8).
"""

from __future__ import annotations

import enum
import logging
import selectors
import socket
import sqlite3
from typing import Callable

from protocol import (
    NEED_DATA,
    ConnectionClosed,
    FileContent,
    FilePacketEnded,
    FilePacketStarted,
    GeneralError,
    RegistrationFailed,
    RemoteProtocolError,
    RequestCode,
    ResponseCode,
    ServerConnection,
)
from protocol.codes import MAX_UINT32, PER_REQUEST_OPENERS
from protocol.events import Response
from protocol.upload import MAX_ZERO_FILL
from protocol.wire import FILE_PACKET_FIELDS_SIZE, REQUEST_HEADER_SIZE, REQUEST_PAYLOAD_SIZES

from . import crashpoints
from .app import App, Peer
from .handlers import HANDLERS, FilePacket, Outcome
from .storage.files import StorageError
from .timers import Timer

log = logging.getLogger(__name__)

#: After the last response, how long a closing connection's input is read and
#: dropped so that the close does not reset the response away (lingering close).
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 1024 * 1024
#: Requests handled per connection per loop turn; the rest waits one round.
#: Another client waits for every pipelining peer's turn: a few cheap
#: requests each keeps it within the fairness target (bench/fairness.py,
#: tests/hostile/test_f_review.py); a big 828 is still one recv per turn.
MAX_REQUESTS_PER_TURN = 4
_MS = 1000.0


class _State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    LINGER = "linger"
    CLOSED = "closed"


def _error_response(code: ResponseCode) -> Response:
    return RegistrationFailed() if code is ResponseCode.REGISTRATION_FAILED else GeneralError()


class Channel:
    """One client connection in the loop."""

    def __init__(
        self,
        sock: socket.socket,
        peer: Peer,
        app: App,
        selector: selectors.BaseSelector,
        recv_buffer: memoryview,
        on_closed: Callable[[Channel], None],
        on_backlog: Callable[[Channel], None] | None = None,
    ) -> None:
        self.sock = sock
        self.peer = peer
        self._app = app
        self._limits = app.limits
        self._selector = selector
        self._recv_buffer = recv_buffer
        self._on_closed = on_closed
        # Without a loop to resume it (a test harness), a channel drains all at once.
        self._on_backlog = on_backlog
        self._turn_budget = MAX_REQUESTS_PER_TURN if on_backlog else MAX_UINT32
        self._turn_requests = 0
        self._backlogged = False
        self._conn = ServerConnection(
            max_discard_size=self._limits.max_skip_payload,
            max_packet_content=min(MAX_UINT32, self._limits.max_content_size + MAX_ZERO_FILL),
        )
        self._out = bytearray()
        self._state = _State.OPEN
        self._events = selectors.EVENT_READ
        self._per_request: bool | None = None
        self._errors = 0
        self._packet: FilePacket | None = None
        self._deferred: tuple[Timer, Response, str] | None = None
        self._eof = False
        now = app.monotonic()
        self._opened = now
        self._last_boundary = now
        self._last_recv = now
        self._last_write = now
        self._message_start: float | None = None
        self._message_content = 0
        self._seen_request = False
        self._request_t0 = now
        self._request_size = 0
        self._linger_until = 0.0
        self._linger_dropped = 0
        self._close_reason = ""
        self._timed_out = False
        self.bytes_in = 0
        self.bytes_out = 0
        self._timer: Timer | None = None
        selector.register(sock, self._events, self)
        self._arm_timer()

    @property
    def is_open(self) -> bool:
        """Whether the connection still reads requests."""
        return self._state is _State.OPEN

    @property
    def closed(self) -> bool:
        """Whether the socket is closed."""
        return self._state is _State.CLOSED

    @property
    def silent(self) -> bool:
        """The peer sent nothing and left (a port scan, a health check, a storm).

        Such a close is logged at DEBUG only; the loop counts them in a
        periodic summary. A silent connection we time out is logged as usual.
        """
        return self.bytes_in == 0 and not self._timed_out

    # -- loop entry points ----------------------------------------------------

    def on_readable(self) -> None:
        """The socket has data (or EOF)."""
        self._guard(self._read)

    def on_writable(self) -> None:
        """The socket accepts data."""
        self._guard(self._write)

    def resume(self) -> None:
        """A new turn for the requests already buffered (after ``on_backlog``)."""
        self._backlogged = False
        if self._state is _State.OPEN:
            self._guard(self._process)

    def close(self, reason: str) -> None:
        """Close now: no flush, no linger. Idempotent; never raises."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        self._close_reason = self._close_reason or reason
        if self._timer is not None:
            self._timer.cancel()
        self._cancel_deferred()
        self._packet = None
        try:
            self._selector.unregister(self.sock)
        except (KeyError, ValueError, OSError):
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        try:
            self._app.uploads.channel_closed(self)
            self._app.connection_closed(self.peer)
        finally:
            elapsed = self._app.monotonic() - self._opened
            log.log(
                logging.DEBUG if self.silent else logging.INFO,
                "%s closed: %s (in %d B, out %d B, %.3f s)",
                self.peer, self._close_reason, self.bytes_in, self.bytes_out, elapsed,
            )
            self._on_closed(self)

    # -- reading ----------------------------------------------------------------

    def _read(self) -> None:
        if self._state is _State.LINGER:
            self._linger_read()
            return
        if self._state is not _State.OPEN or self._backlogged:
            return  # a backlog is handled first (resume), then the socket is read
        try:
            count = self.sock.recv_into(self._recv_buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close(f"receive failed: {exc.strerror or exc}")
            return
        now = self._app.monotonic()
        self._last_recv = now
        if count:
            self.bytes_in += count
            self._conn.receive_data(self._recv_buffer[:count])
        else:
            self._eof = True
            self._conn.receive_data(b"")
        self._process()

    def _process(self) -> None:
        """Handle complete events: one turn's worth, while the out buffer has room."""
        self._turn_requests = 0
        drained = self._drain()
        self._backlogged = (
            not drained
            and self._state is _State.OPEN
            and self._turn_requests >= self._turn_budget
            and len(self._out) < self._limits.max_outgoing
        )
        if (drained or self._backlogged) and self._out:
            # Every request handled is answered: send the replies at once, in
            # one write, rather than a select() round later (the peer works
            # meanwhile). Not when paused by max_outgoing: then requests are
            # still buffered, and EVENT_WRITE resumes them before any read.
            self._send_pending()
        if self._backlogged and self._state is _State.OPEN:
            self._on_backlog(self)
        self._update_interest()
        self._arm_timer()

    def _drain(self) -> bool:
        """Next events until NEED_DATA (True), the turn's end or a pause."""
        while (
            self._state is _State.OPEN
            and len(self._out) < self._limits.max_outgoing
            and self._turn_requests < self._turn_budget
        ):
            try:
                event = self._conn.next_event()
            except RemoteProtocolError as exc:
                self._on_broken_stream(exc)
                continue
            if event is NEED_DATA:
                if self._conn.in_message and self._message_start is None:
                    self._message_start = self._last_recv
                return True
            if isinstance(event, ConnectionClosed):
                self._on_peer_closed()
                return False
            self._dispatch(event)
        return False

    def _on_broken_stream(self, exc: RemoteProtocolError) -> None:
        """The decoder refused the stream (bad header, size, name...)."""
        self._end_message(succeeded=False)
        if self._packet is not None:
            self._packet = None
            self._app.uploads.channel_closed(self)
        if self._eof and exc.close:
            # The cut message is dropped, but the answers to the complete
            # requests before it are still due: a half-closed peer reads them.
            self._close_after_flush("connection closed in the middle of a message")
            return
        self._refuse(None, "", exc)

    def _message_t0(self) -> float:
        return self._message_start if self._message_start is not None else self._last_recv

    def _dispatch(self, event) -> None:
        code = getattr(event, "code", RequestCode.SEND_FILE)
        client = ""
        if isinstance(event, FilePacketStarted):
            self._request_t0 = self._message_t0()
            self._message_start = self._request_t0
            self._request_size = REQUEST_HEADER_SIZE + FILE_PACKET_FIELDS_SIZE + event.content_length
        elif not isinstance(event, (FileContent, FilePacketEnded)):
            self._request_t0 = self._message_t0()
            self._request_size = REQUEST_HEADER_SIZE + REQUEST_PAYLOAD_SIZES[code]
        try:
            if isinstance(event, FilePacketStarted):
                self._start_packet(event)
            elif isinstance(event, FileContent):
                self._message_content += len(event.data)
                self._packet.feed(event.data)
            elif isinstance(event, FilePacketEnded):
                packet, self._packet = self._packet, None
                client = packet.client
                outcome = packet.end()
                self._finish(code, outcome)
            else:
                client = event.client_id.hex()
                self._start_request(code)
                self._finish(code, HANDLERS[code](self._app, self.peer, event))
        except RemoteProtocolError as exc:
            self._refuse(code, client, exc)
        except (StorageError, sqlite3.Error) as exc:
            log.error("%s %d %s: server fault: %s", self.peer, code, client, exc)
            self._refuse(code, client, RemoteProtocolError("server fault", close=False))
        except Exception:
            log.exception("%s %d %s: unexpected error", self.peer, code, client)
            self._refuse(code, client, RemoteProtocolError("internal error"))

    def _start_request(self, code: RequestCode) -> None:
        if self._per_request is None:
            self._per_request = code in PER_REQUEST_OPENERS
        if code is not RequestCode.SEND_FILE:
            self._flush_deferred()

    def _start_packet(self, event: FilePacketStarted) -> None:
        self._start_request(RequestCode.SEND_FILE)
        self._cancel_deferred()  # variant 8: an 828 started, no 1604
        self._packet = FilePacket(
            self._app,
            self.peer,
            self,
            bool(self._per_request),
            event,
            is_open=lambda channel: getattr(channel, "is_open", False),
        )

    def _finish(self, code: RequestCode, outcome: Outcome) -> None:
        """Send what a request led to and apply the connection model."""
        self._end_message(succeeded=not outcome.refused)
        if outcome.response is not None:
            self._send(outcome.response)
            result = str(outcome.response.code.value)
        elif outcome.deferred is not None and not self._per_request:
            timer = self._app.timers.call_later(
                self._limits.retry_ack_delay, lambda: self._guard(self._deferred_due)
            )
            self._deferred = (timer, outcome.deferred, outcome.client)
            result = "(deferred)"
        else:
            result = "(no reply)"
        level = logging.INFO if outcome.final else logging.DEBUG
        self._log_request(level, code, outcome.client, result, outcome.detail)
        if outcome.response is None and self._per_request:
            self._close_after_flush("per-request connection, request without reply")
        elif outcome.refused:
            self._count_error(close=False)

    def _refuse(self, code: RequestCode | None, client: str, exc: RemoteProtocolError) -> None:
        """Answer 1607 (or 1601); close if the stream is lost or errors pile up."""
        if code is None:
            self._request_t0, self._request_size = self._message_t0(), 0
        self._end_message(succeeded=False)
        response = _error_response(exc.response_code)
        self._send(response)
        self._log_request(
            logging.INFO, code, client, f"{response.code.value} refused", str(exc)
        )
        self._count_error(close=exc.close)

    def _count_error(self, close: bool) -> None:
        """One more refusal: close if the stream is lost or errors pile up."""
        self._errors += 1
        if close:
            self._close_after_flush("protocol error")
        elif self._errors >= self._limits.max_errors:
            self._close_after_flush(f"{self._errors} errors")

    def _end_message(self, succeeded: bool) -> None:
        """A request is over; only one that succeeded restarts the idle timer."""
        self._message_start = None
        self._message_content = 0
        self._seen_request = True
        self._turn_requests += 1
        if succeeded:
            self._last_boundary = self._app.monotonic()

    def _log_request(self, level: int, code, client: str, result: str, detail: str) -> None:
        if not log.isEnabledFor(level):
            return
        elapsed = (self._app.monotonic() - self._request_t0) * _MS
        log.log(
            level,
            "%s %s %s -> %s (in %d B, %.1f ms)%s",
            self.peer,
            code.value if code is not None else "-",
            client or "-",
            result,
            self._request_size,
            elapsed,
            f": {detail}" if detail else "",
        )

    def _on_peer_closed(self) -> None:
        self._flush_deferred()
        if self._out:
            self._close_after_flush("peer closed")
        else:
            self.close("peer closed")

    # -- variant 8 ----------------------------------------------------------------

    def _deferred_due(self) -> None:
        if self._deferred is None or self._state is not _State.OPEN:
            return
        _, response, client = self._deferred
        self._deferred = None
        self._send(response)
        log.info("%s 901 %s -> %d (no 828 within %.1f s)", self.peer, client,
                 response.code.value, self._limits.retry_ack_delay)
        self._update_interest()

    def _flush_deferred(self) -> None:
        if self._deferred is not None:
            timer, response, _ = self._deferred
            timer.cancel()
            self._deferred = None
            self._send(response)

    def _cancel_deferred(self) -> None:
        if self._deferred is not None:
            self._deferred[0].cancel()
            self._deferred = None

    # -- writing ----------------------------------------------------------------

    def _send(self, response: Response) -> None:
        data = self._conn.send(response)
        self._out += data
        self.bytes_out += len(data)
        crashpoints.reached("response.queued")
        self._update_interest()

    def _send_pending(self) -> bool:
        """Send what the socket takes now; False if that failed (then closed)."""
        try:
            sent = self.sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as exc:
            self.close(f"send failed: {exc.strerror or exc}")
            return False
        del self._out[:sent]
        crashpoints.reached("response.sent")
        self._last_write = self._app.monotonic()
        return True

    def _write(self) -> None:
        if not self._out or self._state is _State.CLOSED:
            return
        if not self._send_pending():
            return
        if not self._out and self._state is _State.CLOSING:
            self._start_linger()
            return
        if (
            self._state is _State.OPEN
            and not self._backlogged  # the loop resumes it this round
            and len(self._out) < self._limits.max_outgoing
        ):
            self._process()  # resumes a paused peer; a no-op otherwise
        else:
            self._update_interest()
            self._arm_timer()

    # -- closing ----------------------------------------------------------------

    def _close_after_flush(self, reason: str) -> None:
        if self._state is not _State.OPEN:
            return
        self._close_reason = reason
        self._state = _State.CLOSING
        self._cancel_deferred()
        self._app.uploads.channel_closed(self)
        if not self._out:
            self._start_linger()
        else:
            self._update_interest()
            self._arm_timer()

    def _start_linger(self) -> None:
        if self._eof:
            self.close(self._close_reason)
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close(self._close_reason)
            return
        self._state = _State.LINGER
        self._linger_until = self._app.monotonic() + LINGER_SECONDS
        self._update_interest()
        self._arm_timer()

    def _linger_read(self) -> None:
        try:
            count = self.sock.recv_into(self._recv_buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            count = 0
        self._linger_dropped += count
        if not count or self._linger_dropped > LINGER_MAX_BYTES:
            self.close(self._close_reason)

    # -- selector interest and deadlines -----------------------------------------

    def _update_interest(self) -> None:
        if self._state is _State.CLOSED:
            return
        events = 0
        if self._state is _State.LINGER or (
            self._state is _State.OPEN
            and not self._backlogged
            and len(self._out) < self._limits.max_outgoing
        ):
            events |= selectors.EVENT_READ
        if self._out:
            events |= selectors.EVENT_WRITE
        if events and events != self._events:
            self._selector.modify(self.sock, events, self)
            self._events = events

    def _deadline(self) -> tuple[float, str]:
        limits = self._limits
        if self._state is _State.LINGER:
            return self._linger_until, "linger over"
        between_messages = self._message_start is None and self._packet is None
        if self._out and (
            self._state is _State.CLOSING
            or len(self._out) >= limits.max_outgoing
            or between_messages  # every request answered, the answers stuck
        ):
            return self._last_write + limits.idle_timeout, "peer does not read"
        if self._message_start is not None or self._packet is not None:
            start = self._message_start if self._message_start is not None else self._last_recv
            deadline = start + limits.message_deadline
            if self._message_content:
                deadline = min(
                    deadline + self._message_content / limits.min_content_rate,
                    self._last_recv + limits.message_deadline,
                )
            return deadline, "message not completed in time"
        if self._seen_request:
            return self._last_boundary + limits.idle_timeout, "idle"
        return self._opened + limits.message_deadline, "no request"

    def _arm_timer(self) -> None:
        if self._state is _State.CLOSED:
            return
        deadline, _ = self._deadline()
        if self._timer is None or self._timer.cancelled or deadline < self._timer.when:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._app.timers.call_at(deadline, lambda: self._guard(self._on_timer))

    def _on_timer(self) -> None:
        self._timer = None
        deadline, why = self._deadline()
        if self._app.monotonic() >= deadline:
            if self._state is _State.LINGER:
                self.close(self._close_reason)
            else:
                self._close_reason = ""
                self._timed_out = True
                self.close(f"timed out: {why}")
            return
        self._arm_timer()

    # -- the boundary -------------------------------------------------------------

    def _guard(self, action: Callable[[], None]) -> None:
        """Run an action; an unexpected error closes this connection only."""
        try:
            action()
        except Exception:
            log.exception("%s: unexpected error; closing the connection", self.peer)
            self.close("internal error")
