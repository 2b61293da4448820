"""A channel and its loop port: the channel asks, the loop (here the test) decides.

The channel runs over a real socketpair and a real selector, but no loop:
the test is the channel's :class:`~server.channel.LoopPort`, records what the
channel asks of it, and ends the rounds itself. The loop's side over TCP is
tested in tests/server/test_group_commit.py and test_round_shares.py.
"""

from __future__ import annotations

import selectors
import socket
from typing import Callable

import pytest

from helpers import ANY_ID, Identity, file_packets, private_key, unique_name
from protocol import (
    NEED_DATA,
    ClientConnection,
    FileReceived,
    GeneralError,
    PublicKeyReceived,
    Register,
    Registered,
    SendPublicKey,
    crypto,
)
from server.app import App
from server.channel import MAX_REQUESTS_PER_TURN, Channel
from server.errors import StorageFault
from server.limits import Limits
from server.loop import serve
from server.outcome import InstallTicket
from server.peer import Peer
from server.session import Session
from server.storage.folder import FolderBlobs
from server.storage.sqlite import DB_NAME, SqliteMetadata

RECV_BUFFER = memoryview(bytearray(1 << 20))
#: Requests pipelined in one send: more than one turn takes.
PIPELINED = MAX_REQUESTS_PER_TURN + 2


class RecordingPort:
    """The loop's side, played by the test: it records every call."""

    def __init__(self) -> None:
        self.may = True
        self.taken = 0
        self.held: list[Channel] = []
        self.turns: list[Channel] = []
        self.deferred: list[Channel] = []
        self.closed: list[Channel] = []

    def serve(self, channel: Channel, action: Callable[[], None]) -> None:
        serve(channel, action)

    def may_take_request(self, channel: Channel) -> bool:
        return self.may

    def request_taken(self, channel: Channel) -> None:
        self.taken += 1

    def hold_answers(self, channel: Channel) -> None:
        self.held.append(channel)

    def wants_turn(self, channel: Channel) -> None:
        self.turns.append(channel)

    def defer(self, channel: Channel) -> bool:
        self.deferred.append(channel)
        return True

    def channel_closed(self, channel: Channel) -> None:
        self.closed.append(channel)


class Rig:
    """An app on real stores, one channel on a socketpair, the test as its loop."""

    def __init__(self, data_dir) -> None:
        limits = Limits()
        self.metadata = SqliteMetadata.open(data_dir / DB_NAME)
        self.app = App.build(self.metadata, FolderBlobs(data_dir), limits)
        self.selector = selectors.DefaultSelector()
        self.port = RecordingPort()
        self.client, server_side = socket.socketpair()
        self.client.settimeout(5)
        server_side.setblocking(False)
        self.channel = Channel(
            server_side,
            Session(self.app, Peer("127.0.0.1", 40000)),
            self.selector,
            RECV_BUFFER,
            self.app.timers,
            port=self.port,
        )
        self.conn = ClientConnection()

    def send(self, *requests) -> None:
        """The client sends; the channel reads it all in one turn."""
        self.client.sendall(b"".join(self.conn.send(request) for request in requests))
        self.channel.on_readable()

    def end_round(self) -> None:
        """What the loop does at the round's end: commit, release the held answers, send."""
        assert self.port.held == [self.channel]
        self.port.held.clear()
        unstored = self.app.end_round(durable=True)
        self.channel.session.release(unstored)
        self.channel.send_answers()

    def answers(self) -> list:
        self.client.setblocking(False)
        try:
            while True:
                try:
                    data = self.client.recv(1 << 16)
                except BlockingIOError:
                    break
                if not data:
                    break
                self.conn.receive_data(data)
        finally:
            self.client.settimeout(5)
        found = []
        while (event := self.conn.next_event()) is not NEED_DATA:
            found.append(event)
        return found

    def identity(self) -> Identity:
        name = unique_name()
        self.send(Register(client_id=ANY_ID, name=name))
        self.end_round()
        (registered,) = self.answers()
        key = private_key()
        public = crypto.export_public_key(key)
        self.send(SendPublicKey(client_id=registered.client_id, name=name, public_key=public))
        self.end_round()
        (answer,) = self.answers()
        assert isinstance(answer, PublicKeyReceived)
        aes_key = crypto.decrypt_aes_key(key, answer.encrypted_aes_key)
        return Identity(name, registered.client_id, key, aes_key)

    def close(self) -> None:
        self.channel.close("test over")
        self.client.close()
        self.selector.close()
        self.app.uploads.close()
        self.metadata.close()


