"""The compiled codecs (protocol.wire.compiled) read and write exactly what the declarations say."""

from __future__ import annotations

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


def _parsed(struct, raw: bytes):
    """The named fields parsed, or the kind of error."""
    try:
        container = struct.parse(raw)
    except ConstructError as exc:
        return type(exc)
    return {key: value for key, value in container.items() if not key.startswith("_")}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_compiled_parse_and_build_agree_with_the_declaration(name, data):
    struct = LAYOUTS[name]
    size = struct.sizeof()
    # Mostly names with a NUL early, sometimes none (a malformed field).
    raw = data.draw(st.binary(min_size=size, max_size=size))
    if data.draw(st.booleans()):
        raw = bytes(b if b else 1 for b in raw)
    else:
        cut = data.draw(st.integers(0, max(0, size - 1)))
        raw = raw[:cut] + bytes(size - cut)
    codec = wire.compiled(struct)
    assert _parsed(codec, raw) == _parsed(struct, raw)
    values = _parsed(struct, raw)
    if isinstance(values, dict):
        assert codec.build(values) == struct.build(values)


def test_every_declaration_compiles_once():
    for struct in LAYOUTS.values():
        assert wire.compiled(struct) is wire.compiled(struct)
    assert wire.REQUEST_HEADER is wire.compiled(wire.RequestHeader)
