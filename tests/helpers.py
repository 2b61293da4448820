"""Shared test helpers: the real server as a subprocess, and a raw test client.

Stable API (other test suites use it):

* :func:`start_server` / :class:`ServerProcess`: run ``python -m server
  --host 127.0.0.1 --port 0 --data-dir DIR [flags]`` from this checkout, wait
  until it listens, read its port from the log (so keep --log-level at INFO
  or DEBUG). ``stop()`` sends SIGTERM and
  returns the exit code, ``kill()`` sends SIGKILL, ``log()`` is the log text.
* :class:`RawClient`: a blocking socket plus ``protocol.ClientConnection``;
  ``request(event)`` sends one request and returns the response event.
* :func:`make_identity` / :func:`upload`: a registered client with its keys,
  and a whole file upload in chosen packet sizes and variants.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from Crypto.Cipher import AES

from protocol.codes import AES_BLOCK_SIZE
from protocol.editions import V3, Edition
from protocol import (
    NEED_DATA,
    ClientConnection,
    ConnectionClosed,
    CrcAbort,
    CrcOk,
    CrcRetry,
    FileReceived,
    PublicKeyReceived,
    Reconnect,
    Register,
    Registered,
    SendFilePacket,
    SendPublicKey,
    crypto,
)
from protocol.names import NameField
from protocol.wire import FILE_PACKET_FIELDS_SIZE, REQUEST_HEADER_SIZE, RequestHeader

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
IO_TIMEOUT = 10.0
POLL_INTERVAL = 0.02
_LISTENING = re.compile(r"listening on \S+ port (\d+)")
ANY_ID = b"\0" * 16
#: Every test server gets these first: the tests open many connections and
#: register many clients from 127.0.0.1, past the per-address defaults that
#: protect a real server (and read lines from its log that a busy address would
#: have past its log budget). A test of those defaults passes ``load_flags=()``;
#: flags a test passes itself come later and win. ``stop()`` cuts uploads in
#: progress at once (``--drain-timeout 0``): a test of the drain passes its own.
LOAD_FLAGS = (
    "--max-connections-per-address", "0",
    "--registrations-per-minute", "0",
    "--max-disk-share-per-address", "1",
    "--log-lines-per-address", "0",
    "--max-client-share-per-address", "1",
    "--drain-timeout", "0",
)


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` nobody listens on right now (the OS's choice)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def server_env() -> dict[str, str]:
    """The environment that runs this checkout's packages."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@dataclass
