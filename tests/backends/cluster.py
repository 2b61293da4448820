"""A cipherdrop cluster on one machine, on loopback only: the tested deployment of docs/SCALING.md.

The pieces, each started from its installed binary in a folder of its own:

* a throwaway PostgreSQL (:mod:`backends.postgres`) holding the metadata;
* a one-node Ceph radosgw (:mod:`backends.ceph`) holding the files;
* two or three cipherdrop nodes, each on its own 127.0.0.x address
  (``--metadata postgresql://…``, ``--blobs s3://…``,
  ``--proxy-protocol-from 127.0.0.1``, ``--node-name``);
* HAProxy (:mod:`backends.haproxy`) in front, on 127.0.0.1: ``balance
  source``, ``hash-type consistent``, ``send-proxy-v2``.

Nothing binds or connects outside 127.0.0.0/8, and no network namespace is
used (a client in the root namespace toward an address inside one would
leave the machine by the default route).

By hand::

    python tests/backends/cluster.py --nodes 3      # starts it, prints where, Ctrl-C stops

The tests start one cluster per test session (tests/conftest.py,
``cluster``) and reuse it; a test that kills a node starts it again.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

if __name__ == "__main__":  # run as a script: the test helpers are imported as the tests do
    # tests/ for the helpers, then the checkout before it (tests/protocol/ is not the package)
    sys.path[:0] = [str(Path(__file__).resolve().parents[i]) for i in (2, 1)]

from helpers import STOP_TIMEOUT, ServerProcess, free_port, server_env, start_server

from backends.ceph import CephGateway
from backends.haproxy import Backend, HAProxy
from backends.postgres import PostgresCluster

#: HAProxy's address; it reaches the nodes from here, so the nodes trust headers from it.
BALANCER_HOST = "127.0.0.1"
#: Node i listens on 127.0.0.(NODE_HOST_BASE + i).
NODE_HOST_BASE = 11
#: The bucket the nodes share, and each deployment's prefix in it.
BUCKET = "cipherdrop"
PREFIX = "files"
DATABASE = "cipherdrop"
DEFAULT_NODES = 2
#: HAProxy's states of a node: serving, out by its checks, in maintenance (a spare).
UP, DOWN, MAINTENANCE = "UP", "DOWN", "MAINT"
#: Seconds ``admin verify`` may take.
ADMIN_TIMEOUT = 120
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def node_host(index: int) -> str:
    """The loopback address of node ``index``."""
    return f"127.0.0.{NODE_HOST_BASE + index}"


def node_name(index: int) -> str:
    """Node ``index``'s name: its ``--node-name`` and its server's in HAProxy."""
    return f"node{index}"


@dataclass
class Cluster:
    """Running pieces; :meth:`stop` ends what this object started."""

    folder: Path
    postgres: PostgresCluster
    gateway: CephGateway
    metadata_url: str
    blobs_url: str
    #: Node index -> its server process (a stopped one stays until restarted).
    nodes: dict[int, ServerProcess] = field(default_factory=dict)
    ports: dict[int, int] = field(default_factory=dict)
    balancer: HAProxy | None = None
    #: Whether stop() ends the database and the store (started here, not given).
    owns_services: bool = False

    @classmethod
    def start(
        cls, folder: Path, nodes: int = DEFAULT_NODES, *,
        postgres: PostgresCluster | None = None, gateway: CephGateway | None = None,
        spare_nodes: int = 1,
    ) -> Cluster:
        """Start (or reuse) the database and the store, ``nodes`` nodes and HAProxy.

        HAProxy knows ``spare_nodes`` more, in maintenance (``disabled``) until
        :meth:`start_node` starts them (adding a node).
        """
        owns = postgres is None and gateway is None
        postgres = postgres or PostgresCluster.start()
        gateway = gateway or CephGateway(folder / "ceph").start()
        metadata_url = postgres.database(f"{DATABASE}_{free_port(BALANCER_HOST)}")
        bucket = f"{BUCKET}-{free_port(BALANCER_HOST)}"
        gateway.client().create_bucket(Bucket=bucket)
        blobs_url = (f"s3://{bucket}/{PREFIX}?endpoint={gateway.endpoint}"
                     f"&region=us-east-1&addressing=path")
        cluster = cls(folder, postgres, gateway, metadata_url, blobs_url, owns_services=owns)
        try:
            total = nodes + spare_nodes
            cluster.ports = {i: free_port(node_host(i)) for i in range(total)}
            for index in range(nodes):
                cluster.start_node(index)
            backends = [Backend(node_name(i), node_host(i), cluster.ports[i], spare=i >= nodes)
                        for i in range(total)]
            cluster.balancer = HAProxy(
                folder / "haproxy", (BALANCER_HOST, free_port(BALANCER_HOST)), backends
            )
            for index in range(total):
                cluster.balancer.wait_state(node_name(index), UP if index < nodes else MAINTENANCE)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def bucket(self) -> str:
        """The bucket the nodes share."""
        return self.blobs_url.split("/")[2]

    @property
    def address(self) -> tuple[str, int]:
        """Where clients connect: HAProxy."""
        assert self.balancer is not None
        return self.balancer.listen

    def node_flags(self, index: int) -> list[str]:
        """A node's flags beside the test servers' usual ones."""
        return [
            "--metadata", self.metadata_url,
            "--blobs", self.blobs_url,
            "--proxy-protocol-from", BALANCER_HOST,
            "--node-name", node_name(index),
        ]

    def start_node(self, index: int) -> ServerProcess:
        """Start node ``index`` (again) on its address and port, listening before HAProxy
        sends it anything (a spare leaves maintenance then: adding a node)."""
        node = start_server(
            self.folder / node_name(index), *self.node_flags(index),
            port=self.ports[index], host=node_host(index), env=self.gateway.environment(),
        )
        self.nodes[index] = node
        if self.balancer is not None:
            self.balancer.enable(node_name(index))
            self.balancer.wait_state(node_name(index), UP)
        return node

    def kill_node(self, index: int) -> None:
        """SIGKILL node ``index`` (a crash), and wait until HAProxy's checks see it down."""
        self.nodes[index].kill()
        if self.balancer is not None:
            self.balancer.wait_state(node_name(index), DOWN)

    def retire_node(self, index: int) -> None:
        """Put node ``index`` in maintenance in HAProxy, then stop it (SIGTERM): a spare again."""
        if self.balancer is not None:
            self.balancer.disable(node_name(index))
            self.balancer.wait_state(node_name(index), MAINTENANCE)
        self.nodes[index].stop(signal.SIGTERM)

    def live_nodes(self) -> list[int]:
        """The indexes of the nodes running now."""
        return [i for i, node in self.nodes.items() if node.process.poll() is None]

    def node_that_logged(self, text: str) -> int | None:
        """The running node whose log holds ``text`` (a unique client name: who served it)."""
        found = [i for i in self.live_nodes() if text in self.nodes[i].log()]
        assert len(found) <= 1, f"{text!r} in the logs of nodes {found}"
        return found[0] if found else None

    def as_server(self) -> ClusterServer:
        """The cluster as the tests of one server see one: an address, its stores, a log."""
        return ClusterServer(self)

    def verify(self) -> subprocess.CompletedProcess:
        """``admin verify`` on the cluster's stores: every file row against its blob."""
        return subprocess.run(
            [sys.executable, "-m", "server", "admin", "verify", "--data-dir", str(self.folder),
             "--metadata", self.metadata_url, "--blobs", self.blobs_url],
            capture_output=True, text=True, timeout=ADMIN_TIMEOUT, stdin=subprocess.DEVNULL,
            env={**server_env(), **self.gateway.environment()},
        )

    def stop(self) -> None:
        """Stop HAProxy and the nodes (and the database and store if started here)."""
        try:
            if self.balancer is not None:
                self.balancer.stop()
            running = [node for node in self.nodes.values() if node.process.poll() is None]
            for node in running:  # all drain at once
                node.process.send_signal(signal.SIGTERM)
            for node in running:
                try:
                    node.process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:  # a drain that outlasts it: end it
                    node.kill()
        finally:
            if self.owns_services:
                try:
                    self.gateway.stop()
                finally:
                    self.postgres.stop()


