"""A folder upload's receives split across held buffers (server/blobport.py BufferedWriter,
server/packets.py StreamingPacket._decrypt_into): whatever the receives' sizes, the buffers'
sizes and the rounds' ends, the store gets exactly the file, in order, and its cksum."""

from __future__ import annotations

import types

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import FilePacketStarted, cksum, crypto
from protocol.incoming import IncomingFile, PacketOrder
from protocol.names import NameField
from server.blobport import FULL_BELOW, BlobPort
from server.packets import StreamingPacket

KEY = bytes(range(32))
CLIENT = b"c" * 16


class Recorded:
    """A store's writer (a folder's double): what it was given, in order."""

    key = "ab" * 16

    def __init__(self) -> None:
        self.written = bytearray()
        self.sealed = False

    def write(self, data) -> None:
        assert not self.sealed
        self.written += data

    def seal(self) -> None:
        self.sealed = True

    def abort(self) -> None:
        raise AssertionError("nothing aborts here")


def _packets(data: bytes, size: int, per_packet: bool) -> list[tuple[FilePacketStarted, bytes]]:
    if per_packet:
        chunks = [crypto.encrypt(KEY, data[i : i + size]) for i in range(0, len(data), size)]
        sizes = [len(chunk) for chunk in chunks]
    else:
        cipher = crypto.encrypt(KEY, data)
        chunks = [cipher[i : i + size] for i in range(0, len(cipher), size)]
        sizes = [len(cipher)] * len(chunks)
    return [
        (
            FilePacketStarted(
                client_id=CLIENT, content_size=content_size, orig_file_size=len(data),
                packet_number=number, total_packets=len(chunks),
                file_name=NameField.from_text(b"f.bin"), bytes_in_packet=len(chunk),
            ),
            chunk,
        )
        for number, (chunk, content_size) in enumerate(zip(chunks, sizes), start=1)
    ]


@settings(max_examples=150, deadline=None)
@given(
    size=st.one_of(st.integers(0, 100), st.integers(0, 200_000)),
    packet=st.integers(1, 4096).map(lambda blocks: 16 * blocks),
    per_packet=st.booleans(),
    hold=st.integers(FULL_BELOW // 2, 6 * FULL_BELOW),
    bounded=st.booleans(),
    receives=st.lists(
        st.one_of(st.integers(1, 64), st.integers(FULL_BELOW, 5 * FULL_BELOW)), min_size=1,
        max_size=20,
    ),
    round_ends=st.lists(st.booleans(), min_size=1, max_size=20),
)
def test_any_receives_through_held_buffers_give_exactly_the_file_and_its_cksum(
    size, packet, per_packet, hold, bounded, receives, round_ends
):
    data = bytes(range(251)) * (size // 251) + bytes(size % 251)
    packets = _packets(data, packet, per_packet and size > 0)
    port = BlobPort(hold_bytes=hold)
    inner = Recorded()
    incoming = IncomingFile(KEY, packets[0][0], PacketOrder.of_first(packets[0][0]))
    most = IncomingFile.most_plain(incoming.max_cipher_size) if bounded else None
    writer = port.buffer(inner, most)
    packet_of = types.SimpleNamespace(_phase=types.SimpleNamespace(incoming=incoming))
    turn = 0
    for number, (event, content) in enumerate(packets):
        if number:
            incoming.start_packet(event)
        at = 0
        while at < len(content):
            step = receives[turn % len(receives)]
            StreamingPacket._decrypt_into(packet_of, writer, content[at : at + step])
            at += step
            if round_ends[turn % len(round_ends)]:  # a round's end: a paused upload hands over
                port.hand_over_held()
            turn += 1
        tail = incoming.end_packet()
        if tail:
            writer.write(tail)
    writer.complete()
    writer.seal()
    port.close()
    assert incoming.done
    assert bytes(inner.written) == data and inner.sealed
    assert incoming.result.cksum == cksum(data) == cksum(bytes(inner.written))
    assert writer.size == len(data)
