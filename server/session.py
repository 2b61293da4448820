"""One connection's protocol, sans-I/O: bytes in, answers and a close verdict out.

A :class:`Session` holds no socket, selector or descriptor. The transport
(server/channel.py) feeds it what it received (:meth:`Session.receive_data`),
steps it (:meth:`Session.next_step`) while it has room for answers, sends
what :meth:`Session.data_to_send` returns, and closes when
:attr:`Session.verdict` says so. Time is the app's clock: the transport wakes
the session (:meth:`Session.on_time`) when a deferred answer is due
(:attr:`Session.answer_due`) and at its deadline (:meth:`Session.deadline`).

The rules that govern what a connection is owed:

Rule 1. The first request fixes the connection model (docs/PROTOCOL.md,
    variant 7): a connection whose first request is in
    ``PER_REQUEST_OPENERS`` (828, 900–902) is *per-request*: its client
    opens one connection per request and reads one reply from each. Any
    other first request starts a *persistent* connection.

Rule 2. A request the server honours is owed what :data:`OWED` says for
    the request (its event class), whether its handler answered it, and the
    connection model: its answer, nothing, a close, or (901 on a persistent
    connection, variant 8) its answer only if no 828 starts within
    ``retry_ack_delay``. Only an 828 may go unanswered: a packet after which
    more of its file is due, or one of a refused attempt (its 1607 went at
    the refusal); the packet that completes a file is answered (1603).

Rule 3. A refused request is always answered (1607, or 1601 where the
    protocol names it), whatever :data:`OWED` says. It counts toward
    ``max_errors`` and does not restart the idle timer: only a request that
    succeeds keeps a connection alive. A refusal that leaves the byte stream
    untrustworthy (a broken header, an impossible size) closes the
    connection after its answer.

Rule 4. A deferred 1604 (Rule 2) goes out when its delay passes; an 828
    that starts cancels it; any other request, or the peer's close, sends it
    first, so answers stay in order.

Rule 5. Every connection has one deadline at a time: ``message_deadline``
    for a message once its first byte came (extended by the 828 content
    received, at ``min_content_rate``), ``idle_timeout`` between messages,
    and ``message_deadline`` for the first request. The idle time runs from
    the end of the last request that succeeded, and again from the release
    of its held answers: while they wait for the round's commit, the peer
    waits for us, and is not idle. So while the session holds answers (a
    seal, a publish or a blob's removal that the blob port's worker has
    still to do: server/installs.py), the idle deadline is suspended, and
    the wait does not count as the peer's idle time once they go (a
    refusal's too, which restarts nothing: Rule 3); a message begun
    meanwhile still has its ``message_deadline``.

Rule 6. The first request's code names the edition's family
    (docs/EDITIONS.md); answers go out in the edition in use. A client is
    served in the edition it registered with: a request of another edition
    is refused, and one whose bytes leave its family's editions open is
    taken in the recorded one. In the 1025 series a first register that
    succeeds is answered with the 2100 header alone, its id held for
    ``first_register_hold``: a client that sends anything meanwhile read
    only the header, as 2024A clients do with an answer they do not expect,
    and the connection goes on in 2024A (the id is never sent: the stream
    stays aligned); a client that waits is a 2023C client, which gets the
    id when the hold ends, and the connection goes on in 2023C. A refused
    first register is answered in the 2024A form; the same name registered
    again before any other request is then a 2023C client that ignored it.

Rule 7. Nothing is written for a client on behalf of an address that may
    not use its keys (docs/KEY_BINDING.md). Every request that names a
    client (all but a register) is checked once, before anything else:
    the client's binding (server/binding.py) says whether the peer's
    address may act for it. If not, the request is refused (1607, in its
    edition) before anything is written or decrypted, unless it is one its
    handler serves from elsewhere by its own rules (827; 826 to a keyed
    client); such a request records nothing of Rule 6 (the client's
    edition) either. The check and the handler run inside one
    ``app.metadata.request()`` (server/reads.py): the client's row and
    binding are read from the store once for both.

What each request is owed is the table below; what a refusal or a fault is
answered is :meth:`Session._refuse` and :meth:`Session.fail`, the one place
where server errors (server/errors.py) become answers.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, replace
from typing import AbstractSet

from protocol import (
    NEED_DATA,
    ConnectionClosed,
    CrcAbort,
    CrcOk,
    CrcRetry,
    FileContent,
    FilePacketEnded,
    FilePacketStarted,
    GeneralError,
    Reconnect,
    Register,
    Registered,
    RegistrationFailed,
    RemoteProtocolError,
    RequestCode,
    ResponseCode,
    SendFilePacket,
    SendPublicKey,
    ServerConnection,
)
from protocol.codes import MAX_UINT32, PER_REQUEST_OPENERS
from protocol.wire import RESPONSE_HEADER_SIZE
from protocol.editions import EDITION_2023C, EDITION_2024A, EDITIONS, V3, Edition
from protocol.events import Request, Response
from protocol.incoming import MAX_ZERO_FILL
from protocol.proxy_header import PROBE_SIZE, starts_like_proxy_header

from . import crashpoints
from .app import App
from .binding import why_not_bound
from .errors import InternalFault, NoRoom, Refusal, StorageFault
from .handlers import HANDLERS, file_packet_outcome, start_file_packet
from .outcome import InstallTicket, Outcome
from .packets import DroppedPacket, IncomingPacket, Refused
from .peer import Peer, Speaking
from .storage import ClientRow

log = logging.getLogger(__name__)

_MS = 1000.0
#: The deadline of a connection whose only wait is the server's (Rule 5): none.
_NO_DEADLINE = float("inf")
#: The editions served, all on the same port (docs/EDITIONS.md).
SERVED_EDITIONS: tuple[Edition, ...] = EDITIONS


class Model(enum.Enum):
    """How a client uses its connections (Rule 1)."""

    PERSISTENT = "persistent"
    PER_REQUEST = "per-request"


class Action(enum.Enum):
    """What the server does once a request is handled (Rule 2)."""

    SEND = "send its answer"
    SEND_NOTHING = "send nothing"
    CLOSE = "close the connection"
    SEND_UNLESS_FILE_FOLLOWS = "send its answer unless an 828 starts within retry_ack_delay"


_P, _R = Model.PERSISTENT, Model.PER_REQUEST

#: Whether the handler answered the request (:data:`OWED`'s second key).
ANSWERED, UNANSWERED = True, False

#: What a request the server honours is owed, per request (its event class),
#: whether it was answered, and connection model.
OWED: dict[tuple[type[Request], bool], dict[Model, Action]] = {
    (Register, ANSWERED): {_P: Action.SEND, _R: Action.SEND},
    (SendPublicKey, ANSWERED): {_P: Action.SEND, _R: Action.SEND},
    (Reconnect, ANSWERED): {_P: Action.SEND, _R: Action.SEND},
    (SendFilePacket, UNANSWERED): {_P: Action.SEND_NOTHING, _R: Action.CLOSE},
    (SendFilePacket, ANSWERED): {_P: Action.SEND, _R: Action.SEND},
    (CrcOk, ANSWERED): {_P: Action.SEND, _R: Action.SEND},
    (CrcRetry, ANSWERED): {_P: Action.SEND_UNLESS_FILE_FOLLOWS, _R: Action.CLOSE},
    (CrcAbort, ANSWERED): {_P: Action.SEND, _R: Action.SEND},
}


class Step(enum.Enum):
    """What one :meth:`Session.next_step` did."""

    #: Nothing more to do until more bytes arrive.
    NEED_DATA = "need data"
    #: Part of a request (an 828's start or content) was handled.
    PART = "part"
    #: A request ended (answered, or not, per the table).
    REQUEST = "request"
    #: The session reached a close verdict.
    CLOSE = "close"


@dataclass(frozen=True)
class Close:
    """The session's verdict: close the connection, after sending what is queued."""

    reason: str


