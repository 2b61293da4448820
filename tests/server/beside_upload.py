"""Another client's round trips while one upload runs on a slow store (test_blob_port.py,
test_folder_writes.py): a baseline taken before it, then one round trip after the other
for as long as the upload lasts, each timed (an 826 reconnect: it waits for the loop).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from helpers import RawClient, make_identity, reconnect, upload

#: Round trips in the baseline; as many at least must come while the upload runs.
BASELINE_REQUESTS = 5
#: An answer this part of a pause late waited for it.
SLOW_ANSWER = 0.9
#: An answer this many times the baseline's slowest waited for something.
BASELINE_FACTOR = 10


def round_trip(client: RawClient, identity) -> float:
    """Seconds one 826 takes to be answered."""
    started = time.monotonic()
    reconnect(client, identity)
    return time.monotonic() - started


@dataclass
class BesideUpload:
    """What :func:`round_trips_beside_an_upload` saw."""

    #: The upload's answer.
    answer: object
    #: Seconds each baseline round trip took, before the upload began.
    baseline: list[float]
    #: Each round trip while the upload ran: when it began (monotonic), seconds it took.
    during: list[tuple[float, float]]
    #: Seconds the whole upload took.
    took: float

    @property
    def round_trips(self) -> list[float]:
        """Seconds each round trip took while the upload ran."""
        return [took for _, took in self.during]

    def slow(self, pause: float) -> float:
        """Seconds from which a round trip waited for a pause of ``pause`` seconds (or for
        something else far beyond the baseline)."""
        return max(SLOW_ANSWER * pause, BASELINE_FACTOR * max(self.baseline))

    def waited(self, pause: float) -> list[float]:
        """The round trips made while the upload ran that waited for such a pause."""
        return [took for took in self.round_trips if took >= self.slow(pause)]


def round_trips_beside_an_upload(
    address: tuple[str, int], name: str, data: bytes, packet: int
) -> BesideUpload:
    """Upload ``data`` as ``name`` in ``packet``-byte packets from one connection while
    another makes round trips, a baseline first (see the module doc)."""
    with RawClient(address) as other, RawClient(address) as uploader:
        other_identity = make_identity(other)
        uploader_identity = make_identity(uploader)
        baseline = [round_trip(other, other_identity) for _ in range(BASELINE_REQUESTS)]
        answer: list = []
        uploading = threading.Thread(
            target=lambda: answer.append(upload(uploader, uploader_identity, name, data, packet))
        )
        started = time.monotonic()
        uploading.start()
        during = []
        while uploading.is_alive():
            began = time.monotonic()
            during.append((began, round_trip(other, other_identity)))
        uploading.join()
        took = time.monotonic() - started
    (received,) = answer
    return BesideUpload(received, baseline, during, took)
