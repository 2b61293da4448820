"""The client cap and the registration rate under floods: before and after, in one run.

Three scenarios, each measured in this tree and in an older one (``--before
DIR``, a ``git worktree`` of an earlier commit), in-process on the real
stores (SQLite in a temporary folder), no sockets:

* **at the cap**: ``--clients`` keyed clients fill ``max_clients``; a
  registration from a new address (825, and an 827 for an unknown name,
  which registers too) is refused. Its cost in SQLite virtual-machine steps
  (a progress handler: a count the load of the machine does not change) and
  in time (the best of ``--repeat`` calls), with 1,000 clients and with
  ``--clients``;
* **below the cap**: the same database with room left; an 825 that succeeds;
* **the rate limiter**: 50,000 addresses registered once, the fake clock
  moved on an hour, then 1,000 registrations from new addresses: time per
  call (the first one included, which forgets the 50,000) and the addresses
  still tracked afterwards.

Verdicts compare this tree's figures with each other (flat in the number of
clients) and with the older tree's, never with a fixed time.

Usage: ``git worktree add /tmp/caps-old <commit>`` then
``python bench/caps.py --before /tmp/caps-old``; remove the worktree after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The smaller database the larger one is compared with.
FEW_CLIENTS = 1_000
#: Addresses the limiter scenario registers before its hour passes.
STALE_ADDRESSES = 50_000
#: Registrations timed after the hour.
LATER_CALLS = 1_000
HOUR = 3600.0
#: A flat cost: the larger database may cost at most this many times the smaller one's steps.
FLAT_FACTOR = 2.0
KEY = b"k" * 160


class FakeClock:
    """A clock the scenario moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


# -- the measurements: run in a child process with the measured tree first on sys.path --


def _fill(metadata, count: int, now: float) -> None:
    """``count`` keyed clients, each with a binding, in one transaction (raw rows: any schema)."""
    connection = metadata._db
    with metadata.transaction():
        connection.executemany(
            "INSERT INTO clients (ID, Name, PublicKey, LastSeen, AESKey) VALUES (?, ?, ?, '', ?)",
            ((n.to_bytes(16, "big"), f"filler{n}", KEY, bytes(32)) for n in range(count)),
        )
        connection.executemany(
            "INSERT INTO key_bindings (ID, Address, IssuedAt, LastUsed) VALUES (?, ?, ?, ?)",
            ((n.to_bytes(16, "big"), f"127.10.{n >> 8 & 255}.{n & 255}", now, now)
             for n in range(count)),
        )
    metadata.finish_round(durable=False)


def _cost(metadata, action, repeat: int) -> tuple[int, float]:
    """SQLite steps of one call (the fewest of ``repeat``) and its best time in seconds."""
    connection = metadata._db
    steps, best = [], float("inf")
    for _ in range(repeat):
        counted = [0]

        def count(counted=counted) -> int:
            counted[0] += 1
            return 0

        connection.set_progress_handler(count, 1)
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
        connection.set_progress_handler(None, 1)
        steps.append(counted[0])
        metadata.finish_round(durable=False)
    return min(steps), best


def _registration_costs(clients: int, room: int, repeat: int) -> dict[str, float]:
    """Steps and seconds of a refused 825 and 827 at the cap (or a granted 825 with room)."""
    from protocol import Reconnect, Register
    from server import handlers
    from server.app import App
    from server.errors import Refusal
    from server.limits import Limits
    from server.peer import Peer, Speaking
    from server.storage.folder import FolderBlobs
    from server.storage.sqlite import DB_NAME, SqliteMetadata

    with tempfile.TemporaryDirectory() as folder:
        limits = Limits(max_clients=clients + room, registrations_per_minute=0)
        metadata = SqliteMetadata.open(Path(folder) / DB_NAME)
        app = App.build(metadata, FolderBlobs(Path(folder)), limits, clock=FakeClock())
        _fill(metadata, clients, app.wall_clock())
        names = iter(range(10**9))
        peer = Peer("127.0.2.7", 40000)

        def register() -> None:
            event = Register(client_id=bytes(16), name=f"new{next(names)}")
            handlers.register(app, peer, event, Speaking())

        def reconnect() -> None:
            try:
                event = Reconnect(client_id=bytes(16), name=f"new{next(names)}")
                handlers.reconnect(app, peer, event, Speaking())
            except Refusal:
                pass

        figures = {}
        figures["825_steps"], figures["825_seconds"] = _cost(metadata, register, repeat)
        if not room:
            figures["827_steps"], figures["827_seconds"] = _cost(metadata, reconnect, repeat)
        app.uploads.close()
        metadata.close()
    return figures


def _limiter_costs() -> dict[str, float]:
    """Seconds per registration an hour after 50,000 addresses, and what stays tracked."""
    try:
        from server.rate import RegistrationLimiter
    except ImportError:  # the tree before server/rate.py
        from server.app import RegistrationLimiter  # type: ignore[attr-defined,no-redef]

    clock = FakeClock()
    limiter = RegistrationLimiter(30, clock)
    for number in range(STALE_ADDRESSES):
        limiter.allow(f"127.{10 + (number >> 16)}.{number >> 8 & 255}.{number & 255}")
    clock.now += HOUR
    started = time.perf_counter()
    for number in range(LATER_CALLS):
        limiter.allow(f"127.172.{number >> 8}.{number & 255}")
    per_call = (time.perf_counter() - started) / LATER_CALLS
    tracked = len(limiter._times)
    if hasattr(limiter, "sweep"):  # the server's timers sweep what the calls left
        limiter.sweep()
    return {"limiter_seconds": per_call, "limiter_tracked": tracked,
            "limiter_swept": len(limiter._times)}


