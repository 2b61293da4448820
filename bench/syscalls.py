"""System calls per session: the server under ``strace -c`` while N sessions run.

The sessions are those of bench/sessions.py (825, 826, one 64 KiB file, 900).
A count does not depend on what else runs on the machine, unlike a time: it
is the figure to compare two trees with on a noisy machine. Needs strace.
Counts are per session and include the ``accept``s, so they are a little
higher at small N. Every thread of the server is counted (``strace -f``: blob
writes run in a worker thread, server/blobport.py).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sessions
from common import print_table, raise_fd_limit, start_server
from protocol import cksum, crypto

#: The calls worth naming one by one: durability, locks, the WAL, files.
NAMED = ("fsync", "fdatasync", "fcntl", "pwrite64", "write", "openat", "mkdir", "rename")
#: How long strace gets to attach before the sessions start.
ATTACH_PAUSE = 1.0
_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")


def count_calls(report: str) -> dict[str, int]:
    """Calls per name from a ``strace -c`` report."""
    counts = {}
    for line in report.splitlines():
        found = _ROW.match(line)
        if found and found.group(2) != "total":
            counts[found.group(2)] = int(found.group(1))
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200, help="concurrent sessions N")
    args = parser.parse_args()
    if shutil.which("strace") is None:
        print("strace is not installed (apt install strace)", file=sys.stderr)
        return 2
    raise_fd_limit(2 * args.clients + sessions.FD_MARGIN)
    keys = []
    for _ in range(sessions.KEY_POOL):
        private = crypto.generate_private_key()
        keys.append((private, crypto.export_public_key(private)))
    payload = os.urandom(sessions.FILE_SIZE)
    with tempfile.TemporaryDirectory(prefix="cipherdrop-syscalls-") as temp:
        report_path = Path(temp) / "strace.txt"
        flags = ["--max-connections", str(args.clients + sessions.FD_MARGIN)]
        with start_server(Path(temp) / "server", *flags) as server:
            tracer = subprocess.Popen(
                ["strace", "-f", "-c", "-p", str(server.pid), "-o", str(report_path)],
                stderr=subprocess.DEVNULL,
            )
            time.sleep(ATTACH_PAUSE)
            shared = sessions.Shared(keys, payload, cksum(payload), 1)
            result = sessions.run_once([server.address], args.clients, shared, [server.pid])
            tracer.send_signal(signal.SIGINT)
            tracer.wait()
        counts = count_calls(report_path.read_text())
    per_session = {name: count / args.clients for name, count in counts.items()}
    rows = [[name, f"{per_session.get(name, 0.0):.1f}"] for name in NAMED]
    rows.append(["all", f"{sum(per_session.values()):.1f}"])
    print_table(
        f"server system calls per session, N={args.clients} ({result['errors']} errors)",
        ["call", "per session"], rows,
    )
    return 0 if not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
