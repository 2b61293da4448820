"""Typed messages: one frozen dataclass per request and response.

Requests are nouns (``Register``), responses are facts (``Registered``). An
828 packet is received as ``FilePacketStarted``, any number of
``FileContent`` chunks and ``FilePacketEnded``, so that a packet of any size
streams through; it is sent as one ``SendFilePacket``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Union

from .codes import (
    CLIENT_ID_SIZE,
    ENCRYPTED_AES_KEY_SIZE,
    MAX_UINT16,
    MAX_UINT32,
    PUBLIC_KEY_SIZE,
    RequestCode,
    ResponseCode,
)
from .errors import LocalProtocolError
from .names import NameField, is_valid_client_name

__all__ = [
    "Acknowledged",
    "ConnectionClosed",
    "CrcAbort",
    "CrcOk",
    "CrcRetry",
    "Event",
    "FileContent",
    "FilePacketEnded",
    "FilePacketStarted",
    "FileReceived",
    "GeneralError",
    "PublicKeyReceived",
    "Reconnect",
    "ReconnectRefused",
    "Reconnected",
    "Register",
    "Registered",
    "RegistrationFailed",
    "Request",
    "Response",
    "SendFilePacket",
    "SendPublicKey",
    "UnknownResponse",
]


def _check_size(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise LocalProtocolError(f"{name} must be {size} bytes, got {len(value)}")


def _check_range(name: str, value: int, maximum: int) -> None:
    if not 0 <= value <= maximum:
        raise LocalProtocolError(f"{name} must be within 0..{maximum}, got {value}")


def _check_client_name(name: str) -> None:
    # Not errors="replace": it would turn "é" into a printable "?".
    if not (
        isinstance(name, str)
        and name.isascii()
        and is_valid_client_name(name.encode("ascii"))
    ):
        raise LocalProtocolError(f"not a valid client name: {name!r}")


def _as_name_field(value: NameField | bytes | str) -> NameField:
    return value if isinstance(value, NameField) else NameField.from_text(value)


@dataclass(frozen=True)
class _WithClientId:
    client_id: bytes

    def __post_init__(self) -> None:
        _check_size("client_id", self.client_id, CLIENT_ID_SIZE)


# -- requests ----------------------------------------------------------------


@dataclass(frozen=True)
class Register(_WithClientId):
    """825: register a new client name (the header's client id is ignored)."""

    code: ClassVar = RequestCode.REGISTER
    name: str

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_client_name(self.name)


@dataclass(frozen=True)
class SendPublicKey(_WithClientId):
    """826: the client's RSA public key, 160 bytes of X.509 DER."""

    code: ClassVar = RequestCode.SEND_PUBLIC_KEY
    name: str
    public_key: bytes

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_client_name(self.name)
        _check_size("public_key", self.public_key, PUBLIC_KEY_SIZE)


@dataclass(frozen=True)
class Reconnect(_WithClientId):
    """827: a known client asks for a fresh AES key."""

    code: ClassVar = RequestCode.RECONNECT
    name: str

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_client_name(self.name)


@dataclass(frozen=True)
class _FilePacketFields(_WithClientId):
    content_size: int
    #: None for a file sent in one request, which does not say it.
    orig_file_size: int | None
    packet_number: int
    total_packets: int
    file_name: NameField

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_range("content_size", self.content_size, MAX_UINT32)
        if self.orig_file_size is not None:
            _check_range("orig_file_size", self.orig_file_size, MAX_UINT32)
        _check_range("packet_number", self.packet_number, MAX_UINT16)
        _check_range("total_packets", self.total_packets, MAX_UINT16)
        object.__setattr__(self, "file_name", _as_name_field(self.file_name))


@dataclass(frozen=True)
class FilePacketStarted(_FilePacketFields):
    """828 received: the packet's fixed fields; its content follows."""

    code: ClassVar = RequestCode.SEND_FILE
    bytes_in_packet: int = 0


@dataclass(frozen=True)
class FileContent:
    """A piece of the current 828 packet's content, as it arrived.

    ``data`` may be a view of the receive buffer, valid until more is read.
    """

    data: bytes | bytearray | memoryview


@dataclass(frozen=True)
class FilePacketEnded:
    """The current 828 packet's content is complete."""


@dataclass(frozen=True)
class SendFilePacket(_FilePacketFields):
    """828 to send: the fixed fields and this packet's content."""

    code: ClassVar = RequestCode.SEND_FILE
    content: bytes | bytearray | memoryview = field(default=b"", repr=False)


@dataclass(frozen=True)
class _FileNameRequest(_WithClientId):
    file_name: NameField

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "file_name", _as_name_field(self.file_name))


