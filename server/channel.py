"""One connection's transport: a non-blocking socket, an out buffer, a close.

A :class:`Channel` moves bytes between its socket and its
:class:`~server.session.Session`, which decides everything about requests and
answers. The channel owns what only a transport knows: the selector interest
(EVENT_WRITE only while answers wait; no reading while more than
``max_outgoing`` bytes wait, so a peer that does not read cannot make the
server buffer without bound), turns (at most ``MAX_REQUESTS_PER_TURN``
requests, then it asks for another turn: a pipelining peer cannot hold the
loop), the lingering close after the session's close verdict (send what is
queued, shut the write side, read and drop the input for a while so the
close does not reset the answers away), and one timer.

It knows nothing of rounds or stores. What it needs from the loop that runs
it goes through one :class:`LoopPort`: whether it may take another request
now (the loop's per-address shares of a round; when it may not, the loop
*defers* it: neither read nor stepped until the loop resumes it), a turn
for the requests it still buffers, and the end of its answers' wait. Every
answer waits for the loop: the channel reports it holds answers
(:meth:`LoopPort.hold_answers`), and the loop, once the round's work is
durable (group commit, :meth:`server.loop.Server.run_once`), releases the
session's held answers and calls :meth:`Channel.send_answers`.

It catches no broad exception: an error in any entry point reaches the
loop's per-connection edge (:meth:`LoopPort.serve`), which calls
:meth:`Channel.fail`.
"""

from __future__ import annotations

import enum
import logging
import selectors
import socket
from typing import Callable, Protocol

from . import crashpoints
from .peer import Peer
from .session import Session, Step
from .timers import Timer, Timers

log = logging.getLogger(__name__)

#: After the last response, how long a closing connection's input is read and
#: dropped so that the close does not reset the response away (lingering close).
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 1024 * 1024
#: Requests stepped per connection per loop turn; the rest waits one round.
#: Another client waits for every pipelining peer's turn: a few cheap
#: requests each keeps it within the fairness target (docs/ARCHITECTURE.md);
#: a big 828 is still one receive per turn.
MAX_REQUESTS_PER_TURN = 4


class LoopPort(Protocol):
    """What a channel needs from the loop that runs it (:class:`server.loop.Server`)."""

    def serve(self, channel: Channel, action: Callable[[], None]) -> None:
        """Run one of the channel's entry points at the loop's per-connection edge."""

    def may_take_request(self, channel: Channel) -> bool:
        """Whether the channel may have another request handled now."""

    def request_taken(self, channel: Channel) -> None:
        """The channel had a request handled."""

    def hold_answers(self, channel: Channel) -> None:
        """The channel has answers to send once what they report is durable.

        At the round's end the loop releases the session's held answers
        (:meth:`Session.release`), then calls :meth:`Channel.send_answers`.
        """

    def wants_turn(self, channel: Channel) -> None:
        """The channel's turn ended with requests still buffered: resume it next round."""

    def defer(self, channel: Channel) -> bool:
        """The channel may take no request now: resume it first in a later round.

        Returns whether that is the next round; False: it is *parked* until
        what it waits for is done (its blob caught up), and its socket leaves
        the selector meanwhile (:meth:`Channel.resume` puts it back).
        """

    def channel_closed(self, channel: Channel) -> None:
        """The channel closed (its socket unregistered): forget it."""


class _State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    LINGER = "linger"
    CLOSED = "closed"


