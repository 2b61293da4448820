"""Every header and payload layout of docs/PROTOCOL.md, declared once with construct.

Which code carries each layout, in each edition, is :mod:`protocol.editions`.
Sizes used elsewhere are derived from these declarations, never written out.
What parses and builds them on the hot path is the same declaration compiled
(:func:`compiled`): construct generates the code from it, so the declaration
stays the one source of the format.
"""

from __future__ import annotations

import functools

from construct import Adapter, Bytes, Construct, Int8ul, Int16ul, Int32ul, Struct, ValidationError

from .codes import (
    CLIENT_ID_SIZE,
    ENCRYPTED_AES_KEY_SIZE,
    NAME_FIELD_SIZE,
    PUBLIC_KEY_SIZE,
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

REQUEST_HEADER_SIZE = RequestHeader.sizeof()
RESPONSE_HEADER_SIZE = ResponseHeader.sizeof()
FILE_PACKET_FIELDS_SIZE = FilePacketFields.sizeof()


@functools.cache
def compiled(struct: Construct) -> Construct:
    """The declaration compiled by construct (``Struct.compile()``), once per declaration.

    It parses and builds the same bytes as ``struct`` (tests/protocol checks
    every layout both ways), in generated code rather than construct's
    interpreter.
    """
    return struct.compile()


#: The headers as the connections parse and build them.
REQUEST_HEADER = compiled(RequestHeader)
RESPONSE_HEADER = compiled(ResponseHeader)
