"""The editions of the protocol, as data: codes, payload declarations, key size.

The course behind the protocol changed its codes and a few payloads from one
semester to the next (docs/EDITIONS.md). Every edition shares the framing of
:mod:`protocol.wire` (the 23-byte request header, the 7-byte response header,
the 255-byte name field, the key and cipher helpers); what differs is here,
one :class:`Edition` each, and nowhere else:

======  =====================  ==========  =========  ========  ==================
name    requests               answers     reconnect  AES key   file sent as
======  =====================  ==========  =========  ========  ==================
v3      825-828, 900-902       1600-1607   827        32 bytes  828 packets
2022    1100-1101, 1103-1106   2100-2104   none       16 bytes  one 1103
2023A   1100-1106              2100-2107   1102       16 bytes  one 1103
2023C   1025-1031              2100-2107   1027       16 bytes  one 1028
2024A   1025-1031              1600-1607   1027       32 bytes  1028 packets
======  =====================  ==========  =========  ========  ==================

A request or response is the same event in every edition (:mod:`protocol.events`):
an edition only says which code and which payload layout carry it. A file
sent in one request is received exactly as a one-packet 828
(``FilePacketStarted`` with packet 1 of 1); it carries no plaintext size, so
its ``orig_file_size`` is None.

The first request of a connection names its *family* (:func:`family_of`):
the three families' codes do not overlap. Within a family the editions are
told apart later (:attr:`Edition.family` lists the candidates): in the 1100
series by the sizes of the file and CRC requests, in the 1025 series by how
the client reacts to its first answer (docs/EDITIONS.md).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable, Mapping

from construct import Construct, Int32ul, Padding, Struct

from . import events as ev
from .codes import AES_KEY_SIZE, AES_KEY_SIZES, CLIENT_ID_SIZE, RequestCode, ResponseCode
from .wire import (
    AesKeyPayload,
    ClientId,
    ClientIdPayload,
    EmptyPayload,
    FileNamePayload,
    FilePacketFields,
    FileReceivedPayload,
    NameFieldBytes,
    NamePayload,
    PublicKeyPayload,
    compiled,
)

#: AES-128, the key of the 2022 and 2023 editions.
AES_128_KEY_SIZE = AES_KEY_SIZES[1]

# -- the payloads only some editions have ----------------------------------------

#: A whole file in one request (2023A 1103, 2023C 1028); the content follows.
WholeFileFields = Struct(
    "content_size" / Int32ul,
    "file_name" / NameFieldBytes,
)
#: The 2022 file request repeats the client id in its payload.
WholeFileFields2022 = Struct(
    "payload_client_id" / ClientId,
    "content_size" / Int32ul,
    "file_name" / NameFieldBytes,
)
#: The 2022 CRC requests repeat the client id too (271 bytes).
FileNamePayload2022 = Struct(
    "payload_client_id" / ClientId,
    "file_name" / NameFieldBytes,
)
#: The 2022 "registration refused": 16 bytes, zeros (its clients read a fixed length).
RegistrationFailedPayload2022 = Struct(Padding(CLIENT_ID_SIZE))
#: The 2022 "acknowledged" carries nothing, whatever the 2022 text says.
AcknowledgedPayload2022 = EmptyPayload


class Family(enum.Enum):
    """The code ranges: a connection's first request names one of them."""

    V3 = "825 series"
    SERIES_1100 = "1100 series"
    SERIES_1025 = "1025 series"


@dataclass(frozen=True)
class Message:
    """One message of an edition: the event it carries, its code and its payload."""

    event: type
    code: int
    payload: Struct
    #: Whether the payload is followed by file content (its size is the rest).
    has_content: bool = False
    #: The fixed part's size (the whole payload unless content follows).
    payload_size: int = field(init=False, repr=False, compare=False)
    #: The payload's named fields, in order (padding has no name).
    field_names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "payload_size", int(self.payload.sizeof()))
        names = tuple(sc.name for sc in self.payload.subcons if sc.name)
        object.__setattr__(self, "field_names", names)

    @property
    def codec(self) -> Construct:
        """``payload`` compiled: what parses and builds it (:func:`protocol.wire.compiled`).

        Compiled on first use, once: a client, which speaks a few messages of
        one edition, starts without compiling all of them.
        """
        return compiled(self.payload)


