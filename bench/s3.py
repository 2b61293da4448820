"""Files in an object store: the time added after the last byte, and the server's peak RSS.

Starts a one-node Ceph radosgw (tests/backends/ceph.py, on 127.0.0.1 in a temp
folder; needs ``apt-get install radosgw ceph-mon ceph-osd ceph-mgr``) and two
servers side by side: one with ``--blobs s3://…`` and one on its data folder
(the reference). For each size, a registered client sends every 828 of a file
(1 MiB packets, as the client does) but the last, then the last one; the
figure is the time from that last packet to the 1603: what the store adds
after the last byte (the S3 store sends the last part and completes the
upload, then writes the file's name; the folder fsyncs and renames). Then
900. Medians of ``--runs``, the two servers in turn. Peak RSS: each
server's VmHWM before the uploads (after the client registered) and after
them. No verdict (exit 2) when other processes used more than 10 % of the
cores.

Targets (issue 27, quiet machine): added after the last byte ≤ 150 ms (5 MB)
and ≤ 500 ms (256 MiB); exits 1 if one is missed.

    python bench/s3.py                      # 5 MB and 256 MiB, 3 runs
    python bench/s3.py --runs 5 --sizes-mib 1 64
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from common import (
    MB, MIB, REPO, Check, Quietness, RawClient, median, print_table, report, start_server,
    vm_hwm_kib,
)

sys.path.insert(0, str(REPO / "tests"))

from backends.ceph import CephGateway, skip_reason  # noqa: E402

from protocol import CrcOk, FileReceived, SendFilePacket, cksum, crypto  # noqa: E402
from protocol.names import NameField  # noqa: E402

PACKET = MIB
BUCKET = "cipherdrop-bench"
#: The targets: seconds added after the last byte, by file size.
TARGETS = {5 * MB: 0.150, 256 * MIB: 0.500}


def content(size: int) -> bytes:
    """A file's bytes: a repeated pattern (the content does not matter to the store)."""
    return bytes(range(256)) * (size // 256) + bytes(size % 256)


def packets(client_id: bytes, aes_key: bytes, name: str, data: bytes) -> list[SendFilePacket]:
    """The 828s of one file, encrypted whole and cut in :data:`PACKET` pieces."""
    ciphertext = crypto.encrypt(aes_key, data)
    chunks = [ciphertext[i:i + PACKET] for i in range(0, len(ciphertext), PACKET)]
    return [
        SendFilePacket(client_id=client_id, content_size=len(ciphertext), orig_file_size=len(data),
                       packet_number=number, total_packets=len(chunks),
                       file_name=NameField.from_text(name), content=chunk)
        for number, chunk in enumerate(chunks, start=1)
    ]


def added_after_last_byte(client: RawClient, client_id: bytes, aes_key: bytes, name: str,
                          data: bytes) -> float:
    """Seconds from the last 828 sent to its 1603; then 900."""
    files = packets(client_id, aes_key, name, data)
    for packet in files[:-1]:
        client.send(packet)
    started = time.perf_counter()
    answer = client.request(files[-1])
    took = time.perf_counter() - started
    if not isinstance(answer, FileReceived) or answer.cksum != cksum(data):
        sys.exit(f"{name}: answered {answer!r}")
    client.request(CrcOk(client_id=client_id, file_name=NameField.from_text(name)))
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes-mib", type=float, nargs="*",
                        help="file sizes in MiB (default: 5 MB and 256 MiB)")
    args = parser.parse_args()
    reason = skip_reason()
    if reason:
        sys.exit(reason)
    sizes = [int(size * MIB) for size in args.sizes_mib] if args.sizes_mib else list(TARGETS)
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as folder:
        root = Path(folder)
        gateway = CephGateway(root / "ceph").start()
        try:
            gateway.client().create_bucket(Bucket=BUCKET)
            url = f"s3://{BUCKET}/bench?endpoint={gateway.endpoint}&addressing=path"
            os.environ.update(gateway.environment())
            servers = {
                "s3": start_server(root / "s3", "--blobs", url),
                "folder": start_server(root / "folder"),
            }
            try:
                return _measure(servers, sizes, args.runs)
            finally:
                for server in servers.values():
                    server.stop()
        finally:
            gateway.stop()


def _measure(servers: dict, sizes: list[int], runs: int) -> int:
    key = crypto.generate_private_key()
    figures: dict[tuple[str, int], list[float]] = {}
    peaks = {}
    clients = {store: RawClient(server.address, timeout=600) for store, server in servers.items()}
    identities = {store: clients[store].register(f"bench-{store}", key) for store in clients}
    bases = {store: vm_hwm_kib(server.pid) for store, server in servers.items()}
    with Quietness() as quiet:
        for run in range(runs):  # the stores in turn: a noisy neighbour hurts both alike
            for size in sizes:
                data = content(size)
                for store, client in clients.items():
                    client_id, aes_key = identities[store]
                    took = added_after_last_byte(client, client_id, aes_key, f"f{size}-{run}",
                                                 data)
                    figures.setdefault((store, size), []).append(took)
        quiet.sample()
    for store, server in servers.items():
        peaks[store] = (bases[store] / 1024, vm_hwm_kib(server.pid) / 1024)
        clients[store].close()
    rows = [
        [f"{size / MIB:.1f} MiB"] + [f"{median(figures[(store, size)]) * 1000:.0f} ms"
                                      for store in servers]
        for size in sizes
    ]
    print_table("time added after the last byte (median)", ["file", *servers], rows)
    print_table("server peak RSS (VmHWM), before the uploads / after",
                ["store", "before", "after"],
                [[store, f"{before:.0f} MiB", f"{after:.0f} MiB"]
                 for store, (before, after) in peaks.items()])
    checks = [
        Check(f"added after the last byte, {size / MIB:.1f} MiB, ≤ {TARGETS[size] * 1000:.0f} ms",
              f"{median(figures[('s3', size)]) * 1000:.0f} ms",
              median(figures[("s3", size)]) <= TARGETS[size])
        for size in sizes if size in TARGETS
    ]
    return report(checks, quiet)


if __name__ == "__main__":
    sys.exit(main())
