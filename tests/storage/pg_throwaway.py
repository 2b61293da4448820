"""A throwaway PostgreSQL cluster for one test session: ``postgres_conninfo`` (a fixture).

Started from the installed binaries (``initdb --no-sync -A trust``, then
``pg_ctl start``) on 127.0.0.1 with a free port, in a temporary folder;
stopped at the end of the session. PostgreSQL refuses to run as root: as
root, the binaries run as the ``postgres`` user (Debian's package makes it). Without the binaries, or without psycopg,
the tests that use it skip, saying how to install them (they carry
``needed_in_ci``: CI fails on such a skip). Each test gets a database of its own.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

#: Where Debian's postgresql package puts the binaries (also on PATH via /usr/local/bin).
BIN_DIRS = (Path("/usr/lib/postgresql/15/bin"),)
INSTALL = "apt-get install postgresql; pip install 'cipherdrop[postgres]'"
HOST = "127.0.0.1"
START_TIMEOUT = 60
#: Who runs the cluster when the tests run as root.
ROOTLESS_USER = "postgres"


def _binary(name: str) -> str | None:
    for folder in BIN_DIRS:
        if (folder / name).exists():
            return str(folder / name)
    return shutil.which(name)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _run_as() -> str | None:
    """The user to run the binaries as: None for the tests' own, unless root.

    Skips: root, and no ``postgres`` user to run them as.
    """
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(ROOTLESS_USER)
    except KeyError:
        pytest.skip(f"PostgreSQL will not run as root, and there is no {ROOTLESS_USER} user")
    return ROOTLESS_USER


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[str]:
    """The conninfo of a running throwaway cluster's ``postgres`` database."""
    psycopg = pytest.importorskip("psycopg", reason=f"psycopg missing: {INSTALL}")
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip(f"PostgreSQL binaries missing: {INSTALL}")
    user = _run_as()
    folder = Path(tempfile.mkdtemp(prefix="cipherdrop-postgres-"))
    if user is not None:
        shutil.chown(folder, user=user)
    data = folder / "data"
    port = _free_port()
    subprocess.run(
        [initdb, "--no-sync", "-A", "trust", "-U", "postgres", "-D", str(data)],
        check=True, capture_output=True, user=user,
    )
    options = f"-h {HOST} -p {port} -k {folder} -c fsync=off"
    subprocess.run(
        [pg_ctl, "start", "-w", "-t", str(START_TIMEOUT), "-D", str(data),
         "-l", str(folder / "log"), "-o", options],
        check=True, capture_output=True, user=user,
    )
    conninfo = f"host={HOST} port={port} user=postgres dbname=postgres"
    try:
        psycopg.connect(conninfo).close()
        yield conninfo
    finally:
        subprocess.run(
            [pg_ctl, "stop", "-m", "immediate", "-D", str(data)], capture_output=True, user=user
        )
        shutil.rmtree(folder, ignore_errors=True)


_numbers = itertools.count()


@pytest.fixture
def postgres_conninfo(postgres_cluster: str) -> str:
    """The conninfo of a fresh database in the session's cluster."""
    import psycopg

    name = f"test_{next(_numbers)}"
    with psycopg.connect(postgres_cluster, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return postgres_cluster.replace("dbname=postgres", f"dbname={name}")
