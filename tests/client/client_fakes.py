"""A scripted fake server for the client's tests.

``FakeServer(script)`` listens on 127.0.0.1; a thread runs ``script(server)``,
which accepts connections and answers whatever the test wants, with
``protocol.ServerConnection`` reading whole requests. An exception in the
script (a failed assertion included) is raised again in the test when the
``with`` block ends.
"""

from __future__ import annotations

import base64
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from protocol import (
    Acknowledged,
    ConnectionClosed,
    CrcOk,
    FileContent,
    FilePacketEnded,
    FilePacketStarted,
    FileReceived,
    GeneralError,
    NEED_DATA,
    PublicKeyReceived,
    Reconnect,
    Reconnected,
    Register,
    Registered,
    SendPublicKey,
    ServerConnection,
    cksum,
)
from protocol.crypto import (
    decrypt,
    encrypt_aes_key,
    export_private_key,
    generate_private_key,
    import_public_key,
    new_aes_key,
)

NAME = "alice"
SCRIPT_TIMEOUT = 20.0
RECV_SIZE = 1 << 16


@dataclass
class Packet:
    """One 828 as received: its fixed fields and its whole content."""

    fields: FilePacketStarted
    content: bytes


@dataclass
class ReceivedFile:
    """Every packet of one upload, put together."""

    packets: list[Packet]
    ciphertext: bytes
    plaintext: bytes

    @property
    def first(self) -> FilePacketStarted:
        return self.packets[0].fields

    @property
    def cksum(self) -> int:
        return cksum(self.plaintext)


class Peer:
    """One accepted connection, read with a ServerConnection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(SCRIPT_TIMEOUT)
        self.conn = ServerConnection()

    def _event(self):
        while True:
            event = self.conn.next_event()
            if event is not NEED_DATA:
                return event
            try:
                data = self.sock.recv(RECV_SIZE)
            except ConnectionResetError:
                data = b""
            self.conn.receive_data(data)

    def next_request(self):
        """The next request; an 828 comes back whole as a Packet."""
        event = self._event()
        if not isinstance(event, FilePacketStarted):
            return event
        chunks = []
        while True:
            part = self._event()
            if isinstance(part, FilePacketEnded):
                return Packet(event, b"".join(chunks))
            assert isinstance(part, FileContent), part
            chunks.append(part.data)

    def expect(self, kind: type):
        """The next request, which must be of this type."""
        event = self.next_request()
        assert isinstance(event, kind), f"expected {kind.__name__}, got {event!r}"
        return event

    def expect_closed(self) -> None:
        """The client closes the connection next."""
        self.expect(ConnectionClosed)

    def reply(self, response) -> None:
        """Send one response."""
        self.sock.sendall(self.conn.send(response))

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (malformed replies)."""
        self.sock.sendall(data)

    def receive_file(self, aes_key: bytes, first: Packet | None = None) -> ReceivedFile:
        """Read every packet of one upload and decrypt it."""
        packets = [first or self.expect(Packet)]
        while packets[-1].fields.packet_number < packets[-1].fields.total_packets:
            packets.append(self.expect(Packet))
        ciphertext = b"".join(packet.content for packet in packets)
        return ReceivedFile(packets, ciphertext, decrypt(aes_key, ciphertext))

    def close(self) -> None:
        self.sock.close()


@dataclass
class Keys:
    """What the fake server learns and hands out in a handshake."""

    client_id: bytes = field(default_factory=lambda: os.urandom(16))
    aes_key: bytes = field(default_factory=new_aes_key)
    public_key: object = None


def handshake_register(peer: Peer, keys: Keys) -> Register:
    """Answer 825 with 1600 and 826 with 1602 (the AES key under the client's key)."""
    register = peer.expect(Register)
    peer.reply(Registered(client_id=keys.client_id))
    send_key = peer.expect(SendPublicKey)
    assert send_key.client_id == keys.client_id
    keys.public_key = import_public_key(send_key.public_key)
    peer.reply(
        PublicKeyReceived(
            client_id=keys.client_id,
            encrypted_aes_key=encrypt_aes_key(keys.public_key, keys.aes_key),
        )
    )
    return register


