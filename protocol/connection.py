"""Sans-I/O connections: bytes in, typed events out; events in, bytes out.

``ServerConnection`` reads requests and writes responses, ``ClientConnection``
the reverse. Neither touches a socket: the caller feeds ``receive_data`` with
what it received (``b""`` at EOF) and calls ``next_event`` until it returns
``NEED_DATA``.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Final

from construct import ConstructError, Struct

from . import events as ev
from .buffer import BytesLike, ReceiveBuffer
from .codes import CLIENT_ID_SIZE, MAX_UINT32, VERSION, ResponseCode
from .editions import (
    EDITIONS,
    FAMILIES,
    MAX_FIXED_REQUEST_PAYLOAD_SIZE,
    V3,
    Edition,
    Message,
    family_of,
)
from .errors import LocalProtocolError, RemoteProtocolError
from .incoming import most_packet_content
from .codes import NAME_FIELD_SIZE
from .names import NameField, is_valid_client_name
from .printable import quoted
from .wire import (
    REQUEST_HEADER,
    REQUEST_HEADER_SIZE,
    RESPONSE_HEADER,
    RESPONSE_HEADER_SIZE,
)


class NeedData:
    """The type of :data:`NEED_DATA` (a parser's "not a whole message yet")."""

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by ``next_event`` while no whole event has arrived yet.
NEED_DATA: Final = NeedData()

#: The answer to a request whose client name or string field is malformed,
#: where it is not 1607: a register is refused as a registration.
_MALFORMED_ANSWERS: dict[type, ResponseCode] = {ev.Register: ResponseCode.REGISTRATION_FAILED}
#: The payload fields a request is checked by, where its declaration has them
#: (:attr:`~protocol.editions.Message.field_names`): a client name, a file name.
_NAME_FIELD = "name"
_FILE_NAME_FIELD = "file_name"
#: What a file sent in one request is, as a packet (docs/EDITIONS.md).
_WHOLE_FILE_PACKET = {"orig_file_size": None, "packet_number": 1, "total_packets": 1}
#: The payload field of the 2022 file and CRC requests that repeats the header's id.
_PAYLOAD_CLIENT_ID = "payload_client_id"
#: The requests that settle a file's CRC.
_CRC_REQUESTS = (ev.CrcOk, ev.CrcRetry, ev.CrcAbort)
#: The largest answer of an unknown code a client reads whole to skip it.
MAX_SKIPPED_ANSWER = 64 * 1024


class _ReadState(enum.Enum):
    HEADER = "header"
    PAYLOAD = "payload"
    CONTENT = "content"
    DISCARD = "discard"
    CLOSED = "closed"
    ERROR = "error"


def _payload_fields(message: Message, event: object) -> dict:
    """The values of a payload's named fields, taken from an event."""
    return {
        name: getattr(event, "client_id" if name == _PAYLOAD_CLIENT_ID else name)
        for name in message.field_names
    }


def _event_fields(container) -> dict:
    return {key: value for key, value in container.items() if not key.startswith("_")}


def _fits(message: Message, payload_size: int) -> bool:
    """Whether a payload of this size can be this message (content may follow)."""
    if message.has_content:
        return payload_size >= message.payload_size
    return payload_size == message.payload_size


#: Answers whose whole payload is the client id, which some servers leave out.
_ID_OPTIONAL = (ev.Acknowledged, ev.ReconnectRefused)


def _without_id(message: Message, payload_size: int) -> Message | None:
    """The empty layout of an answer that may come without its id, for an empty payload."""
    if payload_size == 0 and message.event in _ID_OPTIONAL:
        return dataclasses.replace(message, payload=Struct())
    return None


class _Reader:
    """What both sides share: the buffer, the read state, EOF and errors."""

    def __init__(self) -> None:
        self._buffer = ReceiveBuffer()
        self._state = _ReadState.HEADER
        self._remaining = 0

    def receive_data(self, data: BytesLike, *, lent: bool = False) -> None:
        """Feed bytes received from the peer; ``b""`` means the peer sent EOF.

        With ``lent``, the bytes are not copied: file content comes out as
        views of ``data``, which must stay as it is until :meth:`keep_unread`.

        Raises:
            LocalProtocolError: data fed after EOF.
        """
        if self._buffer.eof and data:
            raise LocalProtocolError("data received after EOF")
        if lent:
            self._buffer.lend(data)
        else:
            self._buffer.append(data)

    def keep_unread(self) -> None:
        """Copy what is still unread of lent bytes: their buffer may be reused."""
        self._buffer.keep()

    @property
    def in_message(self) -> bool:
        """Whether part of a message has arrived and the rest has not."""
        return self._state is not _ReadState.HEADER or len(self._buffer) > 0

    def _fail(self, message: str, **kwargs) -> RemoteProtocolError:
        error = RemoteProtocolError(message, **kwargs)
        self._state = _ReadState.ERROR if error.close else self._state
        return error

    def _need_data(self):
        """NEED_DATA, unless the peer has closed: then the message is cut."""
        if self._buffer.eof:
            raise self._fail("connection closed in the middle of a message")
        return NEED_DATA

    def _at_boundary(self):
        """At a message boundary: an event can start, or the stream ended."""
        if self._state is _ReadState.ERROR:
            raise RemoteProtocolError("the connection already failed")
        # EOF is a clean close only between messages: once a header is in,
        # an empty buffer at EOF means its payload was cut short.
        if self._state is _ReadState.CLOSED or (
            self._state is _ReadState.HEADER
            and self._buffer.eof
            and len(self._buffer) == 0
        ):
            self._state = _ReadState.CLOSED
            return ev.ConnectionClosed()
        return None


class ServerConnection(_Reader):
    """The server's side: parses requests, builds responses, in one edition.

    The first request names the connection's family of editions
    (:mod:`protocol.editions`); :attr:`edition` is the one in use (answers go
    out in it), :attr:`edition_known` whether the requests so far leave only
    it. ``editions`` are those recognised; a code of any other is unknown.
    The caller may settle the edition itself (:meth:`use`), as the server does
    for the 1025 series.

    ``max_skip_payload`` bounds the payload of a well-framed but wrong request
    (wrong size, unknown code) that is read and dropped while the connection
    stays open; a larger one closes it. ``max_packet_content`` bounds the
    content of one file request; content is never buffered whole anyway. A
    file request whose content no layout it may be in can take
    (:func:`~protocol.incoming.most_packet_content`) is refused at its fixed
    fields, unread, unless it is small enough to skip.
    """

    def __init__(
        self,
        *,
        max_skip_payload: int = MAX_FIXED_REQUEST_PAYLOAD_SIZE,
        max_packet_content: int = MAX_UINT32,
        editions: tuple[Edition, ...] = EDITIONS,
    ) -> None:
        super().__init__()
        self.max_skip_payload = max_skip_payload
        self.max_packet_content = max_packet_content
        self._editions = editions
        #: The editions the requests so far allow, the one in use first.
        self._candidates: tuple[Edition, ...] = ()
        #: The header being handled (a construct Container), or None.
        self._header: Any = None
        #: The request that header starts, in each edition still possible.
        self._messages: tuple[tuple[Edition, Message], ...] = ()
        #: After a CRC bad: the file it named, whose resend may keep the CRC
        #: bad code on its packets (docs/PROTOCOL.md, variant 13).
        self._retry_file: bytes | None = None
        #: The file request being read is such a resend.
        self._resend = False
        #: The register being read carries a bare name (docs/EDITIONS.md, variant 1).
        self._bare_name = False
        #: A CRC request came without payload: bytes that follow and do not
        #: parse are its payload, sent anyway (docs/EDITIONS.md, variant 3).
        self._after_empty_crc = False

    @property
    def edition(self) -> Edition | None:
        """The edition in use: answers go out in it (None before the first request)."""
        return self._candidates[0] if self._candidates else None

    @property
    def edition_known(self) -> bool:
        """Whether the requests so far leave one edition only."""
        return len(self._candidates) == 1

    @property
    def candidates(self) -> tuple[Edition, ...]:
        """The editions the requests so far allow, the one in use first."""
        return self._candidates

    @property
    def request_code(self) -> int | None:
        """The wire code of the request being handled (for the log)."""
        return None if self._header is None else int(self._header.code)

    @property
    def request_size(self) -> int:
        """The size of the request being handled, header included (for the log)."""
        return 0 if self._header is None else REQUEST_HEADER_SIZE + int(self._header.payload_size)

    def use(self, edition: Edition) -> None:
        """Settle the edition (the caller knows it better than the bytes so far).

        A request whose header is in already is read in it too, if it has it.
        """
        self._candidates = (edition,)
        self._messages = tuple((e, m) for e, m in self._messages if e is edition) or self._messages

    def next_event(self):
        """The next request event, ``NEED_DATA``, or ``ConnectionClosed``.

        Raises:
            RemoteProtocolError: the peer broke the contract; ``close`` says
                whether the connection can go on.
        """
        while True:
            if self._state is _ReadState.DISCARD:
                self._remaining -= self._buffer.discard_at_most(self._remaining)
                if self._remaining:
                    return self._need_data()
                self._state = _ReadState.HEADER
            if self._state is _ReadState.CONTENT:
                return self._next_content()
            closed = self._at_boundary()
            if closed is not None:
                return closed
            if self._state is _ReadState.HEADER:
                raw = self._buffer.maybe_extract_exactly(REQUEST_HEADER_SIZE)
                if raw is None:
                    return self._need_data()
                self._header = REQUEST_HEADER.unpack(raw)
                self._check_header()
                self._state = _ReadState.PAYLOAD
            if self._state is _ReadState.PAYLOAD:
                return self._next_payload()

    def _possible_editions(self, code: int) -> tuple[Edition, ...]:
        if self._candidates:
            return self._candidates
        family = family_of(code)
        if family is None:
            return ()
        return tuple(e for e in FAMILIES[family] if e in self._editions)

    def _check_header(self) -> None:
        after_empty_crc, self._after_empty_crc = self._after_empty_crc, False
        try:
            self._identify()
        except RemoteProtocolError as exc:
            if not after_empty_crc:
                raise
            raise self._fail(f"{exc} (after a CRC request without payload)", answer=False) from None

    def _identify(self) -> None:
        code, size = self._header.code, self._header.payload_size
        found = [
            (edition, message)
            for edition in self._possible_editions(code)
            if (message := edition.request(code)) is not None
        ]
        if not found:
            raise self._reject_payload(f"unknown request code {code}")
        self._bare_name = False
        tolerated = self._tolerated(found, size)
        if tolerated:
            self._messages = tolerated
            return
        fitting = tuple((edition, message) for edition, message in found if _fits(message, size))
        self._resend = False
        if not fitting and self._retry_file is not None:
            fitting = self._resend_messages(found, size)
            self._resend = bool(fitting)
        if not fitting:
            message = found[0][1]
            if message.has_content:
                raise self._reject_payload(f"{code} payload of {size} bytes is too short")
            raise self._reject_payload(
                f"{code} payload must be {message.payload_size} bytes, got {size}"
            )
        message = fitting[0][1]
        if message.has_content:
            content = size - min(m.payload_size for _, m in fitting)
            if content > self.max_packet_content:
                raise self._fail(
                    f"{code} file content of {content} bytes is over the limit"
                    f" of {self.max_packet_content}"
                )
        self._messages = fitting

    def _tolerated(
        self, found: list[tuple[Edition, Message]], size: int
    ) -> tuple[tuple[Edition, Message], ...]:
        """docs/EDITIONS.md variants 1 and 3: a bare-name register, an empty CRC request."""
        for edition, message in found:
            if message.event is ev.Register and edition.bare_name_register:
                if 0 < size < message.payload_size:
                    self._bare_name = True
                    return ((edition, message),)
            if message.event in _CRC_REQUESTS and edition.empty_crc_requests and size == 0:
                return ((edition, message),)
        return ()

    @staticmethod
    def _resend_messages(
        found: list[tuple[Edition, Message]], size: int
    ) -> tuple[tuple[Edition, Message], ...]:
        """Variant 13: a CRC bad too long for one, that fits a file request, is the resend."""
        resends = []
        for edition, message in found:
            file = edition.request_for(ev.SendFilePacket)
            if message.event is ev.CrcRetry and file is not None and _fits(file, size):
                resends.append((edition, file))
        return tuple(resends)

    def _reject_payload(self, message: str) -> RemoteProtocolError:
        """A well-framed wrong request: the error to raise; its payload is dropped if small."""
        size = self._header.payload_size
        if size > self.max_skip_payload:
            return self._fail(f"{message}; payload too large to skip, closing")
        self._state = _ReadState.DISCARD
        self._remaining = size
        return self._fail(message, close=False)

    def _choose(self) -> tuple[Edition, Message] | None:
        """Of the editions a file request fits, those its content_size agrees with.

        A file sent whole fits when payload_size is its fixed part plus
        content_size (the 1100 series tells 2022 from 2023A so); a packet
        fits whatever its content_size. None while the fixed parts are not in.
        """
        if len(self._messages) == 1:
            return self._messages[0]
        size = self._header.payload_size
        longest = max(message.payload_size for _, message in self._messages)
        raw = self._buffer.peek(longest)
        if raw is None:
            return None
        agreeing = []
        for edition, message in self._messages:
            if not edition.whole_file:
                agreeing.append((edition, message))
                continue
            try:
                content_size = message.codec.parse(raw).content_size
            except ConstructError:
                continue
            if size == message.payload_size + content_size:
                agreeing.insert(0, (edition, message))
        return agreeing[0] if agreeing else self._messages[0]

    def _content_checked(self) -> bool:
        """A file request's content fits one of its layouts, or is small enough to skip.

        False while the fixed fields are not in.

        Raises:
            RemoteProtocolError: in no layout it may be in can the content be
                received (:func:`~protocol.incoming.most_packet_content`), and
                it is too large to read past: refused unread, closing.
        """
        size = self._header.payload_size
        raw = self._buffer.peek(max(message.payload_size for _, message in self._messages))
        if raw is None:
            return False
        for edition, message in self._messages:
            try:
                fields = message.codec.parse(raw)
            except ConstructError:
                return True  # malformed: refused as such once read (a 1607 that keeps it)
            single = edition.whole_file or max(fields.packet_number, fields.total_packets) <= 1
            most = most_packet_content(fields.content_size, single=single)
            if size - message.payload_size <= max(most, self.max_skip_payload):
                return True
        raise self._fail(
            f"{self._header.code} file content of {size} payload bytes is more than its"
            " content_size allows; payload too large to skip, closing"
        )

    def _next_payload(self):
        if any(message.has_content for _, message in self._messages):
            chosen = self._choose()
            if chosen is None or not self._content_checked():
                return self._need_data()
        else:
            chosen = self._messages[0]
        edition, message = chosen
        if self._header.payload_size == 0 and message.event in _CRC_REQUESTS:
            return self._empty_crc_request(edition, message)
        if self._bare_name:
            return self._bare_name_register(edition, message)
        raw = self._buffer.maybe_extract_exactly(message.payload_size)
        if raw is None:
            return self._need_data()
        # The editions this request fits stay possible; a file request, whose
        # layout was told apart by its sizes, settles its edition.
        others = tuple(e for e, _ in self._messages if e is not edition)
        self._candidates = (edition,) if message.has_content else (edition, *others)
        client_id = self._header.client_id
        code = self._header.code
        bytes_in_packet = self._header.payload_size - message.payload_size
        malformed_answer = _MALFORMED_ANSWERS.get(message.event, ResponseCode.GENERAL_ERROR)
        try:
            values = _event_fields(message.codec.parse(raw))
        except ConstructError as exc:
            self._skip_content(bytes_in_packet)
            raise self._fail(
                f"{code}: malformed string field", response_code=malformed_answer, close=False
            ) from exc
        if values.pop(_PAYLOAD_CLIENT_ID, client_id) != client_id:
            self._skip_content(bytes_in_packet)
            raise self._fail(f"{code}: the payload's client id is not the header's", close=False)
        if _NAME_FIELD in values:
            name = values[_NAME_FIELD].text
            if not is_valid_client_name(name):
                self._skip_content(bytes_in_packet)
                raise self._fail(
                    f"{code}: invalid client name {quoted(name)}",
                    response_code=malformed_answer,
                    close=False,
                )
            values[_NAME_FIELD] = name.decode("ascii")
        if _FILE_NAME_FIELD in values:
            file_name = values[_FILE_NAME_FIELD].text
            if not file_name:
                self._skip_content(bytes_in_packet)
                raise self._fail(f"{code}: empty file name", close=False)
            if self._resend and file_name != self._retry_file:
                self._skip_content(bytes_in_packet)
                raise self._fail(
                    f"{code}: payload of {self._header.payload_size} bytes", close=False
                )
        if message.event is ev.CrcRetry:
            self._retry_file = values[_FILE_NAME_FIELD].text
        elif not message.has_content:
            self._retry_file = None
        if message.has_content:
            self._state = _ReadState.CONTENT
            self._remaining = bytes_in_packet
            values["bytes_in_packet"] = bytes_in_packet
            if edition.whole_file:
                values.update(_WHOLE_FILE_PACKET)
            return ev.FilePacketStarted(client_id=client_id, **values)
        self._state = _ReadState.HEADER
        return message.event(client_id=client_id, **values)

    def _empty_crc_request(self, edition: Edition, message: Message):
        """A CRC request without payload: about the last file sent (an empty name)."""
        self._candidates = (edition,)
        self._state = _ReadState.HEADER
        self._after_empty_crc = True
        empty = NameField(text=b"", raw=bytes(NAME_FIELD_SIZE))
        return message.event(client_id=self._header.client_id, file_name=empty)

    def _bare_name_register(self, edition: Edition, message: Message):
        """A register whose payload is the name alone, without NUL or fill."""
        raw = self._buffer.maybe_extract_exactly(self._header.payload_size)
        if raw is None:
            return self._need_data()
        self._candidates = (edition,)
        self._state = _ReadState.HEADER
        if not is_valid_client_name(raw):
            raise self._fail(
                f"{self._header.code}: invalid client name {quoted(raw)}",
                response_code=ResponseCode.REGISTRATION_FAILED,
                close=False,
            )
        return message.event(client_id=self._header.client_id, name=raw.decode("ascii"))

    def _skip_content(self, count: int) -> None:
        self._state = _ReadState.DISCARD if count else _ReadState.HEADER
        self._remaining = count

    def _next_content(self):
        if not self._remaining:
            self._state = _ReadState.HEADER
            return ev.FilePacketEnded()
        chunk = self._buffer.extract_at_most(self._remaining)
        if not chunk:
            return self._need_data()
        self._remaining -= len(chunk)
        return ev.FileContent(chunk)

    def send(self, response: ev.Response, edition: Edition | None = None) -> bytes:
        """The bytes of one response, in the connection's edition (v3 before any).

        ``edition`` sends it in another edition of the connection's family
        instead (the server's answer to a first 1025, docs/EDITIONS.md).

        Raises:
            LocalProtocolError: not a response, or one the edition does not have.
        """
        edition = edition or self.edition or V3
        message = edition.response_for(type(response))
        if message is None:
            raise LocalProtocolError(f"not a response of edition {edition}: {response!r}")
        payload = message.codec.build(_payload_fields(message, response))
        return RESPONSE_HEADER.pack(VERSION, message.code, len(payload)) + payload


class ClientConnection(_Reader):
    """The client's side: builds requests, parses responses strictly, in one edition.

    Every response has one exact payload size (variant 11); anything else,
    and any code the edition does not have, is a broken stream. A response
    layout without the client id (2022's acknowledgement) gives an event
    whose ``client_id`` is zeros.
    """

    def __init__(
        self,
        edition: Edition = V3,
        *,
        skip_unknown: bool = False,
        header_only_unknown: bool = False,
    ) -> None:
        super().__init__()
        self.edition = edition
        #: Read an answer of a code the edition lacks whole and hand it over
        #: as :class:`~protocol.events.UnknownResponse`, as 2023C clients do
        #: (docs/EDITIONS.md), instead of calling the stream broken.
        self.skip_unknown = skip_unknown
        #: Hand such an answer over once its header is read, and read none of
        #: its payload (the next bytes are taken for the next answer), as
        #: 2024A clients do (docs/EDITIONS.md).
        self.header_only_unknown = header_only_unknown
        #: The response being read (its message), or None between responses.
        self._message: Message | None = None
        self._unknown: tuple[int, int] | None = None
        #: Whether the last response carried the client id its layout has room
        #: for: some servers send 1604 and 1606 empty (their event then holds
        #: zeros, which a caller must not take for an id).
        self.reply_carried_id = True

    def send(self, request: ev.Request) -> bytes:
        """The bytes of one request, ready for a single write.

        Raises:
            LocalProtocolError: not a request, or one the edition does not have.
        """
        return b"".join(self.send_parts(request))

    def send_parts(
        self, request: ev.Request, *, content_length: int | None = None
    ) -> tuple[bytes, BytesLike]:
        """One request as (header and fixed fields, content), for a gathered write.

        The content (a file request's, else empty) is returned as given, not
        copied: ``socket.sendmsg`` sends both parts as one request. A file
        sent whole (the 2022 and 2023 editions) must be packet 1 of 1; with
        ``content_length`` the header announces that much content, which the
        caller sends itself, in pieces, after the head.

        Raises:
            LocalProtocolError: not a request, or one the edition does not have.
        """
        message = None
        if not isinstance(request, ev.FilePacketStarted):
            message = self.edition.request_for(type(request))
        if message is None:
            raise LocalProtocolError(f"not a request of edition {self.edition}: {request!r}")
        if self.edition.whole_file and isinstance(request, ev.SendFilePacket):
            if (request.packet_number, request.total_packets) != (1, 1):
                raise LocalProtocolError(f"edition {self.edition} sends a file in one request")
        values = _payload_fields(message, request)
        content = request.content if isinstance(request, ev.SendFilePacket) else b""
        length = len(content) if content_length is None else content_length
        payload = message.codec.build(values)
        size = len(payload) + length
        header = REQUEST_HEADER.pack(request.client_id, VERSION, message.code, size)
        return header + payload, content

    def next_event(self):
        """The next response event, ``NEED_DATA``, or ``ConnectionClosed``.

        Raises:
            RemoteProtocolError: the server sent something the protocol
                does not allow; the connection cannot go on.
        """
        closed = self._at_boundary()
        if closed is not None:
            return closed
        if self._unknown is not None:
            return self._skip_unknown()
        if self._message is None:
            raw = self._buffer.maybe_extract_exactly(RESPONSE_HEADER_SIZE)
            if raw is None:
                return self._need_data()
            header = RESPONSE_HEADER.unpack(raw)
            message = self.edition.response(header.code)
            if message is None and self.header_only_unknown:
                return ev.UnknownResponse(code=header.code, payload_size=header.payload_size)
            if message is None and self.skip_unknown and header.payload_size <= MAX_SKIPPED_ANSWER:
                self._unknown = (header.code, header.payload_size)
                self._state = _ReadState.DISCARD
                return self._skip_unknown()
            if message is None:
                raise self._fail(f"unknown response code {header.code}")
            if header.payload_size != message.payload_size:
                # A server that cannot tell this family's editions apart yet
                # answers in a sibling's layout (2022's 2101 to a 2023A client);
                # some send an acknowledgement or a refusal without the id.
                message = (
                    self._sibling_layout(header.code, header.payload_size)
                    or _without_id(message, header.payload_size)
                    or message
                )
            if header.payload_size != message.payload_size:
                raise self._fail(
                    f"{header.code} payload must be {message.payload_size}"
                    f" bytes, got {header.payload_size}"
                )
            self._message = message
            self._state = _ReadState.PAYLOAD
        message = self._message
        raw = self._buffer.maybe_extract_exactly(message.payload_size)
        if raw is None:
            return self._need_data()
        self._message = None
        self._state = _ReadState.HEADER
        try:
            values = _event_fields(message.codec.parse(raw))
        except ConstructError as exc:
            raise self._fail(f"{message.code}: malformed payload") from exc
        self.reply_carried_id = "client_id" in values
        if "client_id" in {f.name for f in dataclasses.fields(message.event)}:
            values.setdefault("client_id", bytes(CLIENT_ID_SIZE))
        return message.event(**values)

    def _sibling_layout(self, code: int, payload_size: int) -> Message | None:
        """The layout of this code that an edition of the same family gives this size."""
        for edition in FAMILIES[self.edition.family]:
            message = edition.response(code)
            if message is not None and message.payload_size == payload_size:
                return message
        return None

    def _skip_unknown(self):
        assert self._unknown is not None
        code, size = self._unknown
        raw = self._buffer.maybe_extract_exactly(size)
        if raw is None:
            return self._need_data()
        self._unknown = None
        self._state = _ReadState.HEADER
        return ev.UnknownResponse(code=code, payload_size=size)