class ClusterServer:
    """The cluster behind HAProxy, with the attributes the edition tests read of a server
    (tests/edition_helpers.py): where to connect, the stores, the nodes' logs together."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.address = cluster.address
        self.metadata: str | None = cluster.metadata_url
        self.blobs: str | None = cluster.blobs_url
        self.data_dir = cluster.folder
        self.env = cluster.gateway.environment()

    def log(self) -> str:
        """What the running nodes logged, one node after the other."""
        return "".join(self.cluster.nodes[i].log() for i in self.cluster.live_nodes())


def main() -> None:
    """Start a cluster, print where its pieces are, and stop it on Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--nodes", type=int, default=DEFAULT_NODES, choices=range(1, 10))
    parser.add_argument("--folder", type=Path, help="where the pieces keep their files"
                        " (default: a new temporary folder, deleted at the end)")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="cipherdrop-cluster-"))
    # Both stop it through KeyboardInterrupt: during the start too (Cluster.start stops what
    # it started). Not a blocked signal mask: the daemons would inherit it and ignore SIGTERM.
    for stop in _STOP_SIGNALS:
        signal.signal(stop, signal.default_int_handler)
    try:
        cluster = Cluster.start(folder, args.nodes, spare_nodes=0)
        try:
            host, port = cluster.address
            print(f"HAProxy: {host}:{port}  (python -m client --server {host}:{port} …)")
            for index, node in cluster.nodes.items():
                print(f"{node_name(index)}: {node.host}:{node.port}  log {node.log_path}")
            print(f"metadata: {cluster.metadata_url}\nblobs: {cluster.blobs_url}\n"
                  "Ctrl-C stops it", flush=True)
            signal.pause()
        finally:
            cluster.stop()
    except KeyboardInterrupt:
        pass
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
