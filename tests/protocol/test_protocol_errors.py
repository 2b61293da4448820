"""Error paths of both decoders (docs/PROTOCOL.md "Server rules", docs/HOSTILE.md A-B).

A well-framed wrong request (unknown code, wrong size, bad name) raises
RemoteProtocolError(close=False) carrying its answer, its payload is dropped
and the next request parses. An impossible size closes without buffering.
A cut message is an error; EOF between messages is ConnectionClosed.
"""

from __future__ import annotations

import struct

import pytest

import protocol_vectors as v
from protocol import (
    NEED_DATA,
    ClientConnection,
    ConnectionClosed,
    CrcOk,
    FileContent,
    FilePacketEnded,
    FilePacketStarted,
    LocalProtocolError,
    NameField,
    Register,
    Registered,
    RemoteProtocolError,
    ResponseCode,
    ServerConnection,
)
from protocol.incoming import MAX_ZERO_FILL
from protocol_helpers import drain, feed

REGISTER_EVENT = Register(client_id=v.CLIENT_ID, name="alice")
GENERAL_ERROR = ResponseCode.GENERAL_ERROR
REGISTRATION_FAILED = ResponseCode.REGISTRATION_FAILED
#: A cap large enough for every wrong size tried here (docs/HOSTILE.md A4 "≤ cap").
CAP = 4096


def header(code: int, payload_size: int, client_id: bytes = v.CLIENT_ID) -> bytes:
    return (
        client_id
        + b"\x03"
        + code.to_bytes(2, "little")
        + payload_size.to_bytes(4, "little")
    )


def response_header(code: int, payload_size: int) -> bytes:
    return b"\x03" + code.to_bytes(2, "little") + payload_size.to_bytes(4, "little")


def next_error(conn) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        drain(conn)
    return info.value


def assert_recoverable(conn, response_code=GENERAL_ERROR) -> None:
    """The pending input raises close=False with response_code, then parses on."""
    error = next_error(conn)
    assert error.close is False
    assert error.response_code == response_code
    assert str(error)
    # The request fed after the wrong one parses.
    assert drain(conn) == [REGISTER_EVENT]


def assert_fatal(conn) -> RemoteProtocolError:
    error = next_error(conn)
    assert error.close is True
    assert error.response_code == GENERAL_ERROR
    # The stream cannot be trusted any more: even a valid request is refused.
    conn.receive_data(v.REGISTER)
    again = next_error(conn)
    assert again.close is True
    return error


# -- unknown codes and wrong sizes, small enough to skip ---------------------

UNKNOWN_REQUEST_CODES = [0, 824, 829, 899, 903, 1600, 65535]


@pytest.mark.parametrize("code", UNKNOWN_REQUEST_CODES)
@pytest.mark.parametrize("payload", [b"", b"0123456789", v.CRC_OK], ids=["0", "10", "a-request"])
@pytest.mark.parametrize("together", [True, False], ids=["one-chunk", "payload-later"])
def test_unknown_code_is_skipped(code, payload, together):
    # The payload may itself look like a request: it must not be parsed.
    conn = ServerConnection()
    if together:
        conn.receive_data(header(code, len(payload)) + payload + v.REGISTER)
        assert_recoverable(conn)
    else:
        conn.receive_data(header(code, len(payload)))
        error = next_error(conn)
        assert (error.close, error.response_code) == (False, GENERAL_ERROR)
        assert feed(conn, [payload]) == []
        assert feed(conn, [v.REGISTER]) == [REGISTER_EVENT]


WRONG_SIZES = [
    (825, 10),
    (825, 0),
    (825, 254),
    (825, 256),
    (826, 416),
    (826, 414),
    (826, 255),
    (827, 0),
    (827, 415),
    (900, 254),
    (901, 256),
    (902, 1),
    (828, 0),
    (828, 1),
    (828, 266),
]


@pytest.mark.parametrize("code, size", WRONG_SIZES, ids=[f"{c}-{s}" for c, s in WRONG_SIZES])
def test_wrong_payload_size_is_skipped(code, size):
    conn = ServerConnection(max_skip_payload=CAP)
    # Payload bytes that would parse as a name if they were read as one.
    payload = (b"bob" + bytes(size))[:size]
    conn.receive_data(header(code, size) + payload + v.REGISTER)
    assert_recoverable(conn)


