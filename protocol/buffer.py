"""A receive buffer: bytes go in as they arrive, whole units come out."""

from __future__ import annotations

from typing import Union

#: What a socket receive or a slice of it gives: any of these is accepted.
BytesLike = Union[bytes, bytearray, memoryview]


class ReceiveBuffer:
    """Bytes received and not yet consumed, plus whether the peer sent EOF."""

    def __init__(self) -> None:
        self._data = bytearray()
        self.eof = False

    def __len__(self) -> int:
        return len(self._data)

    def append(self, data: BytesLike) -> None:
        """Store received bytes; an empty ``data`` marks the end of the stream."""
        if data:
            self._data += data
        else:
            self.eof = True

    def peek(self, count: int) -> bytes | None:
        """The first ``count`` bytes without taking them, or None while fewer have arrived."""
        if len(self._data) < count:
            return None
        return bytes(self._data[:count])

    def maybe_extract_exactly(self, count: int) -> bytes | None:
        """Take ``count`` bytes, or None while fewer have arrived."""
        if len(self._data) < count:
            return None
        return bytes(self.extract_at_most(count))

    def extract_at_most(self, count: int) -> bytes | bytearray:
        """Take up to ``count`` bytes (possibly none).

        Taking everything there is hands over the buffer itself, without a
        copy (the usual case of a large 828 content: each received chunk is
        copied once, into here); the result is then a bytearray that the
        buffer no longer uses.
        """
        if count >= len(self._data):
            whole, self._data = self._data, bytearray()
            return whole
        with memoryview(self._data) as view:
            chunk = bytes(view[:count])
        del self._data[:count]
        return chunk

    def discard_at_most(self, count: int) -> int:
        """Drop up to ``count`` bytes; return how many were dropped."""
        dropped = min(count, len(self._data))
        del self._data[:dropped]
        return dropped
