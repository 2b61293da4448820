"""Every request and response against byte vectors written from docs/PROTOCOL.md.

Requests are parsed by ServerConnection and built by ClientConnection,
responses the reverse; both directions must give the hand-written bytes.
"""

from __future__ import annotations

import os

import pytest

import protocol_vectors as v
from protocol import (
    NEED_DATA,
    Acknowledged,
    ClientConnection,
    ConnectionClosed,
    CrcAbort,
    CrcOk,
    CrcRetry,
    FileContent,
    FilePacketEnded,
    FilePacketStarted,
    FileReceived,
    GeneralError,
    NameField,
    PublicKeyReceived,
    Reconnect,
    ReconnectRefused,
    Reconnected,
    Register,
    Registered,
    RegistrationFailed,
    SendFilePacket,
    SendPublicKey,
    ServerConnection,
)
from protocol_helpers import drain, feed

REPORT = NameField(text=b"report.txt", raw=v.FILE_NAME_REPORT)

# (id, wire bytes, events ServerConnection yields, event ClientConnection sends)
REQUESTS = [
    (
        "825",
        v.REGISTER,
        [Register(client_id=v.CLIENT_ID, name="alice")],
        Register(client_id=v.CLIENT_ID, name="alice"),
    ),
    (
        "826",
        v.SEND_PUBLIC_KEY,
        [SendPublicKey(client_id=v.CLIENT_ID, name="alice", public_key=v.PUBLIC_KEY)],
        SendPublicKey(client_id=v.CLIENT_ID, name="alice", public_key=v.PUBLIC_KEY),
    ),
    (
        "827",
        v.RECONNECT,
        [Reconnect(client_id=v.CLIENT_ID, name="alice")],
        Reconnect(client_id=v.CLIENT_ID, name="alice"),
    ),
    (
        "828",
        v.SEND_FILE,
        [
            FilePacketStarted(
                client_id=v.CLIENT_ID,
                content_size=96,
                orig_file_size=90,
                packet_number=1,
                total_packets=2,
                file_name=REPORT,
                bytes_in_packet=48,
            ),
            FileContent(v.CONTENT),
            FilePacketEnded(),
        ],
        SendFilePacket(
            client_id=v.CLIENT_ID,
            content_size=96,
            orig_file_size=90,
            packet_number=1,
            total_packets=2,
            file_name="report.txt",
            content=v.CONTENT,
        ),
    ),
    (
        "828-empty-content",
        v.SEND_FILE_EMPTY,
        [
            FilePacketStarted(
                client_id=v.CLIENT_ID,
                content_size=0x12345678,
                orig_file_size=0x12345670,
                packet_number=0x0102,
                total_packets=0x0304,
                file_name=REPORT,
                bytes_in_packet=0,
            ),
            FilePacketEnded(),
        ],
        SendFilePacket(
            client_id=v.CLIENT_ID,
            content_size=0x12345678,
            orig_file_size=0x12345670,
            packet_number=0x0102,
            total_packets=0x0304,
            file_name="report.txt",
        ),
    ),
    (
        "900",
        v.CRC_OK,
        [CrcOk(client_id=v.CLIENT_ID, file_name=REPORT)],
        CrcOk(client_id=v.CLIENT_ID, file_name="report.txt"),
    ),
    (
        "901",
        v.CRC_RETRY,
        [CrcRetry(client_id=v.CLIENT_ID, file_name=REPORT)],
        CrcRetry(client_id=v.CLIENT_ID, file_name="report.txt"),
    ),
    (
        "902",
        v.CRC_ABORT,
        [CrcAbort(client_id=v.CLIENT_ID, file_name=REPORT)],
        CrcAbort(client_id=v.CLIENT_ID, file_name="report.txt"),
    ),
]

RESPONSES = [
    ("1600", v.REGISTERED, Registered(client_id=v.CLIENT_ID)),
    ("1601", v.REGISTRATION_FAILED, RegistrationFailed()),
    (
        "1602",
        v.PUBLIC_KEY_RECEIVED,
        PublicKeyReceived(client_id=v.CLIENT_ID, encrypted_aes_key=v.ENCRYPTED_AES_KEY),
    ),
    (
        "1603",
        v.FILE_RECEIVED,
        FileReceived(
            client_id=v.CLIENT_ID, content_size=96, file_name=REPORT, cksum=0x12345678
        ),
    ),
    ("1604", v.ACKNOWLEDGED, Acknowledged(client_id=v.CLIENT_ID)),
    (
        "1605",
        v.RECONNECTED,
        Reconnected(client_id=v.CLIENT_ID, encrypted_aes_key=v.ENCRYPTED_AES_KEY),
    ),
    ("1606", v.RECONNECT_REFUSED, ReconnectRefused(client_id=v.CLIENT_ID)),
    ("1607", v.GENERAL_ERROR, GeneralError()),
]


