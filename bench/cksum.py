"""protocol.cksum throughput next to the Linux ``cksum`` command.

Writes a random file (256 MiB by default) in a temporary folder, checksums it
with ``protocol.Cksum`` (incremental, reading the file in 1 MiB chunks, as the
server does while a file streams in) and with ``cksum FILE``, takes the median
of a few runs of each, prints a table, checks that both give the same value,
and exits non-zero if protocol's cksum is under the target of the performance
issue (1000 MB/s). The file is deleted at the end. MB = 10**6 bytes.

    python bench/cksum.py
    python bench/cksum.py --size-mib 1024 --runs 5
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from protocol import Cksum  # noqa: E402 (after the path fix above)

MIB = 1024 * 1024
MB = 1_000_000
CHUNK_SIZE = MIB
TARGET_MB_PER_S = 1000.0


def write_random_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            step = min(left, 16 * MIB)
            f.write(os.urandom(step))
            left -= step


def protocol_cksum(path: Path) -> int:
    checksum = Cksum()
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while count := f.readinto(buffer):
            checksum.update(view[:count])
    return checksum.value


def command_cksum(path: Path) -> int:
    out = subprocess.run(
        ["cksum", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return int(out.split()[0])


def timed(function, path: Path, runs: int) -> tuple[int, float]:
    """(value, median seconds) of runs calls; every run must give one value."""
    values, seconds = set(), []
    for _ in range(runs):
        started = time.perf_counter()
        values.add(function(path))
        seconds.append(time.perf_counter() - started)
    if len(values) != 1:
        raise SystemExit(f"{function.__name__} gave different values: {values}")
    return values.pop(), statistics.median(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256, help="file size (MiB)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each (median)")
    parser.add_argument(
        "--min-mb-per-s",
        type=float,
        default=TARGET_MB_PER_S,
        help="fail under this protocol.cksum throughput",
    )
    args = parser.parse_args(argv)
    if shutil.which("cksum") is None:
        print("the cksum command is not installed", file=sys.stderr)
        return 2
    size = args.size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="cksum-bench-") as folder:
        path = Path(folder) / "random.bin"
        write_random_file(path, size)
        # Warm the page cache once so that both sides read from memory.
        command_cksum(path)
        ours, our_seconds = timed(protocol_cksum, path, args.runs)
        theirs, their_seconds = timed(command_cksum, path, args.runs)

    rows = [
        ("protocol.Cksum (1 MiB chunks)", ours, our_seconds),
        ("cksum command", theirs, their_seconds),
    ]
    print(f"file: {args.size_mib} MiB of random bytes, median of {args.runs} runs")
    print(f"{'implementation':<30} {'value':>10} {'seconds':>8} {'MB/s':>8}")
    for name, value, seconds in rows:
        print(f"{name:<30} {value:>10} {seconds:>8.3f} {size / MB / seconds:>8.0f}")
    speed = size / MB / our_seconds
    if ours != theirs:
        print(f"FAIL: values differ ({ours} != {theirs})")
        return 1
    if speed < args.min_mb_per_s:
        print(f"FAIL: protocol.cksum at {speed:.0f} MB/s, target {args.min_mb_per_s:.0f}")
        return 1
    print(f"OK: same value, protocol.cksum at {speed:.0f} MB/s (target {args.min_mb_per_s:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
