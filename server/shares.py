"""What the connections of one address may have done in one loop round (its share).

A connection's turn is at most ``MAX_REQUESTS_PER_TURN`` requests
(server/channel.py); that bounds one connection, not one address. Many
connections of one address would fill every round with their work, and
another client's answer waits for the end of its round. So the connections
of one address share, per round:

* ``requests_per_address_per_round`` requests;
* ``durable_files_per_address_per_round`` files made durable: a complete
  upload sealed (its blob made durable; a first upload's publish follows at
  the round's end) or a confirmed version published. On a local disk these
  cost milliseconds each (fsyncs), in the loop thread, where a request of
  another kind costs microseconds.

Before each request a connection asks the loop
(:meth:`server.loop.Server.may_take_request`), which asks
:meth:`RoundShares.has_left`; when its address has used either share, the
connection is *deferred*: neither read nor stepped until a later round, which
resumes the deferred connections before the others (round robin,
:meth:`server.loop.Server.run_once`).

"An address" here is an address group (``Peer.group``, server/peer.py): the
connections of one IPv6 /64 share one share, whatever addresses they use.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Used:
    requests: int = 0
    durable_files: int = 0


class RoundShares:
    """What each address used in the current round, against its shares (0: no share)."""

    def __init__(self, requests: int, durable_files: int) -> None:
        self._requests = requests
        self._durable_files = durable_files
        self._used: dict[str, _Used] = {}

    def new_round(self) -> None:
        """A new loop round: every address has its whole shares again."""
        self._used.clear()

    def has_left(self, address: str) -> bool:
        """Whether ``address`` may have another request handled this round."""
        used = self._used.get(address)
        if used is None:
            return True
        return not (
            (self._requests and used.requests >= self._requests)
            or (self._durable_files and used.durable_files >= self._durable_files)
        )

    def request_handled(self, address: str) -> None:
        """A request of ``address`` was handled."""
        if self._requests:
            self._used.setdefault(address, _Used()).requests += 1

    def file_made_durable(self, address: str) -> None:
        """A file of ``address`` was synced (and is installed, or kept until its 900)."""
        if self._durable_files:
            self._used.setdefault(address, _Used()).durable_files += 1
