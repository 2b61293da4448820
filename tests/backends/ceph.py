"""A throwaway one-node Ceph cluster with its S3 gateway (radosgw), on 127.0.0.1 only.

``CephGateway(folder).start()`` makes a cluster in ``folder`` from the
installed Debian binaries: one monitor, one OSD (bluestore on a sparse file),
one manager and radosgw with its beast frontend on a free port of 127.0.0.1,
and an S3 user whose keys are :data:`ACCESS_KEY` / :data:`SECRET_KEY`.
``stop()`` ends every daemon it started. Used by the session fixture in
tests/storage/ and by bench scripts; ``missing()`` says what to install.

The settings are the ones a single-node test cluster needs: no cephx
(``auth * required = none``) with CRC framing (radosgw cannot log in
without it), pools of one replica, few placement groups.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

#: The Debian packages the daemons come from.
PACKAGES = ("radosgw", "ceph-mon", "ceph-osd", "ceph-mgr")
INSTALL_LINE = "apt-get install -y --no-install-recommends " + " ".join(PACKAGES)
#: The programs the cluster is made and run with.
PROGRAMS = ("monmaptool", "ceph-mon", "ceph", "ceph-osd", "ceph-mgr", "radosgw", "radosgw-admin")

HOST = "127.0.0.1"
#: The S3 user the tests sign with (a throwaway cluster's: not a secret).
ACCESS_KEY = "cipherdropci"
SECRET_KEY = "cipherdrop-ci-secret-key-not-a-secret"
USER_ID = "ci"
REGION = "us-east-1"
#: radosgw's name in the cluster (its section of ceph.conf).
GATEWAY_NAME = "client.rgw.a"

#: The OSD's block file: sparse, so it takes only what is written.
BLOCK_BYTES = 4 * 1024**3
#: Seconds a step (a daemon's start, the gateway's first answer) may take.
STEP_TIMEOUT = 120.0
_POLL = 0.25
_STOP_TIMEOUT = 20.0
_ADMIN_TIMEOUT = 60.0
_HTTP_OK = 200

_CONF = """\
[global]
fsid = {fsid}
mon initial members = a
mon host = v2:{host}:{mon_port}
public addr = {host}
public network = 127.0.0.0/8
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc
ms client mode = crc
ms cluster mode = crc
ms service mode = crc
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
run dir = {root}/run
admin socket = {root}/run/$name.asok
log file = {root}/log/$name.log
pid file = {root}/run/$name.pid
mon data = {root}/mon/$name
osd data = {root}/osd/$name
mgr data = {root}/mgr/$name
osd objectstore = bluestore
bluestore block create = true
bluestore block size = {block_bytes}
bluestore fsck on mount = false
osd memory target = 939524096
bluestore cache autotune = false
bluestore cache size = 134217728
mgr initial modules =

[{gateway}]
rgw frontends = beast endpoint={host}:{rgw_port} tcp_nodelay=1
rgw data = {root}/rgw/$name
rgw dns name = {host}
rgw enable usage log = false
"""


def missing() -> list[str]:
    """The programs of :data:`PROGRAMS` not on PATH."""
    return [name for name in PROGRAMS if shutil.which(name) is None]


def skip_reason() -> str:
    """Why the Ceph tests cannot run here (with the install line), or empty."""
    absent = missing()
    if not absent:
        return ""
    return f"Ceph is not installed ({', '.join(absent)} missing): {INSTALL_LINE}"


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on now (the OS's choice)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


#: prctl's option that sends a signal to a process when its parent ends (Linux).
_PR_SET_PDEATHSIG = 1


def _end_with_parent() -> None:
    """In a daemon's process before exec: SIGTERM when the process that started it ends."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: stop() ends it, a killed run does not


class CephError(RuntimeError):
    """The cluster could not be made or started (the message names the step and its log)."""