@dataclass(frozen=True)
class Edition:
    """One edition of the protocol: which codes and layouts carry each event."""

    name: str
    family: Family
    aes_key_size: int
    requests: tuple[Message, ...]
    responses: tuple[Message, ...]
    #: The file travels in one request without packet fields (not 828 packets).
    whole_file: bool = False
    #: The file and CRC requests repeat the client id in their payload (2022).
    client_id_in_payload: bool = False
    #: Tolerated from this edition's clients (docs/EDITIONS.md, variants 1 and
    #: 3): a register carrying the bare name (payload_size its length, no
    #: NUL), and a CRC request without payload, meaning the last file sent,
    #: whose payload may follow anyway (it then ends the connection unanswered).
    bare_name_register: bool = False
    empty_crc_requests: bool = False
    _request_by_code: Mapping[int, Message] = field(init=False, repr=False, compare=False)
    _request_by_event: Mapping[type, Message] = field(init=False, repr=False, compare=False)
    _response_by_code: Mapping[int, Message] = field(init=False, repr=False, compare=False)
    _response_by_event: Mapping[type, Message] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, messages, key in (
            ("_request_by_code", self.requests, "code"),
            ("_request_by_event", self.requests, "event"),
            ("_response_by_code", self.responses, "code"),
            ("_response_by_event", self.responses, "event"),
        ):
            object.__setattr__(self, name, {getattr(m, key): m for m in messages})

    def __str__(self) -> str:
        return self.name

    @property
    def has_reconnect(self) -> bool:
        """Whether a client of this edition can ask for a fresh key by name."""
        return ev.Reconnect in self._request_by_event

    def request(self, code: int) -> Message | None:
        """The request this code stands for, if the edition has it."""
        return self._request_by_code.get(code)

    def request_for(self, event: type) -> Message | None:
        """How this edition sends a request event (None: it has no such request)."""
        if event is ev.FilePacketStarted:
            event = ev.SendFilePacket
        return self._request_by_event.get(event)

    def response(self, code: int) -> Message | None:
        """The response this code stands for, if the edition has it."""
        return self._response_by_code.get(code)

    def response_for(self, event: type) -> Message | None:
        """How this edition sends a response event (None: it has no such answer)."""
        return self._response_by_event.get(event)

    @property
    def request_codes(self) -> frozenset[int]:
        """Every request code of the edition."""
        return frozenset(self._request_by_code)


#: The order in which the editions number their requests: v3's (:class:`RequestCode`).
_REQUEST_ORDER: tuple[RequestCode, ...] = tuple(RequestCode)
#: v3's first answer code; the editions number their answers in v3's order from theirs.
_FIRST_RESPONSE_CODE = min(ResponseCode)


def _v3_code(event: type[ev.Request]) -> int:
    """v3's code of a request: the event's own (:class:`RequestCode`)."""
    return int(event.code)


def _numbered_from(base: int) -> Callable[[type[ev.Request]], int]:
    """The codes of an edition whose requests follow one another from ``base``, in v3's order."""

    def code_of(event: type[ev.Request]) -> int:
        return base + _REQUEST_ORDER.index(event.code)

    return code_of


def _requests(
    code_of: Callable[[type[ev.Request]], int],
    *,
    reconnect: bool = True,
    file_payload: Struct = FilePacketFields,
    crc_payload: Struct = FileNamePayload,
) -> tuple[Message, ...]:
    """The requests of an edition, each coded by ``code_of`` (its event class to its code)."""
    found: list[tuple[type[ev.Request], Struct]] = [
        (ev.Register, NamePayload),
        (ev.SendPublicKey, PublicKeyPayload),
        (ev.SendFilePacket, file_payload),
        (ev.CrcOk, crc_payload),
        (ev.CrcRetry, crc_payload),
        (ev.CrcAbort, crc_payload),
    ]
    if reconnect:
        found.insert(2, (ev.Reconnect, NamePayload))
    return tuple(
        Message(event, code_of(event), payload, has_content=event is ev.SendFilePacket)
        for event, payload in found
    )


