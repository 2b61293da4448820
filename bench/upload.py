"""Upload benchmark: our client to our server over loopback, against scp and the crypto limit.

One file (1 GiB by default) goes from ``python -m client`` to ``python -m
server`` on 127.0.0.1; the client exits 0 only after the server answered 1603
(the file fsynced and renamed into place first) and acknowledged 900, so the
figure is "durable on the server's disk". In the same run, side by side:

* the crypto limit: PyCryptodome AES-256-CBC encryption alone of the same
  file, 1 MiB at a time, in this process (the client must do at least this);
* ``scp -O`` of the same file to a private sshd on 127.0.0.1 (see
  bench/sshd.py; needs ``apt-get install openssh-server``), with each of
  aes256-gcm@openssh.com, aes256-ctr and chacha20-poly1305@openssh.com; the
  fastest counts. scp does not fsync: it is given that advantage.

Each figure is the median of ``--runs`` runs; the runs interleave the three
measurements so that a noisy neighbour hurts them alike. The client is
registered once beforehand (825/826 and its RSA key generation are not part of
an upload); each timed run is a whole later run of the client: start, 827,
828…, 1603, 900, exit. Peak RSS: the client's from ``wait4``, the server's
VmHWM over every run.

The server's CPU seconds per run come from /proc (they do not depend on what
else runs). The load average and the other processes' share of the cores are
printed, and no verdict is given when others used more than 10 % of them.

Targets: end to end ≥ 0.75 × the CBC-encrypt rate and ≥ 0.85 × scp with
aes256-gcm; peak RSS of either side ≤ 48 MiB. Exits 1 if one is missed, 2 if
the run was too noisy to judge.

``--compare-with DIR`` (another checkout of the project, say ``git worktree
add /tmp/before COMMIT``) starts DIR's server beside this one, each in its
own folder with its own registered client, and every run uploads the file to
both, one after the other, the order alternated from run to run; the client
is this checkout's for both (the wire is the same: what differs is the
server). Per server it prints the medians of the server's CPU per MiB, MB/s,
its VmHWM (reset before each upload: the peak of that upload) and its context
switches per GiB (voluntary and involuntary, summed over its threads), with
this ÷ DIR and a verdict per figure (``common.compare``): "worse" when the
ratio is past 3 % (the machine's noise) and every pair of runs agrees, "better"
likewise, else "within noise". The CPU per MiB within noise of DIR is then one
more target.

    python bench/upload.py                     # 1 GiB, 3 runs
    python bench/upload.py --size-mib 256 --runs 5 --no-scp
    python bench/upload.py --runs 5 --no-scp --compare-with /tmp/before
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    MB, MIB, NOISE_RATIO, REPO, Check, Compared, Quietness, Server, add_compare_with, compare,
    context_switches, cpu_seconds, make_file, median, print_table, report, reset_peak_rss,
    start_server, timed_client_run, vm_hwm_kib,
)
from Crypto.Cipher import AES
from sshd import SCP_CIPHERS, private_sshd

CRYPTO_CHUNK = MIB
TARGET_VS_SCP = 0.85
#: The scp cipher the target is set against (the others are printed beside it).
SCP_TARGET_CIPHER = "aes256-gcm@openssh.com"
TARGET_VS_CRYPTO = 0.75
TARGET_RSS_MIB = 48
CLIENT_NAME = "bench"
CLIENT_TIMEOUT = 300
GIB = 1024 * MIB
MS = 1e3
KIB_PER_MIB = 1024
#: Figures past this print without decimals (MB/s, switches per GiB), past the next with one
#: (MiB of RSS), and the others with three (ms of CPU per MiB).
ROUNDED_ABOVE = 100
ONE_DECIMAL_ABOVE = 10


def run_client(home: Path, port: int, path: Path, extra: list[str]) -> tuple[float, float]:
    """One whole client run of ``path``; (seconds, peak RSS in MiB). Exits on failure."""
    return timed_client_run(home, port, CLIENT_NAME, [*extra, str(path)], CLIENT_TIMEOUT)


def crypto_limit(path: Path) -> float:
    """Seconds PyCryptodome takes to AES-256-CBC-encrypt the file, 1 MiB at a time."""
    cipher = AES.new(os.urandom(32), AES.MODE_CBC, iv=bytes(16))
    plain = bytearray(CRYPTO_CHUNK)
    out = bytearray(CRYPTO_CHUNK)
    seconds = 0.0
    with open(path, "rb", buffering=0) as source:
        while count := source.readinto(plain):
            count -= count % 16  # the last partial block is padding's business
            view, target = memoryview(plain)[:count], memoryview(out)[:count]
            started = time.perf_counter()
            cipher.encrypt(view, output=target)
            seconds += time.perf_counter() - started
    return seconds


@dataclass
class Uploads:
    """One server's figures, one entry per run."""

    server: Server
    home: Path
    seconds: list[float] = field(default_factory=list)
    client_rss: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    peak_rss: list[float] = field(default_factory=list)
    switches: list[int] = field(default_factory=list)

    def upload(self, path: Path, extra: list[str]) -> None:
        """One whole client run of ``path`` to this server, measured."""
        pid = self.server.pid
        reset_peak_rss(pid)
        cpu, switches = cpu_seconds(pid), context_switches(pid)
        seconds, rss = run_client(self.home, self.server.port, path, extra)
        self.cpu.append(cpu_seconds(pid) - cpu)
        self.switches.append(context_switches(pid) - switches)
        self.peak_rss.append(vm_hwm_kib(pid) / KIB_PER_MIB)
        self.seconds.append(seconds)
        self.client_rss.append(rss)


