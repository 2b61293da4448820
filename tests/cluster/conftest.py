"""The cluster tests' fixtures: the session's cluster (tests/conftest.py ``cluster``) as
the ``backend_server`` the edition flows of tests/server/ speak to."""

from __future__ import annotations

import pytest


@pytest.fixture
def backend_server(cluster):
    """The session's cluster behind HAProxy, seen as one server (``Cluster.as_server``)."""
    return cluster.as_server()
