"""Many-files benchmark: 16 files of 64 MiB, our client with --jobs 1 and 2, against scp.

scp sends the files of one command one after another on one connection; our
client with ``--jobs N`` uploads them over N connections at once, each its own
CBC stream under the client's one key. In the same run, interleaved:

* ``python -m client --jobs 1`` and ``--jobs 2`` of the 16 files to
  ``python -m server`` on 127.0.0.1 (the client exits 0 only when every file
  is stored durably and its CRC confirmed);
* one ``scp -O`` of the same 16 files to a private sshd on 127.0.0.1 (see
  bench/sshd.py; needs ``apt-get install openssh-server``), with each of
  aes256-gcm@openssh.com, aes256-ctr and chacha20-poly1305@openssh.com.

Each figure is the median of ``--runs`` runs. Target: ``--jobs 2`` ≥ 1.2 × scp
with aes256-gcm. The load average and the other processes' share of the
cores are printed; no verdict when others used over 10 % of them (exit 2).

    python bench/many.py                   # 16 × 64 MiB, 3 runs
    python bench/many.py --files 8 --size-mib 32 --runs 5
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import (
    MB, MIB, Check, Quietness, make_file, median, print_table, report, start_server,
    timed_client_run, vm_hwm_kib,
)
from sshd import SCP_CIPHERS, private_sshd

JOBS = (1, 2)
TARGET_JOBS = 2
TARGET_VS_SCP = 1.2
SCP_TARGET_CIPHER = "aes256-gcm@openssh.com"
CLIENT_NAME = "many"
CLIENT_TIMEOUT = 300


def run_client(home: Path, port: int, paths: list[Path], jobs: int) -> tuple[float, float]:
    """One whole client run over every file; (seconds, peak RSS in MiB)."""
    return timed_client_run(home, port, CLIENT_NAME, ["--jobs", str(jobs), *map(str, paths)],
                             CLIENT_TIMEOUT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=16, help="how many files (default 16)")
    parser.add_argument("--size-mib", type=int, default=64, help="size of each (default 64)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each (median)")
    args = parser.parse_args()
    size = args.size_mib * MIB
    total = args.files * size

    ours: dict[int, list[float]] = {jobs: [] for jobs in JOBS}
    client_rss: dict[int, list[float]] = {jobs: [] for jobs in JOBS}
    scp: dict[str, list[float]] = {cipher: [] for cipher in SCP_CIPHERS}
    with tempfile.TemporaryDirectory(prefix="cipherdrop-many-") as temp:
        root = Path(temp)
        home = root / "user"
        home.mkdir()
        paths = [home / f"file{index:02}.bin" for index in range(args.files)]
        for path in paths:
            make_file(path, size)
        first = home / "first.bin"
        make_file(first, 1024)
        target = root / "scp-target"
        with private_sshd() as ssh, start_server(root / "server") as server, \
                Quietness() as quiet:
            run_client(home, server.port, [first], 1)  # registers: 825, 826
            for number in range(1, args.runs + 1):
                for jobs in JOBS:
                    seconds, rss = run_client(home, server.port, paths, jobs)
                    ours[jobs].append(seconds)
                    client_rss[jobs].append(rss)
                for cipher in scp:
                    target.mkdir()
                    started = time.perf_counter()
                    ssh.scp(paths, target, cipher)
                    scp[cipher].append(time.perf_counter() - started)
                    shutil.rmtree(target)
                print(f"run {number}: "
                      + ", ".join(f"--jobs {jobs} {total / MB / ours[jobs][-1]:.0f} MB/s"
                                  for jobs in JOBS)
                      + "".join(f", scp {c.split('@')[0]} {total / MB / s[-1]:.0f} MB/s"
                                for c, s in scp.items()),
                      flush=True)
            server_rss = vm_hwm_kib(server.pid) / 1024
            quiet.sample()
        stored = list((root / "server" / "received_files").glob("*/file*.bin"))
        if len(stored) != args.files or any(p.stat().st_size != size for p in stored):
            sys.exit("a stored file is missing or has the wrong size")

    rate = {f"jobs{jobs}": total / MB / median(ours[jobs]) for jobs in JOBS}
    rate.update({cipher: total / MB / median(times) for cipher, times in scp.items()})
    reference = rate[f"jobs{TARGET_JOBS}"]
    rows = [[f"cipherdrop --jobs {jobs} (durable)", f"{median(ours[jobs]):.2f}",
             f"{rate[f'jobs{jobs}']:.0f}", f"{reference / rate[f'jobs{jobs}']:.2f}"]
            for jobs in JOBS]
    rows += [[f"scp -O -c {cipher}", f"{median(scp[cipher]):.2f}", f"{rate[cipher]:.0f}",
              f"{reference / rate[cipher]:.2f}"] for cipher in SCP_CIPHERS]
    print()
    print_table(f"{args.files} files × {args.size_mib} MiB, median of {args.runs} runs, "
                "MB = 10^6 bytes", ["what", "seconds", "MB/s", f"--jobs {TARGET_JOBS} ÷ this"],
                rows)
    print("peak RSS: client " + ", ".join(f"--jobs {jobs} {max(client_rss[jobs]):.1f} MiB"
                                          for jobs in JOBS)
          + f"; server {server_rss:.1f} MiB")
    gcm = rate[SCP_TARGET_CIPHER]
    return report([
        Check(f"--jobs {TARGET_JOBS} ≥ {TARGET_VS_SCP} × scp {SCP_TARGET_CIPHER}",
              f"{reference / gcm:.2f} ×", reference >= TARGET_VS_SCP * gcm),
    ], quiet)


if __name__ == "__main__":
    sys.exit(main())
