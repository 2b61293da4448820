"""The server: one thread, one ``selectors`` loop, non-blocking sockets.

``key.data`` is the :class:`Channel` of a client socket, or a callable for the
listening socket and the wake-up socketpair. Timers (deadlines, variant 8, the
periodic LastSeen flush) come from :class:`server.timers.Timers`; ``stop()``
may be called from a signal handler: it only sets a flag and writes a byte to
the socketpair.

The loop holds the server's only broad ``except`` clauses, one per kind of
work: :func:`serve` is the per-connection edge (an unexpected error
closes that connection only, after a 1607 where one can go), and
:meth:`Server._run_guarded` runs the housekeeping callbacks (an error there
is logged and the server serves on).

The loop is its channels' :class:`~server.channel.LoopPort`: a channel asks
it whether it may take another request, for another turn, and to hold its
answers; the loop owns the rounds and ends each one.

Group commit: a round's requests commit without an fsync each; at the end of
the round (:meth:`Server._end_round`) one commit of the metadata store
makes them all durable, and only then do the round's answers go out
(channels report them through :meth:`Server.hold_answers`); a name's first
upload is published between the two (:meth:`App.round_committed`), and the
answer of one that could not be becomes a 1607 as the loop releases the
session's held answers (:meth:`~server.session.Session.release`). The
commit completes later: :meth:`App.begin_round` hands back a
:class:`~server.storage.base.RoundCommit` (a worker's fsync, or a
database's non-blocking COMMIT: docs/ARCHITECTURE.md), whose descriptor the
loop watches in its selector (:meth:`Server._serve_while_committing`):
meanwhile it accepts, takes wake-ups and the blob port's reports, and runs
the timers that call no store, but handles no request (what connections
send waits in the kernel until the next round) and calls nothing of the
store. If the commit fails, the round's answers are
never sent: their connections are closed, and the clients ask again. If
the fsync fails (:class:`~server.errors.DurabilityLost`), the server stops
as well: no later answer could rest on that database. An answer that
reports a blob the blob port's worker still seals or publishes (a store
with ``slow_writes``, server/blobport.py) stays held until the worker is
done, and goes out at the end of the round in which it is.

A channel whose turn ended with requests still buffered is in the backlog:
each round resumes it, and select() does not sleep while the backlog is not
empty (the selector cannot report bytes that were already read). The
connections of one address share a number of requests and of files made
durable per round (:class:`~server.shares.RoundShares`): past either, a
channel is deferred into the backlog, and the next round resumes the
deferred channels first, in the order they were deferred, then the rest of
the backlog, then what select() reports: round robin among one address's
connections. However many connections one address opens, its work in a
round stays bounded, so the round (and every other client's answer, which
waits for its end) stays short.

Connection storms must not fill the disk through the log: a connection that
sent nothing is logged at DEBUG and counted in one INFO line per
``FLUSH_INTERVAL``; "connected" is INFO only while the number of open
connections rises above its level at the last such summary. Every line about
a peer counts toward its address's budget (server/lograte.py); past it, the
line goes to DEBUG and is counted.

A connection from a PROXY protocol sender (``--proxy-protocol-from``) is a
:class:`~server.proxied.HeaderWait` until its header is read: only then is
its client's address known, and only then is it admitted by that address's
limits and made a channel (server/proxied.py).

A stop signal asks for a *drain* (:meth:`Server.drain`): the listener
closes, connections that hold nothing close at once, and those inside a
message or holding an upload (receiving, or waiting for its verdict) go on
until they are done or ``drain_timeout`` runs out; what is then cut off is
logged, one line per connection. A second signal stops at once.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import selectors
import socket
from typing import AbstractSet, Callable

from protocol.printable import quoted

from .app import App
from .channel import Channel
from .errors import DurabilityLost, StorageFault
from .outcome import InstallTicket
from .peer import Peer
from .phases import Receiving, Upload
from .proxied import NO_PROXIES, HeaderWait, ProxySources
from .session import Session
from .storage import RoundCommit
from .storage.base import wait_for

log = logging.getLogger(__name__)

#: One receive buffer shared by all connections (the loop is one thread).
#: One receive is one connection's turn. A connection alone in a round takes
#: it whole: fewer, larger chunks cost less CPU per byte (bench/upload.py).
RECV_BUFFER_SIZE = 1024 * 1024
#: A turn when several connections are ready: small enough that uploads at
#: full speed keep another client's round trip short (bench/fairness.py).
SHARED_TURN_SIZE = 256 * 1024
#: Longest sleep in select(); timers usually wake the loop sooner.
MAX_SELECT_TIMEOUT = 1.0
#: Pending LastSeen/LastUsed stamps are committed this often.
FLUSH_INTERVAL = 5.0
#: Connections accepted per wake-up, so that accepting cannot starve I/O.
ACCEPT_BURST = 64
#: After EMFILE/ENFILE, stop accepting for this long.
ACCEPT_PAUSE = 1.0
IPV6 = 6


def listen_family(host: str) -> socket.AddressFamily:
    """AF_INET6 for an IPv6 literal (``::``, ``::1``, ``[::1]``), else AF_INET."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return socket.AF_INET
    return socket.AF_INET6 if ip.version == IPV6 else socket.AF_INET


