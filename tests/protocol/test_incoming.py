"""IncomingFile: packet sequences, variants 4–6, D1/D2/D3 refusals, streaming."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import FilePacketStarted, RemoteProtocolError, cksum, crypto
from protocol.errors import LocalProtocolError
from protocol.names import NameField
from protocol.incoming import MAX_ZERO_FILL, IncomingFile, PacketOrder, is_first_packet

KEY = bytes(range(32))
CLIENT = b"c" * 16


def packet(number, total, content, *, content_size, orig, name=b"f.bin") -> tuple:
    """A FilePacketStarted and its content."""
    event = FilePacketStarted(
        client_id=CLIENT,
        content_size=content_size,
        orig_file_size=orig,
        packet_number=number,
        total_packets=total,
        file_name=NameField.from_text(name),
        bytes_in_packet=len(content),
    )
    return event, content


def whole_file_packets(data: bytes, size: int, *, swapped=False, fill=False, key=KEY):
    ciphertext = crypto.encrypt(key, data)
    chunks = [ciphertext[i : i + size] for i in range(0, len(ciphertext), size)]
    if fill:
        chunks[-1] = chunks[-1].ljust(size, b"\0")
    total = len(chunks)
    return [
        packet(
            *((total, n) if swapped else (n, total)),
            chunk,
            content_size=len(ciphertext),
            orig=len(data),
        )
        for n, chunk in enumerate(chunks, start=1)
    ]


def per_packet_packets(data: bytes, size: int = 1024, key=KEY):
    chunks = [crypto.encrypt(key, data[i : i + size]) for i in range(0, len(data), size)]
    return [
        packet(n, len(chunks), chunk, content_size=len(chunk), orig=len(data))
        for n, chunk in enumerate(chunks, start=1)
    ]


def first_packet(event: FilePacketStarted, key=KEY, **options) -> IncomingFile:
    """The IncomingFile that ``event``, a file's first packet, begins."""
    return IncomingFile(key, event, PacketOrder.of_first(event), **options)


def packets_begun(packets, key=KEY) -> Iterator[tuple[IncomingFile, bytes]]:
    """Each packet begun on one IncomingFile (made by the first): the file and the
    packet's content, for the caller to receive and end."""
    incoming = None
    for event, content in packets:
        if incoming is None:
            incoming = first_packet(event, key)
        else:
            incoming.start_packet(event)
        yield incoming, content


def feed(packets, *, piece: int | None = None, key=KEY) -> tuple[bytes, IncomingFile]:
    """Run packets through an IncomingFile; content cut in pieces of ``piece``."""
    out = []
    incoming = None
    for incoming, content in packets_begun(packets, key):
        step = piece or max(len(content), 1)
        for i in range(0, len(content), step):
            out.append(bytes(incoming.receive(content[i : i + step])))  # a view until the next call
        out.append(incoming.end_packet())
    return b"".join(out), incoming


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1024, 4000, 10_000])
@pytest.mark.parametrize("packet_size", [16, 1024, 4000, 8192])
def test_whole_file_round_trip(size, packet_size):
    data = os.urandom(size)
    plain, incoming = feed(whole_file_packets(data, packet_size))
    assert plain == data
    assert incoming.done
    result = incoming.result
    assert result.cksum == cksum(data)
    assert result.content_size == crypto.padded_size(size)
    assert result.plain_size == size


def test_any_split_of_the_content_gives_the_same_file():
    data = os.urandom(5000)
    for piece in (1, 7, 16, 333):
        plain, incoming = feed(whole_file_packets(data, 1024), piece=piece)
        assert plain == data and incoming.result.cksum == cksum(data)


def feed_into(packets, *, piece: int, key=KEY) -> tuple[bytes, IncomingFile]:
    """As :func:`feed`, each piece decrypted into one growing buffer (``receive_into``,
    as the server's BufferedWriter does)."""
    held, filled = bytearray(), 0
    incoming = None
    for incoming, content in packets_begun(packets, key):
        for i in range(0, len(content), piece):
            data = content[i : i + piece]
            held.extend(bytes(IncomingFile.most_plain(len(data))))
            filled += incoming.receive_into(data, memoryview(held)[filled:])
        tail = incoming.end_packet()
        held[filled : filled + len(tail)] = tail
        filled += len(tail)
    return bytes(held[:filled]), incoming


