"""Messages written by hand from the tables of docs/PROTOCOL.md and docs/EDITIONS.md.

Nothing here uses protocol/: tests that check the code against the tables
build their bytes with these, so that a mistake in a construct declaration
cannot hide itself.
"""

from __future__ import annotations

NAME_FIELD = 255
VERSION = 3


def u16(value: int) -> bytes:
    return value.to_bytes(2, "little")


def u32(value: int) -> bytes:
    return value.to_bytes(4, "little")


def name(text: bytes) -> bytes:
    """A 255-byte string field: the text, a NUL, zero fill."""
    return text + bytes(NAME_FIELD - len(text))


def request(code: int, payload: bytes, client_id: bytes = bytes(16)) -> bytes:
    """client_id(16) version(1) code(2) payload_size(4), then the payload."""
    return client_id + bytes([VERSION]) + u16(code) + u32(len(payload)) + payload


def response(code: int, payload: bytes, version: int = VERSION) -> bytes:
    """version(1) code(2) payload_size(4), then the payload."""
    return bytes([version]) + u16(code) + u32(len(payload)) + payload