def test_vectors_have_the_sizes_of_the_spec():
    # The vectors themselves, against docs/PROTOCOL.md's numbers (23-byte request
    # header, 7-byte response header, 255/415/267 payloads, variant 11).
    for wire in (v.REGISTER, v.RECONNECT, v.CRC_OK, v.CRC_RETRY, v.CRC_ABORT):
        assert len(wire) == 23 + 255
    assert len(v.SEND_PUBLIC_KEY) == 23 + 255 + 160
    assert len(v.SEND_FILE) == 23 + 4 + 4 + 2 + 2 + 255 + 48
    assert len(v.SEND_FILE_EMPTY) == 23 + 267
    assert len(v.REGISTERED) == len(v.ACKNOWLEDGED) == len(v.RECONNECT_REFUSED) == 7 + 16
    assert len(v.REGISTRATION_FAILED) == len(v.GENERAL_ERROR) == 7
    assert len(v.PUBLIC_KEY_RECEIVED) == len(v.RECONNECTED) == 7 + 16 + 128
    assert len(v.FILE_RECEIVED) == 7 + 279
    for field in (
        v.NAME_ALICE,
        v.NAME_ALICE_LEFT,
        v.NAME_ALICE_GARBAGE,
        v.FILE_NAME_REPORT,
        v.FILE_NAME_REPORT_LEFT,
        v.FILE_NAME_REPORT_GARBAGE,
        v.FILE_NAME_REPORT_BOTH,
    ):
        assert len(field) == 255


@pytest.mark.parametrize(
    "wire, expected", [r[1:3] for r in REQUESTS], ids=[r[0] for r in REQUESTS]
)
def test_server_parses_request_vector(wire, expected):
    conn = ServerConnection()
    assert feed(conn, [wire]) == expected
    assert conn.next_event() is NEED_DATA
    assert feed(conn, [], eof=True) == [ConnectionClosed()]


@pytest.mark.parametrize(
    "wire, request_event", [(r[1], r[3]) for r in REQUESTS], ids=[r[0] for r in REQUESTS]
)
def test_client_builds_request_vector(wire, request_event):
    assert ClientConnection().send(request_event) == wire


@pytest.mark.parametrize("wire, event", [r[1:] for r in RESPONSES], ids=[r[0] for r in RESPONSES])
def test_client_parses_response_vector(wire, event):
    conn = ClientConnection()
    assert feed(conn, [wire], eof=True) == [event, ConnectionClosed()]


@pytest.mark.parametrize("wire, event", [r[1:] for r in RESPONSES], ids=[r[0] for r in RESPONSES])
def test_server_builds_response_vector(wire, event):
    assert ServerConnection().send(event) == wire


def test_every_code_has_a_vector():
    from protocol import RequestCode, ResponseCode

    assert {int.from_bytes(r[1][17:19], "little") for r in REQUESTS} == set(RequestCode)
    assert {int.from_bytes(r[1][1:3], "little") for r in RESPONSES} == set(ResponseCode)


# -- variant 1: left padding, garbage after the first NUL --------------------


@pytest.mark.parametrize(
    "field", [v.NAME_ALICE_LEFT, v.NAME_ALICE_GARBAGE], ids=["left-padded", "garbage"]
)
@pytest.mark.parametrize(
    "header_hex, event_type, extra",
    [
        ("03" "3903" "ff000000", Register, b""),
        ("03" "3a03" "9f010000", SendPublicKey, v.PUBLIC_KEY),
        ("03" "3b03" "ff000000", Reconnect, b""),
    ],
    ids=["825", "826", "827"],
)
def test_client_name_variant_1(field, header_hex, event_type, extra):
    wire = v.request_header(v.CLIENT_ID, header_hex) + field + extra
    (event,) = feed(ServerConnection(), [wire])
    assert type(event) is event_type
    assert event.name == "alice"


FILE_NAME_VARIANTS = [
    (v.FILE_NAME_REPORT_LEFT, "left-padded"),
    (v.FILE_NAME_REPORT_GARBAGE, "garbage"),
    (v.FILE_NAME_REPORT_BOTH, "both"),
]