def _responses(
    base: int,
    *,
    refused: Struct = EmptyPayload,
    acknowledged: Struct = ClientIdPayload,
    reconnect: bool = True,
) -> tuple[Message, ...]:
    """The eight answers, coded from ``base`` in the order of v3's 1600-1607 (ResponseCode)."""
    found: list[tuple[type[ev.Response], Struct]] = [
        (ev.Registered, ClientIdPayload),
        (ev.RegistrationFailed, refused),
        (ev.PublicKeyReceived, AesKeyPayload),
        (ev.FileReceived, FileReceivedPayload),
        (ev.Acknowledged, acknowledged),
        (ev.GeneralError, EmptyPayload),
    ]
    if reconnect:
        found += [(ev.Reconnected, AesKeyPayload), (ev.ReconnectRefused, ClientIdPayload)]
    return tuple(
        Message(event, base + event.code - _FIRST_RESPONSE_CODE, payload)
        for event, payload in found
    )


V3 = Edition(
    "v3", Family.V3, AES_KEY_SIZE, _requests(_v3_code), _responses(_FIRST_RESPONSE_CODE)
)
EDITION_2022 = Edition(
    "2022",
    Family.SERIES_1100,
    AES_128_KEY_SIZE,
    _requests(
        _numbered_from(1100),
        reconnect=False,
        file_payload=WholeFileFields2022,
        crc_payload=FileNamePayload2022,
    ),
    _responses(
        2100,
        refused=RegistrationFailedPayload2022,
        acknowledged=AcknowledgedPayload2022,
        reconnect=False,
    ),
    whole_file=True,
    client_id_in_payload=True,
    bare_name_register=True,
    empty_crc_requests=True,
)
EDITION_2023A = Edition(
    "2023A",
    Family.SERIES_1100,
    AES_128_KEY_SIZE,
    _requests(_numbered_from(1100), file_payload=WholeFileFields),
    _responses(2100),
    whole_file=True,
)
EDITION_2023C = Edition(
    "2023C",
    Family.SERIES_1025,
    AES_128_KEY_SIZE,
    _requests(_numbered_from(1025), file_payload=WholeFileFields),
    _responses(2100),
    whole_file=True,
)
EDITION_2024A = Edition(
    "2024A",
    Family.SERIES_1025,
    AES_KEY_SIZE,
    _requests(_numbered_from(1025)),
    _responses(_FIRST_RESPONSE_CODE),
)

#: Every edition, v3 first.
EDITIONS: tuple[Edition, ...] = (V3, EDITION_2022, EDITION_2023A, EDITION_2023C, EDITION_2024A)
BY_NAME: Mapping[str, Edition] = {edition.name.lower(): edition for edition in EDITIONS}
#: The largest payload of a request without content, in any edition (826's).
MAX_FIXED_REQUEST_PAYLOAD_SIZE = max(
    message.payload_size
    for edition in EDITIONS
    for message in edition.requests
    if not message.has_content
)

#: The editions of each family, the one assumed until told otherwise first:
#: 2022's answers where the 1100 series is still ambiguous (a 2022 client reads
#: fixed lengths, a 2023A client honours payload_size), and 2024A's to a first
#: 1025 (docs/EDITIONS.md, "Telling the editions apart").
FAMILIES: Mapping[Family, tuple[Edition, ...]] = {
    Family.V3: (V3,),
    Family.SERIES_1100: (EDITION_2022, EDITION_2023A),
    Family.SERIES_1025: (EDITION_2024A, EDITION_2023C),
}


def family_of(code: int) -> Family | None:
    """The family whose editions have this request code, if any."""
    for family, editions in FAMILIES.items():
        if any(edition.request(code) is not None for edition in editions):
            return family
    return None


__all__ = [
    "AES_128_KEY_SIZE",
    "BY_NAME",
    "EDITIONS",
    "EDITION_2022",
    "EDITION_2023A",
    "EDITION_2023C",
    "EDITION_2024A",
    "FAMILIES",
    "V3",
    "Edition",
    "Family",
    "Message",
    "family_of",
]
