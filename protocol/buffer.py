"""A receive buffer: bytes go in as they arrive, whole units come out."""

from __future__ import annotations

from typing import Union

#: What a socket receive or a slice of it gives: any of these is accepted.
BytesLike = Union[bytes, bytearray, memoryview]


class ReceiveBuffer:
    """Bytes received and not yet consumed, plus whether the peer sent EOF.

    Bytes are copied in (``append``) or lent (``lend``): lent bytes stay in
    the caller's buffer, and units taken from them are views of it, without
    a copy, until ``keep`` copies what is left. A server whose one receive
    buffer serves every connection lends each chunk and calls ``keep`` before
    it reuses the buffer: a large file's content then goes from the socket to
    the decryptor without being copied.
    """

    def __init__(self) -> None:
        self._data = bytearray()
        self._lent = memoryview(b"")
        self.eof = False

    def __len__(self) -> int:
        return len(self._data) + len(self._lent)

    def append(self, data: BytesLike) -> None:
        """Store received bytes; an empty ``data`` marks the end of the stream."""
        if not data:
            self.eof = True
            return
        self.keep()
        self._data += data

    def lend(self, data: BytesLike) -> None:
        """Like :meth:`append`, but without a copy: ``data`` must stay as it is
        until :meth:`keep` is called."""
        if not data:
            self.eof = True
        elif self._data or self._lent:
            self.append(data)
        else:
            self._lent = memoryview(data)

    def keep(self) -> None:
        """Copy what is left of lent bytes: the lender may reuse its buffer."""
        if self._lent:
            self._data += self._lent
            self._lent = memoryview(b"")

    def peek(self, count: int) -> bytes | None:
        """The first ``count`` bytes without taking them, or None while fewer have arrived."""
        if len(self) < count:
            return None
        if self._lent:
            return bytes(self._lent[:count])
        return bytes(self._data[:count])

    def maybe_extract_exactly(self, count: int) -> bytes | None:
        """Take ``count`` bytes, or None while fewer have arrived."""
        if len(self) < count:
            return None
        return bytes(self.extract_at_most(count))

    def extract_at_most(self, count: int) -> BytesLike:
        """Take up to ``count`` bytes (possibly none).

        From lent bytes the result is a view of the lender's buffer (valid
        until it is reused). Taking everything there is hands over the buffer
        itself, without a copy; the result is then a bytearray that the buffer
        no longer uses.
        """
        if self._lent:
            chunk, self._lent = self._lent[:count], self._lent[count:]
            return chunk
        if count >= len(self._data):
            whole, self._data = self._data, bytearray()
            return whole
        with memoryview(self._data) as view:
            copied = bytes(view[:count])
        del self._data[:count]
        return copied

    def discard_at_most(self, count: int) -> int:
        """Drop up to ``count`` bytes; return how many were dropped."""
        if self._lent:
            dropped = min(count, len(self._lent))
            self._lent = self._lent[dropped:]
            return dropped
        dropped = min(count, len(self._data))
        del self._data[:dropped]
        return dropped
