"""A file's packets made by three stages at once: read (+ cksum), encrypt, send.

The serial generators of :mod:`client.packets` read, encrypt and hand over one
packet at a time, so the socket idles while a packet is encrypted and the
cipher idles while it is sent. Here a reader thread fills plaintext buffers
(and updates the cksum), an encryptor thread turns them into ciphertext
buffers, and the caller's thread sends them. PyCryptodome, file reads and
socket sends release the GIL, so the stages overlap.

Memory stays bounded whatever the file size: ``RING_DEPTH`` plaintext and
``RING_DEPTH`` ciphertext buffers of one packet each, reused for every packet.
The bytes are those of the serial generators, packet for packet
(tests/client/test_client_pipeline.py compares them).

An error in a stage (the file shrank, a read failed) reaches the caller as the
same typed error the serial generator raises, when it asks for the packet the
error stopped. Leaving the ``with`` block (at the end, or on any error of the
caller's, a network failure say) stops both threads and waits for them: no
thread outlives the upload.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Iterator, Union

from protocol import Cksum
from protocol.codes import AES_BLOCK_SIZE
from protocol.crypto import CbcEncryptor

from .errors import FileReadError
from .packets import FilePlan, Readable, fill

#: Buffers per stage: one being worked on while the other waits for the next
#: stage. Two plaintext and two ciphertext packets are in memory at most.
RING_DEPTH = 2


class _Stop:
    """Put in a queue to wake a stage that must end (the upload was left)."""


STOP = _Stop()


@dataclass(frozen=True)
class _Plain:
    """A plaintext buffer filled by the reader."""

    index: int
    count: int
    last: bool


@dataclass(frozen=True)
class Packet:
    """One packet's ciphertext, ready to send, and the plaintext bytes it carries.

    ``content`` is valid until the next packet is asked for (its buffer is then
    reused): send it, or copy it.
    """

    content: memoryview
    plain_count: int
    #: The ring buffer to give back once sent; None for a packet of its own.
    index: int | None = None


_Failure = Union[BaseException, _Stop]


class PipelinedPackets:
    """The packets of one file, read and encrypted ahead by two threads.

    ``per_packet`` encrypts each packet as its own CBC stream (variant 6);
    otherwise the file is one CBC stream cut into packets.
    """

    def __init__(
        self,
        source: Readable,
        plan: FilePlan,
        aes_key: bytes,
        checksum: Cksum,
        *,
        per_packet: bool = False,
    ) -> None:
        self._source = source
        self._plan = plan
        self._aes_key = aes_key
        self._checksum = checksum
        self._per_packet = per_packet
        size = plan.packet_size
        # A ciphertext buffer holds a packet and its padding block (per-packet).
        self._plain = [memoryview(bytearray(size)) for _ in range(RING_DEPTH)]
        self._cipher = [memoryview(bytearray(size + AES_BLOCK_SIZE)) for _ in range(RING_DEPTH)]
        self._free_plain: queue.SimpleQueue[int | _Stop] = queue.SimpleQueue()
        self._free_cipher: queue.SimpleQueue[int | _Stop] = queue.SimpleQueue()
        self._filled: queue.SimpleQueue[_Plain | _Failure] = queue.SimpleQueue()
        self._ready: queue.SimpleQueue[Packet | _Failure | None] = queue.SimpleQueue()
        for index in range(RING_DEPTH):
            self._free_plain.put(index)
            self._free_cipher.put(index)
        self._threads = [
            threading.Thread(
                target=self._guard, args=(self._read, self._filled), name="client-read", daemon=True
            ),
            threading.Thread(
                target=self._guard,
                args=(self._encrypt, self._ready),
                name="client-encrypt",
                daemon=True,
            ),
        ]

    def __enter__(self) -> PipelinedPackets:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop both stages and wait for them to end."""
        for waiting in (self._free_plain, self._free_cipher):
            waiting.put(STOP)
        self._filled.put(STOP)
        for thread in self._threads:
            if thread.is_alive():
                thread.join()

    def __iter__(self) -> Iterator[Packet]:
        """Each packet in order; the one before is given back when the next is asked for.

        Raises:
            FileReadError: the file could not be read, or shrank, while sent.
        """
        while True:
            item = self._ready.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, _Stop):
                return
            yield item
            if item.index is not None:
                self._free_cipher.put(item.index)

    # -- the stages ------------------------------------------------------------

    def _guard(self, stage, report: queue.SimpleQueue) -> None:
        """Run a stage; hand what it raises to the next stage (``report``), in order."""
        try:
            stage()
        except OSError as exc:
            report.put(FileReadError(self._plan.path, f"cannot read: {exc.strerror}"))
        except BaseException as exc:  # re-raised in the caller's thread
            report.put(exc)

    def _read(self) -> None:
        """Fill plaintext buffers in order and sum them; the last one says so."""
        plan = self._plan
        size = plan.packet_size
        remaining = plan.orig_size
        while True:
            index = self._free_plain.get()
            if isinstance(index, _Stop):
                return
            count = min(size, remaining)
            chunk = self._plain[index][:count]
            if fill(self._source, chunk) < count:
                raise FileReadError(
                    plan.path,
                    f"the file shrank while being sent ({plan.orig_size - remaining}"
                    f" of {plan.orig_size} bytes read)",
                )
            remaining -= count
            self._checksum.update(chunk)
            self._filled.put(_Plain(index, count, last=not remaining))
            if not remaining:
                return

    def _encrypt(self) -> None:
        """Encrypt each filled buffer into a free ciphertext buffer, in order.

        A reader's error is passed on in its place, after the packets before it.
        """
        encryptor = CbcEncryptor(self._aes_key)
        size = self._plan.packet_size
        while True:
            plain = self._filled.get()
            if isinstance(plain, _Stop):
                return
            if isinstance(plain, BaseException):
                self._ready.put(plain)
                return
            index = self._free_cipher.get()
            if isinstance(index, _Stop):
                return
            if self._per_packet:
                encryptor = CbcEncryptor(self._aes_key)
            cipher = self._cipher[index]
            done = encryptor.update_into(self._plain[plain.index][: plain.count], cipher)
            self._free_plain.put(plain.index)
            if self._per_packet or plain.count < size:  # the padding block fits beside
                tail = encryptor.finalize()
                cipher[done : done + len(tail)] = tail
                done += len(tail)
            self._ready.put(Packet(cipher[:done], plain.count, index))
            if plain.last and not self._per_packet and plain.count == size:
                # A whole number of packets: the padding block goes alone.
                self._ready.put(Packet(memoryview(encryptor.finalize()), 0))
            if plain.last:
                self._ready.put(None)
                return
