"""The blocking session: one write per request, whole replies, typed failures."""

from __future__ import annotations

import io
import logging
import socket
import struct

import pytest

from client.config import ServerAddress
from client.errors import MalformedReply, NetworkError, NotAServer
from client.progress import BarProgress, LogProgress, NoProgress, make_progress
from client.session import Session
from client_fakes import FakeSocket
from protocol import (
    GeneralError,
    Register,
    Registered,
    SendFilePacket,
    ServerConnection,
)

ADDRESS = ServerAddress("127.0.0.1", 9)
CLIENT_ID = bytes(range(16))
REPLY = ServerConnection().send(Registered(client_id=CLIENT_ID))




@pytest.fixture
def fake(monkeypatch):
    sock = FakeSocket()
    monkeypatch.setattr(Session, "_connect", lambda self: sock)
    return sock


def test_each_request_is_one_write_of_all_its_bytes(fake):
    session = Session(ADDRESS)
    packet = SendFilePacket(
        client_id=CLIENT_ID,
        content_size=32,
        orig_file_size=20,
        packet_number=1,
        total_packets=1,
        file_name="f",
        content=bytes(32),
    )
    session.send(Register(client_id=bytes(16), name="alice"))
    session.send(packet)
    assert [len(data) for data in fake.sent] == [23 + 255, 23 + 267 + 32]
    assert session.first_request == 825


def test_a_reply_in_pieces_is_put_together(fake):
    fake.pieces = [REPLY[:1], REPLY[1:9], REPLY[9:]]
    session = Session(ADDRESS)
    reply = session.request(Register(client_id=bytes(16), name="alice"))
    assert reply == Registered(client_id=CLIENT_ID)


def test_two_replies_in_one_piece(fake):
    fake.pieces = [REPLY + ServerConnection().send(GeneralError())]
    session = Session(ADDRESS)
    session.send(Register(client_id=bytes(16), name="alice"))
    assert isinstance(session.receive(), Registered)
    assert isinstance(session.poll(), GeneralError)


@pytest.mark.parametrize(
    "pieces, error, message",
    [
        ([b""], NetworkError, "closed the connection"),
        ([REPLY[:10], b""], NetworkError, "in the middle of a reply"),
        ([TimeoutError()], NetworkError, "did not answer within 30 s"),
        ([ConnectionResetError(104, "Connection reset by peer")], NetworkError, "reset"),
        ([struct.pack("<BHI", 3, 1600, 3) + b"abc"], MalformedReply, "payload must be 16"),
        ([struct.pack("<BHI", 3, 1599, 0)], NotAServer, "no edition of the protocol has"),
    ],
)
def test_failures_are_typed(fake, pieces, error, message):
    fake.pieces = pieces
    session = Session(ADDRESS)
    with pytest.raises(error, match=message):
        session.request(Register(client_id=bytes(16), name="alice"))


def test_an_unknown_code_after_the_first_answer_is_a_malformed_reply(fake):
    fake.pieces = [REPLY + struct.pack("<BHI", 3, 1599, 0)]
    session = Session(ADDRESS)
    assert session.request(Register(client_id=bytes(16), name="alice")) == Registered(
        client_id=CLIENT_ID)
    with pytest.raises(MalformedReply, match="unknown response code 1599"):
        session.receive()


def test_reset_starts_a_fresh_connection_and_parser(fake):
    fake.pieces = [REPLY[:5]]
    session = Session(ADDRESS)
    session.send(Register(client_id=bytes(16), name="alice"))
    assert session.connected
    session.reset()
    assert fake.closed and not session.connected and session.first_request is None


def test_real_socket_poll_and_refused():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    session = Session(ServerAddress("127.0.0.1", port), timeout=2)
    session.send(Register(client_id=bytes(16), name="alice"))
    peer, _ = server.accept()
    assert session.poll() is None
    peer.sendall(REPLY)
    assert session.receive() == Registered(client_id=CLIENT_ID)
    session.reset()
    peer.close()
    server.close()
    with pytest.raises(NetworkError, match="connection refused"):
        session.send(Register(client_id=bytes(16), name="alice"))


def test_unknown_host():
    session = Session(ServerAddress("no-such-host.invalid", 1), timeout=2)
    with pytest.raises(NetworkError, match="cannot resolve"):
        session.send(Register(client_id=bytes(16), name="alice"))


# -- progress ---------------------------------------------------------------------------


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_kind_follows_the_terminal_and_quiet():
    assert isinstance(make_progress(Tty(), quiet=True), NoProgress)
    assert isinstance(make_progress(Tty(), quiet=False), BarProgress)
    assert isinstance(make_progress(io.StringIO(), quiet=False), LogProgress)


def test_bar_shows_rate_and_eta():
    stream = Tty()
    bar = make_progress(stream, quiet=False)
    bar.start("data.bin", 10 * 1024 * 1024)
    bar.update(5 * 1024 * 1024)
    bar.finish()
    text = stream.getvalue()
    assert "data.bin" in text and "50%" in text and "B/s" in text and "<" in text


def test_log_progress_writes_a_line_every_interval(caplog):
    now = [0.0]
    progress = LogProgress(clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="client.progress")
    progress.start("data.bin", 100_000_000)
    for _ in range(10):
        now[0] += 1.0
        progress.update(10_000_000)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["data.bin: 50% (50.0 MB of 100.0 MB, 10.0 MB/s, about 5 s left)"]