def test_wrong_size_with_default_cap():
    conn = ServerConnection()
    conn.receive_data(header(825, 10) + bytes(10) + v.REGISTER)
    assert_recoverable(conn)


@pytest.mark.parametrize("cap", [0, 10, 415, 1000])
def test_discard_cap_boundary(cap):
    at_cap = ServerConnection(max_skip_payload=cap)
    at_cap.receive_data(header(829, cap) + bytes(cap) + v.REGISTER)
    assert_recoverable(at_cap)

    over = ServerConnection(max_skip_payload=cap)
    over.receive_data(header(829, cap + 1))
    assert_fatal(over)


# -- impossible sizes: close without buffering -------------------------------


@pytest.mark.parametrize("code", [825, 826, 827, 900, 901, 902, 0, 829, 1600, 65535])
def test_huge_payload_size_closes_without_buffering(code):
    conn = ServerConnection()
    # Only the header is fed: a decoder that waited for (or allocated) the
    # payload would return NEED_DATA instead of raising.
    conn.receive_data(header(code, 0xFFFFFFFF))
    error = next_error(conn)
    assert error.close is True
    assert error.response_code == GENERAL_ERROR
    assert len(conn._buffer) == 0
    assert_fatal(conn)


def test_828_of_4_gib_streams_with_default_limit():
    # docs/PROTOCOL.md: a single packet may carry a whole file up to the 4-byte
    # limit; it is streamed, never held.
    conn = ServerConnection()
    fixed = bytes.fromhex("ffffffff" "ffffffff" "0100" "0100") + v.FILE_NAME_REPORT
    (started,) = feed(conn, [header(828, 0xFFFFFFFF) + fixed])
    assert isinstance(started, FilePacketStarted)
    assert started.bytes_in_packet == 0xFFFFFFFF - 267
    chunk = bytes(1 << 20)
    for _ in range(4):
        assert feed(conn, [chunk]) == [FileContent(chunk)]
        assert len(conn._buffer) == 0
    assert conn.in_message


@pytest.mark.parametrize("limit", [0, 1000, 1 << 20])
def test_828_content_over_the_limit_closes(limit):
    ok = ServerConnection(max_packet_content=limit)
    sizes = struct.pack("<II", limit, 0)  # content_size: the packet's content fits it
    wire = header(828, 267 + limit) + sizes + b"\x01\x00\x01\x00" + v.FILE_NAME_REPORT
    events = feed(ok, [wire, bytes(limit)])
    assert events[0].bytes_in_packet == limit
    assert events[-1] == FilePacketEnded()

    over = ServerConnection(max_packet_content=limit)
    over.receive_data(header(828, 267 + limit + 1))
    assert next_error(over).close is True
    assert len(over._buffer) == 0
    assert_fatal(over)

    huge = ServerConnection(max_packet_content=limit)
    huge.receive_data(header(828, 0xFFFFFFFF))
    assert_fatal(huge)


def _packet_head(payload_size: int, content_size: int, number: int, total: int) -> bytes:
    sizes = struct.pack("<IIHH", content_size, content_size - 1, number, total)
    return header(828, payload_size) + sizes + v.FILE_NAME_REPORT


@pytest.mark.parametrize("number, total", [(1, 1), (2, 3), (3, 3), (3, 1)])
def test_828_content_no_layout_can_take_is_refused_unread(number, total):
    content_size = 32
    single = max(number, total) == 1
    most = content_size + (MAX_ZERO_FILL if single else max(content_size, MAX_ZERO_FILL))
    fits = ServerConnection()
    fits.receive_data(_packet_head(267 + most, content_size, number, total))
    assert isinstance(fits.next_event(), FilePacketStarted)  # refused later, if at all

    never = ServerConnection()
    never.receive_data(_packet_head(267 + most + 1, content_size, number, total))
    error = next_error(never)
    assert error.close is True and "too large to skip" in str(error)
    assert_fatal(never)

    huge = ServerConnection()
    huge.receive_data(_packet_head(0xFFFFFFFF, content_size, number, total))
    assert next_error(huge).close is True


def test_828_content_no_layout_can_take_but_small_is_read_past():
    # Within the skip cap it goes on as before: read, then refused by its file.
    small = ServerConnection(max_skip_payload=1 << 20)
    small.receive_data(_packet_head(267 + 2 * MAX_ZERO_FILL, 16, 1, 1))
    assert isinstance(small.next_event(), FilePacketStarted)


# -- string fields -----------------------------------------------------------

