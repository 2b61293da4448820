"""A throwaway PostgreSQL cluster from the installed binaries, for tests and benchmarks.

``PostgresCluster.start()`` runs ``initdb --no-sync -A trust`` in a fresh
temporary folder and ``pg_ctl start`` on 127.0.0.1 with a free port (its
unix socket in the same folder); ``stop()`` stops it and deletes the folder.
``database()`` makes an empty database and returns its URL (no password:
``trust`` on the loopback); ``url(name, unix=True)`` is the same database
through the unix socket. As root (CI) the cluster runs as the ``postgres``
user, since PostgreSQL refuses to run as root.

:func:`stalled_backend` stops one backend process (SIGSTOP) for a test of what
the store does while its database does not answer; :func:`waiting_for_a_lock`
runs a call until its backend waits for a lock another transaction holds (one
node's call waiting for another node's round).

Without the binaries, :func:`find_binaries` returns None and the tests skip
with :data:`INSTALL_LINE` (CI installs them: .ci/run).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
from helpers import free_port
from timing_helpers import wait_until

#: The metadata backends a server test can be parametrized over (conftest's
#: ``backend_server``; a test module imports this, never conftest, which is ambiguous).
METADATA_BACKENDS = [
    "sqlite", pytest.param("postgresql", marks=pytest.mark.needed_in_ci),
]
#: How to get the binaries, for the skip message.
INSTALL_LINE = "apt-get install postgresql (Debian/Ubuntu; CI installs it: .ci/run)"
#: Where Debian puts them when they are not on PATH.
DEBIAN_BINARIES = "/usr/lib/postgresql/*/bin"
#: The user the cluster runs as when the tests run as root.
SERVICE_USER = "postgres"
SUPERUSER = "postgres"
LOOPBACK = "127.0.0.1"
#: pg_ctl's own limit on waiting for the server to start or stop, in seconds.
PG_CTL_WAIT = 60
#: Seconds between two ticks of the thread that runs beside a stalled backend.
STALL_TICK = 0.05
_names = itertools.count()


def find_binaries() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``, or None when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    for folder in sorted(glob.glob(DEBIAN_BINARIES), reverse=True):
        if (Path(folder) / "initdb").exists():
            return Path(folder)
    return None


def start_or_skip() -> PostgresCluster:
    """A started cluster; the calling test skips, saying how to install what is missing.

    Raises:
        pytest.skip.Exception: no binaries, or no psycopg.
    """
    import pytest

    if find_binaries() is None:
        pytest.skip(f"PostgreSQL is not installed: {INSTALL_LINE}")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install 'cipherdrop[postgres]'")
    return PostgresCluster.start()


def _run_as() -> dict:
    """subprocess arguments that drop root to the service user (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return {}
    return {"user": SERVICE_USER, "group": pwd.getpwnam(SERVICE_USER).pw_gid}


@dataclass
class PostgresCluster:
    """One running cluster (see the module doc)."""

    binaries: Path
    folder: Path
    port: int
    #: Databases made so far.
    databases: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, binaries: Path | None = None) -> PostgresCluster:
        """initdb and start a cluster; the caller stops it.

        Raises:
            RuntimeError: the binaries are missing, or initdb or pg_ctl failed (with their output).
        """
        binaries = binaries or find_binaries()
        if binaries is None:
            raise RuntimeError(f"PostgreSQL is not installed: {INSTALL_LINE}")
        folder = Path(tempfile.mkdtemp(prefix="cipherdrop-pg-"))
        if os.geteuid() == 0:
            account = pwd.getpwnam(SERVICE_USER)
            os.chown(folder, account.pw_uid, account.pw_gid)
        cluster = cls(binaries, folder, free_port(LOOPBACK))
        try:
            cluster._pg("initdb", "--no-sync", "-A", "trust", "-U", SUPERUSER, "-E", "UTF8",
                        "-D", str(cluster.data))
            cluster._start()
        except RuntimeError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return cluster

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    def _start(self) -> None:
        options = f"-c listen_addresses={LOOPBACK} -p {self.port} -k {self.folder} -c fsync=off"
        self._pg("pg_ctl", "start", "-w", "-t", str(PG_CTL_WAIT), "-D", str(self.data),
                 "-l", str(self.log), "-o", options)

    def _pg(self, program: str, *args: str) -> str:
        done = subprocess.run(
            [str(self.binaries / program), *args], capture_output=True, text=True,
            timeout=PG_CTL_WAIT * 2, **_run_as(),
        )
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    @property
    def socket_dir(self) -> Path:
        """The folder of the cluster's unix socket (``-k``: the cluster's own folder)."""
        return self.folder

    def url(self, database: str = SUPERUSER, unix: bool = False) -> str:
        """The URL of a database, as ``--metadata`` takes it: over TCP on the loopback,
        or with ``unix`` through the cluster's unix socket (libpq's ``host=FOLDER``)."""
        if unix:
            return (f"postgresql://{SUPERUSER}@/{database}"
                    f"?host={quote(str(self.socket_dir), safe='')}&port={self.port}")
        return f"postgresql://{SUPERUSER}@{LOOPBACK}:{self.port}/{database}"

    def database(self, name: str | None = None) -> str:
        """Make an empty database; its URL."""
        import psycopg

        name = name or f"test{next(_names)}"
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return self.url(name)

    def sql(self, statement: str, database: str = SUPERUSER) -> list[tuple]:
        """Run one statement as the superuser; its rows (none for a command)."""
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as admin:
            cursor = admin.execute(statement)
            return cursor.fetchall() if cursor.description else []

    def postmaster_pid(self) -> int:
        """The postmaster's process id (the first line of its postmaster.pid)."""
        return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])

    def backend_pids(self) -> list[int]:
        """The processes serving clients now (bench: their CPU time, from /proc)."""
        rows = self.sql(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'"
            " AND pid <> pg_backend_pid()"
        )
        return [row[0] for row in rows]

    def restart(self) -> None:
        """Stop (fast: connections are cut) and start again on the same port.

        With ``-l``: a server started without it keeps pg_ctl's output pipe open.
        """
        self._pg("pg_ctl", "restart", "-w", "-t", str(PG_CTL_WAIT), "-m", "fast",
                 "-D", str(self.data), "-l", str(self.log))

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The cluster stopped (fast: connections are cut) for a while: started again after."""
        self._pg("pg_ctl", "stop", "-w", "-t", str(PG_CTL_WAIT), "-m", "fast",
                 "-D", str(self.data))
        try:
            yield
        finally:
            self._start()

    def stop(self) -> None:
        """Stop the cluster (fast) and delete its folder."""
        try:
            self._pg("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data))
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class Stall:
    """What a test sees while a backend is stopped (:func:`stalled_backend`)."""

    #: When the thread beside the wait ran (``time.monotonic()``).
    ticks: list[float] = field(default_factory=list)
    #: When the wait timed by :meth:`waiting` began and ended.
    began: float = 0.0
    ended: float = 0.0
    _resumer: subprocess.Popen | None = None

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Time a wait on the stopped backend (``began``, and ``ended`` when it returns)."""
        self.began = time.monotonic()
        yield
        self.ended = time.monotonic()

    @property
    def waited(self) -> float:
        """Seconds the timed wait lasted."""
        return self.ended - self.began

    @property
    def ticks_while_waiting(self) -> int:
        """How many times the other thread ran during the timed wait."""
        return sum(self.began <= at <= self.ended for at in self.ticks)

    @property
    def resumed(self) -> bool:
        """Whether the shell resumed the backend already (its ``resume_after`` passed)."""
        return self._resumer is not None and self._resumer.poll() is not None