@pytest.fixture
def rig(tmp_path):
    made = Rig(tmp_path)
    yield made
    made.close()


def test_a_channel_ends_no_round_its_answers_wait_for_the_port(rig, monkeypatch):
    def no_round_in_the_channel(*, durable):
        raise AssertionError("a channel ended a round")

    real_end_round = rig.app.end_round
    monkeypatch.setattr(rig.app, "end_round", no_round_in_the_channel)
    rig.send(Register(client_id=ANY_ID, name=unique_name()))
    assert rig.port.held == [rig.channel]
    assert rig.port.taken == 1
    assert rig.answers() == []  # held until the loop sends them
    monkeypatch.setattr(rig.app, "end_round", real_end_round)
    rig.end_round()
    assert [type(answer) for answer in rig.answers()] == [Registered]


def test_a_channel_past_its_turn_asks_the_port_for_another(rig):
    rig.send(*[Register(client_id=ANY_ID, name=unique_name()) for _ in range(PIPELINED)])
    assert rig.port.turns == [rig.channel]
    assert rig.port.taken == MAX_REQUESTS_PER_TURN
    rig.channel.resume()
    assert rig.port.taken == PIPELINED
    assert rig.port.turns == [rig.channel]  # drained: no further turn asked
    rig.end_round()
    assert [type(answer) for answer in rig.answers()] == [Registered] * PIPELINED


def test_a_channel_the_port_holds_back_is_deferred_unread_and_reads_on_its_resume(rig):
    rig.port.may = False
    rig.send(Register(client_id=ANY_ID, name=unique_name()))
    assert rig.port.deferred == [rig.channel]
    assert rig.channel.bytes_in == 0 and rig.port.taken == 0
    rig.port.may = True
    rig.channel.resume()
    assert rig.channel.bytes_in > 0 and rig.port.taken == 1
    rig.end_round()
    assert [type(answer) for answer in rig.answers()] == [Registered]


def test_a_closed_channel_tells_the_port(rig):
    rig.channel.close("test")
    assert rig.port.closed == [rig.channel]


def test_a_first_upload_is_answered_by_its_install_ticket(rig, monkeypatch):
    who = rig.identity()

    def install(store, key, path_name):
        raise StorageFault("cannot install a received file: Input/output error")

    tickets = []
    real_end_round = rig.app.end_round

    def end_round(*, durable):
        unstored = real_end_round(durable=durable)
        tickets.extend(unstored)
        return unstored

    monkeypatch.setattr(rig.app, "end_round", end_round)
    for name, fails in (("stored.bin", False), ("unstored.bin", True)):
        if fails:
            monkeypatch.setattr(FolderBlobs, "publish", install)
        (packet,) = file_packets(who, name, b"ticket " * 100, 1 << 16)
        rig.send(packet)
        assert isinstance(rig.app.uploads.installs.awaiting_install(_upload(rig, who, name)), InstallTicket)
        rig.end_round()
        (answer,) = rig.answers()
        assert isinstance(answer, GeneralError if fails else FileReceived)
    (ticket,) = tickets
    assert isinstance(ticket, InstallTicket)


def _upload(rig: Rig, who: Identity, name: str):
    upload = rig.app.uploads.completed(who.client_id, name.encode())
    assert upload is not None
    return upload
