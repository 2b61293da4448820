"""End-to-end upload benchmark: ``python -m client`` → ``python -m server``.

Starts the server on 127.0.0.1 in a temporary folder, makes a file of the
asked size, runs the client as a new user in its own folder (first run:
825/826, then the upload), and prints the throughput and the client's peak
RSS (from ``wait4``), with the server's (VmHWM) beside it.

    python bench/client_upload.py                 # 1 GiB
    python bench/client_upload.py --size-mib 256 --packet-size 262144
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
MB = 1_000_000
#: Random bytes repeated to fill the file: fast to write, not compressible.
PATTERN_SIZE = 16 * MIB
START_TIMEOUT = 20.0
POLL_INTERVAL = 0.05


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(process: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(POLL_INTERVAL)
    sys.exit("the server did not start listening")


def _vm_hwm_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _make_file(path: Path, size: int) -> None:
    pattern = os.urandom(PATTERN_SIZE)
    with path.open("wb") as handle:
        left = size
        while left:
            left -= handle.write(pattern[: min(left, PATTERN_SIZE)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="file size (default 1024)")
    parser.add_argument("--packet-size", type=int, help="client --packet-size")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cipherdrop-bench-") as temp:
        root = Path(temp)
        server_dir, home = root / "server", root / "user"
        server_dir.mkdir()
        home.mkdir()
        size = args.size_mib * MIB
        _make_file(home / "payload.bin", size)
        port = _free_port()
        (home / "transfer.info").write_text(f"127.0.0.1:{port}\nbench\npayload.bin\n")
        server = subprocess.Popen(
            [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port),
             "--data-dir", str(server_dir)],
            env=_env(), cwd=server_dir, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            _wait_listening(server, port)
            command = [sys.executable, "-m", "client", "--quiet", "--timeout", "120"]
            if args.packet_size:
                command += ["--packet-size", str(args.packet_size)]
            started = time.perf_counter()
            client = subprocess.Popen(command, cwd=home, env=_env(), stdin=subprocess.DEVNULL)
            _, status, usage = os.wait4(client.pid, 0)
            seconds = time.perf_counter() - started
            server_hwm = _vm_hwm_kib(server.pid)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            print(f"client exited with {code}", file=sys.stderr)
            return 1
        stored = list((server_dir / "received_files").glob("*/payload.bin"))
        assert stored and stored[0].stat().st_size == size, "stored file missing or short"
        # ru_maxrss is in KiB on Linux.
        print(f"file            {args.size_mib} MiB ({size} bytes)")
        print(f"end to end      {seconds:.2f} s = {size / MB / seconds:.0f} MB/s"
              " (register + key exchange + upload + 1603 + 900)")
        print(f"client peak RSS {usage.ru_maxrss / 1024:.1f} MiB")
        print(f"client CPU      {usage.ru_utime + usage.ru_stime:.2f} s")
        if server_hwm is not None:
            print(f"server peak RSS {server_hwm / 1024:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
