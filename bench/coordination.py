"""What each coordination call costs the loop: in memory, and in PostgreSQL on loopback.

Every decision the nodes share (server/storage/coordination.py) is one call,
and each call of :class:`PgCoordination` is one statement, one round trip.
This prints, per call, the median and the 99th percentile of its wall time
and the caller's CPU time (``time.process_time``: what the loop itself
spends), over ``--calls`` calls, for both implementations side by side.

``--postgres`` starts a throwaway cluster (``initdb --no-sync``, ``pg_ctl``
on 127.0.0.1 with a free port; as root, run as the ``postgres`` user);
``--conninfo`` uses an existing database instead (its coordination tables
are created if absent). Which call runs where in a session is in
docs/ARCHITECTURE.md ("Several nodes").

Usage: ``python bench/coordination.py --postgres [--calls 2000]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Quietness, free_port  # noqa: E402
from server.storage.coordination import (  # noqa: E402
    Coordination,
    MemoryCoordination,
    UploadLease,
)

HOUR = 3600.0
LEASE = 30.0
#: Holds and leases a node renews at once (a busy node's).
HELD = 100
PERCENT = 100
P99 = 99


@contextmanager
def throwaway_cluster() -> Iterator[str]:
    """A PostgreSQL cluster in a temporary folder; its conninfo."""
    user = "postgres" if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="cipherdrop-bench-postgres-"))
    if user:
        shutil.chown(folder, user=user)
    port = free_port()
    data = folder / "data"
    subprocess.run(["initdb", "--no-sync", "-A", "trust", "-U", "postgres", "-D", str(data)],
                   check=True, capture_output=True, user=user)
    subprocess.run(["pg_ctl", "start", "-w", "-D", str(data), "-l", str(folder / "log"), "-o",
                    f"-h 127.0.0.1 -p {port} -k {folder}"], check=True, capture_output=True,
                   user=user)
    try:
        yield f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    finally:
        subprocess.run(["pg_ctl", "stop", "-m", "fast", "-D", str(data)], check=False,
                       capture_output=True, user=user)
        shutil.rmtree(folder, ignore_errors=True)


def measure(call: Callable[[int], object], calls: int) -> tuple[float, float, float]:
    """Median and p99 wall time, and median CPU time, of ``call(i)``, in microseconds."""
    walls, cpus = [], []
    for number in range(calls):
        wall, cpu = time.perf_counter(), time.process_time()
        call(number)
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    walls.sort()
    p99 = walls[min(len(walls) - 1, len(walls) * P99 // PERCENT)]
    return (statistics.median(walls) * 1e6, p99 * 1e6, statistics.median(cpus) * 1e6)


def client(number: int) -> bytes:
    return number.to_bytes(16, "big")


def lease(number: int) -> UploadLease:
    return UploadLease(client(number), b"new.bin", f"{number:032x}")


def cases(node: Coordination, other: Coordination) -> dict[str, Callable[[int], object]]:
    """Each call as a server makes it, on fresh keys so that no case meets another's rows."""
    key = b"k" * 32
    held = [client(n) for n in range(HELD)]
    uploads = [UploadLease(client(n), b"f.bin", f"{n:032x}") for n in range(HELD)]
    other.hold_registration(client(10**6))
    node.may_run_purges()  # the leader from here on
    return {
        "hold_registration (825)": lambda n: node.hold_registration(client(n)),
        "registration_held_elsewhere (825 again)": lambda n: node.registration_held_elsewhere(
            client(10**6)),
        "take_upload (first packet)": lambda n: node.take_upload(lease(n)),
        "take_upload (held elsewhere: refused)": lambda n: other.take_upload(lease(n)),
        "release_upload (upload ends)": lambda n: node.release_upload(client(n), b"new.bin"),
        "decrypt_failures (828, 900-902)": lambda n: node.decrypt_failures(client(n), key, HOUR),
        "note_decrypt_failure (a failure)": lambda n: node.note_decrypt_failure(
            client(n), key, HOUR),
        f"renew ({HELD} holds + {HELD} leases)": lambda n: node.renew(held, uploads),
        "live_blobs (each sweep)": lambda n: node.live_blobs(),
        "may_run_purges (the leader)": lambda n: node.may_run_purges(),
    }


def run(name: str, node: Coordination, other: Coordination, calls: int) -> None:
    print(f"\n{name}: median / p99 wall, median CPU of the caller (µs), {calls} calls each")
    for label, call in cases(node, other).items():
        median, p99, cpu = measure(call, calls)
        print(f"  {label:45} {median:8.1f} {p99:8.1f} {cpu:8.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--postgres", action="store_true", help="start a throwaway cluster")
    where.add_argument("--conninfo", help="an existing database (libpq conninfo or URL)")
    args = parser.parse_args()
    with Quietness() as quiet:
        memory = MemoryCoordination(time.monotonic, "a", LEASE)
        run("memory", memory, memory.join("b"), args.calls)
        if args.postgres or args.conninfo:
            run_postgres(args)
    # The database's backends are not this tree's: they count among the others.
    print(f"\n{quiet.summary()}")
    return 0


def run_postgres(args: argparse.Namespace) -> None:
    from server.storage.postgres.coordination import PgCoordination

    with throwaway_cluster() if args.postgres else _given(args.conninfo) as conninfo:
        node, other = PgCoordination(conninfo, "a", LEASE), PgCoordination(conninfo, "b", LEASE)
        try:
            run("PostgreSQL (loopback)", node, other, args.calls)
        finally:
            node.close()
            other.close()


@contextmanager
def _given(conninfo: str) -> Iterator[str]:
    yield conninfo


if __name__ == "__main__":
    sys.exit(main())
