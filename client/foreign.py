"""Telling a server of another protocol by the first bytes it answers.

Pointed at the wrong port, the client meets servers that speak first, or
answer its binary request in their own protocol: an SSH server's banner
(``SSH-2.0-…``, RFC 4253 section 4.2), an HTTP server's status line
(``HTTP/1.1 400 …``), a TLS server's alert or handshake record (RFC 8446
section 5.1: content type 21 or 22, then version 3.x). Read as a cipherdrop
answer (the 7-byte header: version, code, payload size), those bytes are a
code no edition has, or a payload size the client would wait for until its
time-out. :func:`recognise` looks at the first bytes of a connection as they
arrive, before they are parsed, and says what they are instead; a first answer
whose code no edition answers with is foreign too.

A server that says nothing cannot be told apart from a slow one: Python's
``http.server`` waits for a line end the protocol never sends, and the
client waits its time-out (:data:`SILENCE_HINT` says what that may mean).
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.editions import EDITIONS
from protocol.wire import RESPONSE_HEADER, RESPONSE_HEADER_SIZE

#: TLS record content types a server answers garbage with (RFC 8446 5.1).
_TLS_ALERT, _TLS_HANDSHAKE = 21, 22
#: TLS records carry version 3.x (SSL 3.0 to TLS 1.3's legacy 3.3), x up to 4.
_TLS_MAJOR, _TLS_MINORS = 3, range(5)

#: How many first bytes of a connection tell (a whole response header).
TELLING_SIZE = RESPONSE_HEADER_SIZE
#: Every code some edition answers with (protocol/editions.py).
ANSWER_CODES = frozenset(message.code for edition in EDITIONS for message in edition.responses)
#: Added to a time-out of the first answer on a connection.
SILENCE_HINT = (
    "if it is not a cipherdrop server, an HTTP server for one, it may be waiting for"
    " something the protocol never sends: check the port"
)


@dataclass(frozen=True)
class Signature:
    """How another protocol's server begins its answer."""

    prefix: bytes
    server: str


SIGNATURES: tuple[Signature, ...] = (
    Signature(b"SSH-", "an SSH server"),
    Signature(b"HTTP/", "an HTTP server"),
    *(
        Signature(bytes((kind, _TLS_MAJOR, minor)), "a TLS server")
        for kind in (_TLS_ALERT, _TLS_HANDSHAKE)
        for minor in _TLS_MINORS
    ),
)


def recognise(first: bytes) -> str | None:
    """Why the first bytes of a connection cannot be a cipherdrop answer, or None.

    None also while they are too few to tell (a signature's beginning).
    """
    for signature in SIGNATURES:
        if first.startswith(signature.prefix):
            return f"it answered like {signature.server}"
        if signature.prefix.startswith(first):
            return None  # more bytes will tell
    if len(first) < TELLING_SIZE:
        return None
    code = RESPONSE_HEADER.unpack(first[:TELLING_SIZE]).code
    if code not in ANSWER_CODES:
        return f"its first answer has code {code}, which no edition of the protocol has"
    return None
