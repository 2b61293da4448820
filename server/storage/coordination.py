"""What the nodes of one service must agree on, beside the metadata: the coordination seam.

Several server processes ("nodes") sharing one metadata store act as one
server only if they also share the few rules a single server keeps in its
memory (docs/ARCHITECTURE.md, "Several nodes"):

* a keyless registration's **hold** on its name: the node whose connection
  made it holds it, so that another connection (of the same address) gets
  1601 while it is open (``LiveRegistrations``, server/app.py);
* one **upload lease** per client and file name: the node receiving it
  holds it from the first packet until the upload stops receiving, or,
  complete, until the round that records it is over (server/upload.py);
  the lease names the blob it writes, so that no
  node's sweeper takes that blob for garbage in a shared blob store
  (server/storage/sweep.py); where the leases are in the metadata's own
  database, a complete upload is recorded only while its node holds the
  lease (:data:`UploadFence`, server/storage/postgres/fence.py);
* the **decryption-failure budget**: failures per key, and per client in a
  window, counted across nodes and addresses (server/budget.py);
* the **purge leader**: one node at a time deletes lapsed clients and
  old failures (server/app.py).

A hold or lease is this node's for ``lease`` seconds after it was taken or
last renewed; :meth:`Coordination.renew` (every third of that, from the
loop's timer) renews what the node still holds and lets go of the rest, so
that a node that stops (killed, cut off) loses them within ``lease``
seconds and another node may serve the same client. Where the nodes are
processes of their own (:mod:`.postgres.coordination`), a node that is gone
loses them at once: they are void while its name's lock is not held.

Two implementations: :class:`MemoryCoordination` (the nodes of one process:
a single server is one node of it, and tests join more), and the
PostgreSQL one in :mod:`.postgres.coordination`. Every method may raise
:class:`~server.errors.StorageFault`.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Callable, Collection, NamedTuple, Protocol

from protocol.codes import CLIENT_ID_SIZE

from .base import Binding, ClientRow

#: A lease's kinds, as the stores name them.
REGISTRATION = "registration"
UPLOAD = "upload"

#: How often a node renews its holds and leases within one lease time.
RENEWALS_PER_LEASE = 3
#: Seconds a hold or lease lasts after its renewal, unless told (the
#: server's is its ``--message-deadline``, of this default).
DEFAULT_LEASE = 30.0


class UploadLease(NamedTuple):
    """A receiving upload, as its lease names it: the client, the file name, the blob it writes."""

    client_id: bytes
    file_name: bytes
    blob_key: str


class PendingTake(Protocol):
    """An upload's lease asked for without waiting (:meth:`Coordination.begin_take_upload`)."""

    def taken(self) -> bool:
        """Whether this node holds the lease (False: another node does, unlapsed); waits for
        the answer if it has not come yet.

        Raises:
            StorageFault: the coordination cannot tell.
        """
        ...


@dataclass(frozen=True)
class Answered:
    """A :class:`PendingTake` answered at once (a coordination that waits for nothing)."""

    held: bool

    def taken(self) -> bool:
        """Whether this node holds the lease."""
        return self.held


@dataclass(frozen=True)
class FailureCounts:
    """A client's failed decryptions: under one key, and within the window."""

    #: Under the key asked about, since it was issued (0 for another key).
    under_key: int
    #: Under any key, from any address, within the window asked about.
    in_window: int


#: A read of a client's row and binding with its failure counts (under the row's AES key,
#: within the window): the metadata store's, when it can read the counts as well.
ClientReadWithFailures = Callable[
    [bytes], tuple[ClientRow | None, Binding | None, FailureCounts | None]
]


#: Queues, in the metadata store's open transaction, the check that this node still holds an
#: upload's lease with its blob, the lease kept this node's until that transaction ends and
#: let go with its commit: the transaction's next read raises
#: :class:`~server.errors.LeaseLost` if it does not (server/storage/postgres/fence.py).
UploadFence = Callable[[UploadLease], None]

#: Queues, in the metadata store's transactions, this node's hold on a new keyless
#: registration: it goes out with the round's next message, and is in place for every node
#: with the round's commit, as the registration's row is (no message of its own).
RegistrationHold = Callable[[bytes], None]


