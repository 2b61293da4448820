"""The compiled codecs (protocol.wire.compiled) read and write exactly what the declarations say."""

from __future__ import annotations

import struct

import pytest
from construct import ConstructError
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import wire
from protocol.editions import EDITIONS

LAYOUTS = {
    f"{edition.name} {message.code} {message.event.__name__}": message.payload
    for edition in EDITIONS
    for message in (*edition.requests, *edition.responses)
}
LAYOUTS["request header"] = wire.RequestHeader
LAYOUTS["response header"] = wire.ResponseHeader


def _parsed(declaration, raw: bytes):
    """The named fields parsed, or the kind of error."""
    try:
        container = declaration.parse(raw)
    except ConstructError as exc:
        return type(exc)
    return {key: value for key, value in container.items() if not key.startswith("_")}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_compiled_parse_and_build_agree_with_the_declaration(name, data):
    declaration = LAYOUTS[name]
    size = declaration.sizeof()
    # Mostly names with a NUL early, sometimes none (a malformed field).
    raw = data.draw(st.binary(min_size=size, max_size=size))
    if data.draw(st.booleans()):
        raw = bytes(b if b else 1 for b in raw)
    else:
        cut = data.draw(st.integers(0, max(0, size - 1)))
        raw = raw[:cut] + bytes(size - cut)
    codec = wire.compiled(declaration)
    assert _parsed(codec, raw) == _parsed(declaration, raw)
    values = _parsed(declaration, raw)
    if isinstance(values, dict):
        assert codec.build(values) == declaration.build(values)


def test_every_declaration_compiles_once():
    for declaration in LAYOUTS.values():
        assert wire.compiled(declaration) is wire.compiled(declaration)


HEADERS = [(wire.RequestHeader, wire.REQUEST_HEADER), (wire.ResponseHeader, wire.RESPONSE_HEADER)]


@pytest.mark.parametrize("declaration, layout", HEADERS, ids=["request", "response"])
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_a_header_layout_reads_and_writes_what_its_declaration_does(declaration, layout, data):
    assert layout.size == declaration.sizeof()
    raw = data.draw(st.binary(min_size=layout.size, max_size=layout.size))
    fields = layout.unpack(raw)
    assert fields._asdict() == _parsed(declaration, raw)
    assert layout.pack(*fields) == raw == declaration.build(fields._asdict())


def test_a_header_layout_refuses_what_its_declaration_refuses():
    with pytest.raises(struct.error):
        wire.REQUEST_HEADER.pack(b"short id", 3, 825, 0)  # construct: 16 bytes or nothing
    with pytest.raises(struct.error):
        wire.RESPONSE_HEADER.pack(3, 1600, 1 << 32)  # payload_size is 4 bytes
    with pytest.raises(struct.error):
        wire.REQUEST_HEADER.unpack(bytes(wire.REQUEST_HEADER.size - 1))


def test_only_fixed_numbers_and_byte_strings_have_a_layout():
    with pytest.raises(TypeError):
        wire.FixedLayout(wire.NamePayload, "NameFields")  # a name field is parsed, not sliced
