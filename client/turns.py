"""What several connections of one client share: the AES key, and who may stream.

docs/PROTOCOL.md variant 7: keys belong to the client id, not to a
connection, so the connections of ``--jobs`` all use the key their client got
last, and a new key (827) drops the uploads that wait for their verdict
(docs/KEY_BINDING.md, rule 4): a new key is asked for only while no other
file waits for its verdict or streams (``before_new_key``).

Our server serialises a client's uploads per file name only (docs/HOSTILE.md
D7), so the connections stream their files at once, each its own CBC stream.
A server that streams one file of a client at a time refuses a first packet
while another streams (1607): the first such refusal (``refused_beside``)
makes the connections take turns for the rest of the run, one streaming
(``sending``) while the others read answers and confirm files.

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
        self._streaming: set[int] = set()  # the threads streaming now
        self._one_at_a_time = False
        self._awaiting_verdict = 0

    @contextlib.contextmanager
    def sending(self) -> Iterator[None]:
        """Stream one upload attempt of a file (waiting for the turn, once serialised)."""
        with self._changed:
            self._changed.wait_for(lambda: not (self._one_at_a_time and self._streaming))
            self._streaming.add(threading.get_ident())
        try:
            yield
        finally:
            with self._changed:
                self._streaming.discard(threading.get_ident())
                self._changed.notify_all()

    def refused_beside(self) -> bool:
        """An attempt was refused while another connection streamed.

        Returns whether this is the first such refusal: the connections take
        turns from now on (the server streams one file of a client at a time).
        """
        with self._changed:
            if self._one_at_a_time or len(self._streaming) <= 1:
                return False
            self._one_at_a_time = True
            return True

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
        """Wait until no file waits for its verdict and no other connection
        streams one (a new key would drop it)."""
        me = threading.get_ident()
        with self._changed:
            self._changed.wait_for(
                lambda: not self._awaiting_verdict and not (self._streaming - {me})
            )


class SoloTurns(Turns):
    """One connection: never a turn to wait for."""

    @contextlib.contextmanager
    def sending(self) -> Iterator[None]:
        """Nothing to wait for."""
        yield

    def refused_beside(self) -> bool:
        """Alone: no one beside."""
        return False

    def verdict_begins(self) -> None:
        """Nothing to count."""

    def verdict_ends(self) -> None:
        """Nothing to count."""

    def before_new_key(self) -> None:
        """Nothing to wait for."""


SOLO = SoloTurns()
