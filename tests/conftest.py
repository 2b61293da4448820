"""Fixtures shared by every test suite: the real server as a subprocess.

``server`` is a fresh ``python -m server`` on 127.0.0.1 with its own data
folder, stopped (SIGTERM) after the test; ``server_factory(*flags,
data_dir=None)`` starts more, with flags (e.g. ``"--idle-timeout", "1"``).
See tests/helpers.py for the test client.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import ServerProcess, start_server


@pytest.fixture
def server_factory(tmp_path: Path):
    """Start real servers: ``server_factory(*flags, data_dir=None)``."""
    started: list[ServerProcess] = []
    count = iter(range(1000))

    def start(*flags: str, data_dir: Path | None = None, **kwargs) -> ServerProcess:
        folder = data_dir or tmp_path / f"server{next(count)}"
        server = start_server(folder, *flags, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.stop()


@pytest.fixture
def server(server_factory) -> ServerProcess:
    """A real server with default limits and an empty data folder."""
    return server_factory()


#: The words every skip for a missing system package carries: the install line.
INSTALL_HINT = "apt-get install"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (``CI`` set), a test skipped for a missing package fails instead.

    A developer without the package sees the skip and its install line;
    CI installs every package (.ci/run), so such a skip there means a test
    that did not run.
    """
    outcome = yield
    report = outcome.get_result()
    if not (os.environ.get("CI") and report.skipped and isinstance(report.longrepr, tuple)):
        return
    reason = report.longrepr[2]
    if INSTALL_HINT in reason:
        report.outcome = "failed"
        report.longrepr = f"CI skipped a test for a missing package: {reason}"
