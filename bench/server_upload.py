"""Server upload benchmark: one big file over loopback into ``python -m server``.

The file is encrypted beforehand into a temp file and sent with
``socket.sendfile``, so the figure is the server's (decrypt, cksum, write,
fsync), not the client's encryption. Prints MB/s from the first byte to the
1603, and the server's peak RSS (VmHWM) before and after.

    python bench/server_upload.py                        # 1 GiB, 1 MiB packets
    python bench/server_upload.py --size-mib 256 --packet-size 0   # one packet
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from helpers import make_identity, start_server  # noqa: E402
from protocol import ClientConnection, Cksum, FilePacketStarted, SendFilePacket  # noqa: E402,F401
from protocol import crypto  # noqa: E402

MIB = 1024 * 1024
MB = 1_000_000
PATTERN = os.urandom(16 * MIB)


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set size of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def encrypt_to(path: Path, aes_key: bytes, size: int) -> int:
    """Write the ciphertext of ``size`` pattern bytes; return the plaintext cksum."""
    encryptor = crypto.CbcEncryptor(aes_key)
    checksum = Cksum()
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = PATTERN[: min(left, len(PATTERN))]
            checksum.update(chunk)
            out.write(encryptor.update(chunk))
            left -= len(chunk)
        out.write(encryptor.finalize())
    return checksum.value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--packet-size", type=int, default=MIB, help="0: one packet")
    args = parser.parse_args()
    size = args.size_mib * MIB
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        server = start_server(tmp / "data")
        try:
            client = server.client()
            identity = make_identity(client)
            cipher_path = tmp / "file.enc"
            expected = encrypt_to(cipher_path, identity.aes_key, size)
            content_size = cipher_path.stat().st_size
            packet = args.packet_size or content_size
            total = (content_size + packet - 1) // packet
            conn = ClientConnection()
            before = vm_hwm_kib(server.process.pid)
            client.sock.settimeout(None)
            started = time.perf_counter()
            with open(cipher_path, "rb") as source:
                for number in range(1, total + 1):
                    offset = (number - 1) * packet
                    count = min(packet, content_size - offset)
                    head = conn.send(SendFilePacket(
                        client_id=identity.client_id, content_size=content_size,
                        orig_file_size=size, packet_number=number, total_packets=total,
                        file_name="big.bin", content=b""))
                    header = bytearray(head)
                    # payload_size must count the content that follows
                    header[19:23] = (len(head) - 23 + count).to_bytes(4, "little")
                    client.sock.sendall(header)
                    client.sock.sendfile(source, offset, count)
            answer = client.receive(timeout=600)
            elapsed = time.perf_counter() - started
            after = vm_hwm_kib(server.process.pid)
            ok = getattr(answer, "cksum", None) == expected
            print(f"file {args.size_mib} MiB, packets of {packet} bytes ({total})")
            print(f"answer {type(answer).__name__}, cksum {'ok' if ok else 'MISMATCH'}")
            print(f"elapsed {elapsed:.2f} s, {size / MB / elapsed:.0f} MB/s")
            print(f"server VmHWM before {before / 1024:.1f} MiB, after {after / 1024:.1f} MiB")
            client.close()
            return 0 if ok else 1
        finally:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
