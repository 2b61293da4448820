"""The typed errors of the protocol package.

::

    ProtocolError
    ├── RemoteProtocolError     the peer broke the contract (an answer, a close flag)
    │   └── ProxyHeaderError    no valid PROXY header where one must be (closed, unanswered)
    ├── LocalProtocolError      we tried to build what the protocol cannot carry
    └── CryptoError             a key or a ciphertext that does not decrypt
"""

from __future__ import annotations

from .codes import ResponseCode


class ProtocolError(Exception):
    """Base class of every error the protocol package raises on purpose."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the contract.

    ``response_code`` is what a server answers (1607 unless the protocol names
    another code, such as 1601 for a bad name in 825); ``close`` says whether
    the byte stream can no longer be trusted and the connection must end;
    ``answer`` False ends it without an answer (the bytes are the tail of a
    request already answered, docs/EDITIONS.md variant 3).
    """

    def __init__(
        self,
        message: str,
        *,
        response_code: ResponseCode = ResponseCode.GENERAL_ERROR,
        close: bool = True,
        answer: bool = True,
    ) -> None:
        super().__init__(message)
        self.response_code = response_code
        self.close = close
        self.answer = answer


class LocalProtocolError(ProtocolError):
    """We tried to build something the protocol cannot carry (our own bug)."""


class CryptoError(ProtocolError):
    """A key could not be imported or a ciphertext could not be decrypted.

    Every decryption failure raises this same error with the same text, so that
    a peer cannot tell a bad padding from any other failure (docs/HOSTILE.md D3).
    """


class ProxyHeaderError(RemoteProtocolError):
    """A connection from a PROXY protocol sender began with no valid PROXY header.

    The specification (HAProxy's proxy-protocol.txt) says such a connection
    is dropped at once, unanswered: nothing is known of whom it would answer.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, close=True, answer=False)
