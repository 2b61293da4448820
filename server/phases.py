"""One upload, its phases, and the one table of the moves between them.

An :class:`Upload` is always in exactly one phase, one class each (what each
means: server/upload.py's docstring). It changes phase only through
:meth:`Upload._enter`, which follows one rule, written
once: **a move is legal if and only if** ``TRANSITIONS`` **lists it**. Any
other move is a bug of ours and raises :class:`IllegalTransition`. An upload
starts in one of ``FIRST_PHASES`` (a first packet that is refused at once
leaves a :class:`Failed` marker, so that the rest of its attempt is dropped).
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field
from typing import Union

from protocol.cksum import CrcFlavour
from protocol.incoming import IncomingFile, PacketOrder, ReceivedFile

from .errors import IllegalTransition
from .limits import Limits
from .peer import Peer
from .storage import BlobWriter
from .timers import Timer


@dataclass
class Receiving:
    """Packets are arriving, written under the upload's blob key."""

    incoming: IncomingFile
    writer: BlobWriter


@dataclass
class Failed:
    """A refused attempt whose remaining packets are dropped."""


@dataclass
class Installed:
    """A name's first upload, stored (Verified false), waiting for its verdict."""

    result: ReceivedFile
    path_name: str


@dataclass
class Pending:
    """A later version of a stored name, a sealed blob (the row's pending pointer) until its 900."""

    result: ReceivedFile
    path_name: str
    writer: BlobWriter


@dataclass
class GivenUp:
    """A pending version discarded by 901 or 902."""

    result: ReceivedFile
    path_name: str


Phase = Union[Receiving, Failed, Installed, Pending, GivenUp]
#: The phases of a complete upload, waiting for the client's verdict.
Complete = Union[Installed, Pending, GivenUp]

#: The phases an upload may start in.
FIRST_PHASES: frozenset[type[Phase]] = frozenset({Receiving, Failed})

#: Every legal move: from a phase, the phases it may enter.
TRANSITIONS: dict[type[Phase], frozenset[type[Phase]]] = {
    # its attempt refused; its last packet in, a name's first upload or a later version
    Receiving: frozenset({Failed, Installed, Pending}),
    # a failed attempt only waits to be dropped
    Failed: frozenset(),
    # stored: a verdict only sets its flag
    Installed: frozenset(),
    # 900 installs it; 901, 902, a new key, a close or its deadline discard it
    Pending: frozenset({Installed, GivenUp}),
    # it still takes a 902, which changes nothing
    GivenUp: frozenset(),
}


def check_move(old: Phase | None, new: Phase) -> None:
    """Whether an upload in ``old`` (None: a new upload) may enter ``new``.

    Raises:
        IllegalTransition: the table does not list the move.
    """
    allowed = FIRST_PHASES if old is None else TRANSITIONS[type(old)]
    if type(new) not in allowed:
        where = "start" if old is None else f"move from {type(old).__name__}"
        raise IllegalTransition(f"an upload may not {where} to {type(new).__name__}")


@dataclass(frozen=True)
class CrcBad:
    """A client's attempt that got a "CRC bad" (901): what its next answer carries.

    A 901 says only that the client's value differs from the one it was
    sent, not which CRC the client computes (docs/EDITIONS.md, variant 5).
    The server tells the two causes apart by the file that comes next: the
    same plaintext again (same size, same cksum) means the flavour was the
    mismatch, so the answer carries the other one; another plaintext means
    the earlier attempt was corrupted on the way, so the answer stays in the
    flavour the client was last answered in.
    """

    plain_size: int
    cksum: int
    #: The flavour that attempt was answered in.
    flavour: CrcFlavour

    def flavour_for(self, resent: ReceivedFile) -> CrcFlavour:
        """The flavour of the answer to the upload after this 901."""
        same = (resent.plain_size, resent.cksum) == (self.plain_size, self.cksum)
        return self.flavour.other if same else self.flavour


@dataclass(eq=False)
class Upload:
    """One client's file, in one :data:`Phase`."""

    client_id: bytes
    #: Where the first packet came from (for the log).
    address: str
    #: The address group of that (disk reservations per address: server/peer.py).
    group: str
    #: The key it was sent under: a verdict must come under the same key.
    aes_key: bytes
    file_name: bytes
    order: PacketOrder
    started: float
    #: The phase it starts in (one of ``FIRST_PHASES``): see :attr:`phase`.
    first_phase: InitVar[Phase]
    owner: Peer | None = None
    streaming: Peer | None = None
    received: int = 0
    last_progress: float = 0.0
    completed: float = 0.0
    #: The CRC its file-received answer carries, and the client's preferred
    #: one (docs/EDITIONS.md, variant 5). After a 901 the flavour is settled
    #: by the file itself, when it is complete (:class:`CrcBad`).
    flavour: CrcFlavour = CrcFlavour.CKSUM
    preferred: CrcFlavour = CrcFlavour.CKSUM
    #: The client's attempt before this one, if it got a 901.
    after_crc_bad: CrcBad | None = None
    deadline_timer: Timer | None = field(default=None, repr=False)
    _phase: Phase = field(init=False)

    def __post_init__(self, first_phase: Phase) -> None:
        check_move(None, first_phase)
        self._phase = first_phase
        self.last_progress = self.started

    @property
    def phase(self) -> Phase:
        """Where it is in its life (server/phases.py): changed only by :meth:`_enter`."""
        return self._phase

    def _enter(self, phase: Phase) -> None:
        """Move to ``phase``: the one place an upload changes phase.

        Raises:
            IllegalTransition: ``server.phases.TRANSITIONS`` does not list the move.
        """
        check_move(self._phase, phase)
        self._phase = phase

    def held_by_other(self, peer: Peer) -> bool:
        """Whether another connection is inside a packet of it, or owns it."""
        return (self.streaming is not None and self.streaming is not peer) or (
            self.owner is not None and self.owner is not peer
        )

    def continues_on(self, peer: Peer) -> bool:
        """Whether a new first packet on ``peer`` may replace this upload.

        A receiving upload is replaced only by its own connection (a
        one-connection client starting over); anything else waits for it.
        """
        return not isinstance(self.phase, Receiving) or self.owner is peer

    @property
    def reserved(self) -> int:
        """Disk bytes this upload may still need."""
        if not isinstance(self.phase, Receiving):
            return 0
        return max(0, self.phase.incoming.max_plain_size - self.phase.writer.size)

    def deadline(self, limits: Limits) -> float:
        """When this upload is dropped unless it moves on."""
        if isinstance(self.phase, (Installed, Pending, GivenUp)):
            return self.completed + limits.idle_timeout
        paced = self.started + limits.message_deadline + self.received / limits.min_content_rate
        return min(paced, self.last_progress + limits.message_deadline)
