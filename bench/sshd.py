"""A private OpenSSH server on 127.0.0.1, for the scp baseline of the benchmarks.

Everything (config, host key, client key, authorized_keys, pid file) lives in
a temporary folder; the daemon runs in the foreground on a free port and is
stopped when the context ends. Needs Debian's ``openssh-server``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

from common import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
#: The ciphers the performance issue asks to compare; the fastest one counts.
SCP_CIPHERS = ("aes256-gcm@openssh.com", "aes256-ctr", "chacha20-poly1305@openssh.com")
START_TIMEOUT = 10.0


def _wait_listening(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on port {port} within {timeout} s")


class PrivateSshd:
    """A running private sshd and the scp command line that reaches it."""

    def __init__(self, folder: Path, port: int, client_key: Path) -> None:
        self.folder = folder
        self.port = port
        self.client_key = client_key

    def scp(self, source: Path | Sequence[Path], destination: Path, cipher: str) -> None:
        """Copy a file (or several, into a folder) to the private server with ``scp -O``.

        Several files go in one scp command, one after another on one
        connection: scp's own way of sending many files.
        """
        sources = [source] if isinstance(source, Path) else list(source)
        subprocess.run(
            [
                "scp", "-O", "-q", "-c", cipher, "-P", str(self.port),
                "-i", str(self.client_key),
                "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes",
                "-o", "Compression=no",
                *map(str, sources), f"{_user()}@127.0.0.1:{destination}",
            ],
            check=True,
        )


def _user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


@contextlib.contextmanager
def private_sshd() -> Iterator[PrivateSshd]:
    """Start sshd with its own config and keys in a temporary folder."""
    if not Path(SSHD).exists():
        raise RuntimeError("sshd not found: apt-get install openssh-server")
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    with tempfile.TemporaryDirectory(prefix="cipherdrop-sshd-") as tmp:
        folder = Path(tmp)
        host_key = folder / "host_ed25519"
        client_key = folder / "client_ed25519"
        for key in (host_key, client_key):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                check=True,
            )
        authorized = folder / "authorized_keys"
        authorized.write_text(client_key.with_suffix(".pub").read_text())
        authorized.chmod(0o600)
        port = free_port()
        config = folder / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {host_key}",
                    f"AuthorizedKeysFile {authorized}",
                    f"PidFile {folder / 'sshd.pid'}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin prohibit-password",
                    "StrictModes no",
                    "UsePAM no",
                    "Compression no",
                    f"Ciphers {','.join(SCP_CIPHERS)}",
                    "",
                ]
            )
        )
        daemon = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_listening(port, START_TIMEOUT)
            yield PrivateSshd(folder, port, client_key)
        finally:
            daemon.terminate()
            daemon.wait(timeout=10)