class Channel:
    """One client connection in the loop: the transport beside its session."""

    def __init__(
        self,
        sock: socket.socket,
        session: Session,
        selector: selectors.BaseSelector,
        recv_buffer: memoryview,
        timers: Timers,
        port: LoopPort,
    ) -> None:
        self.sock = sock
        self.session = session
        self._limits = session.app.limits
        self._clock = timers.clock
        self._selector = selector
        self._recv_buffer = recv_buffer
        #: How many bytes the next receive may take (the loop sets it per round).
        self.turn_size = len(recv_buffer)
        self._timers = timers
        self._port = port
        #: Deferred before its socket was read: its resume reads first.
        self._unread = False
        #: Answers wait in ``_out`` (and in the session) until the loop sends them.
        self._answers_held = False
        self._turn_requests = 0
        self._backlogged = False
        #: Deferred beyond the next round (:meth:`LoopPort.defer`): out of the selector.
        self._parked = False
        self._out = bytearray()
        self._state = _State.OPEN
        self._eof = False
        now = self._clock()
        self._opened = now
        self._last_write = now
        self._linger_until = 0.0
        self._linger_dropped = 0
        self._close_reason = ""
        self._timed_out = False
        self.bytes_in = 0
        self.bytes_out = 0
        self._timer: Timer | None = None
        self._interest = selectors.EVENT_READ
        selector.register(sock, self._interest, self)
        self._arm_timer()

    @property
    def peer(self) -> Peer:
        """The connection's remote end."""
        return self.session.peer

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

    @property
    def idle(self) -> bool:
        """Open, between messages, every answer sent: closing it now cuts nothing."""
        return (
            self._state is _State.OPEN
            and not self._out
            and not self.session.holds_answers
            and self.session.between_messages
        )

    # -- loop entry points ----------------------------------------------------

    def on_readable(self) -> None:
        """The socket has data (or EOF)."""
        if self._state is _State.LINGER:
            self._linger_read()
            return
        if self._state is not _State.OPEN or self._backlogged:
            return  # a backlog is handled first (resume), then the socket is read
        if not self._port.may_take_request(self):
            self._defer(unread=True)
            return
        try:
            count = self.sock.recv_into(self._recv_buffer, self.turn_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close(f"receive failed: {exc.strerror or exc}")
            return
        if not count:
            self._eof = True
            self.session.receive_data(b"")
            self._process()
            return
        self.bytes_in += count
        # The loop's one receive buffer is lent: what this turn leaves unread
        # is copied before another connection's receive reuses it.
        self.session.receive_data(self._recv_buffer[:count], lent=True)
        try:
            self._process()
        finally:
            self.session.keep_unread()

    def on_writable(self) -> None:
        """The socket accepts data."""
        if self._answers_held:
            return  # the loop sends them (send_answers)
        self._write(resume=True)

    def send_answers(self) -> None:
        """What the answers report is durable, and the loop released the session's
        held answers (:meth:`Session.release`): send them."""
        self._take_output()
        self._answers_held = False
        self._write(resume=len(self._out) >= self._limits.max_outgoing)

    def _write(self, resume: bool) -> None:
        """Send what the socket takes; then linger, resume a paused peer, or settle."""
        if not self._out or self._state is _State.CLOSED:
            return
        if not self._send_pending():
            return
        if not self._out and self._state is _State.CLOSING:
            self._start_linger()
        elif (
            resume
            and self._state is _State.OPEN
            and not self._backlogged  # the loop resumes it this round
            and len(self._out) < self._limits.max_outgoing
        ):
            self._process()  # resumes a paused peer; a no-op otherwise
        else:
            self._settle()

    def resume(self) -> None:
        """A new turn for the requests already buffered (after ``wants_turn`` or ``defer``)."""
        self._backlogged = False
        self._parked = False
        if self._state is not _State.OPEN:
            return
        if self._unread:
            self._unread = False
            self.on_readable()
            self._settle()
        else:
            self._process()

    def fail(self) -> None:
        """An unexpected error reached the loop's edge: answer 1607 if we can, close.

        Called by the loop while it handles the error. Never raises on purpose.
        """
        if self._state is not _State.OPEN:
            log.exception("%s: unexpected error while closing", self.peer)
            self.close("internal error")
            return
        self.session.fail()
        self._take_output()
        self._close_after_flush("internal error")
        self._settle()

    def close(self, reason: str) -> None:
        """Close now: no flush, no linger. Idempotent."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        self._close_reason = self._close_reason or reason
        if self._timer is not None:
            self._timer.cancel()
        try:
            self._selector.unregister(self.sock)
        except (KeyError, ValueError, OSError):
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        try:
            self.session.connection_lost()
        finally:
            level = logging.DEBUG if self.silent else logging.INFO
            level = self.session.app.log_limiter.level(log, self.peer.group, level)
            if log.isEnabledFor(level):
                log.log(
                    level,
                    "%s %s closed: %s (in %d B, out %d B, %.3f s)",
                    self.peer, self.session.client, self._close_reason, self.bytes_in,
                    self.bytes_out,
                    self._clock() - self._opened,
                )
            self._port.channel_closed(self)

    # -- stepping the session ----------------------------------------------------

    def _process(self) -> None:
        """Step the session: one turn's worth, while the out buffer has room."""
        self._turn_requests = 0
        if not self._port.may_take_request(self):
            self._defer(unread=False)
            return
        drained = self._step()
        self._backlogged = (
            not drained
            and self._state is _State.OPEN
            and len(self._out) < self._limits.max_outgoing  # else paused, not backlogged
        )
        if self._backlogged:
            self._port.wants_turn(self)
        self._settle()

    def _defer(self, *, unread: bool) -> None:
        """It may take no request now: wait for the loop to resume it."""
        self._unread = self._unread or unread
        self._backlogged = True
        self._parked = not self._port.defer(self)
        self._settle()

    def _step(self) -> bool:
        """Step the session until it needs data (True), or the turn ends, or it must wait.

        It waits when the port says so, or when ``max_outgoing`` bytes wait
        to be sent (a pause).
        """
        while (
            self._state is _State.OPEN
            and len(self._out) < self._limits.max_outgoing
            and self._turn_requests < MAX_REQUESTS_PER_TURN
            and self._port.may_take_request(self)
        ):
            step = self.session.next_step()
            self._take_output()
            if step is Step.NEED_DATA:
                return True
            if step is Step.REQUEST:
                self._turn_requests += 1
                self._port.request_taken(self)
            elif step is Step.CLOSE:
                verdict = self.session.verdict
                self._close_after_flush(verdict.reason if verdict else "closed")
        return False

    def _take_output(self) -> None:
        data = self.session.data_to_send()
        if data:
            self._out += data
        if (data or self.session.holds_answers) and not self._answers_held:
            self._answers_held = True  # until the loop sends them
            self._port.hold_answers(self)

    # -- writing ----------------------------------------------------------------

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
        self.bytes_out += sent
        crashpoints.reached("response.sent")
        self._last_write = self._clock()
        return True

    # -- closing ----------------------------------------------------------------

    def _close_after_flush(self, reason: str) -> None:
        if self._state is not _State.OPEN:
            return
        self._close_reason = reason
        self._state = _State.CLOSING
        if not self._out and not self.session.holds_answers:
            self._start_linger()

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
        self._linger_until = self._clock() + LINGER_SECONDS
        self._settle()

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

    # -- selector interest and the timer -------------------------------------------

    def _settle(self) -> None:
        """Match the selector interest and the timer to the state.

        A channel the loop resumes next round keeps its interest while it
        has none (the round after, it has again: no system call for
        nothing); a parked one leaves the selector, so that its socket,
        readable but not read, does not end every select() at once (a
        busy loop, for as long as a slow store's blob is behind).
        """
        if self._state is _State.CLOSED:
            return
        interest = 0
        if self._state is _State.LINGER or (
            self._state is _State.OPEN
            and not self._backlogged
            and len(self._out) < self._limits.max_outgoing
        ):
            interest |= selectors.EVENT_READ
        if self._out and not self._answers_held:  # else the loop sends them
            interest |= selectors.EVENT_WRITE
        if interest != self._interest and (interest or self._parked):
            self._watch(interest)
        self._arm_timer()

    def _watch(self, interest: int) -> None:
        """Set the socket's selector interest; none takes it out of the selector."""
        if not interest:
            self._selector.unregister(self.sock)
        elif not self._interest:
            self._selector.register(self.sock, interest, self)
        else:
            self._selector.modify(self.sock, interest, self)
        self._interest = interest

    def _deadline(self) -> tuple[float, str]:
        """When the connection times out, and why."""
        if self._state is _State.LINGER:
            return self._linger_until, "linger over"
        if self._out and (
            self._state is _State.CLOSING
            or len(self._out) >= self._limits.max_outgoing
            or self.session.between_messages  # every request answered, the answers stuck
        ):
            return self._last_write + self._limits.idle_timeout, "peer does not read"
        return self.session.deadline()

    def _arm_timer(self) -> None:
        if self._state is _State.CLOSED:
            return
        when = self._deadline()[0]
        due = self.session.answer_due
        if due is not None and self._state is _State.OPEN:
            when = min(when, due)
        if self._timer is None or self._timer.cancelled or when < self._timer.when:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._timers.call_at(when, lambda: self._port.serve(self, self._on_timer))

    def _on_timer(self) -> None:
        self._timer = None
        # Deferred before its socket was read: what is due (a held id, a 1604)
        # waits for that read, which may start a request that changes it.
        if self._state is _State.OPEN and not self._unread:
            self.session.on_time()
            self._take_output()
        deadline, why = self._deadline()
        if self._clock() < deadline:
            self._settle()
        elif self._state is _State.LINGER:
            self.close(self._close_reason)
        else:
            self._close_reason = ""
            self._timed_out = True
            self.close(f"timed out: {why}")
