"""cipherdrop's sans-I/O implementation of the encrypted file-drop protocol v3.

No sockets, selectors, databases or files here: bytes in, typed events out,
events in, bytes out, for the wire contract of protocol version 3.

``__version__`` is cipherdrop's release, the one source of it: setup.cfg reads
it (``attr:``) and both programs print it for ``--version``.
"""

from .cksum import Cksum, cksum
from .codes import VERSION, RequestCode, ResponseCode
from .connection import NEED_DATA, ClientConnection, ServerConnection
from .errors import CryptoError, LocalProtocolError, ProtocolError, RemoteProtocolError
from .events import (
    Acknowledged,
    ConnectionClosed,
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
    SendFilePacket,
    SendPublicKey,
)
from .names import NameField

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "NEED_DATA",
    "VERSION",
    "Acknowledged",
    "Cksum",
    "ClientConnection",
    "ConnectionClosed",
    "CrcAbort",
    "CrcOk",
    "CrcRetry",
    "CryptoError",
    "FileContent",
    "FilePacketEnded",
    "FilePacketStarted",
    "FileReceived",
    "GeneralError",
    "LocalProtocolError",
    "NameField",
    "ProtocolError",
    "PublicKeyReceived",
    "Reconnect",
    "ReconnectRefused",
    "Reconnected",
    "Register",
    "Registered",
    "RegistrationFailed",
    "RemoteProtocolError",
    "RequestCode",
    "ResponseCode",
    "SendFilePacket",
    "SendPublicKey",
    "ServerConnection",
    "cksum",
]
