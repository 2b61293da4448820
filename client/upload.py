"""The client's flow: register or reconnect, send files, confirm their cksum.

docs/PROTOCOL.md, "Flows" and "Client files":

- first run: 825 → 1600 → 826 → 1602; later runs: 827 → 1605, and on 1606
  register again; 1601 stops the client (the name is taken);
- each file: 828 … 828 → 1603, then 900 → 1604 if the cksum matches, else 901
  and the packets again (at most 3 resends), then 902 → 1604;
- 1607 or any unexpected reply: print "server responded with an error" and
  retry the request, at most 3 times, then fail naming the step.

Nothing here relies on one server's habits: a 1604 after 901 is tolerated but
never awaited (variant 8), and a failed upload is retried on a new connection
(opened with 827 for a fresh key), since more replies to packets already sent
may still be on their way on the old one.
"""

from __future__ import annotations

import functools
import logging
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Protocol, TypeVar

from protocol import (
    Acknowledged,
    Cksum,
    CrcAbort,
    CrcOk,
    CrcRetry,
    CryptoError,
    FileReceived,
    GeneralError,
    PublicKeyReceived,
    Reconnect,
    ReconnectRefused,
    Reconnected,
    Register,
    Registered,
    RegistrationFailed,
    SendFilePacket,
    SendPublicKey,
)
from protocol.events import UnknownResponse

from protocol.buffer import BytesLike
from protocol.codes import CLIENT_ID_SIZE, PER_REQUEST_OPENERS, ResponseCode
from protocol.editions import V3, Edition
from protocol.crypto import (
    decrypt_aes_key,
    export_public_key,
    generate_private_key,
    padded_size,
)
from protocol.printable import quoted

from .config import Identity, ServerAddress, save_identity
from .errors import (
    BARE_GENERAL_ERROR,
    ClientError,
    FileReadError,
    MalformedReply,
    NetworkError,
    NotLoggedIn,
    RegistrationRefused,
    ServerError,
    UnexpectedReply,
)
from .packets import DEFAULT_PACKET_SIZE, FilePlan, STANDARD_LAYOUT, Layout, plan_file
from .pipeline import PipelinedPackets
from .progress import NoProgress, Progress
from .turns import SOLO, SharedKey, Turns
from .units import format_bytes, format_rate, plural
from .session import Session, describe

log = logging.getLogger(__name__)

T = TypeVar("T")

#: docs/PROTOCOL.md "Client files": after an error reply, retry up to 3 times.
MAX_RETRIES = 3
#: docs/PROTOCOL.md "Flows": after a cksum mismatch, at most 3 resends.
MAX_RESENDS = 3
#: Printed, exactly, on 1607 or an unexpected reply (docs/PROTOCOL.md).
SERVER_ERROR_MESSAGE = "server responded with an error"
#: docs/EDITIONS.md: a 1025-series client asks again once after an answer
#: of the other edition (the server's answer to a first 1025 tells them apart).
REGISTER_ASKS = 2
#: The 825 header's client id is ignored by servers (variant 2).
NO_CLIENT_ID = bytes(CLIENT_ID_SIZE)
#: Packets after a fallback to one connection per request: a request fits one
#: receive of a small server (4,000 bytes of content, 4,290 bytes in all).
FALLBACK_SMALL_PACKET = 4000
#: Packets after a fallback for a server that reads fixed-size packets.
FALLBACK_PADDED_PACKET = 1024
#: Packets after a refusal for a server that reads a packet with one receive
#: (large packets arrive cut); its own client sends packets of this size.
FALLBACK_CUT_PACKET = 8192
#: Bytes read at a time when the file's zlib CRC-32 is computed (a second pass).
CRC32_READ_SIZE = 1024 * 1024


#: The checksums a server may answer a file with (docs/EDITIONS.md variant 5),
#: as logs and the summary name them.
CKSUM = "cksum"
CRC32_ZLIB = "CRC-32 (zlib)"


@dataclass(frozen=True)
class FileResult:
    """How one file went; ``check`` names the checksum the server's matched."""

    plan: FilePlan
    cksum: int
    verified: bool
    uploads: int
    seconds: float
    check: str = CKSUM