def create_listener(host: str, port: int) -> socket.socket:
    """A listening socket; ``host`` "" means every interface (dual-stack if possible).

    An IPv6 literal listens on IPv6 only (``::``: every IPv6 interface;
    ``::1``: this machine); any other host (an IPv4 address, a name) on IPv4.

    Raises:
        OSError: the address cannot be bound.
    """
    if not host and socket.has_dualstack_ipv6():
        sock = socket.create_server(
            ("", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=socket.SOMAXCONN
        )
    else:
        family = listen_family(host)
        sock = socket.create_server(
            (host.strip("[]"), port), family=family, backlog=socket.SOMAXCONN
        )
    sock.setblocking(False)
    return sock


class OpenPerGroup:
    """Open connections per address group (server/peer.py): ``--max-connections-per-address``."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}

    def count(self, peer: Peer) -> int:
        """Connections open from the peer's group."""
        return self._open.get(peer.group, 0)

    def opened(self, peer: Peer) -> None:
        """A connection from ``peer`` was accepted."""
        self._open[peer.group] = self.count(peer) + 1

    def closed(self, peer: Peer) -> None:
        """A connection from ``peer`` closed."""
        count = self.count(peer) - 1
        if count > 0:
            self._open[peer.group] = count
        else:
            self._open.pop(peer.group, None)


def _doing(upload: Upload) -> str:
    """What an upload cut off by the drain was doing."""
    return "receiving" if isinstance(upload.phase, Receiving) else "awaiting the verdict on"


def serve(channel: Channel, action: Callable[[], None]) -> None:
    """The per-connection edge: an unexpected error closes this connection only."""
    try:
        action()
    except Exception:
        channel.fail()


def _release(
    channel: Channel, unstored: AbstractSet[InstallTicket], pending: AbstractSet[InstallTicket]
) -> None:
    """The round is durable: queue the channel's held answers (1607 for ``unstored``; from
    the first that reports a blob still ``pending`` on, they stay held), send."""
    channel.session.release(unstored, pending)
    channel.send_answers()


def _waiting_selector() -> selectors.BaseSelector:
    """A selector whose registrations are no system calls (poll, else select): the loop
    makes one per turn while a round's commit is under way."""
    if hasattr(selectors, "PollSelector"):
        return selectors.PollSelector()
    return selectors.SelectSelector()


class _RoundInFlight:
    """A round whose commit is under way: what the loop waits on, and whom it answers then."""

    def __init__(self, commit: RoundCommit, answering: list[Channel], started: float) -> None:
        self.commit = commit
        self.answering = answering
        self.started = started

    def fileno(self) -> int:
        """The commit's descriptor."""
        return self.commit.fileno()

    @property
    def interest(self) -> int:
        """The selector event the commit waits for."""
        return selectors.EVENT_WRITE if self.commit.wants_write else selectors.EVENT_READ


class Server:
    """Accepts connections and runs every channel's I/O and timers."""

    def __init__(
        self, app: App, listener: socket.socket, proxies: ProxySources = NO_PROXIES
    ) -> None:
        self.app = app
        self.listener = listener
        self.channels: set[Channel] = set()
        #: ``--proxy-protocol-from``; connections from there wait for their header.
        self._proxies = proxies
        self._header_waits: set[HeaderWait] = set()
        self._per_address = OpenPerGroup()
        self._selector = selectors.DefaultSelector()
        self._recv_buffer = memoryview(bytearray(RECV_BUFFER_SIZE))
        self._stopping = False
        #: Set by :meth:`drain` (a signal handler); the loop starts the drain.
        self._drain_asked = False
        #: Set when the database could not be made durable: the loop stops.
        self.durability_lost: DurabilityLost | None = None
        self._drain_started: float | None = None
        self._drain_over = False
        self._closed_down = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._drain_wake)
        self._selector.register(listener, selectors.EVENT_READ, self._accept)
        #: Blob writes finish in the port's worker; it wakes the loop through this.
        self._selector.register(app.uploads.port, selectors.EVENT_READ, self._blobs_ready)
        self._accepting = True
        #: Channels to resume next round (ordered sets): deferred ones first.
        self._deferred: dict[Channel, None] = {}
        self._backlog: dict[Channel, None] = {}
        #: Channels whose blob is behind: resumed when it caught up (:meth:`_unpark`).
        self._parked: dict[Channel, None] = {}
        #: Channels whose answers wait for this round's end.
        self._answering: list[Channel] = []
        #: The round whose commit is under way, if any: no request is handled meanwhile.
        self._round: _RoundInFlight | None = None
        #: Channels whose held answers wait for the blob port's worker (a seal, a publish).
        self._awaiting_blobs: dict[Channel, None] = {}
        self._silent_closed = 0
        self._open_mark = 0
        self._summary_since = app.monotonic()
        self._flush_timer = app.timers.call_later(FLUSH_INTERVAL, self._flush)

    @property
    def address(self) -> tuple:
        """The bound address of the listening socket."""
        return self.listener.getsockname()

    def stop(self) -> None:
        """Ask the loop to stop (safe from a signal handler)."""
        self._stopping = True
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def drain(self) -> None:
        """Ask for a graceful stop (safe from a signal handler); a second call stops at once."""
        if self._drain_asked or self.app.limits.drain_timeout <= 0:
            self.stop()
            return
        self._drain_asked = True
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def serve_forever(self) -> None:
        """Run until :meth:`stop` or the end of a drain; then close every connection."""
        try:
            while not self._stopping:
                self.run_once()
                if self._drain_asked:
                    self._drain_round()
        finally:
            self.close()

    def run_once(self) -> None:
        """One select() round: a turn for each backlogged channel, then the ready ones, timers;
        then the round's commit begins (:meth:`_end_round`). While it is under way, a round
        serves sockets only (:meth:`_serve_while_committing`)."""
        if self._round is not None:
            self._serve_while_committing(self._round)
            return
        self._blob_jobs_done()  # those done while a commit was under way
        # Resumed channels may join the backlog again.
        backlog = [*self._deferred, *self._backlog]
        self._deferred.clear()
        self._backlog.clear()
        self.app.shares.new_round()
        # Answers held since the last round's end (a failure while sending
        # them queues a 1607) go out without waiting in select().
        waiting = backlog or self._answering
        timeout = 0.0 if waiting else self.app.timers.timeout(MAX_SELECT_TIMEOUT)
        ready = self._selector.select(timeout)
        woke = self.app.monotonic()
        turn = RECV_BUFFER_SIZE if len(ready) == 1 and not backlog else SHARED_TURN_SIZE
        for channel in backlog:
            if not channel.closed:
                channel.turn_size = turn
                serve(channel, channel.resume)
        resumed = set(backlog)  # had their turn this round
        for key, mask in ready:
            self._handle(key.data, mask, turn, resumed)
        self._run_timers()
        # what a paused upload holds goes to the blob port's worker (a streaming one: past
        # hold_bytes, server/blobport.py)
        self.app.uploads.port.hand_over_held()
        self._end_round()
        self.app.metrics.loop_round(self.app.monotonic() - woke)

    def _serve_while_committing(self, in_flight: _RoundInFlight) -> None:
        """A round whose commit is under way: accept, wake-ups, blob port, and the timers
        that call no store, until the commit is done (advanced at least once a second).

        The loop waits on a selector of its own then (:func:`_waiting_selector`,
        made for the round: no system call to set up), so that the
        connections, whose requests wait for the next round, do not wake it:
        they stay in the main selector, and it reports them once the round is
        over.
        """
        waiting = _waiting_selector()
        waiting.register(in_flight.fileno(), in_flight.interest, in_flight)
        waiting.register(self._wake_r, selectors.EVENT_READ, self._drain_wake)
        waiting.register(self.app.uploads.port, selectors.EVENT_READ, self._blobs_ready)
        if self._accepting:
            waiting.register(self.listener, selectors.EVENT_READ, self._accept)
        timeout = self.app.timers.timeout(MAX_SELECT_TIMEOUT, storage=False)
        ready = waiting.select(timeout)
        waiting.close()
        for key, _ in ready:
            if key.data is not in_flight:
                self._run_guarded(key.data)
        self._run_timers()
        # Ready or not (advance never waits): a commit may give up on a database that
        # stopped answering (RoundCommit), which no readiness reports.
        self._advance_commit(in_flight)

    def _run_timers(self) -> None:
        """Run the due timers; while a commit is under way, only those that call no store."""
        due = self.app.timers.due(storage=self._round is None)  # earliest first
        if due:
            self.app.metrics.loop_lag(self.app.monotonic() - due[0].when)
        for timer in due:
            if timer.callback is not None:  # set: due() returns live timers only
                self._run_guarded(timer.callback)

    def _end_round(self) -> None:
        """Group commit: begin the round's commit; its held answers go out once it is done.

        A commit that completes later (a :class:`RoundCommit`) is waited for
        through the selector (:meth:`_serve_while_committing`).
        """
        answering, self._answering = self._answering, []
        started = self.app.monotonic()
        try:
            commit = self.app.begin_round(durable=bool(answering))
        except StorageFault as exc:
            self._round_failed(answering, exc)
            return
        in_flight = _RoundInFlight(commit, answering, started) if commit is not None else None
        if in_flight is None:
            self._round_durable(answering, started)
            return
        self._round = in_flight
        self._advance_commit(in_flight)

    def _advance_commit(self, in_flight: _RoundInFlight) -> None:
        """Advance the round's commit; once done, send the round's answers."""
        try:
            done = in_flight.commit.advance()
        except StorageFault as exc:
            self._commit_over(in_flight, exc)
            return
        if not done:
            return  # waited for in the next turn (wants_write says how)
        self._commit_over(in_flight, None)

    def _commit_over(self, in_flight: _RoundInFlight, failure: StorageFault | None) -> None:
        """The round's commit is done (``failure`` None) or lost: answer, or close unanswered."""
        self._round = None
        if failure is None:
            self._round_durable(in_flight.answering, in_flight.started)
            return
        self.app.round_lost()
        self._round_failed(in_flight.answering, failure)

    def _round_durable(self, answering: list[Channel], started: float) -> None:
        """The round is committed (durable if it had answers): publish, then answer."""
        unstored = self.app.round_committed()
        pending = self.app.blob_work_pending
        if answering:
            self.app.metrics.storage_commit(self.app.monotonic() - started)
        for channel in answering:
            if not channel.closed:
                serve(channel, functools.partial(_release, channel, unstored, pending))
                if channel.session.holds_answers and not channel.closed:
                    self._awaiting_blobs[channel] = None

    def _blobs_ready(self) -> None:
        """The blob port's worker caught up or finished jobs (server/blobport.py)."""
        self.app.uploads.port.on_ready()
        if self._round is None:
            self._blob_jobs_done()

    def _blob_jobs_done(self) -> None:
        """Finish the blob jobs the worker is done with (the stores free); the answers that
        waited on them go out at this round's end.

        Only the channels whose first held answer no longer waits are answered:
        the others would be released for nothing, and a round with answers is
        a durable commit (a job ends per write of an upload).
        """
        if self.app.uploads.port.run_finished():
            pending = self.app.blob_work_pending
            for channel in list(self._awaiting_blobs):
                if channel.closed or not channel.session.awaits_blob(pending):
                    del self._awaiting_blobs[channel]
                    if not channel.closed:
                        self.hold_answers(channel)

    def _round_failed(self, answering: list[Channel], exc: StorageFault) -> None:
        """The round is lost: its connections close unanswered; DurabilityLost stops the loop."""
        if isinstance(exc, DurabilityLost):
            log.critical(
                "cannot make this round's commits durable (%s): stopping; %d connection(s)"
                " closed unanswered. Nothing can be answered on this database any more;"
                " a restart recovers what is on disk", exc, len(answering),
            )
            self._close_unanswered(answering)
            self.durability_lost = exc
            self._stopping = True
            return
        if not answering:
            log.error("cannot commit this round's writes: %s", exc)
            return
        log.error("cannot make this round's commits durable (%s): %d connection(s)"
                  " closed unanswered", exc, len(answering))
        self._close_unanswered(answering)

    def _wait_for_round(self) -> None:
        """Block until the round's commit under way is over (the server stops)."""
        in_flight = self._round
        if in_flight is None:
            return
        try:
            wait_for(in_flight.commit)
        except StorageFault as exc:
            self._commit_over(in_flight, exc)
            return
        self._commit_over(in_flight, None)

    @staticmethod
    def _close_unanswered(answering: list[Channel]) -> None:
        for channel in answering:
            channel.close("answers not durable")

    def _handle(self, target: Channel | Callable[[], None], mask: int, turn: int,
                resumed: set[Channel]) -> None:
        if isinstance(target, Channel):
            if mask & selectors.EVENT_WRITE and not target.closed:
                serve(target, target.on_writable)
            if mask & selectors.EVENT_READ and not target.closed and target not in resumed:
                target.turn_size = turn
                serve(target, target.on_readable)
        else:
            self._run_guarded(target)

    @staticmethod
    def _run_guarded(action: Callable[[], None]) -> None:
        """Housekeeping (accepting, timers of the app): log an error and serve on."""
        try:
            action()
        except Exception:
            log.exception("unexpected error in the loop; serving on")

    # -- accepting -------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(ACCEPT_BURST):
            try:
                sock, raw = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("accept failed: %s; pausing accepts", exc.strerror or exc)
                self._pause_accepting()
                return
            peer = Peer(raw[0], raw[1], self.app.limits.ipv6_prefix)
            if self._proxies.send_headers(peer):
                self._await_header(sock, peer)
            else:
                self._open_channel(sock, peer)

    def _open_channel(
        self, sock: socket.socket, peer: Peer, via: Peer | None = None,
        opened: float | None = None,
    ) -> None:
        """Admit a connection from ``peer`` (``via`` a PROXY protocol sender, which it reached
        at ``opened``), or refuse it."""
        refusal = self._refusal(peer)
        if refusal:
            self._refuse(sock, peer, refusal)
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        channel = Channel(
            sock,
            Session(self.app, peer, opened),
            self._selector,
            self._recv_buffer,
            self.app.timers,
            port=self,
        )
        self.channels.add(channel)
        self._per_address.opened(peer)
        self._log_connected(peer, via)

    def _refuse(self, sock: socket.socket, peer: Peer, refusal: str) -> None:
        level = self.app.log_limiter.level(log, peer.group, logging.WARNING)
        log.log(level, "%s refused: %s", peer, refusal)
        sock.close()

    def _await_header(self, sock: socket.socket, proxy: Peer) -> None:
        """A connection from a PROXY protocol sender: read its header (server/proxied.py).

        Its own address is the sender's, which speaks for many clients: only
        ``--max-connections`` applies until the header names the client.
        """
        refusal = self._refusal(proxy, by_address=False)
        if refusal:
            self._refuse(sock, proxy, refusal)
            return
        sock.setblocking(False)
        self._header_waits.add(HeaderWait(
            sock, proxy, self._selector, self.app.timers, self.app.log_limiter,
            self.app.limits.message_deadline, port=self,
        ))

    def header_read(self, wait: HeaderWait, client: Peer) -> None:
        """The header named the client: admit the connection as the client's."""
        self._header_waits.discard(wait)
        self._open_channel(wait.sock, client, via=wait.proxy if client is not wait.proxy else None,
                           opened=wait.opened)

    def header_wait_closed(self, wait: HeaderWait) -> None:
        """A connection closed before its header was read: forget it."""
        self._header_waits.discard(wait)
        if wait.silent:
            self._silent_closed += 1

    def _log_connected(self, peer: Peer, via: Peer | None) -> None:
        """INFO while the open count rises (load coming), DEBUG in churn."""
        level = logging.DEBUG
        if len(self.channels) > self._open_mark:
            self._open_mark = len(self.channels)
            level = self.app.log_limiter.level(log, peer.group, logging.INFO)
        through = f" through {via}" if via is not None else ""
        log.log(level, "%s connected%s (%d open)", peer, through, len(self.channels))

    def _refusal(self, peer: Peer, *, by_address: bool = True) -> str | None:
        """Why a connection is refused: the open count, or (``by_address``) its address's."""
        limits = self.app.limits
        if len(self.channels) + len(self._header_waits) >= limits.max_connections:
            return f"{limits.max_connections} connections open"
        per_address = limits.max_connections_per_address
        if by_address and per_address and self._per_address.count(peer) >= per_address:
            return f"{per_address} connections open from this address"
        return None

    def _pause_accepting(self) -> None:
        if self._accepting:
            self._selector.unregister(self.listener)
            self._accepting = False
            self.app.timers.call_later(
                ACCEPT_PAUSE, self._resume_accepting, touches_storage=False
            )

    def _resume_accepting(self) -> None:
        if not self._accepting and not self._stopping and self._drain_started is None:
            self._selector.register(self.listener, selectors.EVENT_READ, self._accept)
            self._accepting = True

    # -- the channels' port (server.channel.LoopPort) ------------------------------

    def serve(self, channel: Channel, action: Callable[[], None]) -> None:
        """Run a channel's entry point at the per-connection edge (:func:`serve`)."""
        serve(channel, action)

    def may_take_request(self, channel: Channel) -> bool:
        """Whether the channel's address group (server/peer.py) has shares left this round,
        and neither all blobs' queue nor the blob it streams is behind (server/blobport.py).

        A channel is parked (neither read nor stepped) while its blob is behind,
        until the blob port says the blob caught up; and, if it streams no
        upload (its next request may bring a new file's content, whole), while
        all blobs' queue is over its bound, until the port says it drained; and
        so is one that streams an upload once that queue is full (twice its
        bound: a new file's first packet replaces the upload under way).
        """
        if self._round is not None:
            return False  # the store is busy: the loop resumes it after the commit
        port = self.app.uploads.port
        if port.over and (port.full or not self.app.uploads.receiving(channel.peer)):
            self._parked[channel] = None
            port.when_drained(functools.partial(self._unpark, channel))
            return False
        behind = self.app.uploads.storage_behind(channel.peer)
        if behind is not None:
            self._parked[channel] = None
            self.app.uploads.port.when_caught_up(
                behind, functools.partial(self._unpark, channel)
            )
            return False
        return self.app.shares.has_left(channel.peer.group)

    def _unpark(self, channel: Channel) -> None:
        """Its blob caught up: resume the channel next round, among the first."""
        if self._parked.pop(channel, 0) is None and not channel.closed:
            self._deferred[channel] = None

    def request_taken(self, channel: Channel) -> None:
        """Charge a handled request to the channel's address group for this round."""
        self.app.shares.request_handled(channel.peer.group)

    def hold_answers(self, channel: Channel) -> None:
        """Send the channel's answers once this round is committed (:meth:`_end_round`)."""
        self._answering.append(channel)

    def wants_turn(self, channel: Channel) -> None:
        """Resume the channel next round, after the deferred ones."""
        self._backlog[channel] = None

    def defer(self, channel: Channel) -> bool:
        """Resume the channel in the next round, among the first (round robin); a parked
        one once its blob caught up (:meth:`_unpark`): then False (it leaves the selector
        meanwhile)."""
        if channel in self._parked:
            return False
        self._deferred[channel] = None
        return True

    def channel_closed(self, channel: Channel) -> None:
        """Forget a closed channel."""
        self.channels.discard(channel)
        self._backlog.pop(channel, None)
        self._deferred.pop(channel, None)
        self._parked.pop(channel, None)
        self._awaiting_blobs.pop(channel, None)
        if channel.silent:
            self._silent_closed += 1
        self._per_address.closed(channel.peer)

    # -- housekeeping ------------------------------------------------------------

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(RECV_BUFFER_SIZE):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _flush(self) -> None:
        try:
            self.app.metadata.flush()
        except StorageFault as exc:
            log.error("cannot record LastSeen: %s", exc)
        self._summarise_connections()
        self._flush_timer = self.app.timers.call_later(FLUSH_INTERVAL, self._flush)

    def _summarise_connections(self) -> None:
        """One line for the silent connections since the last one (see the module doc)."""
        now = self.app.monotonic()
        if self._silent_closed:
            log.info(
                "%d connections closed without sending a byte in the last %.0f s",
                self._silent_closed, now - self._summary_since,
            )
        self._silent_closed = 0
        self._summary_since = now
        self._open_mark = len(self.channels)

    # -- draining ------------------------------------------------------------------

    def _drain_round(self) -> None:
        """Start the drain, close what holds nothing, stop when done or out of time."""
        if self._drain_started is None:
            self._drain_started = self.app.monotonic()
            self._stop_accepting()
            self.app.timers.call_later(
                self.app.limits.drain_timeout, self._end_drain, touches_storage=False
            )
            log.info(
                "stop asked: draining %d connection(s) for up to %g s (a second signal stops now)",
                len(self.channels), self.app.limits.drain_timeout,
            )
        for wait in list(self._header_waits):
            wait.close("server stopping")
        for channel in list(self.channels):
            if channel.idle and not self.app.uploads.held_by(channel.peer):
                channel.close("server stopping")
        if not self.channels:
            log.info("drained in %.3f s", self.app.monotonic() - self._drain_started)
            self._stopping = True
        elif self._drain_over:
            self._log_cut_off()
            self._stopping = True

    def _end_drain(self) -> None:
        self._drain_over = True

    def _log_cut_off(self) -> None:
        """One line per connection the drain timeout cuts off, with what it held."""
        log.warning(
            "drain timeout (%g s): cutting off %d connection(s)",
            self.app.limits.drain_timeout, len(self.channels),
        )
        for channel in self.channels:
            held = [
                f"{_doing(upload)}"
                f" {quoted(upload.file_name)} for client"
                f" {upload.client_id.hex()} ({upload.received} bytes in)"
                for upload in self.app.uploads.held_by(channel.peer)
            ]
            log.warning(
                "%s cut off by the stop: %s", channel.peer,
                "; ".join(held) if held else "in the middle of a request",
            )

    def _stop_accepting(self) -> None:
        """Close the listener: new clients are refused rather than left waiting."""
        if self._accepting:
            self._selector.unregister(self.listener)
            self._accepting = False
        if self.listener.fileno() != -1:
            self.listener.close()

    def close(self) -> None:
        """Stop accepting and close every connection and upload."""
        if self._closed_down:
            return
        self._closed_down = True
        self._wait_for_round()
        self._stop_accepting()
        for wait in list(self._header_waits):
            wait.close("server stopping")
        for channel in list(self.channels):
            channel.close("server stopping")
        self.app.uploads.close()
        self.app.uploads.port.close()
        self.app.log_limiter.flush()  # what was suppressed is counted before the end
        self._flush_timer.cancel()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