NO_NUL_FIELDS = [b"a" * 255, b"\x01" * 255, b"\xff" * 255]

# (code, wire before the field, wire after the field, answer)
NAME_REQUESTS = [
    (825, header(825, 255), b"", REGISTRATION_FAILED),
    (826, header(826, 415), v.PUBLIC_KEY, GENERAL_ERROR),
    (827, header(827, 255), b"", GENERAL_ERROR),
]
FILE_NAME_REQUESTS = [
    (828, header(828, 267 + 32) + bytes.fromhex("20000000" "10000000" "0100" "0100"), bytes(32)),
    (900, header(900, 255), b""),
    (901, header(901, 255), b""),
    (902, header(902, 255), b""),
]


@pytest.mark.parametrize("field", NO_NUL_FIELDS, ids=["a", "x01", "xff"])
@pytest.mark.parametrize("code, before, after, answer", NAME_REQUESTS, ids=["825", "826", "827"])
def test_client_name_without_nul(field, code, before, after, answer):
    conn = ServerConnection()
    conn.receive_data(before + field + after + v.REGISTER)
    assert_recoverable(conn, answer)


@pytest.mark.parametrize("field", NO_NUL_FIELDS, ids=["a", "x01", "xff"])
@pytest.mark.parametrize(
    "code, before, after", FILE_NAME_REQUESTS, ids=[str(r[0]) for r in FILE_NAME_REQUESTS]
)
def test_file_name_without_nul(field, code, before, after):
    conn = ServerConnection()
    conn.receive_data(before + field + after + v.REGISTER)
    assert_recoverable(conn)


@pytest.mark.parametrize("code, before, after, answer", NAME_REQUESTS, ids=["825", "826", "827"])
def test_empty_client_name(code, before, after, answer):
    conn = ServerConnection()
    conn.receive_data(before + bytes(255) + after + v.REGISTER)
    assert_recoverable(conn, answer)


@pytest.mark.parametrize(
    "code, before, after", FILE_NAME_REQUESTS, ids=[str(r[0]) for r in FILE_NAME_REQUESTS]
)
def test_empty_file_name(code, before, after):
    conn = ServerConnection()
    conn.receive_data(before + bytes(255) + after + v.REGISTER)
    assert_recoverable(conn)


def test_empty_file_name_828_content_arriving_later_is_skipped():
    before, after = FILE_NAME_REQUESTS[0][1:]
    conn = ServerConnection()
    conn.receive_data(before + bytes(255))
    error = next_error(conn)
    assert (error.close, error.response_code) == (False, GENERAL_ERROR)
    # The content is not given out as FileContent, and not taken as a header.
    assert feed(conn, [after[:10]]) == []
    assert feed(conn, [after[10:] + v.REGISTER]) == [REGISTER_EVENT]


BAD_CLIENT_NAMES = [
    b"al\x01ce",
    b"\x7fdel",
    b"caf\xc3\xa9",
    b"tab\there",
    b"new\nline",
    b"\x80",
    b"\x1b[31mred",
    # names that would print like another one
    b"x ",
    b" x",
    b"x  ",
    b"   ",
]


@pytest.mark.parametrize("name", BAD_CLIENT_NAMES, ids=lambda n: n.hex())
@pytest.mark.parametrize("code, before, after, answer", NAME_REQUESTS, ids=["825", "826", "827"])
def test_non_printable_client_name(name, code, before, after, answer):
    field = name + bytes(255 - len(name))
    conn = ServerConnection()
    conn.receive_data(before + field + after + v.REGISTER)
    assert_recoverable(conn, answer)


def test_longest_client_name_fits():
    name = b"n" * 254
    (event,) = feed(ServerConnection(), [header(825, 255) + name + b"\x00"])
    assert event == Register(client_id=v.CLIENT_ID, name="n" * 254)


def test_non_ascii_file_name_is_data_not_an_error():
    # docs/HOSTILE.md E2: control characters and non-ASCII file names are stored
    # under a safe name by the server; the decoder hands them over as bytes.
    text = b"\x01caf\xe9\\..\\x.txt"
    field = text + bytes(255 - len(text))
    (event,) = feed(ServerConnection(), [header(900, 255) + field])
    assert event == CrcOk(client_id=v.CLIENT_ID, file_name=NameField(text=text, raw=field))


# -- EOF ---------------------------------------------------------------------