@dataclass
class CephGateway:
    """One monitor, one OSD, one manager and a radosgw in ``root`` (see the module)."""

    root: Path
    rgw_port: int = 0
    mon_port: int = 0
    #: The OSD's block file's size: what the cluster can hold (radosgw frees deleted
    #: objects' space only hours later, in its garbage collection).
    block_bytes: int = BLOCK_BYTES
    _daemons: list[subprocess.Popen] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        """The S3 endpoint's URL."""
        return f"http://{HOST}:{self.rgw_port}"

    @property
    def conf(self) -> Path:
        return self.root / "ceph.conf"

    def environment(self) -> dict[str, str]:
        """AWS variables for a client of this gateway (no instance metadata lookup)."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def client(self):
        """A plain boto3 client of the gateway, path-style (a test's or bench's own view)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}),
        )

    def start(self) -> CephGateway:
        """Make the cluster and start every daemon; return once S3 answers.

        Raises:
            CephError: a step failed or timed out (the cluster is stopped).
        """
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for part in ("run", "log", "mon/mon.a", "osd/osd.0", "mgr/mgr.x", f"rgw/{GATEWAY_NAME}"):
            (self.root / part).mkdir(parents=True, exist_ok=True)
        self.rgw_port = self.rgw_port or free_port()
        self.mon_port = self.mon_port or free_port()
        fsid = str(uuid.uuid4())
        self.conf.write_text(_CONF.format(
            fsid=fsid, host=HOST, mon_port=self.mon_port, rgw_port=self.rgw_port,
            root=self.root, block_bytes=self.block_bytes, gateway=GATEWAY_NAME,
        ))
        monmap = self.root / "monmap"
        self._run("monmaptool", "--create", "--fsid", fsid,
                  "--addv", "a", f"[v2:{HOST}:{self.mon_port}]", str(monmap))
        self._run("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(monmap))
        self._daemon("ceph-mon", "-i", "a")
        osd_id = self._run("ceph", "osd", "create").strip()
        self._run("ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", str(uuid.uuid4()))
        self._daemon("ceph-osd", "-i", osd_id)
        self._run("ceph", "osd", "crush", "add", f"osd.{osd_id}", "1",
                  "root=default", "host=localhost")
        self._daemon("ceph-mgr", "-i", "x")
        self.start_gateway()
        self._run("radosgw-admin", "user", "create", f"--uid={USER_ID}",
                  "--display-name=cipherdrop tests",
                  f"--access-key={ACCESS_KEY}", f"--secret={SECRET_KEY}")

    def start_gateway(self) -> None:
        """Start radosgw (again, after :meth:`stop_gateway`); return once S3 answers.

        Raises:
            CephError: a daemon ended, or no answer in :data:`STEP_TIMEOUT`.
        """
        self._daemon("radosgw", "-n", GATEWAY_NAME)
        self._wait_for_gateway()

    def stop_gateway(self) -> None:
        """Stop radosgw alone (SIGTERM, then SIGKILL): the store is out, its data kept."""
        for daemon in [d for d in self._daemons if d.args[0] == "radosgw"]:
            self._end(daemon)
            self._daemons.remove(daemon)

    def restart_gateway(self) -> None:
        """:meth:`stop_gateway`, then :meth:`start_gateway` on the same port.

        Raises:
            CephError: it did not answer again.
        """
        self.stop_gateway()
        self.start_gateway()

    @staticmethod
    def _end(daemon: subprocess.Popen) -> None:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()

    def _command(self, program: str, *args: str) -> list[str]:
        return [program, "--conf", str(self.conf), *args]

    def _run(self, program: str, *args: str) -> str:
        """Run one administrative command to its end; its standard output."""
        command = self._command(program, *args)
        try:
            done = subprocess.run(command, capture_output=True, text=True,
                                  timeout=_ADMIN_TIMEOUT, check=False)
        except subprocess.TimeoutExpired as exc:
            raise CephError(f"{' '.join(command)}: no end in {_ADMIN_TIMEOUT:.0f} s") from exc
        if done.returncode != 0:
            raise CephError(f"{' '.join(command)}: exit {done.returncode}: "
                            f"{done.stderr.strip()[-2000:]}")
        return done.stdout

    def _daemon(self, program: str, *args: str) -> None:
        """Start a daemon in the foreground of its own process (``-f``), logging to its file.

        It gets SIGTERM if this process dies first (a killed test run leaves no daemon).
        """
        log = (self.root / "log" / f"{program}.out").open("ab")
        self._daemons.append(subprocess.Popen(
            self._command(program, "-f", *args), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_end_with_parent,
        ))
        log.close()

    def _wait_for_gateway(self) -> None:
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            for daemon in self._daemons:
                if daemon.poll() is not None:
                    raise CephError(f"{daemon.args[0]} ended ({daemon.returncode}); "
                                    f"see {self.root / 'log'}")
            try:
                with urllib.request.urlopen(self.endpoint, timeout=_POLL * 8) as answer:
                    if answer.status == _HTTP_OK:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise CephError(f"radosgw gave no answer in {STEP_TIMEOUT:.0f} s; "
                                f"see {self.root / 'log'}")
            time.sleep(_POLL)

    def pids(self) -> list[int]:
        """The running daemons' process ids (monitor, OSD, manager, radosgw)."""
        return [daemon.pid for daemon in self._daemons if daemon.poll() is None]

    def stop(self) -> None:
        """End every daemon started (last first): SIGTERM, then SIGKILL."""
        for daemon in reversed(self._daemons):
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
        for daemon in reversed(self._daemons):
            try:
                daemon.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        self._daemons.clear()


def main() -> None:
    """Start a gateway in a folder given on the command line, until Ctrl-C."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", help="where the cluster lives (default: a temp one)")
    args = parser.parse_args()
    root = Path(args.folder or tempfile.mkdtemp(prefix="ceph-"))
    started = time.monotonic()
    gateway = CephGateway(root).start()
    print(f"radosgw at {gateway.endpoint} in {time.monotonic() - started:.1f} s "
          f"(access key {ACCESS_KEY}); Ctrl-C stops it", flush=True)
    for stop in (signal.SIGINT, signal.SIGTERM):  # SIGINT is ignored in a background job
        signal.signal(stop, signal.default_int_handler)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        gateway.stop()


if __name__ == "__main__":
    main()
