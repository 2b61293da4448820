"""Request and response codes, the protocol version and the field sizes.

Everything here is a fact of docs/PROTOCOL.md. Sizes of whole messages are not
written down here: :mod:`protocol.wire` derives them from the declarations.
"""

from __future__ import annotations

import enum

#: Version byte of every response (docs/PROTOCOL.md, "Framing"). Requests may carry
#: any version; it is ignored (docs/HOSTILE.md decision 4).
VERSION = 3

CLIENT_ID_SIZE = 16
NAME_FIELD_SIZE = 255
PUBLIC_KEY_SIZE = 160
AES_KEY_SIZE = 32
#: AES-256 (v3, 2024A) and AES-128 (the 2022 and 2023 editions).
AES_KEY_SIZES = (32, 16)
AES_BLOCK_SIZE = 16
RSA_KEY_BITS = 1024
#: RSA-OAEP output for a 1024-bit modulus.
ENCRYPTED_AES_KEY_SIZE = RSA_KEY_BITS // 8

#: Longest text that fits a name field with its NUL terminator.
MAX_WIRE_NAME_LENGTH = NAME_FIELD_SIZE - 1
#: Largest value of a 4-byte size field (payload_size, content_size, ...).
MAX_UINT32 = 2**32 - 1
#: Largest value of a 2-byte packet counter.
MAX_UINT16 = 2**16 - 1


class RequestCode(enum.IntEnum):
    """Codes a client sends."""

    REGISTER = 825
    SEND_PUBLIC_KEY = 826
    RECONNECT = 827
    SEND_FILE = 828
    CRC_OK = 900
    CRC_RETRY = 901
    CRC_ABORT = 902


#: docs/PROTOCOL.md variant 7, the connection model: a connection whose first
#: request is one of these is *per-request* (each request on a connection of
#: its own, an answer or a close after each); any other first request starts
#: a connection that carries a whole session. Server and client read it here.
PER_REQUEST_OPENERS = frozenset(
    {RequestCode.SEND_FILE, RequestCode.CRC_OK, RequestCode.CRC_RETRY, RequestCode.CRC_ABORT}
)


class ResponseCode(enum.IntEnum):
    """Codes a server sends."""

    REGISTERED = 1600
    REGISTRATION_FAILED = 1601
    PUBLIC_KEY_RECEIVED = 1602
    FILE_RECEIVED = 1603
    ACKNOWLEDGED = 1604
    RECONNECTED = 1605
    RECONNECT_REFUSED = 1606
    GENERAL_ERROR = 1607