@pytest.mark.parametrize(
    "field", [f for f, _ in FILE_NAME_VARIANTS], ids=[i for _, i in FILE_NAME_VARIANTS]
)
@pytest.mark.parametrize(
    "code_hex, event_type",
    [("8403", CrcOk), ("8503", CrcRetry), ("8603", CrcAbort)],
    ids=["900", "901", "902"],
)
def test_file_name_variant_1_crc_requests(field, code_hex, event_type):
    wire = v.request_header(v.CLIENT_ID, "03" + code_hex + "ff000000") + field
    (event,) = feed(ServerConnection(), [wire])
    assert type(event) is event_type
    assert event.file_name.text == b"report.txt"
    assert event.file_name.raw == field


@pytest.mark.parametrize(
    "field", [f for f, _ in FILE_NAME_VARIANTS], ids=[i for _, i in FILE_NAME_VARIANTS]
)
def test_file_name_variant_1_is_echoed_byte_for_byte_in_1603(field):
    wire = (
        v.request_header(v.CLIENT_ID, "03" "3c03" "3b010000")
        + bytes.fromhex("60000000" "5a000000" "0100" "0200")
        + field
        + v.CONTENT
    )
    events = feed(ServerConnection(), [wire])
    started = events[0]
    assert isinstance(started, FilePacketStarted)
    assert started.file_name.text == b"report.txt"
    assert started.file_name.raw == field
    reply = ServerConnection().send(
        FileReceived(
            client_id=v.CLIENT_ID,
            content_size=96,
            file_name=started.file_name,
            cksum=0x12345678,
        )
    )
    assert reply == (
        bytes.fromhex("03" "4306" "17010000")
        + v.CLIENT_ID
        + bytes.fromhex("60000000")
        + field
        + bytes.fromhex("78563412")
    )
    # And the client sees the same raw field in the 1603 it parses.
    (received,) = feed(ClientConnection(), [reply])
    assert received.file_name.raw == field
    assert received.file_name.text == b"report.txt"


# -- variant 2: the 825 header's client id is anything -----------------------


@pytest.mark.parametrize(
    "header_id",
    [bytes(16), b"a" * 16, b"\xff" * 16, os.urandom(16)],
    ids=["zeros", "a-x16", "ff-x16", "random"],
)
def test_register_any_header_client_id(header_id):
    wire = v.request_header(header_id, "03" "3903" "ff000000") + v.NAME_ALICE
    conn = ServerConnection()
    (event,) = feed(conn, [wire])
    assert event == Register(client_id=header_id, name="alice")
    # and the connection goes on with the next request
    assert feed(conn, [v.CRC_OK]) == [CrcOk(client_id=v.CLIENT_ID, file_name=REPORT)]


# -- variant 3: split and coalesced (more in test_protocol_streaming) --------


def test_header_and_payload_in_separate_segments():
    conn = ServerConnection()
    assert feed(conn, [v.SEND_PUBLIC_KEY[:23]]) == []
    assert conn.in_message
    assert feed(conn, [v.SEND_PUBLIC_KEY[23:]]) == REQUESTS[1][2]
    assert not conn.in_message


def test_828_fixed_part_and_content_in_separate_segments():
    conn = ServerConnection()
    assert feed(conn, [v.SEND_FILE[:23]]) == []
    assert feed(conn, [v.SEND_FILE[23 : 23 + 267]]) == [REQUESTS[3][2][0]]
    assert feed(conn, [v.SEND_FILE[23 + 267 :]]) == REQUESTS[3][2][1:]


def test_several_requests_in_one_segment():
    conn = ServerConnection()
    events = feed(conn, [v.REGISTER + v.SEND_PUBLIC_KEY + v.SEND_FILE + v.CRC_OK])
    assert events == REQUESTS[0][2] + REQUESTS[1][2] + REQUESTS[3][2] + REQUESTS[5][2]


# -- any version byte (docs/HOSTILE.md decision 4) --------------------------------


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4, 255])
@pytest.mark.parametrize(
    "wire, expected", [r[1:3] for r in REQUESTS], ids=[r[0] for r in REQUESTS]
)
def test_request_any_version_byte(version, wire, expected):
    wire = wire[:16] + bytes([version]) + wire[17:]
    assert feed(ServerConnection(), [wire]) == expected


def test_responses_always_carry_version_3():
    conn = ServerConnection()
    for _, _, event in RESPONSES:
        assert conn.send(event)[0] == 3


def test_send_is_pure():
    # Building a message does not touch the receiving side.
    conn = ServerConnection()
    conn.send(Registered(client_id=v.CLIENT_ID))
    assert drain(conn) == []
    assert not conn.in_message
