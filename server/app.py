"""What every handler shares: the stores, uploads, limits, timers and clocks."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import AbstractSet, Callable

from .budget import HOUR, DecryptionBudget
from .errors import StorageFault
from .limits import Limits
from .lograte import LogLimiter
from .metrics import NO_METRICS, Metrics
from .outcome import InstallTicket
from .peer import Peer, address_group
from .rate import RegistrationLimiter
from .reads import RequestReads
from .shares import RoundShares
from .storage import BlobStore, MetadataStore, RoundCommit
from .storage.coordination import (
    RENEWALS_PER_LEASE, Coordination, MemoryCoordination, RegistrationHold,
)
from .storage.sweep import GARBAGE_GRACE, Sweeper, run_here
from .timers import Timers
from .upload import Uploads

log = logging.getLogger(__name__)

#: Lapsed clients (keyless registrations past the key window, keyed clients
#: that never stored a file past ``unused_client_lapse``) are deleted this
#: often, and whenever a registration meets the client cap or its address's
#: share of it, so that they stop counting at once; this keeps the database small.
PURGE_INTERVAL = 300.0


class LiveRegistrations:
    """Keyless registrations made by 825 on connections still open.

    Another connection's 825 for such a name gets 1601. Indexed both ways, so
    that closing a connection costs what it held, not what all hold. With
    other nodes (``shared``), each is also held in the coordination
    (server/storage/coordination.py) for as long as this node renews it:
    another node's connection gets 1601 too. A registration that got its key
    or was replaced is let go there at the next renewal (a keyed or deleted
    client's hold is never asked about); a closed connection's at once.

    Where the store can write the holds (``hold_along``: the same database), a
    hold goes into the round's transaction, in place with the registration's
    row at the round's commit. Until the round is over it is neither renewed
    (the renewal would wait for the round's lock on the row, and the round for
    the loop that waits on the renewal) nor let go by the coordination (which
    cannot see it yet): a connection that closes meanwhile has its holds let
    go once the round is over (:meth:`round_over`), committed or lost.
    """

    def __init__(
        self, shared: Coordination | None = None, hold_along: RegistrationHold | None = None
    ) -> None:
        self._shared = shared
        self._hold_along = hold_along
        self._holder: dict[bytes, Peer] = {}
        self._held: dict[Peer, set[bytes]] = {}
        #: The holds queued in the round under way (:attr:`_hold_along`).
        self._in_round: set[bytes] = set()
        #: Those of them whose connection closed: let go once the round is over.
        self._closed_in_round: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._holder)

    def holder(self, client_id: bytes) -> Peer | None:
        """The connection that registered this keyless client, if still open."""
        return self._holder.get(client_id)

    def held_elsewhere(self, client_id: bytes) -> bool:
        """Whether another node's connection holds this keyless client.

        Raises:
            StorageFault: the coordination cannot tell.
        """
        return self._shared is not None and self._shared.registration_held_elsewhere(client_id)

    def held(self) -> list[bytes]:
        """Every keyless client this node holds (for the renewal), but those whose hold is
        in the round under way."""
        in_round = self._in_round
        return [client_id for client_id in self._holder if client_id not in in_round]

    def hold(self, client_id: bytes, peer: Peer) -> None:
        """The connection ``peer`` registered ``client_id``.

        If the coordination cannot take the hold, it is held here only (logged).
        """
        self.release(client_id)
        self._holder[client_id] = peer
        self._held.setdefault(peer, set()).add(client_id)
        if self._shared is not None:
            try:
                if self._hold_along is not None:
                    self._hold_along(client_id)
                    self._in_round.add(client_id)
                else:
                    self._shared.hold_registration(client_id)
            except StorageFault as exc:
                log.warning(
                    "%s: client %s: its registration is held on this node only: %s",
                    peer.address, client_id.hex(), exc,
                )

    def release(self, client_id: bytes) -> None:
        """The registration got its key or was replaced."""
        peer = self._holder.pop(client_id, None)
        if peer is not None:
            held = self._held[peer]
            held.discard(client_id)
            if not held:
                del self._held[peer]

    def connection_closed(self, peer: Peer) -> None:
        """Forget the registrations a closed connection was holding."""
        held = self._held.pop(peer, set())
        for client_id in held:
            del self._holder[client_id]
        in_round = held & self._in_round
        if in_round:
            self._closed_in_round |= in_round
            held = held - in_round
        if held:
            self._let_go(held, peer.address)

    def round_over(self) -> None:
        """The round is committed or lost: its holds are in place (or gone with it), renewed
        from now on; those of connections closed meanwhile are let go."""
        self._in_round.clear()
        closed, self._closed_in_round = self._closed_in_round, set()
        if closed:
            self._let_go(closed, "connections closed in the round")

    def _let_go(self, client_ids: set[bytes], whose: str) -> None:
        """Release in the coordination the holds of closed connections' registrations
        (``whose``: a connection's address, or what they were, for the log)."""
        if self._shared is None:
            return
        try:
            self._shared.release_registrations(client_ids)
        except StorageFault as exc:  # they go at the next renewal, or lapse
            log.warning("%s: cannot let go of its registrations: %s", whose, exc)


@dataclass
class App:
    """The server's shared state; one per process, never a global."""

    #: The metadata store, its client reads made once per request (server/reads.py).
    metadata: RequestReads
    blobs: BlobStore
    limits: Limits
    timers: Timers
    uploads: Uploads
    registrations: RegistrationLimiter
    budget: DecryptionBudget
    #: How many event lines each address may log (server/lograte.py).
    log_limiter: LogLimiter
    #: What each address may have done in the current loop round.
    shares: RoundShares
    #: Deletes the blobs no row points at any more, after a grace period (the purge
    #: leader's: one node at a time sweeps the blob store the nodes share).
    sweeper: Sweeper
    #: What the nodes sharing the metadata agree on (server/storage/coordination.py).
    coordination: Coordination
    wall_clock: Callable[[], float] = field(default=time.time)
    live_registrations: LiveRegistrations = field(default_factory=LiveRegistrations)
    #: What the loop, the sessions and the budget report to (server/metrics.py).
    metrics: Metrics = NO_METRICS
    #: A round's commit is under way (:meth:`begin_round`): the store may not be called.
    committing: bool = False
    _closed_while_committing: list[Peer] = field(default_factory=list)

    def connection_closed(self, peer: Peer) -> None:
        """A connection closed: drop the uploads and registrations it was holding.

        While a round's commit is under way the store may not be called
        (:meth:`begin_round`): its uploads are dropped once the commit is done.
        """
        self.live_registrations.connection_closed(peer)
        if self.committing:
            self._closed_while_committing.append(peer)
        else:
            self.uploads.connection_closed(peer)

    def end_round(self, *, durable: bool) -> AbstractSet[InstallTicket]:
        """Commit the round, then install its first uploads (:meth:`RoundInstalls.end_round`),
        waited for (tests; the loop uses :meth:`begin_round`).

        Returns the tickets of the first uploads that could not take their
        names: their answers become 1607 (:meth:`Session.release`).

        Raises:
            StorageFault: the round is lost; none of its answers may go out.
        """
        self.coordination.settle()
        try:
            return self.uploads.installs.end_round(durable=durable)
        finally:
            self.live_registrations.round_over()

    def begin_round(self, *, durable: bool) -> RoundCommit | None:
        """Start the round's commit (:meth:`RoundInstalls.begin_round`).

        If a :class:`RoundCommit` comes back, nothing may call the store until
        it is done: then :meth:`round_committed`, or :meth:`round_lost` if it raised.

        Raises:
            StorageFault: the round is lost; none of its answers may go out.
        """
        self.coordination.settle()  # a hold of this round's 825s is in place before its answer
        try:
            commit = self.uploads.installs.begin_round(durable=durable)
        except StorageFault:
            self.live_registrations.round_over()
            raise
        self.committing = commit is not None
        return commit

    def round_committed(self) -> AbstractSet[InstallTicket]:
        """The round's commit is done: publish its blobs; return the tickets of those that
        could not be (their answers become 1607)."""
        self.committing = False
        self.live_registrations.round_over()
        unstored = self.uploads.installs.round_committed()
        self._drop_closed()
        return unstored

    @property
    def blob_work_pending(self) -> AbstractSet[InstallTicket]:
        """The tickets whose blob the blob port's worker still seals or publishes: their
        answers stay held (:meth:`Session.release`)."""
        return self.uploads.installs.pending

    def round_lost(self) -> None:
        """The round's commit failed: none of its first uploads is stored."""
        self.committing = False
        self.live_registrations.round_over()
        self.uploads.installs.abandon_first_uploads()
        self._drop_closed()

    def _drop_closed(self) -> None:
        """The store may be called again: drop what connections closed meanwhile held."""
        closed, self._closed_while_committing = self._closed_while_committing, []
        for peer in closed:
            self.uploads.connection_closed(peer)

    @property
    def client_share(self) -> int:
        """How many clients one address group may register (``max_client_share_per_address``)."""
        share = int(self.limits.max_clients * self.limits.max_client_share_per_address)
        return max(1, share)

    def group_of(self, address: str | None) -> str | None:
        """The address group of a stored address (server/peer.py), None for none."""
        return None if address is None else address_group(address, self.limits.ipv6_prefix)

    def purge_lapsed_clients(self) -> int:
        """Delete lapsed keyless registrations and lapsed unused clients; return how many.

        Each query reads what it deletes (indexes by age). A client with an
        upload in progress is kept.
        """
        now = self.wall_clock()
        lapse = self.limits.unused_client_lapse
        with self.metadata.transaction():
            keyless = self.metadata.delete_stale_keyless(now - self.limits.key_window)
            unused = [
                client_id
                for client_id in (self.metadata.unused_clients(now - lapse) if lapse else [])
                if not self.uploads.in_progress(client_id)
            ]
            if unused:  # an upload on another node keeps its client too
                elsewhere = self.coordination.uploading(unused)
                unused = [client_id for client_id in unused if client_id not in elsewhere]
            for client_id in unused:
                self.metadata.forget_client(client_id)
        if keyless:
            log.info("%d keyless registration(s) lapsed and were deleted", keyless)
        if unused:
            log.info(
                "%d client(s) that never stored a file lapsed and were deleted: %s",
                len(unused), " ".join(client_id.hex() for client_id in unused),
            )
        return keyless + len(unused)

    def _purge_periodically(self) -> None:
        """This node's rates; the lapsed clients and old failures, if this node is the leader."""
        self.registrations.sweep()
        try:
            if self.coordination.may_run_purges():
                self.purge_lapsed_clients()
                self.coordination.purge(HOUR)
        except StorageFault as exc:
            log.error("cannot delete lapsed clients: %s", exc)
        self.timers.call_later(PURGE_INTERVAL, self._purge_periodically)

    def _renew_periodically(self) -> None:
        """Renew this node's registration holds and upload leases; let go of the others."""
        try:
            self.coordination.renew(self.live_registrations.held(), self.uploads.leased())
        except StorageFault as exc:
            log.error("cannot renew this node's holds and leases: %s", exc)
        self.timers.call_later(self._renewal_interval, self._renew_periodically)

    @property
    def _renewal_interval(self) -> float:
        return self.limits.message_deadline / RENEWALS_PER_LEASE

    def _sweep_garbage_periodically(self) -> None:
        """Begin a sweep of the blobs no row points at, if this node is the purge leader: the
        nodes share one blob store, and one of them sweeps it at a time."""
        try:
            if self.coordination.may_run_purges():
                self.sweeper.start()
        except StorageFault as exc:
            log.error("cannot delete the blobs no row points at: %s", exc)
        self.timers.call_later(GARBAGE_GRACE, self._sweep_garbage_periodically)

    def _sweep_log_periodically(self) -> None:
        """Count the lines of floods that fell silent (their next line would have)."""
        self.log_limiter.sweep()
        self.timers.call_later(
            self.limits.log_rate_interval, self._sweep_log_periodically, touches_storage=False
        )

    @classmethod
    def build(
        cls,
        metadata: MetadataStore,
        blobs: BlobStore,
        limits: Limits,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics = NO_METRICS,
        coordination: Coordination | None = None,
    ) -> App:
        """Wire the parts together; everything reads and writes ``metadata`` through one
        :class:`RequestReads`.

        ``coordination``: what this node shares with the others (None: it is
        the only one, :class:`MemoryCoordination` on ``clock``); its holds and
        leases last ``message_deadline`` after each renewal.
        """
        timers = Timers(clock)
        if coordination is None:
            coordination = MemoryCoordination(clock, lease=limits.message_deadline)
        reads = RequestReads(metadata, coordination.read_along(metadata, HOUR))
        budget = DecryptionBudget(
            limits.max_decryption_failures_per_key,
            limits.max_decryption_failures_per_hour,
            coordination,
            metrics,
            reads.failure_counts,
        )
        log_limiter = LogLimiter(limits.log_lines_per_address, limits.log_rate_interval, clock)
        shares = RoundShares(
            limits.requests_per_address_per_round, limits.durable_files_per_address_per_round
        )
        uploads = Uploads(
            timers, limits, reads, blobs, budget, log_limiter, shares, coordination,
            fence=coordination.fence_along(metadata),
        )
        app = cls(
            metadata=reads,
            blobs=blobs,
            limits=limits,
            timers=timers,
            uploads=uploads,
            registrations=RegistrationLimiter(limits.registrations_per_minute, clock),
            budget=budget,
            log_limiter=log_limiter,
            shares=shares,
            sweeper=Sweeper(
                reads, blobs, clock, uploads.live_blob_keys,
                list_in=uploads.port.run if blobs.slow_writes else run_here,
                # where its writes go: a store whose writes the loop thread does (in memory)
                # deletes there too
                delete_in=uploads.port.run if _writes_off_loop(blobs) else run_here,
            ),
            coordination=coordination,
            live_registrations=LiveRegistrations(coordination, coordination.hold_along(metadata)),
            metrics=metrics,
        )
        timers.call_later(PURGE_INTERVAL, app._purge_periodically)
        timers.call_later(app._renewal_interval, app._renew_periodically)
        timers.call_later(GARBAGE_GRACE, app._sweep_garbage_periodically)
        if limits.log_lines_per_address:
            timers.call_later(
                limits.log_rate_interval, app._sweep_log_periodically, touches_storage=False
            )
        return app

    def monotonic(self) -> float:
        """The loop's clock (deadlines, elapsed times)."""
        return self.timers.clock()


def _writes_off_loop(blobs: BlobStore) -> bool:
    """Whether the blob port's worker does the store's writes (server/blobport.py)."""
    return blobs.slow_writes or blobs.buffered_writes