def measure(clients: int, repeat: int) -> dict[str, dict[str, float]]:
    """Every figure of the tree first on sys.path."""
    return {
        "few_at_cap": _registration_costs(FEW_CLIENTS, 0, repeat),
        "many_at_cap": _registration_costs(clients, 0, repeat),
        "few_below_cap": _registration_costs(FEW_CLIENTS, repeat + 10, repeat),
        "many_below_cap": _registration_costs(clients, repeat + 10, repeat),
        "limiter": _limiter_costs(),
    }


# -- the driver ---------------------------------------------------------------------------


def _run_tree(tree: Path, clients: int, repeat: int) -> dict[str, dict[str, float]]:
    """The figures of one tree, measured in a child process that imports that tree."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--measure", str(tree),
         "--clients", str(clients), "--repeat", str(repeat)],
        env=env, capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"measuring {tree} failed:\n{result.stderr}")
    return json.loads(result.stdout)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="an older tree (git worktree) to compare")
    parser.add_argument("--clients", type=int, default=100_000, help="clients at the cap")
    parser.add_argument("--repeat", type=int, default=5, help="calls per figure (the best kept)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        sys.path.insert(0, str(args.measure))
        print(json.dumps(measure(args.clients, args.repeat)))
        return 0

    sys.path.insert(0, str(HERE))
    from common import REPO, Check, print_table, report

    trees = {"after": REPO}
    if args.before:
        trees = {"before": args.before.resolve(), **trees}
    figures = {label: _run_tree(tree, args.clients, args.repeat) for label, tree in trees.items()}
    rows = []
    for label, found in figures.items():
        for scenario, clients in (("few_at_cap", FEW_CLIENTS), ("many_at_cap", args.clients),
                                  ("few_below_cap", FEW_CLIENTS),
                                  ("many_below_cap", args.clients)):
            for code in ("825", "827"):
                if f"{code}_steps" in found[scenario]:
                    rows.append([label, scenario.replace("_", " "), clients, code,
                                 int(found[scenario][f"{code}_steps"]),
                                 _ms(found[scenario][f"{code}_seconds"])])
    print_table("a registration at and below the cap (SQLite steps: the fewest; time: the best)",
                ["tree", "scenario", "clients", "request", "steps", "time"], rows)
    print()
    print_table(
        f"the rate limiter: {LATER_CALLS} registrations an hour after {STALE_ADDRESSES:,} addresses",
        ["tree", "time per call", "tracked after the calls", "after the timers' sweep"],
        [[label, _ms(found["limiter"]["limiter_seconds"]), int(found["limiter"]["limiter_tracked"]),
          int(found["limiter"]["limiter_swept"])]
         for label, found in figures.items()],
    )

    after = figures["after"]
    checks = []
    for code in ("825", "827"):
        few, many = after["few_at_cap"][f"{code}_steps"], after["many_at_cap"][f"{code}_steps"]
        checks.append(Check(
            f"a refused {code} at the cap costs the same with {args.clients:,} clients as with"
            f" {FEW_CLIENTS:,} (steps within {FLAT_FACTOR:g}x)",
            f"{int(many)} vs {int(few)} steps", many <= FLAT_FACTOR * few,
        ))
    few, many = after["few_below_cap"]["825_steps"], after["many_below_cap"]["825_steps"]
    checks.append(Check(
        f"a granted 825 below the cap costs the same with {args.clients:,} clients as with"
        f" {FEW_CLIENTS:,} (steps within {FLAT_FACTOR:g}x)",
        f"{int(many)} vs {int(few)} steps", many <= FLAT_FACTOR * few,
    ))
    limiter = after["limiter"]
    forgotten = STALE_ADDRESSES + LATER_CALLS - limiter["limiter_tracked"]
    checks.append(Check(
        "the rate limiter's calls forget stale addresses faster than they add new ones"
        " (more than one per call)",
        f"{int(forgotten):,} forgotten by {LATER_CALLS:,} calls", forgotten > LATER_CALLS,
    ))
    checks.append(Check(
        "the timers' sweep forgets the rest of the stale addresses",
        f"{int(limiter['limiter_swept'])} tracked of {STALE_ADDRESSES + LATER_CALLS:,}",
        limiter["limiter_swept"] <= LATER_CALLS,
    ))
    if "before" in figures:
        before = figures["before"]
        old, new = before["many_at_cap"]["825_seconds"], after["many_at_cap"]["825_seconds"]
        checks.append(Check(
            f"a refused 825 at {args.clients:,} clients: after at most a tenth of before",
            f"{_ms(new)} vs {_ms(old)}", new * 10 <= old,
        ))
        old, new = before["limiter"]["limiter_seconds"], after["limiter"]["limiter_seconds"]
        checks.append(Check(
            "a registration with 50,000 stale addresses: after at most a tenth of before",
            f"{_ms(new)} vs {_ms(old)}", new * 10 <= old,
        ))
    return report(checks)


if __name__ == "__main__":
    sys.exit(main())