def registered(stack: contextlib.ExitStack, root: Path, name: str, checkout: Path,
               extra: list[str]) -> Uploads:
    """A server of ``checkout`` in ``root/name``, and a client home registered with it."""
    server = stack.enter_context(start_server(root / name, checkout=checkout))
    home = root / f"{name}-user"
    home.mkdir()
    first = home / "first.bin"
    make_file(first, 1024)
    run_client(home, server.port, first, extra)  # registers: 825, 826
    return Uploads(server, home)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="file size (default 1024)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each (median)")
    parser.add_argument("--packet-size", type=int, help="the client's --packet-size")
    parser.add_argument("--no-scp", action="store_true", help="skip the scp baseline")
    add_compare_with(parser, "every upload run once more, side by side")
    args = parser.parse_args()
    size = args.size_mib * MIB
    extra = ["--packet-size", str(args.packet_size)] if args.packet_size else []

    crypto: list[float] = []
    scp: dict[str, list[float]] = {cipher: [] for cipher in SCP_CIPHERS}
    with tempfile.TemporaryDirectory(prefix="cipherdrop-bench-") as temp:
        root = Path(temp)
        payload = root / "payload.bin"
        make_file(payload, size)
        sshd = None if args.no_scp else private_sshd()
        ssh = sshd.__enter__() if sshd else None
        try:
            with contextlib.ExitStack() as stack:
                ours = registered(stack, root, "server", REPO, extra)
                trees = [ours]
                if args.compare_with:
                    trees.append(registered(stack, root, "compared", args.compare_with, extra))
                with Quietness() as quiet:
                    for number in range(1, args.runs + 1):
                        for tree in trees if number % 2 else trees[::-1]:
                            tree.upload(payload, extra)
                        crypto.append(crypto_limit(payload))
                        for cipher in scp if ssh else ():
                            target = root / "scp-copy.bin"
                            started = time.perf_counter()
                            ssh.scp(payload, target, cipher)
                            scp[cipher].append(time.perf_counter() - started)
                            target.unlink()
                        print(f"run {number}: " + ", ".join(
                                  f"{tree.server.data_dir.name} {size / MB / tree.seconds[-1]:.0f}"
                                  f" MB/s (server CPU {tree.cpu[-1]:.2f} s)" for tree in trees)
                              + f", crypto {size / MB / crypto[-1]:.0f} MB/s"
                              + "".join(f", scp {c.split('@')[0]} {size / MB / s[-1]:.0f} MB/s"
                                        for c, s in scp.items() if s),
                              flush=True)
                    quiet.sample()
            for tree in trees:
                stored = list(tree.server.data_dir.glob("received_files/*/payload.bin"))
                if not stored or stored[0].stat().st_size != size:
                    sys.exit(f"{tree.server.data_dir.name}: the stored file is missing or has"
                             " the wrong size")
        finally:
            if sshd:
                sshd.__exit__(None, None, None)

    seconds = ours.seconds
    rate = {"ours": size / MB / median(seconds), "crypto": size / MB / median(crypto)}
    rows = [["cipherdrop client → server (durable)", f"{median(seconds):.2f}",
             f"{rate['ours']:.0f}", "1.00"],
            ["AES-256-CBC encrypt alone (crypto limit)", f"{median(crypto):.2f}",
             f"{rate['crypto']:.0f}", f"{rate['ours'] / rate['crypto']:.2f}"]]
    for cipher, times in scp.items():
        if times:
            rate[cipher] = size / MB / median(times)
            rows.append([f"scp -O -c {cipher}", f"{median(times):.2f}", f"{rate[cipher]:.0f}",
                         f"{rate['ours'] / rate[cipher]:.2f}"])
    print()
    print_table(
        f"file {args.size_mib} MiB, median of {args.runs} runs, MB = 10^6 bytes",
        ["what", "seconds", "MB/s", "ours ÷ this"], rows,
    )
    client_rss, server_rss = max(ours.client_rss), max(ours.peak_rss)
    print(f"peak RSS: client {client_rss:.1f} MiB, server {server_rss:.1f} MiB")
    print(f"server CPU per run: median {median(ours.cpu):.2f} s "
          f"({median(ours.cpu) * 1e3 / (size / MIB):.2f} ms per MiB)")
    checks = [
        Check(f"end to end ≥ {TARGET_VS_CRYPTO} × the CBC-encrypt rate",
              f"{rate['ours'] / rate['crypto']:.2f} ×", rate["ours"] >= TARGET_VS_CRYPTO * rate["crypto"]),
        Check(f"client peak RSS ≤ {TARGET_RSS_MIB} MiB", f"{client_rss:.1f} MiB",
              client_rss <= TARGET_RSS_MIB),
        Check(f"server peak RSS ≤ {TARGET_RSS_MIB} MiB", f"{server_rss:.1f} MiB",
              server_rss <= TARGET_RSS_MIB),
    ]
    if SCP_TARGET_CIPHER in rate:
        gcm = rate[SCP_TARGET_CIPHER]
        checks.insert(1, Check(f"end to end ≥ {TARGET_VS_SCP} × scp {SCP_TARGET_CIPHER}",
                               f"{rate['ours'] / gcm:.2f} ×", rate["ours"] >= TARGET_VS_SCP * gcm))
    if args.compare_with:
        cpu = compared_table(ours, trees[1], args.compare_with, size)
        checks.append(Check(f"server CPU per MiB within noise of {args.compare_with.name}",
                            f"{cpu.ratio:.3f} × ({cpu.verdict})", cpu.within_noise))
    return report(checks, quiet)