@contextlib.contextmanager
def stalled_backend(pid: int, resume_after: float | None = None) -> Iterator[Stall]:
    """Backend ``pid`` stopped (SIGSTOP: a stalled disk or a network cut, its host still
    acknowledging), a thread ticking beside it; resumed (SIGCONT) on exit.

    With ``resume_after``, a shell resumes it that many seconds later whatever happens,
    so that a wait that never gives up ends the test late rather than never.
    """
    stall = Stall()
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(STALL_TICK):
            stall.ticks.append(time.monotonic())

    os.kill(pid, signal.SIGSTOP)
    try:
        if resume_after is not None:
            stall._resumer = subprocess.Popen(
                ["sh", "-c", f"sleep {resume_after:g}; kill -CONT {pid}"]
            )
        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            yield stall
        finally:
            stop.set()
            ticker.join()
    finally:
        os.kill(pid, signal.SIGCONT)
        if stall._resumer is not None:
            stall._resumer.kill()
            stall._resumer.wait()


def waiting_for_a_lock(call: Callable[[], object], url: str, pid: int) -> Future:
    """Start ``call`` in a thread; return its outcome once backend ``pid`` waits for a lock
    that another transaction holds (seen on a connection of its own to ``url``), or once
    the call has ended (it waited for none)."""
    import psycopg

    outcome: Future = Future()

    def run() -> None:
        try:
            outcome.set_result(call())
        except BaseException as exc:  # noqa: BLE001 - the test reads it from the outcome
            outcome.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    with psycopg.connect(url, autocommit=True) as observer:

        def waits() -> bool:
            return bool(observer.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
                (pid,),
            ).fetchall())

        wait_until(lambda: outcome.done() or waits(), f"backend {pid} to wait for a lock")
    return outcome
