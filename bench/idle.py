"""Idle-connections benchmark: 10,000 silent connections and one normal client.

First a normal client runs its flow (825, 826 with a ready key, one 64 KiB
file in one 828, 900) ``--flows`` times on a fresh connection each, with no
other connection open; then 10,000 connections (``--idle``) connect and stay
silent, and the same flows run again beside them. Descriptor limits are raised
as needed (the server gets ``--max-connections`` to match and raises its own
limit). The idle connections are opened within the server's ``no request``
deadline (30 s), and the measurement ends before it.

Prints the median flow time without and with the idle connections, their
ratio, and the server's RSS (VmRSS with the connections open, VmHWM at the
end). Targets: server RSS ≤ 256 MiB, and the flow with idle connections within
20 % of the flow without. Exits 1 if one is missed.

    python bench/idle.py
    python bench/idle.py --idle 5000 --flows 30
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from common import (
    Check, RawClient, median, print_table, raise_fd_limit, report, start_server,
    vm_hwm_kib, vm_rss_kib,
)

from protocol import Acknowledged, CrcOk, FileReceived, SendFilePacket, cksum, crypto

FILE_SIZE = 64 * 1024
TARGET_RSS_MIB = 256
TARGET_SLOWDOWN = 1.20
FD_MARGIN = 512
#: The server closes a connection that sent nothing for this long (its default
#: --message-deadline); connecting and measuring must fit in it.
NO_REQUEST_DEADLINE = 30.0


def flow(address, name: str, key, payload: bytes) -> float:
    """One whole client session on a new connection; its duration in seconds."""
    started = time.perf_counter()
    client = RawClient(address)
    try:
        client_id, aes_key = client.register(name, key)
        content = crypto.encrypt(aes_key, payload)
        answer = client.request(SendFilePacket(
            client_id=client_id, content_size=len(content), orig_file_size=len(payload),
            packet_number=1, total_packets=1, file_name="file.bin", content=content))
        if not isinstance(answer, FileReceived) or answer.cksum != cksum(payload):
            raise RuntimeError(f"828 answered {answer!r}")
        answer = client.request(CrcOk(client_id=client_id, file_name="file.bin"))
        if not isinstance(answer, Acknowledged):
            raise RuntimeError(f"900 answered {answer!r}")
    finally:
        client.close()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=10_000, help="silent connections")
    parser.add_argument("--flows", type=int, default=20, help="normal flows each way (median)")
    args = parser.parse_args()
    raise_fd_limit(args.idle + FD_MARGIN)
    key = crypto.generate_private_key()
    payload = os.urandom(FILE_SIZE)
    idle: list[socket.socket] = []
    with tempfile.TemporaryDirectory(prefix="cipherdrop-idle-") as temp:
        flags = ["--max-connections", str(args.idle + FD_MARGIN)]
        with start_server(Path(temp) / "server", *flags) as server:
            flow(server.address, "warmup", key, payload)
            alone = [flow(server.address, f"alone{i}", key, payload) for i in range(args.flows)]
            rss_before = vm_rss_kib(server.pid) / 1024
            opened = time.monotonic()
            try:
                for _ in range(args.idle):
                    idle.append(socket.create_connection(server.address, timeout=30))
                # Let the server accept them all before measuring.
                time.sleep(1.0)
                connect_seconds = time.monotonic() - opened
                beside = [flow(server.address, f"beside{i}", key, payload)
                          for i in range(args.flows)]
                rss = vm_rss_kib(server.pid) / 1024
                in_time = time.monotonic() - opened < NO_REQUEST_DEADLINE
                alive = sum(1 for sock in idle if _still_open(sock))
            finally:
                for sock in idle:
                    sock.close()
            hwm = vm_hwm_kib(server.pid) / 1024
    ratio = median(beside) / median(alone)
    print_table(
        f"normal flow (825, 826, 64 KiB in one 828, 900), median of {args.flows}",
        ["", "flow ms", "server RSS MiB"],
        [["no idle connections", f"{median(alone) * 1e3:.1f}", f"{rss_before:.1f}"],
         [f"{args.idle} idle connections", f"{median(beside) * 1e3:.1f}", f"{rss:.1f}"]],
    )
    print(f"{args.idle} connections opened in {connect_seconds:.1f} s; {alive} still open at the"
          f" end; server peak RSS (VmHWM) {hwm:.1f} MiB; slowdown {ratio:.2f} ×")
    return report([
        Check(f"{args.idle} idle connections held", f"{alive} open",
              alive == args.idle and in_time),
        Check(f"server RSS ≤ {TARGET_RSS_MIB} MiB", f"{hwm:.1f} MiB", hwm <= TARGET_RSS_MIB),
        Check(f"flow within {TARGET_SLOWDOWN:.2f} × of the flow alone", f"{ratio:.2f} ×",
              ratio <= TARGET_SLOWDOWN),
    ])


def _still_open(sock: socket.socket) -> bool:
    """Whether the server has not closed this connection (no EOF waiting)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