class ServerProcess:
    """A running ``python -m server``."""

    process: subprocess.Popen
    data_dir: Path
    log_path: Path
    port: int = 0
    #: The loopback address it listens on (a cluster's nodes each have their own).
    host: str = HOST
    #: ``--metadata`` as given (None: SQLite in the data folder).
    metadata: str | None = None
    #: ``--blobs`` as given (None: received_files/ in the data folder).
    blobs: str | None = None
    #: The variables added to its environment (an object store's credentials).
    env: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens."""
        return self.host, self.port

    def log(self) -> str:
        """Everything it logged so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send a signal (SIGTERM by default), wait, return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(STOP_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(STOP_TIMEOUT)

    def client(self, source: str | None = None) -> RawClient:
        """A new connection to it (optionally from another 127.x address)."""
        return RawClient(self.address, source=source)

    def wait_log(self, pattern: str, timeout: float = IO_TIMEOUT) -> re.Match:
        """Wait until the log matches a regular expression."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.log())
            if found:
                return found
            time.sleep(POLL_INTERVAL)
        raise AssertionError(f"log never matched {pattern!r}:\n{self.log()}")


def start_server(
    data_dir: Path,
    *flags: str,
    port: int = 0,
    wait: bool = True,
    load_flags: tuple[str, ...] = LOAD_FLAGS,
    host: str = HOST,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """Start the real server in data_dir; with ``wait``, until it listens.

    ``env`` adds variables to :func:`server_env` (an object store's credentials).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"{data_dir.name}-server-{time.monotonic_ns()}.log"
    args = [sys.executable, "-m", "server", "--host", host, "--data-dir", str(data_dir)]
    if port is not None:
        args += ["--port", str(port)]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [*args, *load_flags, *flags],
            cwd=data_dir,
            env={**server_env(), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(process, data_dir, log_path, host=host,
                           metadata=_option(flags, "--metadata"), blobs=_option(flags, "--blobs"),
                           env=dict(env or {}))
    if wait:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            found = _LISTENING.search(server.log())
            if found:
                server.port = int(found.group(1))
                return server
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
            time.sleep(POLL_INTERVAL)
        server.kill()
        raise RuntimeError(f"server did not start:\n{server.log()}")
    return server


def _option(flags: tuple[str, ...], name: str) -> str | None:
    """The value of ``name`` among command-line flags, if given."""
    for flag, value in zip(flags, flags[1:]):
        if flag == name:
            return value
    return None


class RawClient:
    """A blocking test connection speaking through ``ClientConnection``."""

    def __init__(
        self, address: tuple[str, int], source: str | None = None, edition: Edition = V3
    ) -> None:
        self.sock = socket.create_connection(
            address, timeout=IO_TIMEOUT, source_address=(source, 0) if source else None
        )
        self.edition = edition
        self.conn = ClientConnection(edition)

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def send(self, request) -> None:
        """Send one request event."""
        self.sock.sendall(self.conn.send(request))

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are."""
        self.sock.sendall(data)

    def receive(self, timeout: float = IO_TIMEOUT):
        """The next response event, or ConnectionClosed.

        Raises:
            TimeoutError: nothing arrived in time.
        """
        self.sock.settimeout(timeout)
        while True:
            event = self.conn.next_event()
            if event is not NEED_DATA:
                return event
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            except socket.timeout:
                raise TimeoutError("no response") from None
            self.conn.receive_data(data)

    def request(self, event, timeout: float = IO_TIMEOUT):
        """Send a request and return the response."""
        self.send(event)
        return self.receive(timeout)

    def nothing_within(self, seconds: float) -> bool:
        """True if no byte (and no EOF) arrives for ``seconds``."""
        self.sock.settimeout(seconds)
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except socket.timeout:
            return True
        return False

    def closed_within(self, seconds: float) -> bool:
        """True if the server closes within ``seconds`` (data before EOF is read)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                event = self.receive(max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                return False
            except Exception:
                return True
            if isinstance(event, ConnectionClosed):
                return True
        return False


def raw_header(code: int, payload_size: int, client_id: bytes = ANY_ID, version: int = 3) -> bytes:
    """A request header with any values."""
    return RequestHeader.build(
        {"client_id": client_id, "version": version, "code": code, "payload_size": payload_size}
    )


@dataclass
class Identity:
    """A client that completed 825 + 826 (or 827)."""

    name: str
    client_id: bytes
    private_key: object = field(repr=False)
    aes_key: bytes = field(repr=False)


_KEY_CACHE: list = []


def private_key():
    """An RSA-1024 key pair (a few are made once and reused across tests)."""
    if len(_KEY_CACHE) < 4:
        _KEY_CACHE.append(crypto.generate_private_key())
        return _KEY_CACHE[-1]
    _KEY_CACHE.append(_KEY_CACHE.pop(0))
    return _KEY_CACHE[-1]


_names = iter(range(10**9))


def unique_name(prefix: str = "client") -> str:
    """A client name no other test uses."""
    return f"{prefix}-{os.getpid()}-{next(_names)}"


def parse_answers(data: bytes) -> list:
    """The responses in bytes a server sent (none for b"", which a parser would take for EOF)."""
    parser = ClientConnection()
    if data:
        parser.receive_data(data)
    found = []
    while (event := parser.next_event()) is not NEED_DATA:
        found.append(event)
    return found


def make_identity(client, name: str | None = None, *, key=None) -> Identity:
    """Register and send a public key on this connection (anything with ``request``:
    a :class:`RawClient`, or an in-process session's harness); ``key``: the RSA key
    pair, else one from :func:`private_key` (which may make one: seconds when loaded)."""
    name = name or unique_name()
    registered = client.request(Register(client_id=ANY_ID, name=name))
    assert isinstance(registered, Registered), registered
    key = key if key is not None else private_key()
    answer = client.request(
        SendPublicKey(
            client_id=registered.client_id, name=name, public_key=crypto.export_public_key(key)
        )
    )
    assert isinstance(answer, PublicKeyReceived), answer
    return Identity(name, registered.client_id, key, crypto.decrypt_aes_key(key, answer.encrypted_aes_key))


def reconnect(client: RawClient, identity: Identity) -> Identity:
    """827 on this connection; the identity with its fresh AES key."""
    answer = client.request(Reconnect(client_id=identity.client_id, name=identity.name))
    assert type(answer).__name__ == "Reconnected", answer
    identity.aes_key = crypto.decrypt_aes_key(identity.private_key, answer.encrypted_aes_key)
    return identity


def file_packets(
    identity: Identity,
    file_name: str | bytes | NameField,
    data: bytes,
    packet_size: int = 1024,
    *,
    swapped: bool = False,
    per_packet: bool = False,
    zero_fill: bool = False,
) -> list[SendFilePacket]:
    """The 828 packets of a file (variants 4, 5, 6 on request)."""
    if isinstance(file_name, (str, bytes)):
        file_name = NameField.from_text(file_name)
    if per_packet:
        chunks = [
            crypto.encrypt(identity.aes_key, data[i : i + packet_size])
            for i in range(0, max(len(data), 1), packet_size)
        ]
        sizes = [len(chunk) for chunk in chunks]
    else:
        ciphertext = crypto.encrypt(identity.aes_key, data)
        chunks = [ciphertext[i : i + packet_size] for i in range(0, len(ciphertext), packet_size)]
        sizes = [len(ciphertext)] * len(chunks)
        if zero_fill:
            chunks[-1] = chunks[-1].ljust(packet_size, b"\0")
    total = len(chunks)
    packets = []
    for number, (chunk, size) in enumerate(zip(chunks, sizes), start=1):
        first, second = (total, number) if swapped else (number, total)
        packets.append(
            SendFilePacket(
                client_id=identity.client_id,
                content_size=size,
                orig_file_size=len(data),
                packet_number=first,
                total_packets=second,
                file_name=file_name,
                content=chunk,
            )
        )
    return packets


def bad_padding_packet(identity: Identity, file_name: str) -> SendFilePacket:
    """One 16-byte 828 that surely fails: it decrypts to a block ending in 0 (no PKCS#7).

    A random block would pass about once in 256 tries: the attack, not a test.
    """
    # one block of CBC with a zero IV is the ECB encryption of the plaintext
    block = AES.new(identity.aes_key, AES.MODE_ECB).encrypt(bytes(AES_BLOCK_SIZE))
    (packet,) = file_packets(identity, file_name, bytes(AES_BLOCK_SIZE - 1))
    return dataclasses.replace(packet, content=block)


def upload(client: RawClient, identity: Identity, file_name, data: bytes, packet_size: int = 1024, **variants):
    """Send a whole file on this connection; return the server's answer."""
    for packet in file_packets(identity, file_name, data, packet_size, **variants):
        client.send(packet)
    return client.receive()


def packet_bytes(packet: SendFilePacket) -> bytes:
    """The wire bytes of one 828 (header, fixed part, content)."""
    return ClientConnection().send(packet)


def proxied_connections(
    listener: socket.socket, target: tuple[str, int], *, timeout: float | None = None
) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A test proxy's connections: each one accepted on ``listener``, with a new one
    to ``target`` (``timeout``: its connect's), until the listener is closed.

    A client whose server cannot be reached is closed: the server is gone.
    """
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        try:
            server = socket.create_connection(target, timeout=timeout)
        except OSError:
            client.close()
            continue
        yield client, server


__all__ = [
    "ANY_ID",
    "bad_padding_packet",
    "FILE_PACKET_FIELDS_SIZE",
    "HOST",
    "REQUEST_HEADER_SIZE",
    "CrcAbort",
    "CrcOk",
    "CrcRetry",
    "FileReceived",
    "Identity",
    "RawClient",
    "ServerProcess",
    "file_packets",
    "make_identity",
    "packet_bytes",
    "private_key",
    "proxied_connections",
    "raw_header",
    "reconnect",
    "start_server",
    "unique_name",
    "upload",
]
