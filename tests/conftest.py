"""Fixtures shared by every test suite: the real server as a subprocess, and the
real services the backend tests use (a throwaway PostgreSQL, a one-node Ceph
radosgw), each started once per run.

``server`` is a fresh ``python -m server`` on 127.0.0.1 with its own data
folder, stopped (SIGTERM) after the test; ``server_factory(*flags,
data_dir=None)`` starts more, with flags (e.g. ``"--idle-timeout", "1"``).
See tests/helpers.py for the test client.

A test marked ``needed_in_ci`` may skip where a tool it needs is missing
(systemd-analyze, git), but not in CI: .ci/run sets ``CIPHERDROP_CI``, and
there its skip is a failure.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from backends.postgres import METADATA_BACKENDS
from helpers import ServerProcess, start_server

#: Set by .ci/run: a skip of a test marked ``needed_in_ci`` fails the run.
CI_ENV = "CIPHERDROP_CI"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """In CI, turn the skip of a test CI needs into a failure that says why it skipped."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get(CI_ENV) and item.get_closest_marker("needed_in_ci"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, but CI needs it: {reason}"


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


@pytest.fixture(scope="session")
def postgres_cluster():
    """A throwaway PostgreSQL cluster for the whole run (tests/backends/postgres.py).

    Skips, with the install line, where the binaries are missing; the tests
    using it carry ``needed_in_ci``, so that CI fails instead.
    """
    from backends.postgres import start_or_skip

    cluster = start_or_skip()
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster) -> str:
    """The URL of a fresh, empty database in the session's cluster."""
    return postgres_cluster.database()


@pytest.fixture(params=METADATA_BACKENDS)
def backend_server(request, server_factory) -> ServerProcess:
    """A real server, once with its metadata in SQLite (the default), once in PostgreSQL
    (a fresh database of the session's throwaway cluster: ``--metadata postgresql://``)."""
    if request.param == "sqlite":
        return server_factory()
    return server_factory("--metadata", request.getfixturevalue("postgres_url"))


_buckets = itertools.count()


@pytest.fixture(scope="session")
def ceph_gateway(tmp_path_factory):
    """A one-node Ceph cluster with radosgw for the whole run (tests/backends/ceph.py).

    Skips, with the install line, where Ceph's binaries are missing (the
    tests using it carry ``needed_in_ci``).
    """
    from backends.ceph import CephGateway, skip_reason

    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    gateway = CephGateway(tmp_path_factory.mktemp("ceph")).start()
    yield gateway
    gateway.stop()


@pytest.fixture
def s3_environment(ceph_gateway, monkeypatch) -> dict[str, str]:
    """The gateway's keys in this process's AWS environment variables (the only way the store
    takes them), and no metadata lookup."""
    environment = ceph_gateway.environment()
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return environment


@pytest.fixture
def s3_url(ceph_gateway, s3_environment) -> str:
    """A fresh bucket's ``--blobs`` URL (prefix ``node/``, path-style, the gateway's endpoint)."""
    bucket = f"cipherdrop-test-{next(_buckets)}"
    ceph_gateway.client().create_bucket(Bucket=bucket)
    return f"s3://{bucket}/node?endpoint={ceph_gateway.endpoint}&addressing=path"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, postgres_cluster, ceph_gateway):
    """Two cipherdrop nodes behind HAProxy, on the session's PostgreSQL and radosgw, and a
    spare node HAProxy knows in maintenance (tests/backends/cluster.py), for the whole run.

    A test that kills, adds or restarts a piece leaves the cluster as it found it.
    Skips, with the install line, where HAProxy is missing (``needed_in_ci``).
    """
    from backends.cluster import Cluster
    from backends.haproxy import INSTALL_LINE, haproxy_binary

    if haproxy_binary() is None:
        pytest.skip(f"HAProxy is not installed: {INSTALL_LINE}")
    started = Cluster.start(tmp_path_factory.mktemp("cluster"), postgres=postgres_cluster,
                            gateway=ceph_gateway, spare_nodes=1)
    yield started
    started.stop()
