"""A throwaway HAProxy in front of cipherdrop nodes, on loopback, for tests and benches.

The configuration is the one docs/SCALING.md recommends: TCP mode,
``balance source`` with ``hash-type consistent`` (a client's address stays on
one node while that node lives), ``send-proxy-v2`` (the node learns the
client's address from the PROXY header), and health checks that send the
header too (``check-send-proxy``: a LOCAL header, which the node answers by
closing), so that a node that dies loses its clients to the others within
about a check interval. A connection that reaches a dead node before its
checks failed is sent to another node (``option redispatch`` on the last of
its ``retries``). A spare node (:attr:`Backend.spare`) is listed
``disabled``: in maintenance, sent nothing and not checked, until
:meth:`HAProxy.enable` (HAProxy 2.6 starts every other server UP, before its
first check: a spare that is not running would read "UP 1/2" at first).

Run from the installed binary (Debian's ``haproxy``) in the foreground
(``-db``), in a folder of its own; :meth:`HAProxy.stop` ends it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

#: How to get the binary, for a skip message.
INSTALL_LINE = "apt-get install haproxy"
#: Health checks: how often, and after how many failures a node is out.
CHECK_INTERVAL_MS = 200
CHECK_FALLS = 2
CHECK_RISES = 1
#: Connection attempts to a node (the last one to another node: ``option redispatch``).
CONNECT_RETRIES = 2
#: How long to wait for HAProxy to listen.
START_TIMEOUT = 10.0
_POLL = 0.05
#: The backend section's name, and the status column of ``show stat`` (its 18th).
BACKEND_NAME = "nodes"
_STATUS_FIELD = 17


def haproxy_binary() -> str | None:
    """The installed ``haproxy``, or None."""
    return shutil.which("haproxy") or next(
        (str(p) for p in (Path("/usr/sbin/haproxy"),) if p.exists()), None
    )


@dataclass(frozen=True)
class Backend:
    """One cipherdrop node behind the balancer."""

    name: str
    host: str
    port: int
    #: Listed in maintenance (``disabled``) until :meth:`HAProxy.enable`: a node not started yet.
    spare: bool = False

    @property
    def line(self) -> str:
        """Its ``server`` line."""
        return f"server {self.name} {self.host}:{self.port}" + (" disabled" if self.spare else "")


#: How HAProxy tells a node the client's address: the PROXY protocol's version 2 (binary);
#: ``send-proxy`` is version 1 (text).
PROXY_V2 = "send-proxy-v2"


def render_config(
    listen: tuple[str, int], backends: list[Backend], *, stats_socket: Path,
    send_proxy: str = PROXY_V2,
) -> str:
    """The configuration text (also shown in docs/SCALING.md)."""
    host, port = listen
    lines = [
        "global",
        f"    stats socket {stats_socket} mode 600 level admin",
        "    maxconn 4096",
        "defaults",
        "    mode tcp",
        "    timeout connect 2s",
        "    timeout client 1h",
        "    timeout server 1h",
        "    timeout check 1s",
        f"    retries {CONNECT_RETRIES}",
        "    option redispatch",
        "frontend drop",
        f"    bind {host}:{port}",
        f"    default_backend {BACKEND_NAME}",
        f"backend {BACKEND_NAME}",
        "    balance source",
        "    hash-type consistent",
        f"    default-server {send_proxy} check check-send-proxy inter {CHECK_INTERVAL_MS}"
        f" fall {CHECK_FALLS} rise {CHECK_RISES}",
    ]
    lines += [f"    {backend.line}" for backend in backends]
    return "\n".join(lines) + "\n"


class HAProxy:
    """A running HAProxy; :meth:`stop` ends it."""

    def __init__(
        self, folder: Path, listen: tuple[str, int], backends: list[Backend],
        send_proxy: str = PROXY_V2,
    ) -> None:
        binary = haproxy_binary()
        if binary is None:
            raise FileNotFoundError(f"haproxy is not installed ({INSTALL_LINE})")
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.listen = listen
        self.backends = list(backends)
        self.stats_socket = folder / "admin.sock"
        self.config = folder / "haproxy.cfg"
        self.config.write_text(render_config(
            listen, backends, stats_socket=self.stats_socket, send_proxy=send_proxy,
        ))
        self.log = (folder / "haproxy.log").open("wb")
        self.process = subprocess.Popen(
            [binary, "-db", "-f", str(self.config)],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited: {self.log_text()}")
            try:
                with socket.create_connection(self.listen, timeout=_POLL):
                    return
            except OSError:
                time.sleep(_POLL)
        self.stop()
        raise RuntimeError("haproxy did not start listening")

    def admin(self, command: str) -> str:
        """One command on the runtime API (``show servers state``, ``disable server nodes/a``)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.stats_socket))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def enable(self, name: str) -> None:
        """Take ``name`` out of maintenance: UP at once (started: its checks keep it so)."""
        self._server_command("enable server", name)

    def disable(self, name: str) -> None:
        """Put ``name`` in maintenance: no new connection goes to it, nor a check."""
        self._server_command("disable server", name)

    def _server_command(self, command: str, name: str) -> None:
        answer = self.admin(f"{command} {BACKEND_NAME}/{name}").strip()
        if answer:  # the runtime API answers a done command with nothing
            raise RuntimeError(f"haproxy refused {command} {name}: {answer}")

    def server_states(self) -> dict[str, str]:
        """Each backend's name and state: "UP", "DOWN", "MAINT", "UP 1/2" (going down), ..."""
        states = {}
        for line in self.admin("show stat").splitlines():
            fields = line.split(",")
            if len(fields) > _STATUS_FIELD and fields[0] == BACKEND_NAME and fields[1] != "BACKEND":
                states[fields[1]] = fields[_STATUS_FIELD]
        return states

    def wait_state(self, name: str, state: str, timeout: float = 10.0) -> None:
        """Wait until HAProxy shows ``name`` in exactly ``state`` ("UP 1/2" is not "UP")."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server_states().get(name) == state:
                return
            time.sleep(_POLL)
        raise TimeoutError(f"{name} not {state}: {self.server_states()}")

    def log_text(self) -> str:
        self.log.flush()
        return (self.folder / "haproxy.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