@dataclass
class RetryBudget:
    """The retries of one step, or of one file across its layouts and resends.

    One budget per file, never restarted (docs/CLIENT.md, "Flow and
    retries"): every retry after an error reply or a dropped connection takes
    one, whichever step of the file's upload it is in. A layout switch takes
    none: each layout is tried at most once, so the switches are bounded too.
    """

    retries: int = MAX_RETRIES
    used: int = 0

    @property
    def attempts(self) -> int:
        """The attempts made so far."""
        return self.used + 1

    def take(self) -> int | None:
        """The number of the next retry, or None when none is left."""
        if self.used >= self.retries:
            return None
        self.used += 1
        return self.used


class _LayoutSwitched(ClientError):
    """An attempt ended by a symptom that names the layout; the layout was switched."""

    def __init__(self, cause: ClientError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Reply(Protocol):
    """A kind of reply: its class carries its code."""

    code: ClassVar[ResponseCode]


#: What ``Client._exchange`` does with each kind of reply. Each handler takes
#: the reply of its own kind, which a mapping's one value type cannot say: Any.
_Handlers = Mapping[type[_Reply], Callable[[Any], T]]


def _reply_error(reply: object, expected: str, edition: Edition = V3) -> str:
    if isinstance(reply, GeneralError):
        if edition is V3:
            return BARE_GENERAL_ERROR
        return f"the server answered {describe(reply, edition)} (general error)"
    return f"expected {expected}, the server answered {describe(reply, edition)}"


class Client:
    """One run of the client against one server.

    ``identity`` is what ``me.info`` holds (None before the first
    registration); a new identity is saved in ``config_dir``.
    """

    def __init__(
        self,
        session: Session,
        *,
        config_dir: Path,
        name: str,
        identity: Identity | None,
        progress: Progress | None = None,
        packet_size: int = DEFAULT_PACKET_SIZE,
        layout: Layout = STANDARD_LAYOUT,
        fallback: bool = True,
        turns: Turns = SOLO,
        shared_key: SharedKey | None = None,
    ) -> None:
        self._session = session
        self._config_dir = config_dir
        self._name = name
        self.identity = identity
        self._progress = progress or NoProgress()
        self._packet_size = packet_size
        #: The packet size asked for (a fallback may change ``_packet_size``).
        self._preferred_packet_size = packet_size
        self._layout = layout
        self._fallback_on = fallback
        #: Several connections of one client (``--jobs``) share the key and take turns.
        self._turns = turns
        self._key = shared_key or SharedKey()
        #: (connection number, count) of 1604s to ignore after a 901.
        self._stray_acks = (0, 0)
        #: The retries of the file being sent (None between files: each step its own).
        self._budget: RetryBudget | None = None
        #: A file was received (1603) in the layout in force: it is kept for
        #: the rest of the run, whatever happens later (a crash, a drain, a
        #: full disk is the server's trouble, not the layout's).
        self._layout_proven = False
        #: The layout switches taken in this run (each at most once).
        self._switches_taken: set[str] = set()

    @property
    def _aes_key(self) -> bytes | None:
        """The AES key in use: the last one the client got, on any connection."""
        return self._key.key

    @_aes_key.setter
    def _aes_key(self, key: bytes | None) -> None:
        self._key.key = key

    @property
    def _registered_identity(self) -> Identity:
        """The identity, registered or loaded: ``log_in`` comes first.

        Raises:
            NotLoggedIn: called before there was one.
        """
        if self.identity is None:
            raise NotLoggedIn("no identity yet: log_in() registers first")
        return self.identity

    @property
    def server(self) -> ServerAddress:
        """The server this client talks to."""
        return self._session.address

    # -- the whole run ---------------------------------------------------------

    def log_in(self) -> None:
        """Get an AES key: reconnect with the stored identity, or register."""
        if self.identity is None:
            self._register()
        else:
            self._reconnect(announce=True)

    def open_connection(self) -> None:
        """Open one more connection of a logged-in client, with 827 (variant 7).

        The key it gets replaces the client's on every connection (``--jobs``).
        """
        self._reconnect()

    def reset(self) -> None:
        """Drop the connection (after a failed file); the next upload opens a new one."""
        self._session.reset()

    # -- retries -----------------------------------------------------------------

    def _with_retries(
        self, step: str, attempt: Callable[[], T], *, reset_on_error: bool = False
    ) -> T:
        """Run attempt; on an error reply print the message and retry it.

        A malformed reply always replaces the connection; ``reset_on_error``
        replaces it after any error reply (more may be on their way). A
        connection the server closes after it answered on it is the server
        going away (a crash, a drain): the attempt is retried on a new
        connection in the same layout, and only the same close again on the
        new connection names the layout (one connection per request). A send
        the ``--min-rate`` floor ended is retried on a new connection. The
        retries come from the file's budget while a file is sent.

        Raises:
            ServerError: still failing once the budget is spent.
            NetworkError: with ``step`` set.
        """
        budget = self._budget or RetryBudget()
        went_away = 0  # closes after an answer in a row
        while True:
            try:
                return attempt()
            except _LayoutSwitched as switched:
                if not isinstance(switched.cause, NetworkError):
                    log.warning(SERVER_ERROR_MESSAGE)
                continue
            except (UnexpectedReply, MalformedReply) as exc:
                went_away = 0
                log.warning(SERVER_ERROR_MESSAGE)
                log.info("%s: %s", step, exc)
                if reset_on_error or isinstance(exc, MalformedReply):
                    self._session.reset()
                retry = budget.take()
                if retry is None:
                    raise ServerError(step, str(exc), budget.attempts) from None
                log.info("retrying %s (retry %d of %d)", step, retry, budget.retries)
            except NetworkError as exc:
                exc.step = exc.step or step
                if exc.too_slow:
                    went_away = 0
                    if not self._retry_on_new_connection(budget, f"{step}: {exc}"):
                        raise
                    continue
                if not (exc.closed and self._session.replies_on_connection):
                    raise  # unreachable, silent or closed before answering: report it
                went_away += 1
                switch = self._fallback(exc) if went_away > 1 else None
                if switch is not None:
                    self._take_fallback(step, switch, exc)
                    continue
                closed = f"the server closed the connection during {step}"
                if not self._retry_on_new_connection(budget, closed):
                    raise

    def _retry_on_new_connection(self, budget: RetryBudget, what: str) -> bool:
        """Say what happened and drop the connection, taking one retry of
        ``budget``; False (and nothing done) when none is left."""
        retry = budget.take()
        if retry is None:
            return False
        log.warning(
            "%s; retrying on a new connection (retry %d of %d)", what, retry, budget.retries
        )
        self._session.reset()
        return True

    # -- fallbacks -------------------------------------------------------------

    def _fallback(self, exc: Exception, plan: FilePlan | None = None) -> str | None:
        """The layout a symptom names, if the client has not switched to it yet.

        Each switch is taken at most once in a run, so a server that refuses
        everything ends the ladder rather than sending the client round it.
        """
        if not self._fallback_on or self._layout_proven:
            return None
        before = (self._layout, self._packet_size, self._session.per_request)
        switch = self._next_layout(exc, plan)
        if switch is None or switch in self._switches_taken:
            self._layout, self._packet_size, self._session.per_request = before
            return None
        self._switches_taken.add(switch)
        return switch

    def _next_layout(self, exc: Exception, plan: FilePlan | None) -> str | None:
        """The layout a symptom names (set in force), if any.

        Servers in the wild vary: a 1607 before the last packet of a
        multi-packet file (the client sends on without waiting, so it is seen a
        packet or two after the one refused) points to swapped fields and
        per-packet encryption (variants 5 and 6); a close right after an
        answer, on two connections in a row, to small packets (a server that
        reads a request with one receive), and once more to one connection
        per request (variant 7); no answer to a file, to 1,024-byte
        packets with the last zero-filled (variant 4). A layout in which a
        file was received is never left: what goes wrong later is the
        server's trouble. ``--strict`` turns this off. Each switch holds for
        the rest of the run.
        """
        layout, session = self._layout, self._session
        if isinstance(exc, UnexpectedReply) and exc.packet is not None and plan is not None:
            # A packet refused: the layout is named (the file refused whole, its size only).
            return self._after_refusal(plan, final=exc.packet >= plan.total_packets)
        if isinstance(exc, NetworkError) and exc.closed and not session.per_request:
            if session.replies_on_connection:  # it closed after answering
                if self._packet_size > FALLBACK_SMALL_PACKET:  # first: a packet too large?
                    self._packet_size = FALLBACK_SMALL_PACKET
                    return f"packets of {FALLBACK_SMALL_PACKET} bytes"
                session.per_request = True
                return f"one connection per request, packets of {FALLBACK_SMALL_PACKET} bytes"
        if (
            isinstance(exc, NetworkError)
            and exc.timed_out
            and plan is not None
            and not layout.pad_last
        ):
            self._layout = Layout(pad_last=True)
            self._packet_size = FALLBACK_PADDED_PACKET
            return f"{FALLBACK_PADDED_PACKET}-byte packets, the last zero-filled"
        return None

    def _after_refusal(self, plan: FilePlan, *, final: bool) -> str | None:
        """The next layout for a server that refused a packet of ``plan``, if any.

        A refusal of the whole file (``final``: a 1607 for its 1603) names
        only a packet size: a file of one large packet.

        The ladder, each rung taken once and only where it changes what is
        sent: swapped fields and per-packet encryption (variants 5 and 6);
        small packets in the standard layout (a server that reads a packet
        with one receive, so large ones arrive cut); the whole file in one
        packet (a server that takes every 828 as a whole file).
        """
        layout = self._layout
        if layout.whole_file:
            return None
        several = padded_size(plan.orig_size) > self._preferred_packet_size and not final
        untouched = self._packet_size == self._preferred_packet_size
        if several and not layout.per_packet and untouched:
            self._layout = replace(layout, swapped=True, per_packet=True, pad_last=False)
            return "swapped packet fields and per-packet encryption"
        if self._packet_size > FALLBACK_CUT_PACKET and plan.content_size > FALLBACK_CUT_PACKET:
            self._layout = Layout(arrive_whole=True)
            self._packet_size = FALLBACK_CUT_PACKET
            return f"packets of {FALLBACK_CUT_PACKET} bytes, each sent whole"
        if several:
            self._layout = Layout(whole_file=True)
            self._packet_size = self._preferred_packet_size
            return "the whole file in one packet"
        return None

    def _take_fallback(self, step: str, switch: str, symptom: ClientError) -> None:
        log.debug("%s: %s", step, symptom)
        log.warning("%s: the server refused the layout; switching to %s", step, switch)
        self._session.reset()

    def _exchange(self, step: str, request, handlers: _Handlers[T], *, asks: int = 1) -> T:
        """Send a request and hand its reply to the handler of its type, with retries.

        An answer of another edition (:class:`UnknownResponse`) is met by
        sending the request again on the same connection, up to ``asks``
        times in all (docs/EDITIONS.md: how a first 1025 is answered).
        """
        expected = " or ".join(self._session.describe(kind) for kind in handlers)

        def attempt() -> T:
            reply = self._session.request(request)
            for _ in range(1, asks):
                if not isinstance(reply, UnknownResponse):
                    break
                log.debug("%d is another edition's answer: asking again", reply.code)
                reply = self._session.request(request)
            handler = handlers.get(type(reply))
            if handler is None:
                raise UnexpectedReply(self._reply_error(reply, expected))
            return handler(reply)

        return self._with_retries(step, attempt)

    def _reply_error(self, reply: object, expected: str) -> str:
        """Why a reply is not the one expected, in the codes of the session's edition."""
        return _reply_error(reply, expected, self._session.edition)

    def _check_client_id(self, reply) -> None:
        if not self._session.reply_carried_id:
            return  # 2022's acknowledgement, and some servers' 1604, carry no id
        ours = self._registered_identity.client_id
        if reply.client_id != ours:
            raise UnexpectedReply(
                f"{self._session.describe(reply)} carries client id {reply.client_id.hex()},"
                f" ours is {ours.hex()}"
            )

    # -- registration and keys -------------------------------------------------

    def _register(self) -> None:
        """825 → 1600, save me.info and priv.key, 826 → 1602."""
        self._turns.before_new_key()
        private_key = generate_private_key()

        def refused(reply: RegistrationFailed) -> bytes:
            raise RegistrationRefused(
                f"the server at {self.server} refused to register {quoted(self._name)} (1601):"
                " the name is taken by another client (or malformed);"
                " choose another name in transfer.info line 2 or with --name"
            )

        client_id = self._exchange(
            "registration (825)",
            Register(client_id=NO_CLIENT_ID, name=self._name),
            {Registered: lambda reply: reply.client_id, RegistrationFailed: refused},
            asks=REGISTER_ASKS,
        )
        # Saved before 826: once the server holds the public key, losing the
        # private key would lock the name for good.
        self.identity = Identity(name=self._name, client_id=client_id, private_key=private_key)
        save_identity(self._config_dir, self.identity)
        log.info(
            "registered as %r (client id %s); wrote me.info and priv.key",
            self._name,
            client_id.hex(),
        )
        self._exchange(
            "sending the public key (826)",
            SendPublicKey(
                client_id=client_id,
                name=self._name,
                public_key=export_public_key(private_key),
            ),
            {PublicKeyReceived: self._accept_key},
        )

    def _reconnect(self, *, announce: bool = False) -> None:
        """827 → 1605 (fresh AES key), or 1606 → register again.

        An edition without a reconnect (2022) sends its public key again and
        gets a fresh AES key in the answer (docs/EDITIONS.md).
        """
        identity = self._registered_identity
        self._turns.before_new_key()
        if not self._session.edition.has_reconnect:
            self._exchange(
                "sending the public key again (no reconnect in this edition)",
                SendPublicKey(
                    client_id=identity.client_id,
                    name=identity.name,
                    public_key=export_public_key(identity.private_key),
                ),
                {PublicKeyReceived: self._accept_key},
            )
            log.log(logging.INFO if announce else logging.DEBUG, "logged in again as %r",
                    identity.name)
            return
        known = self._exchange(
            "reconnection (827)",
            Reconnect(client_id=identity.client_id, name=identity.name),
            {Reconnected: self._accept_key, ReconnectRefused: lambda reply: False},
        )
        if known:
            log.log(
                logging.INFO if announce else logging.DEBUG,
                "reconnected as %r (client id %s)",
                identity.name,
                identity.client_id.hex(),
            )
        else:
            log.warning(
                "the server does not know client %r with a key (1606); registering again",
                identity.name,
            )
            self._name = identity.name
            self._register()

    def _accept_key(self, reply: PublicKeyReceived | Reconnected) -> bool:
        """Take the AES key of a 1602 or 1605."""
        self._check_client_id(reply)
        try:
            self._aes_key = decrypt_aes_key(
                self._registered_identity.private_key,
                reply.encrypted_aes_key,
                self._session.edition.aes_key_size,
            )
        except CryptoError:
            raise UnexpectedReply(
                f"the AES key in {self._session.describe(reply)} does not decrypt"
                " with our private key"
            ) from None
        log.debug("received a fresh AES key")
        return True

    # -- files -------------------------------------------------------------------

    def upload(self, path: Path, *, fresh_key: bool = False) -> FileResult:
        """Send one file and settle its cksum (900, or 901 and resends, then 902).

        Raises:
            FileReadError, NetworkError, ServerError.
        """
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise FileReadError(path, f"cannot access: {exc.strerror}") from None
        try:
            plan = plan_file(path, size, self._packet_size, self._layout)
        except ValueError as exc:  # grew past the limit since it was checked
            raise FileReadError(path, f"too large: {exc}") from None
        started = time.monotonic()
        self._budget = RetryBudget()  # one for the whole file (docs/CLIENT.md)
        try:
            return self._upload(plan, size, started, fresh_key=fresh_key)
        finally:
            self._budget = None

    def _upload(self, plan: FilePlan, size: int, started: float, *, fresh_key: bool) -> FileResult:
        """The upload of one file and its verdict, under the file's retry budget."""
        path, name = plan.path, plan.display_name
        if fresh_key:
            self._prepare_connection(fresh_key=True)
        uploads = 0
        for uploads in range(1, MAX_RESENDS + 2):
            label = name if uploads == 1 else f"{name} (resend {uploads - 1}/{MAX_RESENDS})"
            step = f"upload of {plan.quoted_name}"
            with self._turns.sending():
                if uploads > 1:
                    self._send_crc_retry(plan)
                received, local, plan = self._with_retries(
                    step,
                    functools.partial(self._send_in_current_layout, path, size, label, step),
                    reset_on_error=True,
                )
                self._turns.verdict_begins()
            try:
                verified = self._settle(received, local, plan, uploads, started)
            finally:
                self._turns.verdict_ends()
            if verified is not None:
                return verified
        self._turns.verdict_begins()  # the upload given up waits for its 902
        try:
            self._confirm(CrcAbort, f"giving up (902) on {plan.quoted_name}", plan)
        finally:
            self._turns.verdict_ends()
        log.error(
            "%s: the cksum still differed after %d resends; gave up (902)", name, MAX_RESENDS
        )
        return FileResult(plan, local, False, uploads, time.monotonic() - started)

    def _settle(
        self, received: FileReceived, local: int, plan: FilePlan, uploads: int, started: float
    ) -> FileResult | None:
        """900 if the server's CRC is the file's (the result), else log the mismatch (None)."""
        name = plan.display_name
        # Some servers report the plaintext size; the cksum is what proves the file.
        sizes = (plan.content_size, plan.orig_size)
        check = (
            self._matching_check(received.cksum, local, plan)
            if received.content_size in sizes
            else None
        )
        if check is not None:
            self._confirm(CrcOk, f"CRC confirmation (900) for {plan.quoted_name}", plan)
            seconds = time.monotonic() - started
            rate = format_rate(plan.orig_size, seconds)
            log.info(
                "uploaded %s: %s in %.2f s%s, %s %d verified",
                plan.quoted_name,
                format_bytes(plan.orig_size),
                seconds,
                f" ({rate})" if rate else "",
                check,
                received.cksum,
            )
            return FileResult(plan, local, True, uploads, seconds, check=check)
        log.warning(
            "%s: cksum mismatch: the server got %d bytes with cksum %d,"
            " this file is %d bytes with cksum %d",
            name,
            received.content_size,
            received.cksum,
            plan.content_size,
            local,
        )
        return None

    def _matching_check(self, answered: int, cksum: int, plan: FilePlan) -> str | None:
        """Which checksum of the file the server's CRC is (CKSUM or CRC32_ZLIB), or None.

        A server may answer zlib's CRC-32 (after a 901, or to a client that
        confirmed one before; docs/EDITIONS.md variant 5). It is computed only
        when the cksum differs, in a second pass over the file.
        """
        if answered == cksum:
            return CKSUM
        try:
            with _open_for_reading(plan.path) as source:
                crc32 = 0
                while chunk := source.read(CRC32_READ_SIZE):
                    crc32 = zlib.crc32(chunk, crc32)
        except OSError as exc:
            raise FileReadError(plan.path, f"cannot read: {exc.strerror}") from None
        if answered != crc32:
            return None
        log.info("%s: the server answered with zlib's CRC-32 (it matches)", plan.display_name)
        return CRC32_ZLIB

    def _prepare_connection(self, *, fresh_key: bool) -> None:
        """Make sure the connection can carry a multi-packet upload.

        A connection that began with 828 or 900-902 is per request (variant
        7), and a new one has no key yet: start a session with 827.
        """
        session = self._session
        if session.per_request:  # keys live with the client id: no login per connection
            if fresh_key or self._aes_key is None:
                self._reconnect()
            return
        if session.connected and session.first_request in PER_REQUEST_OPENERS:
            session.reset()
        if fresh_key or not session.connected:
            self._reconnect()

    def _send_crc_retry(self, plan: FilePlan) -> None:
        """901; the packets follow at once, with no reply awaited (variant 8).

        On per-request connections its close (or a 1604) comes first, as for a packet.
        """
        try:
            retry = CrcRetry(
                client_id=self._registered_identity.client_id, file_name=plan.wire_name
            )
            self._session.send(retry)
            self._stray_acks = (self._session.connections_opened, 1)
            if self._session.per_request:  # its 1604 or its close, before the packets
                reply = self._session.answer_or_close()
                if reply is not None and not self._is_stray_ack(reply):
                    expected = f"{self._session.describe(Acknowledged)} or a close"
                    raise UnexpectedReply(f"{self._reply_error(reply, expected)} after 901")
        except NetworkError as exc:
            exc.step = f"CRC mismatch notice (901) for {plan.quoted_name}"
            raise

    def _confirm(self, kind: type, step: str, plan: FilePlan) -> None:
        """900 or 902, answered by 1604."""
        self._exchange(
            step,
            kind(client_id=self._registered_identity.client_id, file_name=plan.wire_name),
            {Acknowledged: self._check_client_id},
        )

    def _send_in_current_layout(
        self, path: Path, size: int, label: str, step: str
    ) -> tuple[FileReceived, int, FilePlan]:
        """One upload attempt in the layout in force; a symptom that names a
        layout the server refuses switches it and makes the attempt end."""
        plan = plan_file(path, size, self._packet_size, self._layout)
        try:
            received, crcs = self._send_file_once(plan, label)
        except (UnexpectedReply, NetworkError) as exc:
            if isinstance(exc, UnexpectedReply) and self._turns.refused_beside():
                log.info(
                    "the server refused a file while another connection streamed one:"
                    " the connections take turns from now on"
                )
                raise UnexpectedReply(f"{exc} (retrying in turn)") from exc
            if isinstance(exc, NetworkError) and exc.closed:
                raise  # a close names no layout by itself (_with_retries)
            switch = self._fallback(exc, plan)
            if switch is None:
                raise
            self._take_fallback(step, switch, exc)
            raise _LayoutSwitched(exc) from exc
        return received, crcs, plan

    def _send_file_once(
        self, plan: FilePlan, label: str
    ) -> tuple[FileReceived, int]:
        """Send every packet of the file, then wait for 1603.

        Returns the reply and the cksum of the plaintext that was sent.
        """
        self._prepare_connection(fresh_key=False)
        log.debug(
            "sending %s (%s, %s) to %s",
            plan.quoted_name,
            plural(plan.orig_size, "byte"),
            self._packets_sent(plan),
            self.server,
        )
        sums = Cksum()
        session = self._session
        # While the layout is unproven, a server that stops reading is evidence
        # at once, not after the time-out (docs/CLIENT.md, "Fallbacks").
        session.watch_reading = (
            self._fallback_on
            and not self._layout_proven
            and not self._layout.pad_last
            and not session.per_request
        )
        session.whole_requests = self._layout.arrive_whole
        self._progress.start(label, plan.orig_size)
        try:
            try:
                self.send_packets(plan, sums)
            finally:
                self._progress.finish()
            return self._await_file_received(plan), sums.value
        finally:
            session.watch_reading = session.whole_requests = False

    def _packets_sent(self, plan: FilePlan) -> str:
        """The requests that carry the file, as a log says it."""
        if self._session.edition.whole_file or self._layout.whole_file:
            return f"in one request, streamed in pieces of up to {plural(plan.packet_size, 'byte')}"
        return (
            f"{plural(plan.total_packets, 'packet')} of up to {plural(plan.packet_size, 'byte')}"
        )

    def send_packets(self, plan: FilePlan, sums: Cksum) -> None:
        """Read, encrypt and send the file's packets, the three at once (client/pipeline.py).

        An edition that sends a file whole announces it in one request and
        streams its content in pieces. A reply before the last packet stops
        the sending at once.

        Raises:
            FileReadError, NetworkError, UnexpectedReply.
        """
        aes_key = self._aes_key
        if aes_key is None:
            raise NotLoggedIn("no AES key to encrypt the file with: log_in() gets one first")
        whole = self._session.edition.whole_file or self._layout.whole_file
        per_packet = self._layout.per_packet and not whole
        with _open_for_reading(plan.path) as source, PipelinedPackets(
            source, plan, aes_key, sums, per_packet=per_packet
        ) as packets:
            for number, packet in enumerate(packets, start=1):
                self._take_early_reply(number)
                if not whole:
                    self._send_packet(plan, number, packet.content)
                    if self._session.per_request and number < plan.total_packets:
                        self._await_packet_close(number)
                elif number == 1:
                    self._send_packet(plan, 1, packet.content, whole_file=True)
                else:
                    self._session.send_more(packet.content)
                self._progress.update(packet.plain_count)

    def _send_packet(
        self, plan: FilePlan, number: int, content: BytesLike, *, whole_file: bool = False
    ) -> None:
        layout = STANDARD_LAYOUT if whole_file else self._layout
        number, total = (1, 1) if whole_file else (number, plan.total_packets)
        if layout.pad_last and number == total and len(content) < plan.packet_size:
            content = bytes(content).ljust(plan.packet_size, b"\0")  # variant 4
        if layout.swapped:
            number, total = total, number  # variant 5
        content_size = len(content) if layout.per_packet else plan.content_size  # variant 6
        packet = SendFilePacket(
            client_id=self._registered_identity.client_id,
            content_size=content_size,
            orig_file_size=plan.orig_size,
            packet_number=number,
            total_packets=total,
            file_name=plan.wire_name,
            content=content,
        )
        try:
            self._session.send(packet, content_length=plan.content_size if whole_file else None)
        except NetworkError:
            # A server may answer 1607 and close: prefer its answer, if any.
            reply = self._poll_quietly()
            if reply is None:
                raise
            raise UnexpectedReply(
                f"the server answered {self._session.describe(reply)} during packet {number}"
                f" of {plan.total_packets}, then closed the connection",
                packet=number - 1 or 1,
            ) from None

    def _await_packet_close(self, number: int) -> None:
        """Per request: the close (or an answer) that ends a non-final packet's
        connection, before the next packet goes out.

        A server may handle each connection in a thread of its own and store
        packets in the order its threads run: packets in flight at once
        would be stored out of order (variant 7).
        """
        reply = self._session.answer_or_close()
        if reply is None or self._is_stray_ack(reply):
            return
        raise UnexpectedReply(
            f"{self._reply_error(reply, 'a close')} after packet {number}", packet=number
        )

    def _poll_quietly(self):
        try:
            return self._session.poll()
        except (NetworkError, MalformedReply):
            return None

    def _is_stray_ack(self, reply) -> bool:
        """A 1604 after our 901 on this connection: some servers send it (variant 8)."""
        connection, count = self._stray_acks
        if (
            isinstance(reply, Acknowledged)
            and count
            and connection == self._session.connections_opened
            and reply.client_id == self._registered_identity.client_id
        ):
            self._stray_acks = (connection, count - 1)
            log.debug("ignoring the 1604 that answers our 901")
            return True
        return False

    def _take_early_reply(self, number: int) -> None:
        """A reply before the last packet is an error, but for a 1604 after 901."""
        if self._session.per_request:
            return  # the answer to a packet is a close; the next request opens anew
        reply = self._session.poll()
        if reply is None or self._is_stray_ack(reply):
            return
        raise UnexpectedReply(
            f"{self._reply_error(reply, 'no reply')} before the last packet", packet=number - 1
        )

    def _await_file_received(self, plan: FilePlan) -> FileReceived:
        """The 1603 of the file just sent, awaited up to the session's time-out.

        A server may take long over a large file (a final sync): the wait is
        the time-out of any answer, not a guess from the file's size.
        """
        reply = self._session.receive()
        while self._is_stray_ack(reply):
            reply = self._session.receive()
        self._stray_acks = (0, 0)
        if isinstance(reply, GeneralError):  # the file refused, at its last packet
            raise UnexpectedReply(
                self._reply_error(reply, self._session.describe(FileReceived)),
                packet=plan.total_packets,
            )
        if not isinstance(reply, FileReceived):
            raise UnexpectedReply(self._reply_error(reply, self._session.describe(FileReceived)))
        self._check_client_id(reply)
        if reply.file_name.text != plan.wire_name.text:
            raise UnexpectedReply(
                f"1603 names the file {quoted(reply.file_name.text)}, we sent {plan.quoted_name}"
            )
        self._layout_proven = True
        return reply


def _open_for_reading(path: Path):
    try:
        return path.open("rb")
    except OSError as exc:
        raise FileReadError(path, f"cannot read: {exc.strerror}") from None
