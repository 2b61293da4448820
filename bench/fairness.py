"""Fairness benchmark: is the loop still responsive while four big uploads stream in?

Four clients each upload a 256 MiB file (1 MiB packets, ciphertext made
beforehand and sent with ``sendfile``, so that the uploaders cost little CPU and
the server's single loop is what is measured), while a fifth client, on its
own connection, sends 827 and waits for 1605 again and again, back to back.
A blocking fsync, a long decrypt or a long unlink in the loop shows up as a
slow round trip.

Prints p50/p99/max of the 827 → 1605 round trip per run and their medians.
Targets: p99 ≤ 30 ms and max ≤ 200 ms. Exits 1 if one is missed, 2 if other
processes used over 10 % of the cores (no verdict).

    python bench/fairness.py
    python bench/fairness.py --size-mib 128 --runs 5
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import (
    MIB, Check, Quietness, RawClient, median, percentile, print_table, report, start_server,
)

from protocol import Cksum, FileReceived, Reconnect, Reconnected, crypto
from protocol.codes import VERSION, RequestCode
from protocol.wire import FILE_PACKET_FIELDS_SIZE, FilePacketFields, RequestHeader

UPLOADS = 4
PACKET = MIB
TARGET_P99_MS = 30.0
TARGET_MAX_MS = 200.0


def encrypt_to(path: Path, aes_key: bytes, size: int) -> int:
    """Write the ciphertext of ``size`` random bytes; return the plaintext cksum."""
    pattern = os.urandom(16 * MIB)
    encryptor = crypto.CbcEncryptor(aes_key)
    checksum = Cksum()
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = pattern[: min(left, len(pattern))]
            checksum.update(chunk)
            out.write(encryptor.update(chunk))
            left -= len(chunk)
        out.write(encryptor.finalize())
    return checksum.value


class Uploader(threading.Thread):
    """One client sending a prepared ciphertext file in 1 MiB packets."""

    def __init__(self, client: RawClient, client_id: bytes, path: Path, size: int,
                 name: str, expected: int) -> None:
        super().__init__(daemon=True)
        self.client, self.client_id, self.path = client, client_id, path
        self.size, self.name, self.expected = size, name, expected
        self.error: str | None = None

    def run(self) -> None:
        try:
            self._send()
        except Exception as exc:  # reported by the main thread
            self.error = f"{type(exc).__name__}: {exc}"

    def _send(self) -> None:
        content_size = self.path.stat().st_size
        total = -(-content_size // PACKET)
        sock = self.client.sock
        with open(self.path, "rb") as source:
            for number in range(1, total + 1):
                offset = (number - 1) * PACKET
                count = min(PACKET, content_size - offset)
                sock.sendall(RequestHeader.build({
                    "client_id": self.client_id, "version": VERSION,
                    "code": RequestCode.SEND_FILE,
                    "payload_size": FILE_PACKET_FIELDS_SIZE + count,
                }) + FilePacketFields.build({
                    "content_size": content_size, "orig_file_size": self.size,
                    "packet_number": number, "total_packets": total,
                    "file_name": self.name,
                }))
                sock.sendfile(source, offset, count)
        answer = self.client.receive()
        if not isinstance(answer, FileReceived) or answer.cksum != self.expected:
            self.error = f"unexpected answer {answer!r}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256, help="each upload (default 256)")
    parser.add_argument("--runs", type=int, default=3, help="runs (median)")
    args = parser.parse_args()
    size = args.size_mib * MIB
    rows, p99s, maxes, errors = [], [], [], 0
    with tempfile.TemporaryDirectory(prefix="cipherdrop-fairness-") as temp:
        root = Path(temp)
        keys = [crypto.generate_private_key() for _ in range(UPLOADS + 1)]
        with start_server(root / "server") as server, Quietness() as quiet:
            probe = RawClient(server.address)
            probe_id, _ = probe.register("probe", keys[-1])
            for run in range(1, args.runs + 1):
                uploaders = []
                for index in range(UPLOADS):
                    client = RawClient(server.address)
                    client_id, aes_key = client.register(f"up{run}x{index}", keys[index])
                    path = root / f"upload{index}.enc"
                    expected = encrypt_to(path, aes_key, size)
                    uploaders.append(Uploader(client, client_id, path, size,
                                              f"file{index}.bin", expected))
                rtts = []
                for uploader in uploaders:
                    uploader.start()
                while any(uploader.is_alive() for uploader in uploaders):
                    started = time.perf_counter()
                    answer = probe.request(Reconnect(client_id=probe_id, name="probe"))
                    rtts.append(time.perf_counter() - started)
                    if not isinstance(answer, Reconnected):
                        errors += 1
                for uploader in uploaders:
                    uploader.join()
                    uploader.client.close()
                    if uploader.error:
                        errors += 1
                        print(f"upload failed: {uploader.error}", file=sys.stderr)
                p50, p99, worst = (percentile(rtts, 0.5) * 1e3, percentile(rtts, 0.99) * 1e3,
                                   max(rtts) * 1e3)
                p99s.append(p99)
                maxes.append(worst)
                rows.append([f"run {run}", len(rtts), f"{p50:.1f}", f"{p99:.1f}", f"{worst:.1f}"])
                print(f"run {run}: {len(rtts)} round trips, p50 {p50:.1f} ms, p99 {p99:.1f} ms,"
                      f" max {worst:.1f} ms", flush=True)
            probe.close()
            quiet.sample()
    rows.append(["median", "", f"{median([float(r[2]) for r in rows]):.1f}",
                 f"{median(p99s):.1f}", f"{median(maxes):.1f}"])
    print()
    print_table(f"827 → 1605 round trip while {UPLOADS} uploads of {args.size_mib} MiB stream in",
                ["", "round trips", "p50 ms", "p99 ms", "max ms"], rows)
    return report([
        Check("uploads and round trips without error", str(errors), errors == 0),
        Check(f"p99 ≤ {TARGET_P99_MS:.0f} ms", f"{median(p99s):.1f} ms",
              median(p99s) <= TARGET_P99_MS),
        Check(f"max ≤ {TARGET_MAX_MS:.0f} ms", f"{median(maxes):.1f} ms",
              median(maxes) <= TARGET_MAX_MS),
    ], quiet)


if __name__ == "__main__":
    sys.exit(main())
