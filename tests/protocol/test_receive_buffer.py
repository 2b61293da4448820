"""ReceiveBuffer: bytes appended are copied; bytes lent are used in place until keep()."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.buffer import ReceiveBuffer


def test_lent_bytes_come_out_as_views_of_the_lender():
    lender = bytearray(b"abcdefgh")
    buffer = ReceiveBuffer()
    buffer.lend(memoryview(lender))
    chunk = buffer.extract_at_most(5)
    assert isinstance(chunk, memoryview) and chunk.obj is lender  # no copy
    assert bytes(chunk) == b"abcde" and len(buffer) == 3


def test_keep_copies_what_is_unread_before_the_lender_reuses_its_buffer():
    lender = bytearray(b"header--content")
    buffer = ReceiveBuffer()
    buffer.lend(memoryview(lender))
    assert buffer.maybe_extract_exactly(8) == b"header--"
    buffer.keep()
    lender[:] = b"X" * len(lender)  # another connection's receive
    assert bytes(buffer.extract_at_most(100)) == b"content"


def test_without_keep_the_lender_s_changes_show():
    # The contract the server relies on, seen from the other side: lent
    # bytes are not copied, so keep() is what makes reuse safe.
    lender = bytearray(b"abcd")
    buffer = ReceiveBuffer()
    buffer.lend(memoryview(lender))
    lender[:] = b"wxyz"
    assert buffer.peek(4) == b"wxyz"


def test_lending_to_a_buffer_that_holds_bytes_appends_a_copy():
    buffer = ReceiveBuffer()
    buffer.append(b"ab")
    lender = bytearray(b"cd")
    buffer.lend(memoryview(lender))
    lender[:] = b"zz"
    assert bytes(buffer.extract_at_most(10)) == b"abcd"


def test_an_empty_loan_is_eof():
    buffer = ReceiveBuffer()
    buffer.lend(b"")
    assert buffer.eof and len(buffer) == 0


@settings(max_examples=200, deadline=None)
@given(
    pieces=st.lists(st.binary(max_size=64), max_size=12),
    steps=st.lists(st.tuples(st.sampled_from(["extract", "exactly", "discard", "peek"]),
                             st.integers(0, 80)), max_size=40),
    lend=st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_lent_or_appended_the_stream_is_the_same(pieces, steps, lend):
    # Two buffers take the same pieces, one copying, one borrowing a buffer
    # that is overwritten after each keep(); every read gives the same bytes.
    copying, borrowing = ReceiveBuffer(), ReceiveBuffer()
    lender = bytearray(64)
    queue = list(pieces)
    for index, (action, count) in enumerate(steps):
        if queue and index % 3 == 0:
            piece = queue.pop(0)
            copying.append(piece)
            if lend[len(queue) % len(lend)] and piece:
                lender[: len(piece)] = piece
                borrowing.lend(memoryview(lender)[: len(piece)])
            else:
                borrowing.append(piece)
        results = []
        for buffer in (copying, borrowing):
            if action == "extract":
                results.append(bytes(buffer.extract_at_most(count)))
            elif action == "exactly":
                results.append(buffer.maybe_extract_exactly(count))
            elif action == "discard":
                results.append(buffer.discard_at_most(count))
            else:
                results.append(buffer.peek(count))
        assert results[0] == results[1]
        assert len(copying) == len(borrowing)
        borrowing.keep()
        lender[:] = os.urandom(len(lender))  # the lender reuses its buffer