def handshake_reconnect(peer: Peer, keys: Keys) -> Reconnect:
    """Answer 827 with 1605 and a fresh AES key (keys must hold the public key)."""
    reconnect = peer.expect(Reconnect)
    keys.aes_key = new_aes_key()
    peer.reply(
        Reconnected(
            client_id=keys.client_id,
            encrypted_aes_key=encrypt_aes_key(keys.public_key, keys.aes_key),
        )
    )
    return reconnect


class FakeServer:
    """A listening socket and a thread that runs the test's script."""

    def __init__(self, script: Callable[[FakeServer], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(SCRIPT_TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._script = script
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._error: BaseException | None = None
        self.peers: list[Peer] = []

    def accept(self) -> Peer:
        """Wait for the client's next connection."""
        sock, _ = self.listener.accept()
        peer = Peer(sock)
        self.peers.append(peer)
        return peer

    def _run(self) -> None:
        try:
            self._script(self)
        except BaseException as exc:  # reported in the test's thread
            self._error = exc

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self._thread.join(SCRIPT_TIMEOUT)
        for peer in self.peers:
            peer.close()
        self.listener.close()
        if kind is None:
            assert not self._thread.is_alive(), "the fake server's script did not finish"
            if self._error is not None:
                raise self._error


def write_transfer_info(folder: Path, server: str, name: str, file: str | Path) -> Path:
    """A transfer.info with the three lines."""
    path = folder / "transfer.info"
    path.write_text(f"{server}\n{name}\n{file}\n", encoding="utf-8")
    return path


def run_against(script, work: Path, data: Path, run_client, *argv: str):
    """Run the client on ``data`` (through transfer.info) against a fake server playing ``script``."""
    with FakeServer(script) as server:
        write_transfer_info(work, server.address, NAME, data.name)
        return run_client(*argv)


def file_received(
    keys: Keys, received, *, cksum_delta: int = 0, file_name: str | None = None
) -> FileReceived:
    """The 1603 a correct server sends for this upload (or with another cksum or file name)."""
    return FileReceived(
        client_id=keys.client_id,
        content_size=len(received.ciphertext),
        file_name=received.first.file_name if file_name is None else file_name,
        cksum=(received.cksum + cksum_delta) % 2**32,
    )


def accept_upload(peer, keys: Keys, *, first: Packet | None = None):
    """Receive one upload, answer 1603 with the right cksum, then 900 → 1604."""
    received = peer.receive_file(keys.aes_key, first)
    peer.reply(file_received(keys, received))
    peer.expect(CrcOk)
    peer.reply(Acknowledged(client_id=keys.client_id))
    return received


def refuse_upload(peer, keys: Keys) -> None:
    """Receive one upload, answer it 1607, and see the client close the connection."""
    peer.receive_file(keys.aes_key)
    peer.reply(GeneralError())
    peer.expect_closed()


def make_file(folder: Path, name: str = "data.bin", size: int = 5000) -> Path:
    """A file of random bytes."""
    path = folder / name
    path.write_bytes(os.urandom(size))
    return path


def registered_folder(folder: Path, keys: Keys, name: str = NAME) -> None:
    """me.info and priv.key of an already registered client."""
    private_key = generate_private_key()
    keys.public_key = private_key.public_key()
    key_text = base64.b64encode(export_private_key(private_key)).decode()
    (folder / "me.info").write_text(f"{name}\n{keys.client_id.hex()}\n{key_text}\n")
    (folder / "priv.key").write_text(key_text + "\n")

class FakeSocket:
    """Records each write (sendall, or sendmsg of gathered parts); recv hands
    out scripted pieces (or raises them)."""

    def __init__(self, pieces=()) -> None:
        self.sent: list[bytes] = []
        self.pieces = list(pieces)
        self.closed = False

    def sendall(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    def sendmsg(self, buffers) -> int:
        data = b"".join(bytes(buffer) for buffer in buffers)
        self.sent.append(data)
        return len(data)

    def recv(self, size: int) -> bytes:
        piece = self.pieces.pop(0)
        if isinstance(piece, BaseException):
            raise piece
        return piece

    def fileno(self) -> int:
        return -1

    def settimeout(self, timeout) -> None:
        pass

    def close(self) -> None:
        self.closed = True
