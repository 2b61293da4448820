"""Every header and payload layout of docs/PROTOCOL.md, declared once with construct.

Which code carries each layout, in each edition, is :mod:`protocol.editions`.
Sizes used elsewhere are derived from these declarations, never written out.
What parses and builds them on the hot path is the same declaration compiled
(:func:`compiled`): construct generates the code from it, so the declaration
stays the one source of the format.
"""

from __future__ import annotations

import functools
import struct
from collections import namedtuple
from typing import Any

from construct import (
    Adapter,
    Bytes,
    Construct,
    FormatField,
    Int8ul,
    Int16ul,
    Int32ul,
    Renamed,
    Struct,
    ValidationError,
)

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


#: The byte order every field of the protocol uses (little-endian).
_LITTLE_ENDIAN = "<"


class FixedLayout:
    """A declaration of fixed-size numbers and byte strings only, read as one ``struct``.

    The ``struct`` format is derived from the construct declaration (each
    ``FormatField`` gives its code, each ``Bytes(n)`` gives ``ns``), so the
    declaration stays the one source of the layout; this only reads it
    faster than construct can. ``unpack`` gives a named tuple of the fields.

    Raises (``__init__``):
        TypeError: the declaration has a field of another kind.
    """

    def __init__(self, declaration: Struct, name: str) -> None:
        names: list[str] = []
        codes = [_LITTLE_ENDIAN]
        #: (position, length) of each byte string: ``struct`` would pad or cut one.
        self._byte_strings: list[tuple[int, int]] = []
        for field in declaration.subcons:
            inner = field.subcon if isinstance(field, Renamed) else field
            if isinstance(inner, FormatField) and inner.fmtstr.startswith(_LITTLE_ENDIAN):
                codes.append(inner.fmtstr[len(_LITTLE_ENDIAN):])
            elif isinstance(inner, Bytes) and isinstance(inner.length, int):
                self._byte_strings.append((len(names), inner.length))
                codes.append(f"{inner.length}s")
            else:
                raise TypeError(f"{name}: {field!r} is not a fixed-size number or byte string")
            names.append(field.name)
        self._struct = struct.Struct("".join(codes))
        self._fields: Any = namedtuple(name, names)  # type: ignore[misc]
        self.size = self._struct.size

    def unpack(self, raw: bytes) -> Any:
        """The fields of exactly ``size`` bytes, as a named tuple.

        Raises:
            struct.error: ``raw`` is not ``size`` bytes.
        """
        return self._fields._make(self._struct.unpack(raw))

    def pack(self, *values: Any) -> bytes:
        """The bytes of the fields, given in declaration order.

        Raises:
            struct.error: a value does not fit its field (a number out of
                range, a byte string of another length).
        """
        for position, length in self._byte_strings:
            if len(values[position]) != length:
                raise struct.error(f"{self._fields.__name__}: a field of {length} bytes"
                                   f" given {len(values[position])}")
        return self._struct.pack(*values)


#: The headers as the connections parse and build them.
REQUEST_HEADER = FixedLayout(RequestHeader, "RequestHeaderFields")
RESPONSE_HEADER = FixedLayout(ResponseHeader, "ResponseHeaderFields")
