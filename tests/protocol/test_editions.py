"""Every message of every edition, byte for byte, from hand-written vectors.

The bytes below are written from the tables of docs/EDITIONS.md and
docs/PROTOCOL.md with ``int.to_bytes``, never produced by the code under test.
Each request is parsed by a ``ServerConnection`` and built by a
``ClientConnection`` of its edition; each response the other way round.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import pytest
from construct import Bytes, Struct
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import (
    NEED_DATA,
    Acknowledged,
    ClientConnection,
    CrcAbort,
    CrcOk,
    CrcRetry,
    FileContent,
    FilePacketEnded,
    FilePacketStarted,
    FileReceived,
    GeneralError,
    PublicKeyReceived,
    Reconnect,
    ReconnectRefused,
    Reconnected,
    Register,
    Registered,
    RegistrationFailed,
    RemoteProtocolError,
    RequestCode,
    ResponseCode,
    SendFilePacket,
    SendPublicKey,
    ServerConnection,
)
from protocol import connection, editions
from protocol.editions import (
    EDITION_2022,
    EDITION_2023A,
    EDITION_2023C,
    EDITION_2024A,
    EDITIONS,
    V3,
    Family,
    Message,
    family_of,
)
from protocol.names import NameField
from protocol.wire import NamePayload
from protocol_helpers import drain, feed, merge_content
from wire_by_hand import name, response, u16, u32
from wire_by_hand import request as request_from

CID = bytes(range(0x10, 0x20))
KEY = bytes([0x30]) + bytes(range(159))  # 160 bytes; the decoder does not parse keys
AES = bytes(range(128))  # an encrypted AES key is 128 bytes on the wire
CONTENT = bytes(range(32))  # two AES blocks of "ciphertext"

#: Codes by edition, copied from the tables: register, public key, reconnect,
#: file, CRC ok, CRC bad, CRC bad-final; then the base of the answers.
CODES = {
    "v3": (825, 826, 827, 828, 900, 901, 902, 1600),
    "2022": (1100, 1101, None, 1103, 1104, 1105, 1106, 2100),
    "2023A": (1100, 1101, 1102, 1103, 1104, 1105, 1106, 2100),
    "2023C": (1025, 1026, 1027, 1028, 1029, 1030, 1031, 2100),
    "2024A": (1025, 1026, 1027, 1028, 1029, 1030, 1031, 1600),
}


def request(code: int, payload: bytes, client_id: bytes = CID) -> bytes:
    return request_from(code, payload, client_id)


def request_vectors(edition: str):
    """(event, bytes) for each request of an edition; events as a server parses them."""
    register, key, reconnect, file, ok, bad, final, _ = CODES[edition]
    whole = edition in ("2022", "2023A", "2023C")
    with_id = edition == "2022"
    vectors = [
        (Register(client_id=CID, name="alice"), request(register, name(b"alice"))),
        (
            SendPublicKey(client_id=CID, name="alice", public_key=KEY),
            request(key, name(b"alice") + KEY),
        ),
    ]
    if reconnect is not None:
        vectors.append((Reconnect(client_id=CID, name="alice"), request(reconnect, name(b"alice"))))
    prefix = CID if with_id else b""
    for event, code in ((CrcOk, ok), (CrcRetry, bad), (CrcAbort, final)):
        vectors.append((event(client_id=CID, file_name="a.txt"), request(code, prefix + name(b"a.txt"))))
    if whole:
        fixed = prefix + u32(len(CONTENT)) + name(b"a.txt")
        started = FilePacketStarted(CID, len(CONTENT), None, 1, 1, "a.txt", len(CONTENT))
    else:
        fixed = u32(len(CONTENT)) + u32(20) + u16(1) + u16(1) + name(b"a.txt")
        started = FilePacketStarted(CID, len(CONTENT), 20, 1, 1, "a.txt", len(CONTENT))
    vectors.append(((started, FileContent(CONTENT), FilePacketEnded()), request(file, fixed + CONTENT)))
    return vectors


def response_vectors(edition: str):
    """(event, bytes) for each response of an edition."""
    base = CODES[edition][-1]
    received = CID + u32(len(CONTENT)) + name(b"a.txt") + u32(0xDEADBEEF)
    vectors = [
        (Registered(client_id=CID), response(base, CID)),
        (PublicKeyReceived(client_id=CID, encrypted_aes_key=AES), response(base + 2, CID + AES)),
        (
            FileReceived(client_id=CID, content_size=len(CONTENT), file_name="a.txt", cksum=0xDEADBEEF),
            response(base + 3, received),
        ),
        (GeneralError(), response(base + 7, b"")),
    ]
    if edition == "2022":
        vectors += [
            (RegistrationFailed(), response(2101, bytes(16))),
            (Acknowledged(client_id=bytes(16)), response(2104, b"")),
        ]
    else:
        vectors += [
            (RegistrationFailed(), response(base + 1, b"")),
            (Acknowledged(client_id=CID), response(base + 4, CID)),
            (Reconnected(client_id=CID, encrypted_aes_key=AES), response(base + 5, CID + AES)),
            (ReconnectRefused(client_id=CID), response(base + 6, CID)),
        ]
    return vectors


def server_for(edition) -> ServerConnection:
    server = ServerConnection()
    server.use(edition)
    return server


def as_sent(event):
    """The request a client sends for what a server parses."""
    if isinstance(event, tuple):
        started = event[0]
        orig = started.orig_file_size if started.orig_file_size is not None else 20
        return SendFilePacket(
            started.client_id, started.content_size, orig, 1, 1, started.file_name, content=CONTENT
        )
    return event


EDITION_NAMES = [edition.name for edition in EDITIONS]
BY_NAME = {edition.name: edition for edition in EDITIONS}


@pytest.mark.parametrize("edition", EDITION_NAMES)
def test_every_request_parses_from_its_bytes(edition):
    for event, wire in request_vectors(edition):
        expected = list(event) if isinstance(event, tuple) else [event]
        assert merge_content(feed(server_for(BY_NAME[edition]), [wire])) == expected


@pytest.mark.parametrize("edition", EDITION_NAMES)
def test_every_request_is_built_to_its_bytes(edition):
    client = ClientConnection(BY_NAME[edition])
    for event, wire in request_vectors(edition):
        assert client.send(as_sent(event)) == wire


@pytest.mark.parametrize("edition", EDITION_NAMES)
def test_every_response_parses_from_its_bytes(edition):
    for event, wire in response_vectors(edition):
        client = ClientConnection(BY_NAME[edition])
        client.receive_data(wire)
        assert drain(client) == [event]


@pytest.mark.parametrize("edition", EDITION_NAMES)
def test_every_response_is_built_to_its_bytes(edition):
    server = server_for(BY_NAME[edition])
    for event, wire in response_vectors(edition):
        if edition == "2022" and isinstance(event, Acknowledged):
            event = Acknowledged(client_id=CID)  # 2022's 2104 drops the id
        assert server.send(event) == wire


def test_2022_has_no_reconnect_answers():
    with pytest.raises(Exception, match="2022"):
        server_for(EDITION_2022).send(Reconnected(client_id=CID, encrypted_aes_key=AES))
    assert not EDITION_2022.has_reconnect and EDITION_2023A.has_reconnect


@pytest.mark.parametrize(
    "code, family",
    [(825, Family.V3), (902, Family.V3), (1100, Family.SERIES_1100), (1102, Family.SERIES_1100),
     (1025, Family.SERIES_1025), (1031, Family.SERIES_1025), (1107, None), (824, None)],
)
def test_the_first_code_names_the_family(code, family):
    assert family_of(code) is family


def test_the_family_codes_do_not_overlap():
    seen = {}
    for edition in EDITIONS:
        for code in edition.request_codes:
            assert seen.setdefault(code, edition.family) is edition.family, code


# -- telling the editions apart ------------------------------------------------------


def test_a_first_825_is_v3_and_a_first_1025_is_2024a():
    server = ServerConnection()
    feed(server, [request(825, name(b"alice"))])
    assert server.edition is V3 and server.edition_known
    server = ServerConnection()
    feed(server, [request(1025, name(b"alice"))])
    assert server.edition is EDITION_2024A


def test_the_1100_series_answers_in_the_2022_form_until_it_is_known():
    server = ServerConnection()
    feed(server, [request(1100, name(b"alice"))])
    assert server.edition is EDITION_2022 and not server.edition_known
    assert server.send(RegistrationFailed()) == response(2101, bytes(16))


@pytest.mark.parametrize(
    "wire, edition",
    [
        (request(1104, CID + name(b"a.txt")), EDITION_2022),  # 271 bytes
        (request(1104, name(b"a.txt")), EDITION_2023A),  # 255 bytes
        (request(1103, CID + u32(32) + name(b"a.txt") + CONTENT), EDITION_2022),  # 275 + content
        (request(1103, u32(32) + name(b"a.txt") + CONTENT), EDITION_2023A),  # 259 + content
        (request(1102, name(b"alice")), EDITION_2023A),  # only 2023A reconnects
    ],
)
def test_the_1100_series_edition_follows_from_the_sizes(wire, edition):
    server = ServerConnection()
    feed(server, [request(1100, name(b"alice")), wire])
    assert server.edition is edition and server.edition_known


def test_a_2022_payload_id_that_is_not_the_headers_is_refused():
    server = ServerConnection()
    server.use(EDITION_2022)
    server.receive_data(request(1104, bytes(16) + name(b"a.txt")))
    with pytest.raises(RemoteProtocolError) as refused:
        drain(server)
    assert not refused.value.close
    server.receive_data(request(1104, CID + name(b"a.txt")))
    assert drain(server) == [CrcOk(client_id=CID, file_name="a.txt")]


def test_a_1028_in_the_2023c_layout_is_told_from_a_2024a_packet():
    server = ServerConnection()
    events = feed(server, [request(1025, name(b"alice")), request(1028, u32(32) + name(b"a.txt") + CONTENT)])
    assert server.edition is EDITION_2023C
    assert isinstance(events[1], FilePacketStarted) and events[1].orig_file_size is None


def test_whole_file_sending_is_one_packet():
    client = ClientConnection(EDITION_2023A)
    with pytest.raises(Exception, match="one request"):
        client.send(SendFilePacket(CID, 32, 20, 1, 2, "a.txt", content=CONTENT[:16]))


def test_editions_not_recognised_are_unknown_codes():
    server = ServerConnection(editions=(V3,))
    server.receive_data(request(1100, name(b"alice")))
    with pytest.raises(RemoteProtocolError, match="unknown request code 1100"):
        drain(server)


# -- round trips ---------------------------------------------------------------------

names = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)


@st.composite
def requests(draw, edition):
    client_id = draw(st.binary(min_size=16, max_size=16))
    text = draw(names)
    choices = [
        Register(client_id=client_id, name=text),
        SendPublicKey(client_id=client_id, name=text, public_key=draw(st.binary(min_size=160, max_size=160))),
        CrcOk(client_id=client_id, file_name=text),
        CrcRetry(client_id=client_id, file_name=text),
        CrcAbort(client_id=client_id, file_name=text),
    ]
    if edition.has_reconnect:
        choices.append(Reconnect(client_id=client_id, name=text))
    return draw(st.sampled_from(choices))


@pytest.mark.parametrize("edition", EDITIONS, ids=EDITION_NAMES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_requests_round_trip(edition, data):
    sent = data.draw(requests(edition))
    wire = ClientConnection(edition).send(sent)
    server = server_for(edition)
    assert feed(server, [wire]) == [sent]


@pytest.mark.parametrize("edition", EDITIONS, ids=EDITION_NAMES)
@settings(max_examples=60, deadline=None)
@given(client_id=st.binary(min_size=16, max_size=16), size=st.integers(0, 2**32 - 1),
       text=names, value=st.integers(0, 2**32 - 1))
def test_responses_round_trip(edition, client_id, size, text, value):
    for sent in (
        Registered(client_id=client_id),
        FileReceived(client_id=client_id, content_size=size, file_name=NameField.from_text(text), cksum=value),
        PublicKeyReceived(client_id=client_id, encrypted_aes_key=AES),
    ):
        client = ClientConnection(edition)
        client.receive_data(server_for(edition).send(sent))
        assert drain(client) == [sent]


# -- variants (docs/EDITIONS.md 1 and 3, docs/PROTOCOL.md 13) ------------------------------


def test_a_2022_register_may_carry_the_bare_name():
    server = ServerConnection()
    assert feed(server, [request(1100, b"alice")]) == [Register(client_id=CID, name="alice")]
    assert server.edition is EDITION_2022 and server.edition_known


def test_a_crc_request_without_payload_is_about_the_last_file_and_its_tail_ends_the_connection():
    server = ServerConnection()
    server.use(EDITION_2022)
    server.receive_data(request(1104, b""))
    (event,) = drain(server)
    assert isinstance(event, CrcOk) and event.file_name.text == b""
    server.receive_data(CID + name(b"a.txt"))  # the 271 bytes it sent anyway
    with pytest.raises(RemoteProtocolError) as ended:
        drain(server)
    assert ended.value.close and not ended.value.answer


def test_an_empty_crc_request_is_refused_where_the_edition_does_not_send_them():
    server = ServerConnection()
    server.receive_data(request(900, b""))
    with pytest.raises(RemoteProtocolError) as refused:
        drain(server)
    assert refused.value.answer and not refused.value.close


def packet_901(file_name: bytes = b"a.txt") -> bytes:
    fixed = u32(len(CONTENT)) + u32(20) + u16(1) + u16(1) + name(file_name)
    return request(901, fixed + CONTENT)


def test_after_a_901_a_901_carrying_a_packet_of_its_file_is_the_resend():
    server = ServerConnection()
    events = feed(server, [request(901, name(b"a.txt")), packet_901()])
    assert events[0] == CrcRetry(client_id=CID, file_name="a.txt")
    assert merge_content(events[1:]) == [
        FilePacketStarted(CID, len(CONTENT), 20, 1, 1, "a.txt", len(CONTENT)),
        FileContent(CONTENT),
        FilePacketEnded(),
    ]


@pytest.mark.parametrize("before", [b"", request(900, name(b"a.txt"))])
def test_a_long_901_that_is_not_a_resend_is_refused(before):
    server = ServerConnection()
    server.receive_data(before + packet_901())
    with pytest.raises(RemoteProtocolError, match="901 payload must be 255"):
        drain(server)


def test_a_901_carrying_a_packet_of_another_file_is_refused():
    server = ServerConnection()
    server.receive_data(request(901, name(b"a.txt")))
    assert drain(server) == [CrcRetry(client_id=CID, file_name="a.txt")]
    server.receive_data(packet_901(b"b.txt") + request(900, name(b"a.txt")))
    with pytest.raises(RemoteProtocolError) as refused:
        drain(server)
    assert not refused.value.close
    assert drain(server) == [CrcOk(client_id=CID, file_name="a.txt")]  # its content was skipped


@pytest.mark.parametrize("code, event", [(1604, Acknowledged), (1606, ReconnectRefused)])
def test_an_answer_without_its_id_is_read_and_said_so(code, event):
    client = ClientConnection()
    client.receive_data(response(code, b""))
    assert drain(client) == [event(client_id=bytes(16))] and not client.reply_carried_id
    client.receive_data(response(code, CID))
    assert drain(client) == [event(client_id=CID)] and client.reply_carried_id


def test_only_answers_that_are_the_id_alone_may_leave_it_out():
    client = ClientConnection()
    client.receive_data(response(1600, b""))  # a registration without its new id is useless
    with pytest.raises(RemoteProtocolError, match="1600 payload must be 16"):
        drain(client)


# -- an answer of the other 1025-series edition (docs/EDITIONS.md) ---------------------------


def test_a_2024a_client_reads_an_unknown_answers_header_alone():
    # The 2100 header of a first 1025, its id withheld; then the 1600 to the
    # 1025 sent again: the stream stays aligned.
    client = ClientConnection(EDITION_2024A, header_only_unknown=True)
    client.receive_data(response(2100, CID)[:7] + response(1600, CID))
    unknown = client.next_event()
    assert (type(unknown).__name__, unknown.code, unknown.payload_size) == ("UnknownResponse", 2100, 16)
    assert client.next_event() == Registered(client_id=CID)


def test_a_2023c_client_reads_an_unknown_answer_whole():
    client = ClientConnection(EDITION_2023C, skip_unknown=True)
    client.receive_data(response(1600, bytes(16)) + response(2100, CID))
    assert type(client.next_event()).__name__ == "UnknownResponse"
    assert client.next_event() == Registered(client_id=CID)


def test_a_request_whose_header_is_in_is_read_in_the_edition_settled_meanwhile():
    server = ServerConnection()
    data = request_from(1025, name(b"alice"))
    server.receive_data(data[:30])
    assert server.next_event() is NEED_DATA
    server.use(EDITION_2024A)  # the session knows better (Rule 6 of server/session.py)
    server.receive_data(data[30:])
    assert isinstance(server.next_event(), Register)
    assert server.candidates == (EDITION_2024A,)


def test_v3_codes_are_the_request_events_own():
    # One name per request: v3 codes its requests by their RequestCode, and
    # the other editions number theirs in the same order from their first code.
    assert {message.event: message.code for message in V3.requests} == {
        message.event: message.event.code for message in V3.requests
    }
    assert sorted(message.code for message in V3.requests) == sorted(RequestCode)
    for edition in EDITIONS:
        order = [message.event for message in sorted(edition.requests, key=lambda m: m.code)]
        assert order == [m.event for m in V3.requests if m.event in order], edition


# -- a request of neither kind -------------------------------------------------------


@dataclass(frozen=True)
class _Scratch:
    """A request a new edition might bring: neither a client name nor a file name."""

    code: ClassVar = 903
    client_id: bytes
    token: bytes


SCRATCH_TOKEN = Struct("token" / Bytes(8))


@pytest.fixture
def scratch_v3(monkeypatch):
    """v3 with one more request, a _Scratch at 903, as a new request would be added."""
    edition = dataclasses.replace(
        V3, requests=(*V3.requests, Message(_Scratch, _Scratch.code, SCRATCH_TOKEN))
    )
    families = {**editions.FAMILIES, Family.V3: (edition,)}
    monkeypatch.setattr(editions, "FAMILIES", families)
    monkeypatch.setattr(connection, "FAMILIES", families)
    return edition


def test_a_request_with_neither_name_is_read_from_its_declaration(scratch_v3):
    server = ServerConnection(editions=(scratch_v3,))
    server.receive_data(request(_Scratch.code, b"12345678") + request(825, name(b"alice")))
    assert drain(server) == [
        _Scratch(client_id=CID, token=b"12345678"),
        Register(client_id=CID, name="alice"),
    ]


@dataclass(frozen=True)
class _NamedScratch:
    """A new request that carries a client name: checked as every client name is."""

    code: ClassVar = 904
    client_id: bytes
    name: str


@pytest.fixture
def named_scratch_v3(monkeypatch, scratch_v3):
    edition = dataclasses.replace(
        scratch_v3,
        requests=(*scratch_v3.requests, Message(_NamedScratch, _NamedScratch.code, NamePayload)),
    )
    families = {**editions.FAMILIES, Family.V3: (edition,)}
    monkeypatch.setattr(editions, "FAMILIES", families)
    monkeypatch.setattr(connection, "FAMILIES", families)
    return edition


def test_a_new_request_with_a_client_name_has_it_checked(named_scratch_v3):
    server = ServerConnection(editions=(named_scratch_v3,))
    server.receive_data(request(_NamedScratch.code, name(b"bob")))
    assert drain(server) == [_NamedScratch(client_id=CID, name="bob")]
    server.receive_data(request(_NamedScratch.code, name(b"b\x01b")))
    with pytest.raises(RemoteProtocolError, match="invalid client name") as refused:
        drain(server)
    assert refused.value.response_code is ResponseCode.GENERAL_ERROR
    assert not refused.value.close
    server.receive_data(request(_Scratch.code, b"12345678"))
    assert drain(server) == [_Scratch(client_id=CID, token=b"12345678")]
