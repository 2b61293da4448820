"""The phases of an upload move only as server/phases.py's TRANSITIONS table says.

A move the table does not list raises :class:`IllegalTransition` and leaves
the upload where it was; every move it lists is made by the server for some
sequence of requests (so the table holds no dead rows).
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest

from helpers import parse_answers, file_packets, make_identity
from protocol import (
    ClientConnection,
    CrcAbort,
    CrcOk,
)
from protocol.incoming import ReceivedFile
from protocol.names import NameField
from server import phases as phases_module
from server.app import App
from server.errors import IllegalTransition, InternalFault
from server.limits import Limits
from server.peer import Peer
from server.phases import (
    FIRST_PHASES,
    TRANSITIONS,
    Failed,
    GivenUp,
    Installed,
    Pending,
    Phase,
    Receiving,
    Upload,
)
from server.session import Session
from server.storage.folder import FolderBlobs
from server.storage.sqlite import DB_NAME, SqliteMetadata

DATA = b"phase test data " * 220  # four packets of 1024 bytes
PACKET_SIZE = 1024
RESULT = ReceivedFile(
    cksum=1, crc32=None, content_size=16, plain_size=3, file_name=NameField.from_text(b"a")
)


def a_phase(kind: type[Phase]) -> Phase:
    """An instance of a phase, with stand-ins for what the move rule never reads."""
    if kind is Receiving:
        return Receiving(incoming=None, writer=None)  # type: ignore[arg-type]
    if kind is Failed:
        return Failed()
    if kind is Pending:
        return Pending(RESULT, "a", writer=None)  # type: ignore[arg-type]
    return kind(RESULT, "a")  # type: ignore[call-arg]


def an_upload_in(kind: type[Phase]) -> Upload:
    """A new upload moved to ``kind`` along the table's own moves (each phase can be reached)."""
    paths = {first: [first] for first in FIRST_PHASES}
    while kind not in paths:
        grown = {
            new: path + [new]
            for old, path in paths.items()
            for new in TRANSITIONS[old]
            if new not in paths
        }
        assert grown, f"{kind.__name__} cannot be reached from a first phase"
        paths.update(grown)
    first, *moves = paths[kind]
    upload = Upload(b"c" * 16, "127.0.0.1", "127.0.0.1", b"k" * 32, b"a", None, 0.0, a_phase(first))  # type: ignore[arg-type]
    for move in moves:
        upload._enter(a_phase(move))
    return upload


ALL_PHASES = list(TRANSITIONS)
PAIRS = list(itertools.product(ALL_PHASES, ALL_PHASES))


def test_the_table_names_every_phase_and_only_phases():
    assert set(TRANSITIONS) == {Receiving, Failed, Installed, Pending, GivenUp}
    for allowed in TRANSITIONS.values():
        assert allowed <= set(TRANSITIONS)
    assert FIRST_PHASES <= set(TRANSITIONS)


@pytest.mark.parametrize("old, new", PAIRS, ids=[f"{a.__name__}-{b.__name__}" for a, b in PAIRS])
def test_a_move_is_made_if_and_only_if_the_table_lists_it(old, new):
    upload = an_upload_in(old)
    before = upload.phase
    target = a_phase(new)
    if new in TRANSITIONS[old]:
        upload._enter(target)
        assert upload.phase is target
    else:
        with pytest.raises(IllegalTransition) as info:
            upload._enter(target)
        assert isinstance(info.value, InternalFault)  # a bug of ours: 1607 and close
        assert upload.phase is before


@pytest.mark.parametrize("kind", ALL_PHASES)
def test_an_upload_starts_only_in_a_first_phase(kind):
    if kind in FIRST_PHASES:
        assert isinstance(an_upload_in(kind).phase, kind)
    else:
        with pytest.raises(IllegalTransition):
            Upload(b"c" * 16, "a", "a", b"k" * 32, b"a", None, 0.0, a_phase(kind))  # type: ignore[arg-type]


def test_the_phase_is_read_only():
    upload = an_upload_in(Receiving)
    with pytest.raises(AttributeError):
        upload.phase = Failed()  # type: ignore[misc]


# -- every listed move is made by the server --------------------------------------


class Client:
    """One persistent session on an App over real stores."""

    def __init__(self, data_dir: Path) -> None:
        self.metadata = SqliteMetadata.open(data_dir / DB_NAME)
        self.app = App.build(self.metadata, FolderBlobs(data_dir), Limits())
        self.session = Session(self.app, Peer("127.0.0.1", 40000))
        self.who = make_identity(self)

    def request(self, request):
        """One request, its one answer (for helpers.make_identity)."""
        (answer,) = self.send(request)
        return answer

    def send(self, *requests) -> list:
        """Feed requests, end the round as the loop does, and parse the answers."""
        for request in requests:
            self.session.receive_data(ClientConnection().send(request))
        while self.session.next_step().name not in ("NEED_DATA", "CLOSE"):
            pass
        self.session.release(self.app.end_round(durable=True))
        return parse_answers(self.session.data_to_send())

    def packets(self, name: str) -> list:
        return file_packets(self.who, name, DATA, PACKET_SIZE)

    def close(self) -> None:
        self.app.uploads.close()
        self.metadata.close()


def test_every_move_in_the_table_is_made_by_some_requests(tmp_path, monkeypatch):
    made: set[tuple[type[Phase] | None, type[Phase]]] = set()
    check = phases_module.check_move

    def recording(old, new):
        check(old, new)
        made.add((None if old is None else type(old), type(new)))

    monkeypatch.setattr(phases_module, "check_move", recording)
    client = Client(tmp_path)
    try:
        who = client.who
        client.send(*client.packets("a.bin"))  # Receiving -> Installed
        client.send(*client.packets("a.bin"))  # Receiving -> Pending
        client.send(CrcOk(client_id=who.client_id, file_name="a.bin"))  # Pending -> Installed
        client.send(*client.packets("a.bin"))
        client.send(CrcAbort(client_id=who.client_id, file_name="a.bin"))  # Pending -> GivenUp
        first, _, third, _ = client.packets("b.bin")
        client.send(first, third)  # out of order: Receiving -> Failed
        broken = dataclasses.replace(first, orig_file_size=first.orig_file_size + 64)
        client.send(broken)  # refused at its first packet: a Failed marker from the start
    finally:
        client.close()
    listed = {(None, first) for first in FIRST_PHASES} | {
        (old, new) for old, allowed in TRANSITIONS.items() for new in allowed
    }
    assert made == listed
