"""protocol.printable: the one form in which a person reads a name (issue 22, point 3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.printable import escape_controls, printable, quoted

#: Every character a terminal or a log reader acts on, or that reorders what follows.
DANGEROUS = [chr(point) for point in (*range(0x20), 0x7F, *range(0x80, 0xA0))] + [
    "\u202e", "\u202a", "\u2066", "\u2067", "\u2068", "\u2069", "\u200e", "\u200f",
    "\u200b", "\ufeff", "\u2028", "\u2029", "\u00a0",
]
_ESCAPE_WIDTHS = {"x": 2, "u": 4, "U": 8}
_SURROGATE_ESCAPE_BASE = 0xDC00


def _read_back(shown: str) -> str:
    """The text a printable form stands for (undecodable bytes as surrogateescape's stand-ins)."""
    out = []
    index = 0
    while index < len(shown):
        if shown[index] != "\\":
            out.append(shown[index])
            index += 1
            continue
        kind = shown[index + 1]
        if kind == "\\":
            out.append("\\")
            index += 2
            continue
        width = _ESCAPE_WIDTHS[kind]
        point = int(shown[index + 2:index + 2 + width], 16)
        if kind == "x" and point >= 0x80:  # a byte that is not UTF-8
            point += _SURROGATE_ESCAPE_BASE
        out.append(chr(point))
        index += 2 + width
    return "".join(out)


@pytest.mark.parametrize("char", DANGEROUS, ids=lambda c: f"U+{ord(c):04X}")
def test_no_dangerous_character_survives(char):
    text = f"a{char}b"
    for shown in (printable(text), printable(text.encode()), quoted(text), escape_controls(text)):
        assert char not in shown
        assert shown.isprintable() and shown.isascii()


def test_the_forms_of_each_kind():
    assert printable("plain name.txt") == "plain name.txt"
    assert printable(b"esc\x1b[31mred") == "esc\\x1b[31mred"
    assert printable("evil\u202etxt.exe") == "evil\\u202etxt.exe"
    assert printable("line\nfeed\rbell\x07") == "line\\x0afeed\\x0dbell\\x07"
    assert printable("del\x7f c1\x9b") == "del\\x7f c1\\u009b"
    assert printable(b"latin1 caf\xe9") == "latin1 caf\\xe9"  # not UTF-8: the byte
    assert printable("caf\xe9") == "caf\xe9"  # UTF-8 é: a letter, shown as is
    assert printable("back\\slash") == "back\\\\slash"
    assert printable("\U000e0001") == "\\U000e0001"  # a format character outside the BMP


def test_a_byte_and_a_character_print_differently():
    assert printable("\\x1b") != printable("\x1b")  # a backslash cannot forge an escape
    assert printable(b"\\xe9") != printable(b"\xe9")
    assert printable(b"\x85") != printable("\x85".encode())  # a raw byte, the C1 control NEL


def test_quoted_escapes_the_quote():
    assert quoted("it's") == "'it\\'s'"
    assert quoted(b"a\x1bb") == "'a\\x1bb'"


def test_escape_controls_leaves_printable_messages_alone():
    message = "127.0.0.1 828 alice/00 -> 1603: 'a\\x1b.txt' stored"
    assert escape_controls(message) == message
    assert escape_controls("two\nlines") == "two\\x0alines"


@given(st.binary(max_size=64))
def test_printable_is_one_to_one_on_bytes(data):
    shown = printable(data)
    assert shown.isprintable()
    assert _read_back(shown).encode("utf-8", "surrogateescape") == data


@given(st.text(max_size=64))
def test_printable_is_one_to_one_on_text(text):
    shown = printable(text)
    assert shown.isprintable()
    if not any(0xDC80 <= ord(char) < 0xDD00 for char in text):  # those stand for bytes
        assert _read_back(shown) == text
