"""Sans-I/O connections: bytes in, typed events out; events in, bytes out.

``ServerConnection`` reads requests and writes responses, ``ClientConnection``
the reverse. Neither touches a socket: the caller feeds ``receive_data`` with
what it received (``b""`` at EOF) and calls ``next_event`` until it returns
``NEED_DATA``.
"""

from __future__ import annotations

import enum
from typing import Any, Final

from construct import ConstructError, Struct

from . import events as ev
from .buffer import BytesLike, ReceiveBuffer
from .codes import MAX_UINT32, VERSION, RequestCode, ResponseCode
from .errors import LocalProtocolError, RemoteProtocolError
from .names import is_valid_client_name
from .wire import (
    FILE_PACKET_FIELDS_SIZE,
    MAX_FIXED_REQUEST_PAYLOAD_SIZE,
    REQUEST_HEADER_SIZE,
    REQUEST_PAYLOAD_SIZES,
    REQUEST_PAYLOADS,
    RESPONSE_HEADER_SIZE,
    RESPONSE_PAYLOAD_SIZES,
    RESPONSE_PAYLOADS,
    RequestHeader,
    ResponseHeader,
)


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by ``next_event`` while no whole event has arrived yet.
NEED_DATA: Final = _NeedData()

_REQUEST_EVENTS: dict[RequestCode, type] = {
    RequestCode.REGISTER: ev.Register,
    RequestCode.SEND_PUBLIC_KEY: ev.SendPublicKey,
    RequestCode.RECONNECT: ev.Reconnect,
    RequestCode.SEND_FILE: ev.FilePacketStarted,
    RequestCode.CRC_OK: ev.CrcOk,
    RequestCode.CRC_RETRY: ev.CrcRetry,
    RequestCode.CRC_ABORT: ev.CrcAbort,
}

_RESPONSE_EVENTS: dict[ResponseCode, type] = {
    ResponseCode.REGISTERED: ev.Registered,
    ResponseCode.REGISTRATION_FAILED: ev.RegistrationFailed,
    ResponseCode.PUBLIC_KEY_RECEIVED: ev.PublicKeyReceived,
    ResponseCode.FILE_RECEIVED: ev.FileReceived,
    ResponseCode.ACKNOWLEDGED: ev.Acknowledged,
    ResponseCode.RECONNECTED: ev.Reconnected,
    ResponseCode.RECONNECT_REFUSED: ev.ReconnectRefused,
    ResponseCode.GENERAL_ERROR: ev.GeneralError,
}

#: Requests that carry a client name, and the answer to a malformed one.
_NAME_ERROR_ANSWERS: dict[RequestCode, ResponseCode] = {
    RequestCode.REGISTER: ResponseCode.REGISTRATION_FAILED,
    RequestCode.SEND_PUBLIC_KEY: ResponseCode.GENERAL_ERROR,
    RequestCode.RECONNECT: ResponseCode.GENERAL_ERROR,
}


class _ReadState(enum.Enum):
    HEADER = "header"
    PAYLOAD = "payload"
    CONTENT = "content"
    DISCARD = "discard"
    CLOSED = "closed"
    ERROR = "error"


def _payload_fields(struct: Struct, event: object) -> dict:
    return {sc.name: getattr(event, sc.name) for sc in struct.subcons}


def _event_fields(container) -> dict:
    return {key: value for key, value in container.items() if not key.startswith("_")}