CUT_REQUESTS = {
    "10-header-bytes": v.REGISTER[:10],
    "header-only": v.REGISTER[:23],
    "half-payload": v.REGISTER[:150],
    "all-but-one": v.REGISTER[:-1],
    "826-header-only": v.SEND_PUBLIC_KEY[:23],
    "828-half-fixed": v.SEND_FILE[:100],
    "828-fixed-no-content": v.SEND_FILE[: 23 + 267],
    "828-half-content": v.SEND_FILE[:-10],
    "after-a-request": v.CRC_OK + v.REGISTER[:30],
}


@pytest.mark.parametrize("eof_apart", [True, False], ids=["eof-later", "eof-with-data"])
@pytest.mark.parametrize("wire", CUT_REQUESTS.values(), ids=CUT_REQUESTS.keys())
def test_server_eof_mid_message(wire, eof_apart):
    conn = ServerConnection()
    conn.receive_data(wire)
    if eof_apart:
        drain(conn)
    conn.receive_data(b"")
    error = next_error(conn)
    assert error.close is True
    assert not isinstance(error, type(None))
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_server_eof_while_skipping_a_wrong_request():
    conn = ServerConnection()
    conn.receive_data(header(829, 10) + b"12345")
    assert next_error(conn).close is False
    conn.receive_data(b"")
    assert next_error(conn).close is True


CUT_RESPONSES = {
    "3-header-bytes": v.REGISTERED[:3],
    "1600-header-only": v.REGISTERED[:7],
    "1600-half": v.REGISTERED[:15],
    "1603-header-only": v.FILE_RECEIVED[:7],
    "1603-all-but-one": v.FILE_RECEIVED[:-1],
    "1602-half": v.PUBLIC_KEY_RECEIVED[:80],
    "after-a-response": v.GENERAL_ERROR + v.ACKNOWLEDGED[:9],
}


@pytest.mark.parametrize("eof_apart", [True, False], ids=["eof-later", "eof-with-data"])
@pytest.mark.parametrize("wire", CUT_RESPONSES.values(), ids=CUT_RESPONSES.keys())
def test_client_eof_mid_message(wire, eof_apart):
    conn = ClientConnection()
    conn.receive_data(wire)
    if eof_apart:
        drain(conn)
    conn.receive_data(b"")
    assert next_error(conn).close is True
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


@pytest.mark.parametrize(
    "wire", [b"", v.REGISTER, v.SEND_FILE, v.SEND_FILE_EMPTY + v.CRC_ABORT],
    ids=["nothing", "825", "828", "828-902"],
)
def test_server_eof_at_boundary(wire):
    conn = ServerConnection()
    events = feed(conn, [wire], eof=True)
    assert events[-1] == ConnectionClosed()
    assert ConnectionClosed() not in events[:-1]
    # It stays closed, and nothing may be fed after EOF.
    assert conn.next_event() == ConnectionClosed()
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"x")


def test_server_eof_after_skipped_request_is_clean():
    conn = ServerConnection()
    conn.receive_data(header(829, 3) + b"abc")
    assert next_error(conn).close is False
    assert feed(conn, [], eof=True) == [ConnectionClosed()]


@pytest.mark.parametrize("wire", [b"", v.REGISTERED, v.GENERAL_ERROR + v.FILE_RECEIVED])
def test_client_eof_at_boundary(wire):
    conn = ClientConnection()
    events = feed(conn, [wire], eof=True)
    assert ConnectionClosed() not in events[:-1]
    assert events[-1] == ConnectionClosed()
    assert conn.next_event() == ConnectionClosed()
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"x")


# -- the client's strict reading (variant 11) --------------------------------


@pytest.mark.parametrize("code", [0, 825, 1599, 1608, 1700, 65535])
@pytest.mark.parametrize("size", [0, 16])
def test_client_rejects_unknown_response_code(code, size):
    conn = ClientConnection()
    conn.receive_data(response_header(code, size) + bytes(size) + v.REGISTERED)
    assert_client_fatal(conn)


def assert_client_fatal(conn) -> None:
    error = next_error(conn)
    assert error.close is True
    conn.receive_data(v.REGISTERED)
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


