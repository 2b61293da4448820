"""What several connections of one client share: the AES key, and whose turn it is.

docs/PROTOCOL.md variant 7: keys belong to the client id, not to a
connection, so the connections of ``--jobs`` all use the key their client got
last. The server serialises a client's uploads (docs/SECURITY.md, section 6):
a first packet while another upload of the client is streaming is refused, and
a new key (827) drops the uploads that wait for their verdict
(docs/KEY_BINDING.md, rule 4). So the connections take turns:

- one streams a file at a time, from its first packet (or its 901) to the
  1603 (``sending``);
- the others meanwhile read their answers, confirm (900/902) files already
  received, and wait for their turn;
- a new key is asked for only while no other file waits for its verdict
  (``before_new_key``, called with the turn held).

A lone client (``--jobs 1``) has no one to wait for: :data:`SOLO` turns cost
nothing.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator


class SharedKey:
    """The client's AES key, shared by every connection of the run."""

    def __init__(self) -> None:
        self.key: bytes | None = None


class Turns:
    """Whose turn it is to stream, and how many files wait for their verdict."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._streaming = False
        self._awaiting_verdict = 0

    @contextlib.contextmanager
    def sending(self) -> Iterator[None]:
        """Hold the turn to stream one upload attempt of a file."""
        with self._changed:
            self._changed.wait_for(lambda: not self._streaming)
            self._streaming = True
        try:
            yield
        finally:
            with self._changed:
                self._streaming = False
                self._changed.notify_all()

    def verdict_begins(self) -> None:
        """A file was received (1603); its 900 or 901 is still to come."""
        with self._changed:
            self._awaiting_verdict += 1

    def verdict_ends(self) -> None:
        """The file's verdict was given (or the attempt given up)."""
        with self._changed:
            self._awaiting_verdict -= 1
            self._changed.notify_all()

    def before_new_key(self) -> None:
        """Wait until no file waits for its verdict (a new key would drop it)."""
        with self._changed:
            self._changed.wait_for(lambda: not self._awaiting_verdict)


class SoloTurns(Turns):
    """One connection: never a turn to wait for."""

    @contextlib.contextmanager
    def sending(self) -> Iterator[None]:
        """Nothing to wait for."""
        yield

    def verdict_begins(self) -> None:
        """Nothing to count."""

    def verdict_ends(self) -> None:
        """Nothing to count."""

    def before_new_key(self) -> None:
        """Nothing to wait for."""


SOLO = SoloTurns()