def compared_table(ours: Uploads, other: Uploads, checkout: Path, size: int) -> Compared:
    """Print each figure of both servers, this ÷ the other and a verdict; return the CPU's."""
    mib, gib = size / MIB, size / GIB
    figures = [
        compare("server CPU ms/MiB", [c * MS / mib for c in ours.cpu],
                [c * MS / mib for c in other.cpu]),
        compare("MB/s", [size / MB / s for s in ours.seconds],
                [size / MB / s for s in other.seconds], higher_is_better=True),
        compare("server VmHWM MiB", ours.peak_rss, other.peak_rss),
        compare("server context switches/GiB", [n / gib for n in ours.switches],
                [n / gib for n in other.switches]),
    ]
    print()
    print_table(
        f"this checkout ({REPO.name}) beside {checkout} ({checkout.name}), median of"
        f" {len(ours.cpu)} alternated runs each; within noise: ≤ {NOISE_RATIO} × or a run"
        " pair the other way",
        ["figure", REPO.name, checkout.name, "this ÷ that", "verdict"],
        [[f.name, _figure(f.this), _figure(f.other), f"{f.ratio:.3f}", f.verdict]
         for f in figures],
    )
    return figures[0]


def _figure(value: float) -> str:
    """A figure with the decimals that mean something at its size."""
    if value >= ROUNDED_ABOVE:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= ONE_DECIMAL_ABOVE else f"{value:.3f}"


if __name__ == "__main__":
    sys.exit(main())
