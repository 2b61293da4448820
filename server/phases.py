"""The phases of an upload, and the one table of the moves between them.

An upload (server/upload.py) is always in exactly one phase, one class each
(what each means: server/upload.py's docstring). It changes phase only
through :meth:`~server.upload.Upload._enter`, which follows one rule, written
once: **a move is legal if and only if** ``TRANSITIONS`` **lists it**. Any
other move is a bug of ours and raises :class:`IllegalTransition`. An upload
starts in one of ``FIRST_PHASES`` (a first packet that is refused at once
leaves a :class:`Failed` marker, so that the rest of its attempt is dropped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from protocol.incoming import IncomingFile, ReceivedFile

from .errors import IllegalTransition
from .storage import TempBlob


@dataclass
class Receiving:
    """Packets are arriving into a temp blob."""

    incoming: IncomingFile
    temp: TempBlob


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
    """A later version of a stored name, a synced temp blob until its 900."""

    result: ReceivedFile
    path_name: str
    temp: TempBlob


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