class Coordination(Protocol):
    """The holds, leases, failure counts and leadership the nodes of one service share."""

    #: This node's name, as the others see it (``--node-name``).
    node: str

    def hold_registration(self, client_id: bytes) -> None:
        """This node holds the keyless registration ``client_id`` (a new id: never held)."""
        ...

    def registration_held_elsewhere(self, client_id: bytes) -> bool:
        """Whether another node holds the registration, unlapsed."""
        ...

    def release_registrations(self, client_ids: Collection[bytes]) -> None:
        """This node no longer holds these registrations (its connection closed)."""
        ...

    def take_upload(self, lease: UploadLease) -> bool:
        """Take (or renew) the lease of the client's upload of a file name.

        Returns False if another node holds it, unlapsed.
        """
        ...

    def begin_take_upload(self, lease: UploadLease) -> PendingTake:
        """:meth:`take_upload`, its answer read when asked for (:meth:`PendingTake.taken`):
        meanwhile the loop does the packet's work instead of waiting.

        Raises:
            StorageFault: it could not be asked.
        """
        ...

    def release_upload(self, client_id: bytes, file_name: bytes) -> None:
        """The upload stopped receiving here: another node may take it."""
        ...

    def uploading(self, client_ids: Collection[bytes]) -> set[bytes]:
        """Those of ``client_ids`` with an upload lease on any node."""
        ...

    def live_blobs(self) -> set[str]:
        """The blob keys of the uploads any node is receiving (unlapsed leases)."""
        ...

    def renew(
        self, registrations: Collection[bytes], uploads: Collection[UploadLease]
    ) -> None:
        """What this node holds now: each for another ``lease``; its other holds and leases go."""
        ...

    def decrypt_failures(self, client_id: bytes, aes_key: bytes, window: float) -> FailureCounts:
        """The client's failed decryptions under ``aes_key``, and within ``window`` seconds."""
        ...

    def note_decrypt_failure(
        self, client_id: bytes, aes_key: bytes, window: float
    ) -> FailureCounts:
        """Count one failed decryption under ``aes_key``; the counts with it.

        A failure under another key than the one counted so far starts the
        per-key count again (a new key was issued).
        """
        ...

    def may_run_purges(self) -> bool:
        """Whether this node runs the periodic purges (it stays the one while it runs)."""
        ...

    def purge(self, window: float) -> None:
        """Forget failures older than ``window`` seconds and lapsed holds and leases."""
        ...

    def read_along(self, store: object, window: float) -> ClientReadWithFailures | None:
        """A read of ``store``'s that also brings a client's failure counts within
        ``window`` (as :meth:`decrypt_failures` under the client's AES key), if ``store``
        can read them where they are kept (the same database): one read fewer for each
        request that checks the budget. None: it cannot."""
        ...

    def fence_along(self, store: object) -> UploadFence | None:
        """The upload fence in ``store``'s transactions, if ``store`` can see the leases where
        they are kept (the same database): an upload's completion is then recorded only
        while this node holds its lease. None: it cannot (a single server, alone with its
        leases, needs none)."""
        ...

    def hold_along(self, store: object) -> RegistrationHold | None:
        """:meth:`hold_registration` in ``store``'s transactions, if ``store`` can write the
        holds where they are kept (the same database). None: it cannot."""
        ...

    def settle(self) -> None:
        """Holds taken and releases made so far are in place for every node.

        :meth:`hold_registration` and :meth:`release_upload` answer nothing: an
        implementation may send them without waiting. The loop settles them
        before a round's answers go out; a failure among them is logged, not
        raised (a released lease lapses, a hold is this node's only).
        """
        ...

    def close(self) -> None:
        """Let go of everything this node holds (its leadership too)."""
        ...


@dataclass
class _Held:
    node: str
    until: float
    #: An upload lease's blob key.
    blob: str | None = None


@dataclass
class _Shared:
    """What the nodes of one :class:`MemoryCoordination` share."""

    leases: dict[tuple[str, bytes], _Held] = field(default_factory=dict)
    #: Per client: the key its per-key count is of, and that count.
    by_key: dict[bytes, tuple[bytes, int]] = field(default_factory=dict)
    #: Per client: the times of its failures, oldest first.
    by_client: dict[bytes, collections.deque[float]] = field(default_factory=dict)
    leader: str | None = None


