"""Stored names: a wire file name made into one plain file name, safe anywhere.

A wire file name is never joined to a path (``Path(base) / "/etc/passwd"`` is
``/etc/passwd``): :func:`stored_name` turns it into one plain file name that
is safe on Linux and Windows, and the metadata store keeps the name as sent.
Pure functions: nothing here touches a disk.
"""

from __future__ import annotations

import hashlib
import unicodedata
from typing import Iterable

from protocol.printable import quoted

from ..errors import StorageFault

_ESCAPE = "%"
#: Characters Windows forbids in names, both separators, and the escape char.
_FORBIDDEN = set('<>:"/\\|?*') | {_ESCAPE, "~"}
#: Marks a name shortened with a digest; escaped everywhere else.
_DIGEST_MARK = "~"
#: Longest stored name in UTF-8 bytes (ext4 and NTFS allow 255).
MAX_STORED_NAME_BYTES = 200
_DIGEST_HEX_DIGITS = 32
#: Hex digits of the suffix that sets apart names equal but for case.
_CASE_SUFFIX_HEX_DIGITS = 8
#: The name for a name with no text (unreachable over the wire: 1607 first).
EMPTY_NAME = "%empty"
_WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{dev}{n}" for dev in ("COM", "LPT") for n in list("123456789") + ["¹", "²", "³"]]
)

def _escape_char(char: str) -> str:
    if "\udc80" <= char <= "\udcff":  # an undecodable byte (surrogateescape)
        return f"{_ESCAPE}{ord(char) - 0xDC00:02X}"
    return "".join(f"{_ESCAPE}{byte:02X}" for byte in char.encode("utf-8"))


def _is_safe_char(char: str) -> bool:
    return char.isprintable() and char not in _FORBIDDEN and not (
        "\udc80" <= char <= "\udcff"
    )


def stored_name(name: bytes) -> str:
    """A file name safe on Linux and Windows, derived from a wire name.

    Injective: every unsafe character becomes ``%XX`` (its UTF-8 bytes, or the
    raw byte where the name is not UTF-8) and ``%`` itself is escaped, so two
    wire names never share a stored name. Also escaped: a leading dot (``.``,
    ``..``, hidden and temp names), trailing dots and spaces (Windows drops
    them), and the first letter of a reserved device name (``CON``,
    ``nul.txt``, ``COM1``). Names too long for a file system keep a prefix and
    a SHA-256 digest of the wire name.
    """
    if not name:
        return EMPTY_NAME
    text = name.decode("utf-8", errors="surrogateescape")
    chars = [char if _is_safe_char(char) else _escape_char(char) for char in text]
    if chars[0] == ".":
        chars[0] = _escape_char(".")
    for index in range(len(chars) - 1, -1, -1):
        if chars[index] not in (".", " "):
            break
        chars[index] = _escape_char(chars[index])
    stem = "".join(chars).split(".", 1)[0].rstrip(" ").upper()
    if stem in _WINDOWS_DEVICES:
        chars[0] = _escape_char(chars[0])
    result = "".join(chars)
    if len(result.encode("utf-8")) > MAX_STORED_NAME_BYTES:
        digest = hashlib.sha256(name).hexdigest()[:_DIGEST_HEX_DIGITS]
        room = MAX_STORED_NAME_BYTES - len(_DIGEST_MARK) - len(digest)
        result = f"{_cut(result, room)}{_DIGEST_MARK}{digest}"
    return result


def _cut(text: str, room: int) -> str:
    """At most ``room`` UTF-8 bytes of ``text``, never an escape cut in half.

    A cut "%4" would read as a different name.
    """
    prefix = text.encode("utf-8")[:room].decode("utf-8", errors="ignore")
    cut = prefix.rfind(_ESCAPE, max(0, len(prefix) - 2))
    return prefix[:cut] if cut != -1 else prefix


def case_key(stored: str) -> str:
    """What a case-insensitive file system (NTFS, APFS) sees of a stored name."""
    return unicodedata.normalize("NFD", stored).casefold()


def unique_stored_name(name: bytes, taken: Iterable[str]) -> str:
    """:func:`stored_name`, set apart from ``taken`` even where case is ignored.

    ``a.txt`` and ``A.txt`` are two files on Linux but one on NTFS or APFS: a
    name whose :func:`case_key` is taken gets ``~`` and a digest of the wire
    name before its extension (``A~1f2e3d4c.txt``). A wire name never yields
    a ``~`` of its own (it is escaped), so the suffix cannot meet a plain
    stored name.
    """
    candidate = stored_name(name)
    folded = {case_key(other) for other in taken}
    if case_key(candidate) not in folded:
        return candidate
    stem, dot, extension = candidate.rpartition(".")
    if not stem:
        stem, dot, extension = candidate, "", ""
    digest = hashlib.sha256(name).hexdigest()
    for attempt in range(len(digest) - _CASE_SUFFIX_HEX_DIGITS + 1):
        mark = digest[attempt : attempt + _CASE_SUFFIX_HEX_DIGITS]
        suffix = f"{_DIGEST_MARK}{mark}{dot}{extension}"
        room = MAX_STORED_NAME_BYTES - len(suffix.encode("utf-8"))
        unique = f"{_cut(stem, room)}{suffix}"
        if case_key(unique) not in folded:
            return unique
    raise StorageFault(f"no stored name left for {quoted(name)}")
