"""Every message of docs/PROTOCOL.md, declared once with construct.

Sizes used elsewhere are derived from these declarations, never written out.
"""

from __future__ import annotations

from construct import Adapter, Bytes, Int8ul, Int16ul, Int32ul, Struct, ValidationError

from .codes import (
    CLIENT_ID_SIZE,
    ENCRYPTED_AES_KEY_SIZE,
    NAME_FIELD_SIZE,
    PUBLIC_KEY_SIZE,
    RequestCode,
    ResponseCode,
)
from .names import NameField


class _NameFieldAdapter(Adapter):
    """255 bytes on the wire, a :class:`NameField` in Python."""

    def _decode(self, obj: bytes, context, path) -> NameField:
        field = NameField.parse(obj)
        if field is None:
            raise ValidationError("string field has no NUL byte", path=path)
        return field

    def _encode(self, obj: NameField | bytes | str, context, path) -> bytes:
        if not isinstance(obj, NameField):
            obj = NameField.from_text(obj)
        return obj.raw


NameFieldBytes = _NameFieldAdapter(Bytes(NAME_FIELD_SIZE))
ClientId = Bytes(CLIENT_ID_SIZE)

RequestHeader = Struct(
    "client_id" / ClientId,
    "version" / Int8ul,
    "code" / Int16ul,
    "payload_size" / Int32ul,
)

ResponseHeader = Struct(
    "version" / Int8ul,
    "code" / Int16ul,
    "payload_size" / Int32ul,
)

# -- request payloads --------------------------------------------------------

NamePayload = Struct("name" / NameFieldBytes)
PublicKeyPayload = Struct(
    "name" / NameFieldBytes,
    "public_key" / Bytes(PUBLIC_KEY_SIZE),
)
FileNamePayload = Struct("file_name" / NameFieldBytes)
#: The fixed part of an 828 payload; the packet's content follows it.
FilePacketFields = Struct(
    "content_size" / Int32ul,
    "orig_file_size" / Int32ul,
    "packet_number" / Int16ul,
    "total_packets" / Int16ul,
    "file_name" / NameFieldBytes,
)

# -- response payloads -------------------------------------------------------

EmptyPayload = Struct()
ClientIdPayload = Struct("client_id" / ClientId)
AesKeyPayload = Struct(
    "client_id" / ClientId,
    "encrypted_aes_key" / Bytes(ENCRYPTED_AES_KEY_SIZE),
)
FileReceivedPayload = Struct(
    "client_id" / ClientId,
    "content_size" / Int32ul,
    "file_name" / NameFieldBytes,
    "cksum" / Int32ul,
)

REQUEST_PAYLOADS: dict[RequestCode, Struct] = {
    RequestCode.REGISTER: NamePayload,
    RequestCode.SEND_PUBLIC_KEY: PublicKeyPayload,
    RequestCode.RECONNECT: NamePayload,
    RequestCode.SEND_FILE: FilePacketFields,
    RequestCode.CRC_OK: FileNamePayload,
    RequestCode.CRC_RETRY: FileNamePayload,
    RequestCode.CRC_ABORT: FileNamePayload,
}

RESPONSE_PAYLOADS: dict[ResponseCode, Struct] = {
    ResponseCode.REGISTERED: ClientIdPayload,
    ResponseCode.REGISTRATION_FAILED: EmptyPayload,
    ResponseCode.PUBLIC_KEY_RECEIVED: AesKeyPayload,
    ResponseCode.FILE_RECEIVED: FileReceivedPayload,
    ResponseCode.ACKNOWLEDGED: ClientIdPayload,
    ResponseCode.RECONNECTED: AesKeyPayload,
    ResponseCode.RECONNECT_REFUSED: ClientIdPayload,
    ResponseCode.GENERAL_ERROR: EmptyPayload,
}

REQUEST_HEADER_SIZE = RequestHeader.sizeof()
RESPONSE_HEADER_SIZE = ResponseHeader.sizeof()
FILE_PACKET_FIELDS_SIZE = FilePacketFields.sizeof()

#: Exact payload size of every request, except 828 whose fixed part is given
#: (its content follows).
REQUEST_PAYLOAD_SIZES = {code: s.sizeof() for code, s in REQUEST_PAYLOADS.items()}
RESPONSE_PAYLOAD_SIZES = {code: s.sizeof() for code, s in RESPONSE_PAYLOADS.items()}
#: The largest payload of any request but 828.
MAX_FIXED_REQUEST_PAYLOAD_SIZE = max(
    size for code, size in REQUEST_PAYLOAD_SIZES.items() if code != RequestCode.SEND_FILE
)
