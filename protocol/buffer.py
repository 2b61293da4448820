"""A receive buffer: bytes go in as they arrive, whole units come out."""

from __future__ import annotations


class ReceiveBuffer:
    """Bytes received and not yet consumed, plus whether the peer sent EOF."""

    def __init__(self) -> None:
        self._data = bytearray()
        self.eof = False

    def __len__(self) -> int:
        return len(self._data)

    def append(self, data: bytes) -> None:
        """Store received bytes; an empty ``data`` marks the end of the stream."""
        if data:
            self._data += data
        else:
            self.eof = True

    def maybe_extract_exactly(self, count: int) -> bytes | None:
        """Take ``count`` bytes, or None while fewer have arrived."""
        if len(self._data) < count:
            return None
        return self.extract_at_most(count)

    def extract_at_most(self, count: int) -> bytes:
        """Take up to ``count`` bytes (possibly none)."""
        if count >= len(self._data):
            chunk = bytes(self._data)  # one copy, not a slice and then a copy
            self._data.clear()
            return chunk
        with memoryview(self._data) as view:
            chunk = bytes(view[:count])
        del self._data[:count]
        return chunk

    def discard_at_most(self, count: int) -> int:
        """Drop up to ``count`` bytes; return how many were dropped."""
        dropped = min(count, len(self._data))
        del self._data[:dropped]
        return dropped