@dataclass(frozen=True)
class CrcOk(_FileNameRequest):
    """900: the client's cksum matched the server's."""

    code: ClassVar = RequestCode.CRC_OK


@dataclass(frozen=True)
class CrcRetry(_FileNameRequest):
    """901: the cksum did not match; the file is sent again."""

    code: ClassVar = RequestCode.CRC_RETRY


@dataclass(frozen=True)
class CrcAbort(_FileNameRequest):
    """902: the cksum did not match for the last time; the client gives up."""

    code: ClassVar = RequestCode.CRC_ABORT


# -- responses ---------------------------------------------------------------


@dataclass(frozen=True)
class Registered(_WithClientId):
    """1600: the name is registered under this new client id."""

    code: ClassVar = ResponseCode.REGISTERED


@dataclass(frozen=True)
class RegistrationFailed:
    """1601: the name is taken or malformed."""

    code: ClassVar = ResponseCode.REGISTRATION_FAILED


@dataclass(frozen=True)
class _WithEncryptedKey(_WithClientId):
    encrypted_aes_key: bytes

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_size("encrypted_aes_key", self.encrypted_aes_key, ENCRYPTED_AES_KEY_SIZE)


@dataclass(frozen=True)
class PublicKeyReceived(_WithEncryptedKey):
    """1602: the public key is stored; here is an AES key encrypted under it."""

    code: ClassVar = ResponseCode.PUBLIC_KEY_RECEIVED


@dataclass(frozen=True)
class FileReceived(_WithClientId):
    """1603: the whole file arrived; its plaintext has this cksum."""

    code: ClassVar = ResponseCode.FILE_RECEIVED
    content_size: int
    file_name: NameField
    cksum: int

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_range("content_size", self.content_size, MAX_UINT32)
        _check_range("cksum", self.cksum, MAX_UINT32)
        object.__setattr__(self, "file_name", _as_name_field(self.file_name))


@dataclass(frozen=True)
class Acknowledged(_WithClientId):
    """1604: answer to 900 and 902 (and to a 901 not followed by a resend)."""

    code: ClassVar = ResponseCode.ACKNOWLEDGED


@dataclass(frozen=True)
class Reconnected(_WithEncryptedKey):
    """1605: welcome back; here is a fresh AES key encrypted under your key."""

    code: ClassVar = ResponseCode.RECONNECTED


@dataclass(frozen=True)
class ReconnectRefused(_WithClientId):
    """1606: unknown client or no public key; register again."""

    code: ClassVar = ResponseCode.RECONNECT_REFUSED


@dataclass(frozen=True)
class GeneralError:
    """1607: the server could not honour the request."""

    code: ClassVar = ResponseCode.GENERAL_ERROR


@dataclass(frozen=True)
class UnknownResponse:
    """An answer of a code the client's edition lacks, skipped: read whole, or its header alone."""

    code: int
    payload_size: int


@dataclass(frozen=True)
class ConnectionClosed:
    """The peer closed its side at a message boundary."""


Request = Union[
    Register, SendPublicKey, Reconnect, SendFilePacket, CrcOk, CrcRetry, CrcAbort
]
Response = Union[
    Registered,
    RegistrationFailed,
    PublicKeyReceived,
    FileReceived,
    Acknowledged,
    Reconnected,
    ReconnectRefused,
    GeneralError,
]
Event = Union[
    Register,
    SendPublicKey,
    Reconnect,
    FilePacketStarted,
    FileContent,
    FilePacketEnded,
    CrcOk,
    CrcRetry,
    CrcAbort,
    Response,
    ConnectionClosed,
]
