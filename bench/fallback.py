"""Fallback benchmark: our client against a server that reads only 1,291-byte packets.

The server is the fake of tests/client/test_client_fallback.py
(``fixed_size_packets``, issue 23's behaviour 4): it reads a header, then every
828 payload as exactly 1,291 bytes (267 + 1,024), and stops reading for good
after a payload of another size. Its own client sends 1,024-byte packets, the
last zero-filled. Side by side, interleaved run by run:

* its own client's behaviour: ``python -m client --strict --pad-last-packet
  --packet-size 1024``;
* our client as shipped: ``python -m client`` (the standard layout first,
  then the switch to 1,024-byte packets on the kernel's evidence that the
  server stopped reading, client/stall.py).

The client is registered once beforehand; each timed run is a whole later run
of the client (start, 827, the file, 900, exit). Target (issue 23 point 6): a
whole run of ours ≤ 2 × a whole run of its own client's. The start-up of a
client that does nothing (``python -m client --help``) is measured too, and
each median is also given without it, for information: the transfer alone
(for 100 kB a few tens of ms in the own client's layout, where ours waits
the shortest hold of client/stall.py, 0.1 s, before it switches). Exits 1 if
missed, 2 if the machine was too busy to judge.

    python bench/fallback.py
    python bench/fallback.py --runs 9
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    HOST, REPO, Check, Quietness, env, median, print_table, report, timed_client_run,
)

sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "client")]
from test_client_fallback import BehaviourServer, fixed_size_packets  # noqa: E402

SIZES = {"100 kB": 100_000, "5 MB": 5_000_000}
TARGET_RATIO = 2.0
CLIENT_NAME = "bench"
CLIENT_TIMEOUT = 30
OWN_CLIENT = ("--strict", "--pad-last-packet", "--packet-size", "1024")
OURS: tuple[str, ...] = ()


def start_up_seconds() -> float:
    """One ``python -m client --help``: the interpreter and the client's imports."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "client", "--help"], env=env(),
                   stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each (default 5)")
    args = parser.parse_args()
    rows, checks = [], []
    with tempfile.TemporaryDirectory() as tmp, BehaviourServer(fixed_size_packets) as server:
        home = Path(tmp)
        port = int(server.address.rsplit(":", 1)[1])
        files = {label: home / f"{size}.bin" for label, size in SIZES.items()}
        for label, path in files.items():
            path.write_bytes(os.urandom(SIZES[label]))

        def run(label: str, flags: tuple[str, ...]) -> float:
            seconds, _ = timed_client_run(home, port, CLIENT_NAME, [*flags, files[label].name],
                                          CLIENT_TIMEOUT)
            if server.state.verified != files[label].read_bytes():
                sys.exit(f"the server does not hold {label} after a run with {flags}")
            return seconds

        run("100 kB", OWN_CLIENT)  # registers (825, 826): not timed
        start_ups: list[float] = []
        times: dict[tuple[str, str], list[float]] = {}
        with Quietness() as quiet:
            for number in range(args.runs):
                start_ups.append(start_up_seconds())
                pair = [("own", OWN_CLIENT), ("ours", OURS)]
                for label in SIZES:
                    for who, flags in pair[:: 1 if number % 2 else -1]:  # each goes first in turn
                        times.setdefault((label, who), []).append(run(label, flags))
        start_up = median(start_ups)
        for label in SIZES:
            own, ours = median(times[(label, "own")]), median(times[(label, "ours")])
            bare_own, bare_ours = own - start_up, ours - start_up
            ratio, bare_ratio = ours / own, bare_ours / bare_own
            rows.append([label, f"{own:.3f}", f"{ours:.3f}", f"{ratio:.2f}",
                         f"{bare_own:.3f}", f"{bare_ours:.3f}", f"{bare_ratio:.2f}"])
            checks.append(Check(f"{label}: a whole run ≤ {TARGET_RATIO:g} × its own client's",
                                f"{ratio:.2f} × ({bare_ratio:.2f} × without start-up)",
                                ratio <= TARGET_RATIO))
    print(f"server: 127.0.0.1 fake reading only {1291}-byte packets ({HOST});"
          f" {args.runs} runs each; client start-up (--help) {start_up:.3f} s (median)")
    print_table("whole runs, median seconds",
                ["file", "own client", "ours", "ratio", "own - start-up",
                 "ours - start-up", "ratio"], rows)
    return report(checks, quiet)


if __name__ == "__main__":
    sys.exit(main())