class MemoryCoordination:
    """The coordination of nodes in one process; a single server is its only node.

    Its clock is the loop's (monotonic, or a test's). :meth:`join` gives
    another node sharing the same state (the tests' second node).
    """

    def __init__(
        self,
        clock: Callable[[], float],
        node: str = "local",
        lease: float = DEFAULT_LEASE,
        shared: _Shared | None = None,
    ) -> None:
        self.node = node
        self._clock = clock
        self._lease = lease
        self._shared = shared if shared is not None else _Shared()

    def join(self, node: str) -> MemoryCoordination:
        """Another node, sharing this one's state."""
        return MemoryCoordination(self._clock, node, self._lease, self._shared)

    # -- holds and leases -----------------------------------------------------

    def _held_elsewhere(self, key: tuple[str, bytes]) -> bool:
        held = self._shared.leases.get(key)
        return held is not None and held.node != self.node and held.until > self._clock()

    def _take(self, key: tuple[str, bytes], blob: str | None = None) -> bool:
        if self._held_elsewhere(key):
            return False
        self._shared.leases[key] = _Held(self.node, self._clock() + self._lease, blob)
        return True

    def _release(self, key: tuple[str, bytes]) -> None:
        held = self._shared.leases.get(key)
        if held is not None and held.node == self.node:
            del self._shared.leases[key]

    def hold_registration(self, client_id: bytes) -> None:
        """This node holds the keyless registration ``client_id``."""
        self._take((REGISTRATION, client_id))

    def registration_held_elsewhere(self, client_id: bytes) -> bool:
        """Whether another node holds the registration, unlapsed."""
        return self._held_elsewhere((REGISTRATION, client_id))

    def release_registrations(self, client_ids: Collection[bytes]) -> None:
        """This node no longer holds these registrations."""
        for client_id in client_ids:
            self._release((REGISTRATION, client_id))

    def take_upload(self, lease: UploadLease) -> bool:
        """Take (or renew) the upload's lease; False if another node holds it."""
        return self._take((UPLOAD, upload_key(lease.client_id, lease.file_name)), lease.blob_key)

    def begin_take_upload(self, lease: UploadLease) -> PendingTake:
        """:meth:`take_upload`, answered at once."""
        return Answered(self.take_upload(lease))

    def release_upload(self, client_id: bytes, file_name: bytes) -> None:
        """The upload stopped receiving here."""
        self._release((UPLOAD, upload_key(client_id, file_name)))

    def uploading(self, client_ids: Collection[bytes]) -> set[bytes]:
        """Those of ``client_ids`` with an upload lease on any node."""
        now = self._clock()
        leased = {
            key[:CLIENT_ID_SIZE]
            for (kind, key), held in self._shared.leases.items()
            if kind == UPLOAD and held.until > now
        }
        return leased.intersection(client_ids)

    def live_blobs(self) -> set[str]:
        """The blob keys of the uploads any node is receiving."""
        now = self._clock()
        return {
            held.blob for held in self._shared.leases.values()
            if held.blob is not None and held.until > now
        }

    def renew(
        self, registrations: Collection[bytes], uploads: Collection[UploadLease]
    ) -> None:
        """Renew what this node holds; its other holds and leases go."""
        kept: dict[tuple[str, bytes], str | None] = {
            (REGISTRATION, client_id): None for client_id in registrations
        }
        for lease in uploads:
            kept[(UPLOAD, upload_key(lease.client_id, lease.file_name))] = lease.blob_key
        for key, held in list(self._shared.leases.items()):
            if held.node == self.node and key not in kept:
                del self._shared.leases[key]
        for key, blob in kept.items():
            self._take(key, blob)

    # -- the failure budget ---------------------------------------------------

    def _recent(self, client_id: bytes, window: float) -> collections.deque[float]:
        times = self._shared.by_client.get(client_id)
        if times is None:
            return collections.deque()
        now = self._clock()
        while times and now - times[0] >= window:
            times.popleft()
        if not times:
            del self._shared.by_client[client_id]
        return times

    def decrypt_failures(self, client_id: bytes, aes_key: bytes, window: float) -> FailureCounts:
        """The client's failed decryptions under ``aes_key``, and within ``window``."""
        key, count = self._shared.by_key.get(client_id, (b"", 0))
        return FailureCounts(count if key == aes_key else 0, len(self._recent(client_id, window)))

    def note_decrypt_failure(
        self, client_id: bytes, aes_key: bytes, window: float
    ) -> FailureCounts:
        """Count one failed decryption under ``aes_key``; the counts with it."""
        key, count = self._shared.by_key.get(client_id, (aes_key, 0))
        count = count + 1 if key == aes_key else 1
        self._shared.by_key[client_id] = (aes_key, count)
        recent = self._recent(client_id, window)
        recent.append(self._clock())
        self._shared.by_client[client_id] = recent
        return FailureCounts(count, len(recent))

    # -- purges ---------------------------------------------------------------

    def may_run_purges(self) -> bool:
        """Whether this node runs the purges: the first to ask, until it closes."""
        if self._shared.leader is None:
            self._shared.leader = self.node
        return self._shared.leader == self.node

    def purge(self, window: float) -> None:
        """Forget failures older than ``window`` and lapsed holds and leases."""
        for client_id in list(self._shared.by_client):
            self._recent(client_id, window)
        now = self._clock()
        for key, held in list(self._shared.leases.items()):
            if held.until <= now:
                del self._shared.leases[key]

    def read_along(self, store: object, window: float) -> ClientReadWithFailures | None:
        """None: the counts are in this process, not in a store."""
        return None

    def fence_along(self, store: object) -> UploadFence | None:
        """None: the leases are in this process, not in a store."""
        return None

    def hold_along(self, store: object) -> RegistrationHold | None:
        """None: the holds are in this process, not in a store."""
        return None

    def settle(self) -> None:
        """Nothing to do: every call is in place when it returns."""

    def close(self) -> None:
        """Let go of this node's holds, leases and leadership."""
        self.renew((), ())
        if self._shared.leader == self.node:
            self._shared.leader = None


def upload_key(client_id: bytes, file_name: bytes) -> bytes:
    """One key for a client's upload of a name: the id (fixed size) then the name."""
    return client_id + file_name
