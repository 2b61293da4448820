"""Not a cipherdrop server: an SSH, HTTP or TLS server is named at once (issue 24, point 9)."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from client.__main__ import ExitCode
from client.config import ServerAddress
from client.errors import NetworkError, NotAServer
from client.foreign import SILENCE_HINT, recognise
from client.session import Session
from client_fakes import FakeSocket
from protocol import Register, Registered, ServerConnection

SSH_BANNER = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"
#: What nginx answers a request it cannot parse, at once.
HTTP_400 = (b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\nContent-Type: text/html\r\n"
            b"Content-Length: 0\r\nConnection: close\r\n\r\n")
#: A TLS 1.2 record: a fatal alert, decode_error (RFC 8446 6).
TLS_ALERT = bytes((21, 3, 3, 0, 2, 2, 50))
#: A TLS 1.0 handshake record's header (a ServerHello would follow).
TLS_HANDSHAKE = bytes((22, 3, 1, 0, 74))
UNKNOWN_CODE = struct.pack("<BHI", 3, 1599, 0)
REPLY = ServerConnection().send(Registered(client_id=bytes(range(16))))
#: Long enough that waiting for it would show as a time-out (exit 5), not exit 8.
PATIENT = "30"


@pytest.mark.parametrize("first, verdict", [
    (SSH_BANNER, "it answered like an SSH server"),
    (HTTP_400, "it answered like an HTTP server"),
    (TLS_ALERT, "it answered like a TLS server"),
    (TLS_HANDSHAKE, "it answered like a TLS server"),
    (UNKNOWN_CODE, "its first answer has code 1599, which no edition of the protocol has"),
])
def test_another_protocols_first_bytes_are_named(first, verdict):
    assert recognise(first) == verdict


@pytest.mark.parametrize("first", [REPLY, REPLY[:3], b"", b"SS", b"HTTP", bytes((21, 3))])
def test_an_answer_or_too_few_bytes_are_not_judged(first):
    assert recognise(first) is None


def test_a_banner_in_pieces_is_named_without_waiting_for_a_whole_header(monkeypatch):
    fake = FakeSocket([b"SS", b"H", b"-2.0-x\r\n"])
    monkeypatch.setattr(Session, "_connect", lambda self: fake)
    session = Session(ServerAddress("127.0.0.1", 9))
    with pytest.raises(NotAServer, match=r"^127.0.0.1:9 is not a cipherdrop server \(it"
                                         r" answered like an SSH server\)$"):
        session.request(Register(client_id=bytes(16), name="alice"))
    assert fake.pieces == []


def test_silence_on_a_first_answer_says_what_it_may_be(monkeypatch):
    fake = FakeSocket([TimeoutError()])
    monkeypatch.setattr(Session, "_connect", lambda self: fake)
    with pytest.raises(NetworkError) as caught:
        Session(ServerAddress("127.0.0.1", 9)).request(Register(client_id=bytes(16), name="a"))
    assert str(caught.value).endswith(f"({SILENCE_HINT})")


class FakeServer:
    """A server of another protocol on 127.0.0.1: ``answer`` on each connection.

    ``speaks_first``: it sends before reading (SSH); else after the client's
    first bytes (HTTP, TLS). It then holds the connection open, as a real one
    waiting for more would: only a client that stops on its own ends quickly.
    """

    def __init__(self, answer: bytes, *, speaks_first: bool) -> None:
        self.answer = answer
        self.speaks_first = speaks_first
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.connections = 0
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                peer, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self.held.append(peer)
            if not self.speaks_first:
                peer.recv(1)
            peer.sendall(self.answer)

    def close(self) -> None:
        self.listener.close()
        for peer in self.held:
            peer.close()


@pytest.mark.parametrize("answer, speaks_first, like", [
    (SSH_BANNER, True, "an SSH server"),
    (HTTP_400, False, "an HTTP server"),
    (TLS_ALERT, False, "a TLS server"),
])
def test_the_client_stops_at_once_without_retrying(work, run_client, answer, speaks_first, like):
    (work / "data.bin").write_bytes(b"hello")
    server = FakeServer(answer, speaks_first=speaks_first)
    try:
        result = run_client("--timeout", PATIENT, "--server", server.address, "--name", "alice",
                            str(work / "data.bin"))
    finally:
        server.close()
    assert result.code == ExitCode.NOT_A_SERVER, result.err
    assert result.err.splitlines() == [
        f"error: {server.address} is not a cipherdrop server (it answered like {like})"]
    assert server.connections == 1  # no retry, no other layout
    assert not (work / "me.info").exists()


def test_the_exit_code_is_in_the_help(capsys):
    from client.__main__ import main
    assert main(["--help"]) == 0
    assert "8    not a cipherdrop server" in capsys.readouterr().out
