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

The counts live in memory (a restart clears them; an outsider cannot make the
server restart). Refusing the victim's uploads for an hour is the price: an
outsider who knows name and id can already deny service with 827.
"""

from __future__ import annotations

import collections
import logging
from typing import Callable

from .metrics import NO_METRICS, Metrics

log = logging.getLogger(__name__)

#: The per-client window of failures.
HOUR = 3600.0


class DecryptionBudget:
    """Failed decryptions per key and per client in the last hour."""

    def __init__(
        self, per_key: int, per_hour: int, clock: Callable[[], float],
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self._metrics = metrics
        self._per_key = per_key
        self._per_hour = per_hour
        self._clock = clock
        self._by_key: dict[bytes, tuple[bytes, int]] = {}
        self._by_client: dict[bytes, collections.deque[float]] = {}

    def key_dead(self, client_id: bytes, aes_key: bytes) -> bool:
        """Whether this key of the client failed too often to be used again.

        Asked once per request that needs the key: True refuses it (counted).
        """
        key, count = self._by_key.get(client_id, (b"", 0))
        dead = key == aes_key and count >= self._per_key
        if dead:
            self._metrics.budget_refusal("key")
        return dead

    def uploads_blocked(self, client_id: bytes) -> bool:
        """Whether the client failed too often in the last hour to upload now.

        Asked once per upload: True refuses it (counted).
        """
        blocked = len(self._recent(client_id)) >= self._per_hour
        if blocked:
            self._metrics.budget_refusal("hour")
        return blocked

    def record(self, client_id: bytes, aes_key: bytes, address: str) -> None:
        """Count one failed decryption under ``aes_key`` (from ``address``); log at a limit."""
        key, count = self._by_key.get(client_id, (aes_key, 0))
        count = count + 1 if key == aes_key else 1
        self._by_key[client_id] = (aes_key, count)
        recent = self._recent(client_id)
        recent.append(self._clock())
        self._by_client[client_id] = recent
        if len(recent) == self._per_hour:
            log.warning(
                "%s: client %s: %d failed decryptions within an hour, from any address:"
                " a likely padding-guessing attack; its uploads are refused for the hour",
                address, client_id.hex(), len(recent),
            )
        elif count == self._per_key:
            log.warning(
                "%s: client %s: %d failed decryptions under one key; the key is dead until"
                " 826/827", address, client_id.hex(), count,
            )

    def forget_key(self, client_id: bytes) -> None:
        """A new key was issued: its count starts at zero (the hourly one stays)."""
        self._by_key.pop(client_id, None)

    def _recent(self, client_id: bytes) -> collections.deque[float]:
        times = self._by_client.get(client_id)
        if times is None:
            return collections.deque()
        now = self._clock()
        while times and now - times[0] >= HOUR:
            times.popleft()
        if not times:
            del self._by_client[client_id]
        return times