@dataclass(frozen=True)
class _Deferred:
    due: float
    response: Response
    client: str
    code: str


@dataclass(frozen=True)
class _HeldId:
    """Rule 6: the payload of the 2100 that answered a first 1025, held back."""

    due: float
    payload: bytes
    client_id: bytes
    client: str


@dataclass(frozen=True)
class _RequestLine:
    """A request's log line, as of its handling: written when its answer goes."""

    level: int
    code: RequestCode | None
    client: str
    #: The answer (its code is written), or what happened instead ("(no reply)").
    result: Response | str
    detail: str
    refused: bool
    #: The request's bytes, and when it began (the loop's clock).
    size: int
    t0: float


#: What a held answer's line says when its file could not take its name (the
#: ERROR line before it says why).
UNSTORED = "could not be stored"


@dataclass(frozen=True)
class _Held:
    """An answer held until the round's files take their names."""

    data: bytes
    #: The ticket of the first upload it reports, if any.
    awaits: InstallTicket | None = None
    #: What goes instead if that file could not take its name (a 1607).
    instead: bytes = b""
    #: Its request's log line, written when it goes (with the answer that went).
    line: _RequestLine | None = None


def _handled_unbound(event: Request | FilePacketStarted, client: ClientRow) -> bool:
    """Rule 7: whether a request goes to its handler from an address the client is not bound to.

    827 asks by name and id, from anywhere (docs/KEY_BINDING.md); an 826 to a
    keyed client is a 2022 client coming back with its stored key, or a key
    substitution its handler refuses.
    """
    if isinstance(event, Reconnect):
        return True
    return isinstance(event, SendPublicKey) and client.public_key is not None