def feed_into_rooms(packets, *, piece: int, room: int) -> tuple[bytes, IncomingFile]:
    """As :func:`feed_into`, into buffers of ``room`` bytes each: a piece that does not fit
    what is left of one is split (``most_content``), the rest going into the next (as the
    server's BufferedWriter lends its buffers)."""
    buffers: list[bytes] = []
    buffer, filled = bytearray(room), 0
    incoming = None
    for incoming, content in packets_begun(packets, KEY):
        for i in range(0, len(content), piece):
            data = memoryview(content)[i : i + piece]
            while data:
                if room - filled < IncomingFile.most_plain(min(len(data), 1)):
                    buffers.append(bytes(buffer[:filled]))
                    buffer, filled = bytearray(room), 0
                part = data[: IncomingFile.most_content(room - filled)]
                assert part, (room, filled)
                filled += incoming.receive_into(part, memoryview(buffer)[filled:])
                data = data[len(part) :]
        buffers.append(bytes(buffer[:filled]))
        buffer, filled = bytearray(room), 0
        buffers.append(incoming.end_packet())
    return b"".join(buffers), incoming


def test_content_split_to_fit_each_rooms_rest_gives_the_same_file():
    data = os.urandom(5000)
    for room in (IncomingFile.most_plain(1), 100, 1000):
        for piece in (1, 7, 333, 4096):
            plain, incoming = feed_into_rooms(whole_file_packets(data, 1024), piece=piece,
                                              room=room)
            assert plain == data and incoming.result.cksum == cksum(data), (room, piece)
    assert IncomingFile.most_content(IncomingFile.most_plain(100)) == 100
    assert IncomingFile.most_content(IncomingFile.most_plain(0) - 1) == 0


@pytest.mark.parametrize("variant", ["whole file", "per packet", "zero fill"])
def test_receive_into_gives_what_receive_gives(variant):
    data = os.urandom(5000)
    packets = {
        "whole file": lambda: whole_file_packets(data, 1024),
        "per packet": lambda: per_packet_packets(data, 1024),
        "zero fill": lambda: whole_file_packets(data, 1024, fill=True),
    }[variant]()
    for piece in (1, 7, 16, 333, 4096):
        plain, incoming = feed_into(packets, piece=piece)
        assert plain == data and incoming.result.cksum == cksum(data), piece


def test_variant4_zero_fill_is_cut_at_content_size():
    data = os.urandom(1000)
    plain, incoming = feed(whole_file_packets(data, 4000, fill=True))
    assert plain == data
    assert incoming.result.content_size == 1008


def test_variant4_multi_packet_zero_fill():
    data = os.urandom(10_000)
    plain, _ = feed(whole_file_packets(data, 4000, fill=True))
    assert plain == data


def test_nonzero_fill_is_refused():
    data = os.urandom(100)
    (event, content), = whole_file_packets(data, 4000, fill=True)
    content = content[:-1] + b"\1"
    with pytest.raises(RemoteProtocolError):
        feed([(event, content)])


def test_fill_longer_than_allowed_is_refused():
    data = os.urandom(10)
    ciphertext = crypto.encrypt(KEY, data)
    content = ciphertext + bytes(MAX_ZERO_FILL + 1)
    with pytest.raises(RemoteProtocolError, match="more than content_size"):
        event = packet(1, 1, content, content_size=16, orig=10)[0]
        first_packet(event)


def test_variant5_swapped_fields():
    data = os.urandom(5000)
    plain, incoming = feed(whole_file_packets(data, 1024, swapped=True))
    assert plain == data and incoming.total_packets == 5