class _Reader:
    """What both sides share: the buffer, the read state, EOF and errors."""

    def __init__(self) -> None:
        self._buffer = ReceiveBuffer()
        self._state = _ReadState.HEADER
        self._remaining = 0

    def receive_data(self, data: BytesLike) -> None:
        """Feed bytes received from the peer; ``b""`` means the peer sent EOF.

        Raises:
            LocalProtocolError: data fed after EOF.
        """
        if self._buffer.eof and data:
            raise LocalProtocolError("data received after EOF")
        self._buffer.append(data)

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
    """The server's side: parses requests, builds responses.

    ``max_skip_payload`` bounds the payload of a well-framed but wrong request
    (wrong size, unknown code) that is read and dropped while the connection
    stays open; a larger one closes it. ``max_packet_content`` bounds the
    content of one 828 packet; content is never buffered whole anyway.
    """

    def __init__(
        self,
        *,
        max_skip_payload: int = MAX_FIXED_REQUEST_PAYLOAD_SIZE,
        max_packet_content: int = MAX_UINT32,
    ) -> None:
        super().__init__()
        self.max_skip_payload = max_skip_payload
        self.max_packet_content = max_packet_content
        #: The header being handled (a construct Container), or None.
        self._header: Any = None

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
                self._header = RequestHeader.parse(raw)
                self._check_header()
                self._state = _ReadState.PAYLOAD
            if self._state is _ReadState.PAYLOAD:
                return self._next_payload()

    def _check_header(self) -> None:
        header = self._header
        try:
            code = RequestCode(header.code)
        except ValueError:
            raise self._reject_payload(f"unknown request code {header.code}") from None
        size = header.payload_size
        if code is RequestCode.SEND_FILE:
            if size < FILE_PACKET_FIELDS_SIZE:
                raise self._reject_payload(f"828 payload of {size} bytes is too short")
            content = size - FILE_PACKET_FIELDS_SIZE
            if content > self.max_packet_content:
                raise self._fail(
                    f"828 packet content of {content} bytes is over the limit"
                    f" of {self.max_packet_content}"
                )
        elif size != REQUEST_PAYLOAD_SIZES[code]:
            raise self._reject_payload(
                f"{code.value} payload must be {REQUEST_PAYLOAD_SIZES[code]}"
                f" bytes, got {size}"
            )

    def _reject_payload(self, message: str) -> RemoteProtocolError:
        """A well-framed wrong request: the error to raise; its payload is dropped if small."""
        size = self._header.payload_size
        if size > self.max_skip_payload:
            return self._fail(f"{message}; payload too large to skip, closing")
        self._state = _ReadState.DISCARD
        self._remaining = size
        return self._fail(message, close=False)

    def _next_payload(self):
        code = RequestCode(self._header.code)
        struct = REQUEST_PAYLOADS[code]
        raw = self._buffer.maybe_extract_exactly(struct.sizeof())
        if raw is None:
            return self._need_data()
        client_id = self._header.client_id
        bytes_in_packet = self._header.payload_size - struct.sizeof()
        try:
            values = _event_fields(struct.parse(raw))
        except ConstructError as exc:
            self._skip_content(bytes_in_packet)
            raise self._fail(
                f"{code.value}: malformed string field",
                response_code=_NAME_ERROR_ANSWERS.get(code, ResponseCode.GENERAL_ERROR),
                close=False,
            ) from exc
        if code in _NAME_ERROR_ANSWERS:
            name = values["name"].text
            if not is_valid_client_name(name):
                self._state = _ReadState.HEADER
                raise self._fail(
                    f"{code.value}: invalid client name {values['name']}",
                    response_code=_NAME_ERROR_ANSWERS[code],
                    close=False,
                )
            values["name"] = name.decode("ascii")
        elif not values["file_name"].text:
            self._skip_content(bytes_in_packet)
            raise self._fail(f"{code.value}: empty file name", close=False)
        if code is RequestCode.SEND_FILE:
            self._state = _ReadState.CONTENT
            self._remaining = bytes_in_packet
            values["bytes_in_packet"] = bytes_in_packet
        else:
            self._state = _ReadState.HEADER
        return _REQUEST_EVENTS[code](client_id=client_id, **values)

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

    def send(self, response: ev.Response) -> bytes:
        """The bytes of one response.

        Raises:
            LocalProtocolError: not a response.
        """
        struct = _response_struct(response)
        payload = struct.build(_payload_fields(struct, response))
        header = ResponseHeader.build(
            {"version": VERSION, "code": response.code, "payload_size": len(payload)}
        )
        return header + payload


def _response_struct(response) -> Struct:
    code = getattr(response, "code", None)
    if code not in RESPONSE_PAYLOADS:
        raise LocalProtocolError(f"not a response: {response!r}")
    return RESPONSE_PAYLOADS[code]


class ClientConnection(_Reader):
    """The client's side: builds requests, parses responses strictly.

    Every response has one exact payload size (variant 11); anything else,
    and any unknown code, is a broken stream.
    """

    def __init__(self) -> None:
        super().__init__()
        #: The header being handled (a construct Container), or None.
        self._header: Any = None

    def send(self, request: ev.Request) -> bytes:
        """The bytes of one request, ready for a single write.

        Raises:
            LocalProtocolError: not a request.
        """
        return b"".join(self.send_parts(request))

    def send_parts(self, request: ev.Request) -> tuple[bytes, BytesLike]:
        """One request as (header and fixed fields, content), for a gathered write.

        The content (an 828 packet's, else empty) is returned as given, not
        copied: ``socket.sendmsg`` sends both parts as one request.

        Raises:
            LocalProtocolError: not a request.
        """
        code = getattr(request, "code", None)
        if code not in REQUEST_PAYLOADS or isinstance(request, ev.FilePacketStarted):
            raise LocalProtocolError(f"not a request: {request!r}")
        struct = REQUEST_PAYLOADS[code]
        values = _payload_fields(struct, request)
        content = request.content if isinstance(request, ev.SendFilePacket) else b""
        payload = struct.build(values)
        header = RequestHeader.build(
            {
                "client_id": request.client_id,
                "version": VERSION,
                "code": code,
                "payload_size": len(payload) + len(content),
            }
        )
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
        if self._state is _ReadState.HEADER:
            raw = self._buffer.maybe_extract_exactly(RESPONSE_HEADER_SIZE)
            if raw is None:
                return self._need_data()
            header = ResponseHeader.parse(raw)
            try:
                code = ResponseCode(header.code)
            except ValueError:
                raise self._fail(f"unknown response code {header.code}") from None
            if header.payload_size != RESPONSE_PAYLOAD_SIZES[code]:
                raise self._fail(
                    f"{code.value} payload must be {RESPONSE_PAYLOAD_SIZES[code]}"
                    f" bytes, got {header.payload_size}"
                )
            self._header = header
            self._state = _ReadState.PAYLOAD
        code = ResponseCode(self._header.code)
        struct = RESPONSE_PAYLOADS[code]
        raw = self._buffer.maybe_extract_exactly(struct.sizeof())
        if raw is None:
            return self._need_data()
        self._state = _ReadState.HEADER
        try:
            values = _event_fields(struct.parse(raw))
        except ConstructError as exc:
            raise self._fail(f"{code.value}: malformed payload") from exc
        return _RESPONSE_EVENTS[code](**values)
