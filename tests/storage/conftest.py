"""The object store the S3 tests use: one Ceph radosgw per test session (tests/backends/ceph.py).

``ceph_gateway`` starts it once, in a temp folder, on 127.0.0.1, and stops
it at the session's end; without Ceph's binaries it skips with the install
line (the tests that use it are marked ``needed_in_ci``). ``s3_url`` gives
each test a fresh bucket, as ``--blobs`` names it, with the gateway's keys
in the AWS environment variables (the only way the store takes them).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from backends.ceph import CephGateway, skip_reason

_buckets = itertools.count()


@pytest.fixture(scope="session")
def ceph_gateway(tmp_path_factory) -> Iterator[CephGateway]:
    """A one-node Ceph cluster with radosgw, for the whole session."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    gateway = CephGateway(tmp_path_factory.mktemp("ceph")).start()
    yield gateway
    gateway.stop()


@pytest.fixture
def s3_environment(ceph_gateway, monkeypatch) -> dict[str, str]:
    """The gateway's keys in this process's AWS environment variables (and no metadata lookup)."""
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