def test_variant6_per_packet_encryption():
    data = os.urandom(5000)
    plain, incoming = feed(per_packet_packets(data))
    assert incoming.per_packet
    assert plain == data
    assert incoming.result.cksum == cksum(data)
    assert incoming.result.content_size == 4 * 1040 + crypto.padded_size(5000 - 4096)


def test_variant6_exact_multiple_of_packet_size():
    data = os.urandom(2048)
    plain, incoming = feed(per_packet_packets(data))
    assert plain == data and incoming.result.content_size == 2 * 1040


def test_variant6_bad_padding_in_a_middle_packet():
    packets = per_packet_packets(os.urandom(3000))
    event, content = packets[1]
    packets[1] = (event, content[:-1] + bytes([content[-1] ^ 0xFF]))
    with pytest.raises(RemoteProtocolError, match="^decryption failed$"):
        feed(packets)


def test_variant6_plaintext_must_add_up_to_orig_size():
    packets = per_packet_packets(os.urandom(3000))
    fixed = []
    for event, content in packets:
        fixed.append(packet(event.packet_number, event.total_packets, content,
                            content_size=event.content_size, orig=2999))
    with pytest.raises(RemoteProtocolError):
        feed(fixed)


@pytest.mark.parametrize(
    "content_size, orig",
    [(16, 16), (32, 10), (0, 0), (1008, 1008), (1000, 990)],
)
def test_d1_content_size_must_fit_orig_size(content_size, orig):
    with pytest.raises(RemoteProtocolError, match="PKCS#7"):
        event = packet(1, 1, b"x" * content_size, content_size=content_size, orig=orig)[0]
        first_packet(event)


def test_d1_content_size_over_the_limit():
    event, _ = packet(1, 2, b"\0" * 16, content_size=2048, orig=2040)
    with pytest.raises(RemoteProtocolError, match="over the limit"):
        first_packet(event, max_content_size=1024)


@pytest.mark.parametrize("number, total", [(0, 1), (1, 0), (0, 0), (2, 3), (3, 2)])
def test_d2_bad_first_packet_numbers(number, total):
    event = packet(number, total, bytes(16), content_size=32, orig=20)[0]
    assert PacketOrder.of_packet(event) is None
    with pytest.raises(RemoteProtocolError):
        PacketOrder.of_first(event)


@pytest.mark.parametrize(
    "number, total, swapped", [(2, 3, False), (3, 2, True), (1, 3, True), (3, 1, False)]
)
def test_a_file_is_built_only_from_its_first_packet_and_that_packets_order(number, total, swapped):
    event = packet(number, total, bytes(16), content_size=32, orig=20)[0]
    with pytest.raises(LocalProtocolError):
        IncomingFile(KEY, event, PacketOrder(total=3, swapped=swapped))


@pytest.mark.parametrize("number, total", [(1, 4), (4, 1), (1, 1)])
def test_the_order_of_a_first_packet_is_found_in_one_pass(number, total):
    event = packet(number, total, bytes(16), content_size=32, orig=20)[0]
    order = PacketOrder.of_packet(event)
    assert order == PacketOrder.of_first(event)
    assert order is not None and order.total == max(number, total)
    assert order.swapped is (number > total)
    assert order.position(event) == (1, order.total)


def test_d2_out_of_order_duplicate_and_beyond_total():
    packets = whole_file_packets(os.urandom(5000), 1024)
    for bad in ([packets[0], packets[2]], [packets[0], packets[0]]):
        with pytest.raises(RemoteProtocolError, match="out of order"):
            feed(bad)
    event, content = packets[1]
    beyond = packet(6, 5, content, content_size=event.content_size, orig=event.orig_file_size)
    with pytest.raises(RemoteProtocolError):
        feed([packets[0], beyond])


@pytest.mark.parametrize("field", ["total", "name", "orig", "content_size"])
def test_d2_fields_changing_mid_upload(field):
    data = os.urandom(3000)
    packets = whole_file_packets(data, 1024)
    event, content = packets[1]
    changes = {
        "total": dict(total=4),
        "name": dict(name=b"other.bin"),
        "orig": dict(orig=2999),
        "content_size": dict(content_size=event.content_size + 16),
    }[field]
    args = dict(number=2, total=3, content_size=event.content_size, orig=3000, name=b"f.bin")
    args.update(changes)
    changed = packet(args["number"], args["total"], content, content_size=args["content_size"],
                     orig=args["orig"], name=args["name"])
    with pytest.raises(RemoteProtocolError):
        feed([packets[0], changed])


