"""The pipelined sender (client/pipeline.py): the serial sender's bytes, bounded memory,
errors in its threads raised in the caller's, and no thread left behind."""

from __future__ import annotations

import io
import os
import socket
import threading
from pathlib import Path

import pytest

from client.config import Identity, ServerAddress
from client.errors import FileReadError, NetworkError
from client.packets import Layout, encrypted_packets, per_packet_ciphertexts, plan_file
from client.pipeline import RING_DEPTH, PipelinedPackets
from client.session import Session
from client.upload import Client
from protocol import Cksum
from protocol.crypto import generate_private_key, new_aes_key
from protocol.editions import EDITION_2022, EDITION_2023A, V3

AES_KEY = new_aes_key()
IDENTITY = Identity(name="pipe", client_id=bytes(range(16)), private_key=generate_private_key())
PACKET = 64
SIZES = [0, 1, 15, 16, 17, PACKET - 1, PACKET, 3 * PACKET, 3 * PACKET + 5]
LAYOUTS = {
    "standard": Layout(),
    "swapped": Layout(swapped=True),
    "per-packet": Layout(per_packet=True),
    "swapped+per-packet": Layout(swapped=True, per_packet=True),
    "padded": Layout(pad_last=True),
}
EDITIONS = {edition.name: edition for edition in (V3, EDITION_2022, EDITION_2023A)}
#: Bytes a test waits for the stages to stop (they stop at once).
JOIN_SECONDS = 10


class RecordingSession(Session):
    """A session whose connection is one end of a socketpair; the other end is recorded."""

    def __init__(self, edition) -> None:
        super().__init__(ServerAddress("127.0.0.1", 1), edition=edition)
        self.wire = bytearray()
        self._drainer: threading.Thread | None = None

    def _connect(self) -> socket.socket:
        ours, theirs = socket.socketpair()

        def drain() -> None:
            with theirs:
                while data := theirs.recv(1 << 16):
                    self.wire += data

        self._drainer = threading.Thread(target=drain, daemon=True)
        self._drainer.start()
        self.connections_opened += 1
        return ours

    def recorded(self) -> bytes:
        """Everything written, once the connection is closed."""
        self.reset()
        if self._drainer is not None:
            self._drainer.join(JOIN_SECONDS)
        return bytes(self.wire)


def new_client(edition, layout: Layout) -> Client:
    client = Client(
        RecordingSession(edition),
        config_dir=Path("."),
        name=IDENTITY.name,
        identity=IDENTITY,
        packet_size=PACKET,
        layout=layout,
    )
    client._aes_key = AES_KEY
    return client


def serial_send(client: Client, path: Path, sums: Cksum) -> None:
    """The sender as it was before the pipeline: one packet read, encrypted and sent at a time."""
    plan = plan_file(path, path.stat().st_size, PACKET, client._layout)
    whole = client._session.edition.whole_file
    with path.open("rb") as source:
        if client._layout.per_packet and not whole:
            packets = per_packet_ciphertexts(source, plan, AES_KEY, sums)
        else:
            packets = encrypted_packets(source, plan, AES_KEY, sums)
        for number, content in enumerate(packets, start=1):
            if not whole:
                client._send_packet(plan, number, content)
            elif number == 1:
                client._send_packet(plan, 1, content, whole_file=True)
            else:
                client._session.send_more(content)


def pipelined_send(client: Client, path: Path, sums: Cksum) -> None:
    client.send_packets(plan_file(path, path.stat().st_size, PACKET, client._layout), sums)


@pytest.mark.parametrize("edition", sorted(EDITIONS))
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_the_pipelined_sender_writes_the_serial_senders_bytes(tmp_path, edition, layout):
    for size in SIZES:
        path = tmp_path / f"file-{size}.bin"
        path.write_bytes(os.urandom(size))
        wires, sums = [], []
        for send in (serial_send, pipelined_send):
            client = new_client(EDITIONS[edition], LAYOUTS[layout])
            checksum = Cksum()
            send(client, path, checksum)
            wires.append(client._session.recorded())
            sums.append(checksum.value)
        serial, pipelined = wires
        assert len(serial) > size
        assert pipelined == serial, f"{size} bytes"
        assert sums[0] == sums[1]


class CountingSource(io.RawIOBase):
    """A file of zeros that records how far it has been read."""

    def __init__(self, size: int, fail_at: int | None = None) -> None:
        self.left = size
        self.position = 0
        self.fail_at = fail_at

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.fail_at is not None and self.position >= self.fail_at:
            raise OSError(5, "Input/output error")
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        self.position += count
        return count


def stage_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name in ("client-read", "client-encrypt")]


def test_the_reader_stays_within_the_ring_however_big_the_file():
    size = 200 * PACKET
    source = CountingSource(size)
    plan = plan_file(Path("f"), size, PACKET)
    ahead = []
    with PipelinedPackets(source, plan, AES_KEY, Cksum()) as packets:
        for number, _ in enumerate(packets, start=1):
            ahead.append(source.position - number * PACKET)
    # Read ahead of the packet being sent: at most the other plaintext buffers
    # and the ciphertext buffers waiting to be sent.
    assert max(ahead) <= 2 * RING_DEPTH * PACKET
    assert max(ahead) > 0  # it does read ahead
    assert not stage_threads()


def test_a_file_that_shrinks_raises_in_the_callers_thread_after_the_packets_before():
    plan = plan_file(Path("f"), 10 * PACKET, PACKET)
    received = 0
    with pytest.raises(FileReadError, match="shrank"):
        with PipelinedPackets(io.BytesIO(bytes(3 * PACKET + 7)), plan, AES_KEY, Cksum()) as packets:
            for _ in packets:
                received += 1
    assert received == 3  # the whole packets read before the file ended
    assert not stage_threads()


def test_a_read_error_is_a_file_read_error():
    size = 50 * PACKET
    plan = plan_file(Path("f"), size, PACKET)
    with pytest.raises(FileReadError, match="cannot read: Input/output error"):
        with PipelinedPackets(CountingSource(size, fail_at=5 * PACKET), plan, AES_KEY, Cksum()) as packets:
            for _ in packets:
                pass
    assert not stage_threads()


def test_an_error_while_sending_stops_both_stages():
    size = 1000 * PACKET
    source = CountingSource(size)
    plan = plan_file(Path("f"), size, PACKET)
    with pytest.raises(NetworkError):
        with PipelinedPackets(source, plan, AES_KEY, Cksum()) as packets:
            for number, _ in enumerate(packets, start=1):
                if number == 3:
                    raise NetworkError("the connection broke")
    assert not stage_threads()
    assert source.position < size // 10  # the reader stopped, it did not read on


def test_the_cksum_is_the_files():
    data = os.urandom(5 * PACKET + 3)
    plan = plan_file(Path("f"), len(data), PACKET)
    sums, reference = Cksum(), Cksum()
    with PipelinedPackets(io.BytesIO(data), plan, AES_KEY, sums) as packets:
        sent = sum(packet.plain_count for packet in packets)
    reference.update(data)
    assert sent == len(data)
    assert sums.value == reference.value
