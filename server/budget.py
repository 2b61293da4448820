"""Failed decryptions as a budget: each one answers a guess about a key.

The protocol has no MAC: whoever can send 828s under a client's key (someone
who knows the client's name and id can get one with 827, bound to his own
address) can send random ciphertexts until one happens to decrypt, about one
in 256 for a one-block file, and then confirm it with 900. Counting the
failures makes that guessing slow:

* after ``per_key`` failures under one AES key, the key is dead: every
  request that needs it gets 1607 until a new 826/827 issues another;
* a client may fail ``per_hour`` times in any hour, across keys and
  addresses; past that, its uploads are refused until the hour of the oldest
  failure is over, and the server logs a warning (a likely attack).

The counts are the coordination's (server/storage/coordination.py): in
memory for a single server (a restart clears them; an outsider cannot make
the server restart), in the shared database for several nodes, so that a
guesser spreading his 828s over nodes and addresses meets one budget.
Refusing the victim's uploads for an hour is the price: an outsider who
knows name and id can already deny service with 827.
"""

from __future__ import annotations

import logging
from typing import Callable

from .errors import StorageFault
from .metrics import NO_METRICS, Metrics
from .storage.coordination import Coordination, FailureCounts

log = logging.getLogger(__name__)

#: The per-client window of failures.
HOUR = 3600.0


class DecryptionBudget:
    """Failed decryptions per key and per client in the last hour (the coordination's counts)."""

    def __init__(
        self, per_key: int, per_hour: int, counts: Coordination, metrics: Metrics = NO_METRICS,
        read_along: Callable[[bytes, bytes], FailureCounts | None] = lambda *_: None,
    ) -> None:
        """``read_along``: the counts read with the client's row in this request, if they
        were (server/reads.py), asked before the coordination."""
        self._metrics = metrics
        self._read_along = read_along
        self._per_key = per_key
        self._per_hour = per_hour
        self._counts = counts
        #: The counts :meth:`key_dead` read last, for the :meth:`uploads_blocked`
        #: of the same first packet (one read of the counts per request).
        self._read: tuple[bytes, bytes, FailureCounts] | None = None

    def key_dead(self, client_id: bytes, aes_key: bytes) -> bool:
        """Whether this key of the client failed too often to be used again.

        Asked once per request that needs the key: True refuses it (counted).

        Raises:
            StorageFault: the counts cannot be read.
        """
        counts = self._counts_of(client_id, aes_key)
        self._read = (client_id, aes_key, counts)
        dead = counts.under_key >= self._per_key
        if dead:
            self._metrics.budget_refusal("key")
        return dead

    def uploads_blocked(self, client_id: bytes, aes_key: bytes) -> bool:
        """Whether the client failed too often in the last hour to upload now.

        Asked once per upload, after :meth:`key_dead` in the same request,
        whose reading it takes (once) rather than read again: True refuses it (counted).

        Raises:
            StorageFault: the counts cannot be read.
        """
        read, self._read = self._read, None
        if read is not None and read[:2] == (client_id, aes_key):
            counts = read[2]
        else:
            counts = self._counts_of(client_id, aes_key)
        blocked = counts.in_window >= self._per_hour
        if blocked:
            self._metrics.budget_refusal("hour")
        return blocked

    def _counts_of(self, client_id: bytes, aes_key: bytes) -> FailureCounts:
        """The counts read with the client's row, or else the coordination's."""
        counts = self._read_along(client_id, aes_key)
        if counts is None:
            counts = self._counts.decrypt_failures(client_id, aes_key, HOUR)
        return counts

    def record(self, client_id: bytes, aes_key: bytes, address: str) -> None:
        """Count one failed decryption under ``aes_key`` (from ``address``); log at a limit.

        A new key's first failure starts its count again (the hourly one stays).
        """
        self._read = None
        try:
            counts = self._counts.note_decrypt_failure(client_id, aes_key, HOUR)
        except StorageFault as exc:
            log.error(
                "%s: client %s: a failed decryption could not be counted: %s",
                address, client_id.hex(), exc,
            )
            return
        if counts.in_window == self._per_hour:
            log.warning(
                "%s: client %s: %d failed decryptions within an hour, from any address:"
                " a likely padding-guessing attack; its uploads are refused for the hour",
                address, client_id.hex(), counts.in_window,
            )
        elif counts.under_key == self._per_key:
            log.warning(
                "%s: client %s: %d failed decryptions under one key; the key is dead until"
                " 826/827", address, client_id.hex(), counts.under_key,
            )