def _error_response(code: ResponseCode) -> Response:
    return RegistrationFailed() if code is ResponseCode.REGISTRATION_FAILED else GeneralError()


class Session:
    """One connection's requests: decoding, handling, answers, deadlines, its log lines."""

    def __init__(self, app: App, peer: Peer, opened: float | None = None) -> None:
        """``opened``: when the connection was accepted (the loop's clock), if before now:
        the first request's deadline counts from it (a PROXY header's wait included)."""
        self.app = app
        self.peer = peer
        limits = app.limits
        self._limits = limits
        self._decoder = ServerConnection(
            max_skip_payload=limits.max_skip_payload,
            max_packet_content=min(MAX_UINT32, limits.max_content_size + MAX_ZERO_FILL),
            editions=SERVED_EDITIONS,
        )
        self._outbox = bytearray()
        #: Answers held until the round's files take their names (a first
        #: upload's 1603, and every answer after it on this connection).
        self._held_answers: list[_Held] = []
        self.verdict: Close | None = None
        self.model: Model | None = None
        self.errors = 0
        self._eof = False
        self._packet: IncomingPacket | None = None
        self._packet_client = ""
        self._deferred: _Deferred | None = None
        self._held_id: _HeldId | None = None
        now = app.monotonic()
        self._opened = now if opened is None else opened
        self._last_boundary = now
        #: A request that succeeded since the last release of held answers (Rule 5).
        self._succeeded_unanswered = False
        #: Since when answers are held (Rule 5: the idle clock is suspended), if they are.
        self._held_since: float | None = None
        self._last_recv = now
        self._message_start: float | None = None
        self._message_content = 0
        self._seen_request = False
        self._request_t0 = now
        self._request_size = 0
        self._current: tuple[RequestCode | None, str] = (None, "")
        self._last_client = ""  # as the last request's log line named it
        #: Rule 6: the name of a first register, while only registers came.
        self._first_name: str | None = None
        self._registers_only = True
        #: Clients whose edition this connection has checked.
        self._settled: set[bytes] = set()
        #: The connection's first bytes, until they tell a PROXY header (:meth:`_proxy_header`).
        self._opening: bytearray | None = bytearray()

    # -- input ----------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview, *, lent: bool = False) -> None:
        """Bytes from the peer; ``b""`` when it closed its side.

        ``lent`` bytes are used in place until :meth:`keep_unread` (a file's
        content is decrypted straight from them).
        """
        self._last_recv = self.app.monotonic()
        if not data:
            self._eof = True
        if self._opening is not None:
            self._opening += data[:PROBE_SIZE - len(self._opening)]
        self._decoder.receive_data(data, lent=lent)

    def keep_unread(self) -> None:
        """Copy what is unread of lent bytes, before their buffer is reused."""
        self._decoder.keep_unread()

    def next_step(self) -> Step:
        """Handle the next event of the stream (call until NEED_DATA or CLOSE)."""
        if self.verdict is not None:
            return Step.CLOSE
        if self._proxy_header():
            return self._after(Step.REQUEST)
        try:
            event = self._decoder.next_event()
        except RemoteProtocolError as exc:
            self._release_held_id(waited=False)
            self._on_broken_stream(exc)
            return self._after(Step.REQUEST)
        if event is NEED_DATA:
            if self._decoder.in_message and self._message_start is None:
                self._message_start = self._last_recv
            return Step.NEED_DATA
        # Rule 6: a request while the id is held was sent after the header alone.
        self._release_held_id(waited=isinstance(event, ConnectionClosed))
        if isinstance(event, ConnectionClosed):
            self._flush_deferred()
            self._close("peer closed")
            return Step.CLOSE
        if isinstance(event, FilePacketStarted):
            self._start_packet(event)
            return Step.PART
        if isinstance(event, FileContent):
            self._message_content += len(event.data)
            if self._packet is not None:
                self._packet.feed(event.data)
            return Step.PART
        if isinstance(event, FilePacketEnded):
            self._end_packet()
        else:
            self._handle(event)
        return self._after(Step.REQUEST)

    @property
    def client(self) -> str:
        """The last client this connection spoke for, for the log ("-" if none yet)."""
        return self._last_client or "-"

    def on_time(self) -> None:
        """The clock moved on: a deferred answer or a held id may be due (:attr:`answer_due`)."""
        held = self._held_id
        if held is not None and self.verdict is None and self.app.monotonic() >= held.due:
            # A message begun meanwhile was sent without waiting for the id.
            self._release_held_id(waited=not self._decoder.in_message)
        deferred = self._deferred
        if deferred is None or self.verdict is not None or self.app.monotonic() < deferred.due:
            return
        self._deferred = None
        self._send(deferred.response)
        level = self.app.log_limiter.level(log, self.peer.group, logging.INFO)
        if log.isEnabledFor(level):
            log.log(level, "%s %s %s -> %s (no file request within %.1f s)", self.peer,
                    deferred.code, deferred.client, self._answer_code(deferred.response),
                    self._limits.retry_ack_delay)

    def fail(self) -> None:
        """An unexpected error (a bug) reached the edge: answer 1607, close (Rule 3).

        Called from the loop's one broad ``except``, with the error being
        handled (it is logged here with its traceback). Never raises.
        """
        code, client = self._current
        log.exception("%s %s %s: unexpected error", self.peer, self._code_text(code), client or "-")
        if self.verdict is None:
            self._packet = None
            self._refuse(code, client, InternalFault("internal error"), close=True)

    def connection_lost(self) -> None:
        """The transport closed: let go of what this connection held.

        The lines of the answers still held say that none of them went.
        """
        held, self._held_answers = self._held_answers, []
        self._held_since = None
        for answer in held:
            if answer.line is not None:
                self._write_line(replace(answer.line, result="(closed unanswered)"))
        self._packet = None
        self._deferred = None
        self._held_id = None
        self.app.connection_closed(self.peer)

    # -- output ---------------------------------------------------------------

    @property
    def holds_answers(self) -> bool:
        """Whether answers wait for the round's first uploads to take their names."""
        return bool(self._held_answers)

    def awaits_blob(self, pending: AbstractSet[InstallTicket]) -> bool:
        """Whether the first held answer waits for a ticket in ``pending``: :meth:`release`
        would queue nothing."""
        return bool(self._held_answers) and self._held_answers[0].awaits in pending

    def release(
        self, unstored: AbstractSet[InstallTicket],
        pending: AbstractSet[InstallTicket] = frozenset(),
    ) -> None:
        """The round is durable and its files installed: queue the held answers, in order;
        once none is held, the idle time restarts if a request that succeeded waited for
        them, else the wait for them does not count as idle time (Rule 5).

        The answer of a file whose ticket is in ``unstored`` becomes a 1607:
        that file could not take its name. The answers from the first one
        whose ticket is in ``pending`` on stay held (its blob's store is still
        at work: server/blobport.py), answers going in order.
        """
        held = self._held_answers
        ready = next(
            (at for at, answer in enumerate(held) if answer.awaits in pending), len(held)
        )
        held, self._held_answers = held[:ready], held[ready:]
        for answer in held:
            line = answer.line
            if answer.awaits in unstored:
                self._outbox += answer.instead
                if line is not None:
                    line = replace(line, result=GeneralError(), detail=UNSTORED, refused=True)
            else:
                self._outbox += answer.data
            crashpoints.reached("response.queued")
            if line is not None:
                self._write_line(line)
        if self._held_answers:
            return  # the peer still waits for us (Rule 5)
        now = self.app.monotonic()
        if self._succeeded_unanswered:  # Rule 5: its answers go now; idle from now on
            self._last_boundary = now
            self._succeeded_unanswered = False
        elif self._held_since is not None:  # the wait was ours, not the peer's idle time
            self._last_boundary = min(now, self._last_boundary + now - self._held_since)
        self._held_since = None

    def data_to_send(self) -> bytes:
        """The answers queued since the last call (not those held: :meth:`release`)."""
        if not self._outbox:
            return b""
        data = bytes(self._outbox)
        self._outbox.clear()
        return data

    @property
    def between_messages(self) -> bool:
        """Whether every request that arrived is handled (no message half in)."""
        return self._message_start is None and self._packet is None

    def deadline(self) -> tuple[float, str]:
        """When the connection times out, and why (Rule 5): never while it waits, between
        messages, for answers the session holds (the server's wait, not the peer's)."""
        limits = self._limits
        if not self.between_messages:
            start = self._message_start if self._message_start is not None else self._last_recv
            deadline = start + limits.message_deadline
            if self._message_content:
                deadline = min(
                    deadline + self._message_content / limits.min_content_rate,
                    self._last_recv + limits.message_deadline,
                )
            return deadline, "message not completed in time"
        if self._seen_request:
            if self._held_answers:  # the peer waits for us (Rule 5)
                return _NO_DEADLINE, "idle"
            return self._last_boundary + limits.idle_timeout, "idle"
        return self._opened + limits.message_deadline, "no request"

    @property
    def answer_due(self) -> float | None:
        """When a deferred answer (Rule 4) or a held id (Rule 6) is due, if one waits."""
        dues = [held.due for held in (self._deferred, self._held_id) if held is not None]
        return min(dues) if dues else None

    # -- requests ---------------------------------------------------------------

    def _after(self, step: Step) -> Step:
        return Step.CLOSE if self.verdict is not None else step

    def _message_t0(self) -> float:
        return self._message_start if self._message_start is not None else self._last_recv

    def _start_request(self, code: RequestCode) -> None:
        if self.model is None:
            self.model = Model.PER_REQUEST if code in PER_REQUEST_OPENERS else Model.PERSISTENT
        if code is RequestCode.SEND_FILE:
            self._cancel_deferred()  # Rule 4: an 828 started, no 1604
        else:
            self._flush_deferred()

    def _handle(self, event: Request) -> None:
        """A request of one message (all but 828)."""
        code = event.code
        client = event.client_id.hex()
        self._current = (code, client)
        self._request_t0 = self._message_t0()
        self._request_size = self._decoder.request_size
        self._start_request(code)
        try:
            with self.app.metadata.request():
                self._admit(event)
                outcome = HANDLERS[type(event)](self.app, self.peer, event, self._speaking())
        except (Refusal, StorageFault) as exc:
            self._refuse(code, client, exc)
            return
        self._finish(type(event), outcome)

    def _start_packet(self, event: FilePacketStarted) -> None:
        """An 828's fixed fields: its content follows."""
        self._request_t0 = self._message_t0()
        self._message_start = self._request_t0
        self._request_size = self._decoder.request_size
        self._current = (RequestCode.SEND_FILE, event.client_id.hex())
        self._start_request(RequestCode.SEND_FILE)
        per_request = self.model is Model.PER_REQUEST
        with self.app.metadata.request():
            try:
                self._admit(event)
            except (Refusal, StorageFault) as exc:
                refused = Refused.of(exc)
                self._packet_client, self._packet = event.client_id.hex(), DroppedPacket(refused)
                return
            self._packet_client, self._packet = start_file_packet(
                self.app, self.peer, per_request, event
            )
        self._current = (RequestCode.SEND_FILE, self._packet_client)

    def _end_packet(self) -> None:
        """An 828's content is complete."""
        packet, self._packet = self._packet, None
        client = self._packet_client
        if packet is None:
            raise InternalFault("an 828 ended that never started")
        end = packet.end()
        try:
            outcome = file_packet_outcome(client, end)
        except (Refusal, StorageFault) as exc:
            # its 1607 waits for what is left of the attempt to go, if a worker removes it
            awaits = end.awaits_abort if isinstance(end, Refused) else None
            self._refuse(RequestCode.SEND_FILE, client, exc, awaits=awaits)
            return
        self._finish(SendFilePacket, outcome)

    # -- editions (Rule 6) ----------------------------------------------------------

    def _speaking(self) -> Speaking:
        return Speaking(self._decoder.edition or V3, self._decoder.edition_known)

    def _admit(self, event: Request | FilePacketStarted) -> None:
        """Rules 7 and 6: may the peer act for the request's client, and in which edition.

        Raises:
            Refusal: the client is bound to another address (and the request
                is not one handled from elsewhere), or it registered with
                another edition. Nothing was written.
        """
        if isinstance(event, Register):
            self._note_register(event)
            return
        self._registers_only = False
        app = self.app
        client = app.metadata.client_by_id(event.client_id)
        if client is None:
            return  # its handler refuses it, or registers a name (variant 9)
        refusal = why_not_bound(
            app.metadata, client, self.peer.address, app.wall_clock(), self._limits.key_window
        )
        if refusal is not None and not _handled_unbound(event, client):
            raise Refusal(refusal)
        self._settle_edition(client, record=refusal is None)

    def _note_register(self, event: Register) -> None:
        """Rule 6 in the 1025 series: after a refused first register, the same name is 2023C."""
        if not self._registers_only:
            return
        decoder = self._decoder
        if (
            self._first_name == event.name
            and decoder.edition is EDITION_2024A
            and EDITION_2023C in decoder.candidates
        ):
            decoder.use(EDITION_2023C)  # it ignored a refusal in the 2024A form
        elif self._first_name is None:
            self._first_name = event.name

    def _settle_edition(self, client: ClientRow, *, record: bool) -> None:
        """Take the request in the edition its client registered with (Rule 6).

        Records the edition a request tells apart only if ``record`` (Rule 7).

        Raises:
            Refusal: the client registered with another edition.
        """
        if client.id in self._settled:
            return
        decoder = self._decoder
        edition = decoder.edition or V3
        stored = {candidate.name: candidate for candidate in decoder.candidates}.get(client.edition)
        if stored is not None:
            decoder.use(stored)
        elif client.edition != edition.family.value:
            raise Refusal(f"the client registered in edition {client.edition}, not {edition}")
        elif not (decoder.edition_known and record):
            return
        else:
            with self.app.metadata.transaction():
                self.app.metadata.set_edition(client.id, edition.name)
        self._settled.add(client.id)

    def _probes_edition(self) -> bool:
        """Rule 6: whether a register's answer tells 2023C from 2024A (a first 1025 does)."""
        candidates = self._decoder.candidates
        return EDITION_2023C in candidates and EDITION_2024A in candidates

    def _hold_id(self, response: Registered, client: str) -> str:
        """Rule 6: queue the 2100 header alone; hold its payload, the id, for a moment.

        Returns what the request's log line says it was answered.
        """
        data = self._decoder.send(response, EDITION_2023C)
        self._queue(data[:RESPONSE_HEADER_SIZE])
        due = self.app.monotonic() + self._limits.first_register_hold
        self._held_id = _HeldId(due, data[RESPONSE_HEADER_SIZE:], response.client_id, client)
        return f"{self._answer_code(response, EDITION_2023C)} header, the id held"

    def _release_held_id(self, *, waited: bool) -> None:
        """Rule 6: the client waited for the id (2023C: send it) or asked again (2024A: never)."""
        held, self._held_id = self._held_id, None
        if held is None:
            return
        edition = EDITION_2023C if waited else EDITION_2024A
        self._decoder.use(edition)
        if waited:
            self._queue(held.payload)
        try:
            with self.app.metadata.transaction():
                self.app.metadata.set_edition(held.client_id, edition.name)
        except StorageFault as exc:  # its next request records it
            log.error("%s 1025 %s: server fault: %s", self.peer, held.client, exc)
        level = self.app.log_limiter.level(log, self.peer.group, logging.INFO)
        log.log(
            level, "%s 1025 %s: %s", self.peer, held.client,
            "the client waited for the id: a 2023C client, the id sent" if waited
            else "the client asked again after the header: a 2024A client, the id withheld",
        )

    def _finish(self, request: type[Request], outcome: Outcome) -> None:
        """Send what a handled request is owed (Rules 2 and 3)."""
        self._end_message(succeeded=not outcome.refused)
        assert self.model is not None  # set by the request's start
        code = request.code
        response = outcome.response
        answered = response is not None
        owed = OWED.get((request, answered))
        if outcome.refused:
            action = Action.SEND
        elif owed is None:
            said = "answered" if answered else "unanswered"
            raise InternalFault(f"{request.__name__} {said}: no row in OWED")
        else:
            action = owed[self.model]
        if action in (Action.SEND, Action.SEND_UNLESS_FILE_FOLLOWS) and response is None:
            raise InternalFault(f"{request.__name__} is owed an answer and has none")
        level = logging.INFO if outcome.final else logging.DEBUG
        client, detail = outcome.client, outcome.detail
        if action is Action.SEND and isinstance(response, Registered) and self._probes_edition():
            self._write_line(
                self._request_line(level, code, client, self._hold_id(response, client), detail)
            )
        elif action is Action.SEND and response is not None:
            # Its line goes with it: a first upload's 1603 may become a 1607 meanwhile.
            line = self._request_line(level, code, client, response, detail)
            self._send(response, outcome.awaits_install, line)
        elif action is Action.SEND_UNLESS_FILE_FOLLOWS and response is not None:
            due = self.app.monotonic() + self._limits.retry_ack_delay
            self._deferred = _Deferred(due, response, client, self._code_text(code))
            self._write_line(self._request_line(level, code, client, "(deferred)", detail))
        else:
            self._write_line(self._request_line(level, code, client, "(no reply)", detail))
        if action is Action.CLOSE:
            self._close("per-request connection, request without reply")
        elif outcome.refused:  # answered by its handler (a 1601, or an 827's 1606)
            self.app.metrics.refusal(Refusal(outcome.detail), outcome.detail)
            self._count_error(close=False)

    # -- refusals (Rule 3) -------------------------------------------------------

    def _proxy_header(self) -> bool:
        """Whether the connection began with a PROXY header: refused (1607), closed.

        A listed balancer's header was read before the session began
        (server/proxied.py): this header comes from a peer not in
        ``--proxy-protocol-from`` (or is a second one), and its address is
        not trusted. Decided once, on the first :data:`PROBE_SIZE` bytes,
        before any request can be whole.
        """
        opening = self._opening
        if opening is None or (len(opening) < PROBE_SIZE and not self._eof):
            return False
        self._opening = None
        if not starts_like_proxy_header(opening):
            return False
        self._on_broken_stream(RemoteProtocolError(
            "a PROXY protocol header, from an address not in --proxy-protocol-from"
        ))
        return True

    def _on_broken_stream(self, exc: RemoteProtocolError) -> None:
        """The decoder refused the stream (bad header, size, name...)."""
        if not exc.answer:  # the tail of a request already answered
            self._end_message(succeeded=False)
            self._close(str(exc))
            return
        if self._packet is not None:
            self._packet = None
            self.app.uploads.connection_closed(self.peer)
        if self._eof and exc.close:
            # The cut message is dropped, but the answers to the complete
            # requests before it are still due: a half-closed peer reads them.
            self._end_message(succeeded=False)
            self._close("connection closed in the middle of a message")
            return
        self._refuse(None, "", exc)

    def _refuse(
        self,
        code: RequestCode | None,
        client: str,
        error: RemoteProtocolError | Refusal | StorageFault | InternalFault,
        *,
        close: bool = False,
        awaits: InstallTicket | None = None,
    ) -> None:
        """Answer a refusal or a fault: 1607 (or 1601); close if the stream is lost.

        Logged at INFO, or at WARNING when the disk had no room (the operator's
        concern); a storage fault is an ERROR line of its own. ``awaits``: the
        answer is held until that ticket's work is done (an abort's removal).
        """
        level = logging.WARNING if isinstance(error, NoRoom) else logging.INFO
        if isinstance(error, StorageFault):
            log.error(
                "%s %s %s: server fault: %s", self.peer, self._code_text(code), client or "-", error
            )
            reason, response_code = "server fault", ResponseCode.GENERAL_ERROR
        elif isinstance(error, InternalFault):
            reason, response_code = str(error), ResponseCode.GENERAL_ERROR
        else:
            reason, response_code = str(error), error.response_code
            close = close or error.close
        if code is None:
            self._request_t0, self._request_size = self._message_t0(), 0
        self._end_message(succeeded=False)
        response = _error_response(response_code)
        self._send(response, awaits, self._request_line(
            level, code, client, response, reason, refused=True
        ))
        self.app.metrics.refusal(error, reason)
        self._count_error(close=close)

    def _count_error(self, close: bool) -> None:
        """One more refusal: close if the stream is lost or errors pile up."""
        self.errors += 1
        if close:
            self._close("protocol error")
        elif self.errors >= self._limits.max_errors:
            self._close(f"{self.errors} errors")

    def _end_message(self, succeeded: bool) -> None:
        """A request is over; only one that succeeded restarts the idle timer."""
        self._message_start = None
        self._message_content = 0
        self._seen_request = True
        if succeeded:
            self._last_boundary = self.app.monotonic()
            self._succeeded_unanswered = True

    def _close(self, reason: str) -> None:
        """Reach the close verdict (the first reason stands); release the uploads now."""
        if self.verdict is not None:
            return
        self.verdict = Close(reason)
        self._cancel_deferred()
        self.app.uploads.connection_closed(self.peer)

    def _code_text(self, code: RequestCode | None) -> str:
        """The request's code as its client sent it (in its edition), for the log."""
        wire = self._decoder.request_code
        return "-" if code is None or wire is None else str(wire)

    def _answer_code(self, response: Response, edition: Edition | None = None) -> str:
        """The answer's code in the connection's edition (or the one given), for the log."""
        edition = edition or self._decoder.edition or V3
        message = edition.response_for(type(response))
        return str(message.code if message is not None else response.code.value)

    def _request_line(
        self,
        level: int,
        code: RequestCode | None,
        client: str,
        result: Response | str,
        detail: str,
        *,
        refused: bool = False,
    ) -> _RequestLine:
        """The line of the request being handled, to write when its answer goes."""
        if client:
            self._last_client = client
        return _RequestLine(
            level, code, client, result, detail, refused, self._request_size, self._request_t0
        )

    def _write_line(self, line: _RequestLine) -> None:
        """Write a request's line (and count it); nothing is formatted when off.

        Past its address's budget (server/lograte.py) the line goes to DEBUG.
        The time is from the request's start until its answer went (or not).
        """
        result = line.result
        if self.app.metrics.enabled:
            answer = result if isinstance(result, str) else self._answer_code(result)
            self.app.metrics.request(
                (self._decoder.edition or V3).name, self._code_text(line.code), answer,
                line.size, line.code, line.refused,
            )
        level = self.app.log_limiter.level(log, self.peer.group, line.level)
        if not log.isEnabledFor(level):
            return
        if not isinstance(result, str):  # a response: its code, in the edition
            result = self._answer_code(result) + (" refused" if line.refused else "")
        elapsed = (self.app.monotonic() - line.t0) * _MS
        log.log(
            level,
            "%s %s %s -> %s (in %d B, %.1f ms)%s",
            self.peer,
            self._code_text(line.code),
            line.client or "-",
            result,
            line.size,
            elapsed,
            f": {line.detail}" if line.detail else "",
        )

    # -- answers ------------------------------------------------------------------

    def _send(
        self,
        response: Response,
        awaits: InstallTicket | None = None,
        line: _RequestLine | None = None,
    ) -> None:
        """Queue an answer; its request's ``line`` is written when it goes."""
        data = self._decoder.send(response)
        if awaits is not None:
            instead = self._decoder.send(_error_response(ResponseCode.GENERAL_ERROR))
            if not self._held_answers:
                self._held_since = self.app.monotonic()
            self._held_answers.append(_Held(data, awaits, instead, line))
        else:
            self._queue(data, line)

    def _queue(self, data: bytes, line: _RequestLine | None = None) -> None:
        """Bytes of an answer, behind the held ones if any (answers go in order)."""
        if self._held_answers:
            self._held_answers.append(_Held(data, line=line))
        else:
            self._outbox += data
            crashpoints.reached("response.queued")  # a held one: at its release
            if line is not None:
                self._write_line(line)

    def _flush_deferred(self) -> None:
        if self._deferred is not None:
            response, self._deferred = self._deferred.response, None
            self._send(response)

    def _cancel_deferred(self) -> None:
        self._deferred = None
