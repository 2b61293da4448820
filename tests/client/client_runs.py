"""The client run in process by its tests: its --timeout, and what a run left.

The ``run_client`` fixture (tests/client/conftest.py) and the tests that run
``main`` themselves share these; a test imports them from here, never from
conftest (several tests/*/conftest.py exist: ``from conftest import`` is
ambiguous when the whole suite is collected).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Short enough that a broken test fails fast; a later --timeout wins.
TIMEOUT = "10"


@dataclass
class Run:
    """What one in-process run of the client left."""

    code: int
    out: str
    err: str