CLIENT_WRONG_SIZES = [
    (1600, 0), (1600, 15), (1600, 17),
    (1601, 1), (1601, 16),
    (1602, 16), (1602, 143), (1602, 145), (1602, 16 + 256),
    (1603, 0), (1603, 278), (1603, 280),
    (1604, 15), (1604, 17),
    (1605, 16), (1605, 143), (1605, 145),
    (1606, 15), (1606, 17),
    (1607, 1), (1607, 16),
]  # fmt: skip
# 1604 and 1606 with no payload at all are what some servers send: the client
# reads them and says the id was missing (tests/protocol/test_editions.py).


@pytest.mark.parametrize(
    "code, size", CLIENT_WRONG_SIZES, ids=[f"{c}-{s}" for c, s in CLIENT_WRONG_SIZES]
)
def test_client_rejects_wrong_size(code, size):
    conn = ClientConnection()
    conn.receive_data(response_header(code, size) + bytes(size))
    assert_client_fatal(conn)


@pytest.mark.parametrize("code", range(1600, 1608))
def test_client_rejects_huge_size_without_buffering(code):
    conn = ClientConnection()
    conn.receive_data(response_header(code, 0xFFFFFFFF))
    assert next_error(conn).close is True
    assert len(conn._buffer) == 0


@pytest.mark.parametrize("field", [b"x" * 255, bytes(255)], ids=["no-nul", "empty"])
def test_client_1603_file_name_field(field):
    wire = (
        response_header(1603, 279) + v.CLIENT_ID + bytes(4) + field + bytes(4)
    )
    conn = ClientConnection()
    conn.receive_data(wire)
    if b"\x00" in field:
        # An empty file name is the server's business; the field parses.
        (event,) = drain(conn)
        assert event.file_name.raw == field
    else:
        assert_client_fatal(conn)


def test_client_accepts_responses_after_nothing_but_need_data():
    conn = ClientConnection()
    assert conn.next_event() is NEED_DATA
    assert feed(conn, [v.REGISTERED]) == [Registered(client_id=v.CLIENT_ID)]


# -- our own mistakes: LocalProtocolError ------------------------------------


def test_send_refuses_the_wrong_direction():
    with pytest.raises(LocalProtocolError):
        ServerConnection().send(REGISTER_EVENT)
    with pytest.raises(LocalProtocolError):
        ClientConnection().send(Registered(client_id=v.CLIENT_ID))
    started = FilePacketStarted(
        client_id=v.CLIENT_ID,
        content_size=1,
        orig_file_size=1,
        packet_number=1,
        total_packets=1,
        file_name="f",
    )
    for not_a_request in (started, FileContent(b"x"), FilePacketEnded(), ConnectionClosed()):
        with pytest.raises(LocalProtocolError):
            ClientConnection().send(not_a_request)


@pytest.mark.parametrize(
    "name",
    ["", "a" * 255, "bad\x01", "tab\t", "h\u00e9llo", "\u00e9", "new\n", "a\x00b", b"alice"],
    ids=repr,
)
def test_events_refuse_bad_client_names(name):
    with pytest.raises(LocalProtocolError):
        Register(client_id=v.CLIENT_ID, name=name)


def test_events_refuse_bad_fields():
    from protocol import FileReceived, PublicKeyReceived, SendFilePacket, SendPublicKey

    bad = [
        lambda: Register(client_id=bytes(15), name="alice"),
        lambda: Registered(client_id=bytes(17)),
        lambda: SendPublicKey(client_id=v.CLIENT_ID, name="alice", public_key=bytes(159)),
        lambda: PublicKeyReceived(client_id=v.CLIENT_ID, encrypted_aes_key=bytes(127)),
        lambda: FileReceived(client_id=v.CLIENT_ID, content_size=-1, file_name="f", cksum=0),
        lambda: FileReceived(client_id=v.CLIENT_ID, content_size=0, file_name="f", cksum=2**32),
        lambda: SendFilePacket(
            client_id=v.CLIENT_ID,
            content_size=2**32,
            orig_file_size=0,
            packet_number=1,
            total_packets=1,
            file_name="f",
        ),
        lambda: SendFilePacket(
            client_id=v.CLIENT_ID,
            content_size=0,
            orig_file_size=0,
            packet_number=65536,
            total_packets=1,
            file_name="f",
        ),
        lambda: CrcOk(client_id=v.CLIENT_ID, file_name="x" * 255),
        lambda: CrcOk(client_id=v.CLIENT_ID, file_name="a\x00b"),
        lambda: NameField.from_text(b"x" * 255),
    ]
    for make in bad:
        with pytest.raises(LocalProtocolError):
            make()
