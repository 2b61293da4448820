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

    python bench/upload.py                     # 1 GiB, 3 runs
    python bench/upload.py --size-mib 256 --runs 5 --no-scp
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from common import (
    MB, MIB, Check, Quietness, cpu_seconds, make_file, median, print_table, report,
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="file size (default 1024)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each (median)")
    parser.add_argument("--packet-size", type=int, help="the client's --packet-size")
    parser.add_argument("--no-scp", action="store_true", help="skip the scp baseline")
    args = parser.parse_args()
    size = args.size_mib * MIB
    extra = ["--packet-size", str(args.packet_size)] if args.packet_size else []

    ours, client_rss, crypto, server_cpu = [], [], [], []
    scp: dict[str, list[float]] = {cipher: [] for cipher in SCP_CIPHERS}
    with tempfile.TemporaryDirectory(prefix="cipherdrop-bench-") as temp:
        root = Path(temp)
        home = root / "user"
        home.mkdir()
        payload = home / "payload.bin"
        make_file(payload, size)
        first = home / "first.bin"
        make_file(first, 1024)
        sshd = None if args.no_scp else private_sshd()
        ssh = sshd.__enter__() if sshd else None
        try:
            with start_server(root / "server") as server, Quietness() as quiet:
                run_client(home, server.port, first, extra)  # registers: 825, 826
                for number in range(1, args.runs + 1):
                    cpu_before = cpu_seconds(server.pid)
                    seconds, rss = run_client(home, server.port, payload, extra)
                    server_cpu.append(cpu_seconds(server.pid) - cpu_before)
                    ours.append(seconds)
                    client_rss.append(rss)
                    crypto.append(crypto_limit(payload))
                    for cipher in scp if ssh else ():
                        target = root / "scp-copy.bin"
                        started = time.perf_counter()
                        ssh.scp(payload, target, cipher)
                        scp[cipher].append(time.perf_counter() - started)
                        target.unlink()
                    print(f"run {number}: ours {size / MB / seconds:.0f} MB/s "
                          f"(server CPU {server_cpu[-1]:.2f} s), "
                          f"crypto {size / MB / crypto[-1]:.0f} MB/s"
                          + "".join(f", scp {c.split('@')[0]} {size / MB / s[-1]:.0f} MB/s"
                                    for c, s in scp.items() if s),
                          flush=True)
                server_rss = vm_hwm_kib(server.pid) / 1024
                quiet.sample()
            stored = list((root / "server" / "received_files").glob("*/payload.bin"))
            if not stored or stored[0].stat().st_size != size:
                sys.exit("the stored file is missing or has the wrong size")
        finally:
            if sshd:
                sshd.__exit__(None, None, None)

    rate = {"ours": size / MB / median(ours), "crypto": size / MB / median(crypto)}
    rows = [["cipherdrop client → server (durable)", f"{median(ours):.2f}",
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
    print(f"peak RSS: client {max(client_rss):.1f} MiB, server {server_rss:.1f} MiB")
    print(f"server CPU per run: median {median(server_cpu):.2f} s "
          f"({median(server_cpu) * 1e3 / (size / MIB):.2f} ms per MiB)")
    checks = [
        Check(f"end to end ≥ {TARGET_VS_CRYPTO} × the CBC-encrypt rate",
              f"{rate['ours'] / rate['crypto']:.2f} ×", rate["ours"] >= TARGET_VS_CRYPTO * rate["crypto"]),
        Check(f"client peak RSS ≤ {TARGET_RSS_MIB} MiB", f"{max(client_rss):.1f} MiB",
              max(client_rss) <= TARGET_RSS_MIB),
        Check(f"server peak RSS ≤ {TARGET_RSS_MIB} MiB", f"{server_rss:.1f} MiB",
              server_rss <= TARGET_RSS_MIB),
    ]
    if SCP_TARGET_CIPHER in rate:
        gcm = rate[SCP_TARGET_CIPHER]
        checks.insert(1, Check(f"end to end ≥ {TARGET_VS_SCP} × scp {SCP_TARGET_CIPHER}",
                               f"{rate['ours'] / gcm:.2f} ×", rate["ours"] >= TARGET_VS_SCP * gcm))
    return report(checks, quiet)


if __name__ == "__main__":
    sys.exit(main())
