"""A flood of refused requests from one address: how much log it writes, with and without the budget.

The flooder opens connection after connection and pipelines 900s naming
clients that do not exist: each is refused (1607), and each connection is
closed at ``--max-errors``. Two servers take the same flood side by side: one
with the log's per-address budget at its default (``--log-lines-per-address``
lines per ``--log-rate-interval``), and one with it lifted
(``--log-lines-per-address 0``: every request logged at INFO, as before the
budget). It prints the log bytes the flood wrote, per refused request and in
all, and the lines about the flooding address. These are counts, which the
machine's load does not change: one flood each, and a verdict on a busy
machine too.

    python bench/log_flood.py --requests 20000
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Check, print_table, report, start_server  # noqa: E402

from protocol import NEED_DATA, ClientConnection, ConnectionClosed, CrcOk  # noqa: E402
from server.limits import Limits  # noqa: E402

DEFAULTS = Limits()
FLOODER = "127.0.0.2"
#: The budget must make the flood's log at least this many times smaller.
TARGET_REDUCTION = 20.0
#: Lines about the server itself around the flood (the stop, the summary).
SERVER_LINES = 5


def flood_connection(address: tuple[str, int], requests: int) -> int:
    """Pipeline ``requests`` refused 900s on one connection; how many were answered."""
    conn = ClientConnection()
    data = b"".join(
        conn.send(CrcOk(client_id=os.urandom(16), file_name="x.bin")) for _ in range(requests)
    )
    answered = 0
    with socket.create_connection(address, 10, source_address=(FLOODER, 0)) as sock:
        sock.sendall(data)
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                try:
                    conn.receive_data(sock.recv(65536))
                except ConnectionResetError:
                    conn.receive_data(b"")
                continue
            if isinstance(event, ConnectionClosed):
                return answered
            answered += 1


def run(flags: tuple[str, ...], requests: int, root: Path, label: str) -> dict:
    """One server, one flood; the log it wrote meanwhile."""
    server = start_server(root / label, *flags)
    try:
        before = server.log_path.stat().st_size
        refused = 0
        started = time.monotonic()
        while refused < requests:
            refused += flood_connection(server.address, DEFAULTS.max_errors)
        seconds = time.monotonic() - started
    finally:
        server.stop()  # the budget's last counts are written at the stop
    log = server.log_path.read_bytes()
    lines = log[before:].decode(errors="replace").splitlines()
    about = sum(f" {FLOODER}:" in line for line in lines)
    return {"refused": refused, "bytes": len(log) - before, "lines": len(lines),
            "about": about, "seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000,
                        help="refused requests in each flood")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        before = run(("--log-lines-per-address", "0"), args.requests, root, "no-budget")
        # LOAD_FLAGS lift the budget: the default is passed again, to win.
        budget = ("--log-lines-per-address", str(DEFAULTS.log_lines_per_address))
        after = run(budget, args.requests, root, "budget")
    rows = [
        [label, result["refused"], f"{result['seconds']:.1f} s", result["lines"],
         result["about"], f"{result['bytes'] / 1e6:.3f} MB",
         f"{result['bytes'] / result['refused']:.2f} B"]
        for label, result in (("no budget (before)", before), ("budget (after)", after))
    ]
    print_table(
        f"{args.requests} refused requests from {FLOODER}, {DEFAULTS.max_errors} per connection"
        f" (budget: {DEFAULTS.log_lines_per_address} lines per"
        f" {DEFAULTS.log_rate_interval:g} s)",
        ["server", "refused", "flood time", "log lines", f"lines about {FLOODER}",
         "log written", "log bytes per refused request"],
        rows,
    )
    windows = math.ceil(after["seconds"] / DEFAULTS.log_rate_interval) + 1
    bound = windows * DEFAULTS.log_lines_per_address
    reduction = before["bytes"] / max(1, after["bytes"])
    return report([
        Check(f"lines about {FLOODER} within the budget ({bound} in {windows} window(s))",
              str(after["about"]), after["about"] <= bound + SERVER_LINES),
        Check(f"log at least {TARGET_REDUCTION:g}x smaller under the flood",
              f"{reduction:.0f}x", reduction >= TARGET_REDUCTION),
    ])


if __name__ == "__main__":
    sys.exit(main())