def test_d2_bytes_past_content_size_in_a_middle_packet():
    data = os.urandom(3000)
    packets = whole_file_packets(data, 2000)
    event, content = packets[0]
    longer = packet(1, 2, content + bytes(2000), content_size=event.content_size, orig=3000)
    with pytest.raises(RemoteProtocolError, match="more than content_size"):
        feed([longer])


def test_d2_last_packet_short():
    packets = whole_file_packets(os.urandom(3000), 1024)
    event, content = packets[-1]
    short = packet(event.packet_number, event.total_packets, content[:-16],
                   content_size=event.content_size, orig=3000)
    with pytest.raises(RemoteProtocolError, match="short"):
        feed(packets[:-1] + [short])


def test_d3_every_decryption_failure_has_the_same_text():
    data = os.urandom(100)
    (event, content), = whole_file_packets(data, 4096)
    wrong_key = feed_error([(event, content)], key=bytes(32))
    tampered = feed_error([(event, content[:-1] + bytes([content[-1] ^ 1]))])
    assert wrong_key == tampered == "decryption failed"


def feed_error(packets, key=KEY) -> str:
    with pytest.raises(RemoteProtocolError) as info:
        feed(packets, key=key)
    assert info.value.close is False
    return str(info.value)


def test_padding_byte_never_reaches_the_caller_before_the_check():
    data = os.urandom(70)
    (event, content), = whole_file_packets(data, 4096)
    incoming = first_packet(event)
    early = bytes(incoming.receive(content))
    assert early == data[:64]  # the last block, with the padding, is held back
    assert early + incoming.end_packet() == data


def test_events_out_of_order_are_local_errors():
    (event, content), = whole_file_packets(b"abc", 4096)
    incoming = first_packet(event)
    with pytest.raises(LocalProtocolError):
        incoming.end_packet()
    with pytest.raises(LocalProtocolError):
        incoming.receive(content + b"x")
    with pytest.raises(LocalProtocolError):
        incoming.result


def test_is_first_packet():
    assert is_first_packet(packet(1, 5, b"", content_size=16, orig=1)[0])
    assert is_first_packet(packet(5, 1, b"", content_size=16, orig=1)[0])
    assert not is_first_packet(packet(2, 5, b"", content_size=16, orig=1)[0])
    assert not is_first_packet(packet(5, 2, b"", content_size=16, orig=1)[0])


def test_many_one_byte_packets_stream():
    data = os.urandom(2000)
    ciphertext = crypto.encrypt(KEY, data)
    packets = [
        packet(n, len(ciphertext), ciphertext[n - 1 : n], content_size=len(ciphertext), orig=len(data))
        for n in range(1, len(ciphertext) + 1)
    ]
    plain, incoming = feed(packets)
    assert plain == data and incoming.done


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=3000),
    packet_size=st.integers(min_value=1, max_value=2000),
    swapped=st.booleans(),
)
def test_property_any_packet_size_round_trips(data, packet_size, swapped):
    packets = whole_file_packets(data, packet_size, swapped=swapped)
    plain, incoming = feed(packets)
    assert plain == data
    assert incoming.result.cksum == cksum(data)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=1, max_size=600), flip=st.integers(min_value=0))
def test_property_tampering_never_escapes_as_another_error(data, flip):
    packets = whole_file_packets(data, 64)
    index = flip % len(packets)
    event, content = packets[index]
    position = (flip // len(packets)) % len(content)
    content = content[:position] + bytes([content[position] ^ 0x80]) + content[position + 1 :]
    packets[index] = (event, content)
    try:
        plain, _ = feed(packets)
    except RemoteProtocolError as exc:
        assert str(exc) == "decryption failed"
    else:
        assert plain != data
