"""The fixed 255-byte string field: its padding rules and its validation.

docs/PROTOCOL.md, "Framing" and variant 1: the text, a NUL, then zero fill; some
peers pad on the left (NULs first, then the text, no terminator) and some leave
garbage after the first NUL. The text is what lies between the leading NULs and
the next NUL. A field with no NUL at all is malformed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .codes import MAX_WIRE_NAME_LENGTH, NAME_FIELD_SIZE
from .errors import LocalProtocolError
from .printable import printable

NUL = b"\0"
SPACE = b" "
_PRINTABLE_ASCII = range(0x20, 0x7F)


@dataclass(frozen=True)
class NameField:
    """A received string field: its text and the 255 bytes it came in.

    ``raw`` is kept because a 1603 reply echoes the file name field byte for
    byte (variant 1); ``text`` is what the field means.
    """

    text: bytes
    raw: bytes = field(repr=False)

    @classmethod
    def parse(cls, raw: bytes) -> NameField | None:
        """Read a field; None if it holds no NUL and so no defined text."""
        raw = bytes(raw)
        if NUL not in raw:
            return None
        return cls(text=raw.lstrip(NUL).split(NUL, 1)[0], raw=raw)

    @classmethod
    def from_text(cls, text: bytes | str) -> NameField:
        """Build the canonical field: text, NUL terminator, zero fill.

        Raises:
            LocalProtocolError: the text has a NUL or does not fit.
        """
        if isinstance(text, str):
            text = text.encode("utf-8")
        if NUL in text:
            raise LocalProtocolError("a name cannot contain a NUL byte")
        if len(text) > MAX_WIRE_NAME_LENGTH:
            raise LocalProtocolError(
                f"a name is at most {MAX_WIRE_NAME_LENGTH} bytes, got {len(text)}"
            )
        return cls(text=text, raw=text.ljust(NAME_FIELD_SIZE, NUL))

    def __str__(self) -> str:
        """The text in the printable form (a name from a peer never reaches a log raw)."""
        return printable(self.text)


def is_valid_client_name(text: bytes) -> bool:
    """Whether text is a client name: 1 to 254 printable ASCII characters.

    No space may lead or end it (nor may it be only spaces): ``x``, ``x `` and
    `` x`` would be three clients that print the same.
    """
    return (
        0 < len(text) <= MAX_WIRE_NAME_LENGTH
        and all(byte in _PRINTABLE_ASCII for byte in text)
        and text.strip(SPACE) == text
    )
