"""The cluster benchmark: two nodes behind HAProxy, files in radosgw, metadata in PostgreSQL.

Starts the tested deployment on loopback (tests/backends/cluster.py: a
throwaway PostgreSQL, a one-node Ceph radosgw, two cipherdrop nodes on
127.0.0.11 and 127.0.0.12, HAProxy with ``balance source`` and
``send-proxy-v2`` on 127.0.0.1; needs ``apt-get install postgresql haproxy
radosgw ceph-mon ceph-osd ceph-mgr``) and prints, side by side in one run,
each figure with its target's verdict (issue 27):

* **one node vs two**: the sessions of bench/sessions.py (825, 826, a 64 KiB
  file, 900 on a connection of its own), N at once, each from its own
  source address 127.0.2.x so that ``balance source`` spreads them; for one
  node the other is put in maintenance on HAProxy's admin socket. Sessions
  per second, and the server's CPU per session (the nodes' and their
  database backends'; HAProxy's beside it), and every part's CPU per
  session with the cores' use (what bounds the rate). Two nodes ÷ one ≥ 1.4.
* **a 1 GiB upload through the cluster** (the real client, its whole run:
  encryption, 827, 828s, 1603, 900) vs the store's own multipart PUT of
  the same file by the nodes' S3 client library alone (minio's
  ``fput_object``, its parts as a node sends one upload's:
  ``PART_BYTES``, 5 MiB, and ``MAX_PARTS_IN_FLIGHT``, 2 in flight while
  the next is read; minio also hashes each part, SHA-256 over plain HTTP,
  which a node does not). The two in turn in every run, the one first
  alternated from run to run, so that the machine's drift hurts both
  alike. ≥ 0.8.
  Beside it, the CPU each part of the machine used during each (the
  client, the nodes, Ceph's daemons, HAProxy, this process: minio's PUT),
  against what the two cores give in that time: what bounds the rate. Two
  bounds are printed: the path's CPU ÷ the cores, the least time the
  machine allows it (the best ratio against the PUT's time), and the PUT's
  CPU ÷ the path's, the ratio when both fill the cores (then each rate
  follows the CPU it needs, and the figure says how much CPU the path
  needs, not how the node waits).
* **the time added after the last byte**, 5 MB and 256 MiB, through
  HAProxy (bench/s3.py's measure). ≤ 150 ms / ≤ 500 ms.
* **peak RSS per node during four concurrent 1 GiB uploads** (four real
  clients at once; all from 127.0.0.1, so HAProxy sends them to one node:
  the worst case). Each node's peak is reset (``/proc/PID/clear_refs``)
  before the uploads. ≤ 64 MiB.

Medians of ``--runs`` runs (the four uploads: one run), the measures in
turn within each run; ``--measures`` picks some of them. The machine's
load is printed, and each target's row the other processes' share of the
cores during its own measures (bench/common.py NoiseTally): no verdict for
a row whose share was over 10 %, exit 1 if a judged target is missed, else
2 if a row had no verdict. About 5 minutes on a quiet 2-core machine;
``--quick`` scales everything down (no verdict on sizes other than the
targets').

    python bench/cluster.py
    python bench/cluster.py --quick
    python bench/cluster.py --runs 5 --measures upload
    python bench/cluster.py --runs 1 --clients 100 --upload-mib 256 --concurrent-mib 256
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from common import (
    MB, MIB, REPO, Check, NoiseTally, Quietness, RawClient, cpu_seconds, make_file, median,
    print_table, report, settle, timed_client_run, vm_hwm_kib, vm_rss_kib,
)
from s3 import TARGETS as ADDED_TARGETS, added_after_last_byte, content
from sessions import FILE_SIZE, KEY_POOL, Shared, database_backends, run_once

sys.path.insert(0, str(REPO / "tests"))

from backends.ceph import ACCESS_KEY, REGION, SECRET_KEY, CephGateway  # noqa: E402
from backends.ceph import skip_reason as ceph_missing  # noqa: E402
from backends.cluster import Cluster  # noqa: E402
from backends.haproxy import INSTALL_LINE as HAPROXY_INSTALL_LINE  # noqa: E402
from backends.haproxy import haproxy_binary  # noqa: E402
from backends.postgres import INSTALL_LINE as POSTGRES_INSTALL_LINE  # noqa: E402
from backends.postgres import PostgresCluster, find_binaries  # noqa: E402

from protocol import cksum, crypto  # noqa: E402
from server.storage.s3.upload import MAX_PARTS_IN_FLIGHT, PART_BYTES  # noqa: E402

NODES = 2
#: The node HAProxy's maintenance takes out for the one-node figures.
SECOND_NODE = "node1"
#: The sessions' source addresses: 127.0.2.1 onwards, one per session.
FIRST_SOURCE = ipaddress.IPv4Address("127.0.2.1")
#: Concurrent uploads for the peak RSS.
CONCURRENT_UPLOADS = 4
TARGET_SCALING = 1.4
TARGET_VS_STORE = 0.8
TARGET_RSS_MIB = 64
CLIENT_TIMEOUT = 900
#: Room in the OSD beyond what the runs write (radosgw frees deleted objects hours later).
STORE_MARGIN = 2 * 1024**3
#: How often the nodes' RSS is sampled during the concurrent uploads (seconds).
RSS_SAMPLE_INTERVAL = 0.1
#: ``prctl`` option: orphaned descendants (PostgreSQL's daemonized postmaster) become
#: this process's children, so that Quietness counts them as the benchmark's own.
_PR_SET_CHILD_SUBREAPER = 36
#: Writing this to /proc/PID/clear_refs resets the process's peak RSS (VmHWM).
_RESET_PEAK = b"5"
_MS = 1000.0
#: --quick: these settings, and no wait for TIME_WAIT to clear between session runs.
QUICK = {"runs": 1, "clients": 50, "upload_mib": 64, "concurrent_mib": 64,
         "sizes_mib": [5 * MB / MIB, 32]}
#: What ``--measures`` picks from: one node vs two, the upload vs the store's PUT, the time
#: added after the last byte, the peak RSS of the concurrent uploads.
MEASURES = ("sessions", "upload", "added", "rss")


def missing() -> str:
    """What to install for the cluster, or an empty string."""
    needs = [ceph_missing()] if ceph_missing() else []
    if haproxy_binary() is None:
        needs.append(f"haproxy is not installed ({HAPROXY_INSTALL_LINE})")
    if find_binaries() is None:
        needs.append(f"PostgreSQL is not installed ({POSTGRES_INSTALL_LINE})")
    return "; ".join(needs)


def become_subreaper() -> None:
    """Adopt orphaned descendants (see :data:`_PR_SET_CHILD_SUBREAPER`)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reset_peak_rss(pid: int) -> None:
    """Start the process's VmHWM again from its current RSS."""
    Path(f"/proc/{pid}/clear_refs").write_bytes(_RESET_PEAK)


#: The parts of the machine whose CPU is counted (:func:`cpu_snapshot`), in print order.
CPU_PARTS = ("clients", "nodes", "PostgreSQL", "Ceph", "HAProxy", "this process")


def cpu_snapshot(cluster: Cluster) -> dict[str, float]:
    """CPU seconds used so far by each part of the machine: the client runs this process
    waited for, the nodes, PostgreSQL (its postmaster's children), Ceph's daemons, HAProxy,
    and this process (the load generator, minio's PUT). A process that ended between two
    snapshots is counted where it was reaped (PostgreSQL's backends: by the postmaster)."""
    assert cluster.balancer is not None
    children = os.times()
    postmaster = cluster.postgres.postmaster_pid()
    return {
        "clients": children.children_user + children.children_system,
        "nodes": cpu_of([node.process.pid for node in cluster.nodes.values()]),
        "PostgreSQL": cpu_seconds(postmaster, reaped_children=True)
        + live_cpu(children_of(postmaster)),
        "Ceph": cpu_of(cluster.gateway.pids()),
        "HAProxy": cpu_of([cluster.balancer.process.pid]),
        "this process": time.process_time(),
    }


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def live_cpu(pids: list[int]) -> float:
    """CPU seconds of those of the processes still there."""
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:
            pass  # it ended meanwhile
    return total


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds each part used between two snapshots."""
    return {part: after[part] - before[part] for part in CPU_PARTS}


@dataclass
class Figures:
    """Everything measured, by measure."""

    sessions: dict[int, list[dict]] = field(default_factory=lambda: {1: [], NODES: []})
    haproxy_ms: dict[int, list[float]] = field(default_factory=lambda: {1: [], NODES: []})
    spread: dict[str, int] = field(default_factory=dict)
    upload: list[float] = field(default_factory=list)
    store_put: list[float] = field(default_factory=list)
    added: dict[int, list[float]] = field(default_factory=dict)
    #: Node name -> (RSS before the uploads, peak during them), MiB.
    rss: dict[str, tuple[float, float]] = field(default_factory=dict)
    concurrent_seconds: float = 0.0
    #: Measure -> (seconds, CPU seconds by part): the upload, the store's PUT, the sessions.
    cpu: dict[str, list[tuple[float, dict[str, float]]]] = field(default_factory=dict)
    #: Measure (:data:`MEASURES`) -> the other processes' share during its runs only.
    noise: dict[str, NoiseTally] = field(
        default_factory=lambda: {name: NoiseTally() for name in MEASURES})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each measure (median)")
    parser.add_argument("--clients", type=int, default=200, help="sessions at once (N)")
    parser.add_argument("--upload-mib", type=int, default=1024,
                        help="the upload compared with the store's own PUT (default 1024)")
    parser.add_argument("--concurrent-mib", type=int, default=1024,
                        help=f"each of the {CONCURRENT_UPLOADS} concurrent uploads (default 1024)")
    parser.add_argument("--sizes-mib", type=float, nargs="*",
                        help="sizes for the time added after the last byte"
                        " (default: 5 MB and 256 MiB)")
    parser.add_argument("--measures", nargs="+", choices=MEASURES, default=list(MEASURES),
                        help="which measures to run (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run: " + ", ".join(f"{k} {v}" for k, v in QUICK.items()))
    args = parser.parse_args()
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    sizes = ([int(size * MIB) for size in args.sizes_mib] if args.sizes_mib
             else list(ADDED_TARGETS))
    reason = missing()
    if reason:
        sys.exit(reason)
    become_subreaper()
    written = (2 * args.runs * args.upload_mib * MIB + CONCURRENT_UPLOADS * args.concurrent_mib
               * MIB + args.runs * sum(sizes) + args.runs * 2 * args.clients * FILE_SIZE)
    root = Path(tempfile.mkdtemp(prefix="cipherdrop-bench-cluster-"))
    postgres = gateway = cluster = None
    try:
        postgres = PostgresCluster.start()
        gateway = CephGateway(root / "ceph", block_bytes=written + STORE_MARGIN).start()
        cluster = Cluster.start(root / "cluster", NODES, postgres=postgres, gateway=gateway,
                                spare_nodes=0)
        print(f"cluster up: HAProxy {cluster.address[0]}:{cluster.address[1]}, "
              f"nodes {', '.join(f'{n.host}:{n.port}' for n in cluster.nodes.values())}",
              flush=True)
        figures = Figures()
        with Quietness() as quiet:
            measure(cluster, root, args, sizes, figures)
        return judge(args, sizes, figures, quiet)
    finally:
        if cluster is not None:
            cluster.stop()
        if gateway is not None:
            gateway.stop()
        if postgres is not None:
            postgres.stop()
        shutil.rmtree(root, ignore_errors=True)


def measure(cluster: Cluster, root: Path, args: argparse.Namespace, sizes: list[int],
            figures: Figures) -> None:
    """Every measure, ``args.runs`` times in turn, then the concurrent uploads."""
    keys = []
    for _ in range(KEY_POOL):
        private = crypto.generate_private_key()
        keys.append((private, crypto.export_public_key(private)))
    payload_bytes = os.urandom(FILE_SIZE)
    home = root / "client"
    home.mkdir()
    payload = home / "payload.bin"
    make_file(payload, args.upload_mib * MIB)
    first = home / "first.bin"
    make_file(first, 1024)
    store = cluster.gateway.client()
    bucket = cluster.blobs_url.split("/")[2]
    warm_up(store, bucket, payload)
    timed_client_run(home, cluster.address[1], "bench", [str(first)], CLIENT_TIMEOUT)
    private = crypto.generate_private_key()
    run = 0
    for number in range(1, args.runs + 1):
        first_of_pair = 1 if number % 2 else NODES  # a drift hurts both alike
        for nodes in (first_of_pair, NODES + 1 - first_of_pair) if "sessions" in args.measures \
                else ():
            run += 1
            with figures.noise["sessions"].window():
                sessions(cluster, nodes, args.clients, Shared(keys, payload_bytes,
                                                              cksum(payload_bytes), run),
                         figures, settled=not args.quick)
        if "upload" in args.measures:
            with figures.noise["upload"].window():
                upload_and_store_put(cluster, home, payload, bucket, number, figures)
        if "added" in args.measures:
            with figures.noise["added"].window():
                added(cluster, private, number, sizes, figures)
        print(f"run {number}: " + "; ".join(progress(figures, args, sizes)), flush=True)
    if "rss" in args.measures:
        with figures.noise["rss"].window():
            concurrent_uploads(cluster, root, args.concurrent_mib, figures)


def upload_and_store_put(cluster: Cluster, home: Path, payload: Path, bucket: str,
                         number: int, figures: Figures) -> None:
    """The file through HAProxy and a node (the real client), and the store's own PUT of
    it, in turn: the node's path first in odd runs, the store's in even ones."""
    steps = ["upload", "store_put"]
    for step in steps if number % 2 else steps[::-1]:
        before = cpu_snapshot(cluster)
        if step == "upload":
            seconds, _ = timed_client_run(home, cluster.address[1], "bench", [str(payload)],
                                          CLIENT_TIMEOUT)
        else:
            seconds = store_put(cluster.gateway, bucket, payload, number)
        getattr(figures, step).append(seconds)
        figures.cpu.setdefault(step, []).append((seconds, cpu_used(before, cpu_snapshot(cluster))))


def added(cluster: Cluster, private, number: int, sizes: list[int], figures: Figures) -> None:
    """The time added after the last byte for each size, on a connection of its own."""
    raw = RawClient(cluster.address, timeout=CLIENT_TIMEOUT)  # idle ones are closed
    try:
        client_id, aes_key = raw.register(f"bench-added-{number}", private)
        for size in sizes:
            figures.added.setdefault(size, []).append(added_after_last_byte(
                raw, client_id, aes_key, f"f{size}", content(size)))
    finally:
        raw.close()


def progress(figures: Figures, args: argparse.Namespace, sizes: list[int]) -> list[str]:
    """One run's figures, for its progress line."""
    said = []
    if figures.sessions[NODES]:
        said.append(f"sessions/s one node {figures.sessions[1][-1]['rate']:.0f},"
                    f" two {figures.sessions[NODES][-1]['rate']:.0f}")
    if figures.upload:
        said.append(f"upload {args.upload_mib * MIB / MB / figures.upload[-1]:.0f} MB/s,"
                    f" store's PUT {args.upload_mib * MIB / MB / figures.store_put[-1]:.0f} MB/s")
    if figures.added:
        said.append("added " + ", ".join(f"{figures.added[s][-1] * _MS:.0f} ms" for s in sizes))
    return said


def sessions(cluster: Cluster, nodes: int, count: int, shared: Shared, figures: Figures, *,
             settled: bool) -> None:
    """One run of ``count`` sessions through HAProxy, on one node or on both; with
    ``settled``, once earlier runs' connections have left TIME_WAIT (common.settle)."""
    assert cluster.balancer is not None
    balancer = cluster.balancer
    if nodes == 1:
        balancer.admin(f"disable server nodes/{SECOND_NODE}")
        balancer.wait_state(SECOND_NODE, "MAINT")
    if settled:
        settle()
    pids = [node.process.pid for node in cluster.nodes.values()]
    sources = [str(FIRST_SOURCE + index) for index in range(count)]
    before = served(cluster)
    haproxy_before = cpu_of([balancer.process.pid])
    cpu_before, started = cpu_snapshot(cluster), time.perf_counter()
    result = run_once([cluster.address], count, shared, pids,
                      database_backends(cluster.metadata_url), sources)
    figures.cpu.setdefault(f"sessions{nodes}", []).append(
        (time.perf_counter() - started, cpu_used(cpu_before, cpu_snapshot(cluster))))
    figures.haproxy_ms[nodes].append((cpu_of([balancer.process.pid]) - haproxy_before)
                                     / count * _MS)
    figures.sessions[nodes].append(result)
    if nodes == NODES:
        figures.spread = {name: total - before.get(name, 0)
                          for name, total in served(cluster).items()}
    if result["errors"]:
        print(f"{nodes} node(s): {result['errors']} errors, first: {result['first_error']}")
    if nodes == 1:
        balancer.admin(f"enable server nodes/{SECOND_NODE}")
        balancer.wait_state(SECOND_NODE, "UP")


def warm_up(store, bucket: str, path: Path) -> None:
    """One multipart upload first: a fresh radosgw creates its pool for them on the first
    one (seconds, which a client takes for a stall), and the first PUT opens its pools."""
    with path.open("rb") as source:
        head = source.read(2 * PART_BYTES)
    key = "bench/warm-up"
    started = store.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = [{"PartNumber": number, "ETag": store.upload_part(
        Bucket=bucket, Key=key, UploadId=started, PartNumber=number,
        Body=head[(number - 1) * PART_BYTES:number * PART_BYTES])["ETag"]} for number in (1, 2)]
    store.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=started,
                                    MultipartUpload={"Parts": parts})
    store.delete_object(Bucket=bucket, Key=key)


def cpu_of(pids: list[int]) -> float:
    """CPU seconds the processes used so far, together."""
    return sum(cpu_seconds(pid) for pid in pids)


def served(cluster: Cluster) -> dict[str, int]:
    """Connections HAProxy has sent to each node so far (its ``stot``)."""
    assert cluster.balancer is not None
    counts = {}
    for line in cluster.balancer.admin("show stat").splitlines():
        fields = line.split(",")
        if len(fields) > 7 and fields[0] == "nodes" and fields[1] != "BACKEND":
            counts[fields[1]] = int(fields[7] or 0)
    return counts


def store_put(gateway: CephGateway, bucket: str, path: Path, number: int) -> float:
    """Seconds the nodes' S3 client library (minio) alone takes to upload ``path`` with its
    own multipart PUT, in the nodes' parts; the object is deleted."""
    import minio

    endpoint = urlsplit(gateway.endpoint)
    client = minio.Minio(endpoint.netloc, access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                         secure=False, region=REGION)
    key = f"bench/store-put-{number}"
    started = time.perf_counter()
    client.fput_object(bucket, key, str(path), part_size=PART_BYTES,
                       num_parallel_uploads=MAX_PARTS_IN_FLIGHT)
    took = time.perf_counter() - started
    client.remove_object(bucket, key)
    return took


def concurrent_uploads(cluster: Cluster, root: Path, size_mib: int, figures: Figures) -> None:
    """Four real clients at once, each its own identity and file; each node's peak RSS."""
    homes = []
    for index in range(CONCURRENT_UPLOADS):
        home = root / f"concurrent{index}"
        home.mkdir()
        make_file(home / "big.bin", size_mib * MIB)
        make_file(home / "first.bin", 1024)
        timed_client_run(home, cluster.address[1], f"bench{index}", [str(home / "first.bin")],
                         CLIENT_TIMEOUT)
        homes.append(home)
    nodes = {f"node{index}": node.process.pid for index, node in cluster.nodes.items()}
    before = {}
    for name, pid in nodes.items():
        reset_peak_rss(pid)
        before[name] = vm_rss_kib(pid) / 1024
    failures: list[BaseException] = []

    def upload(index: int) -> None:
        try:
            timed_client_run(homes[index], cluster.address[1], f"bench{index}",
                             [str(homes[index] / "big.bin")], CLIENT_TIMEOUT)
        except BaseException as exc:  # noqa: BLE001 - reported after the join
            failures.append(exc)

    threads = [threading.Thread(target=upload, args=(index,)) for index in range(len(homes))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    figures.concurrent_seconds = time.perf_counter() - started
    if failures:
        sys.exit(f"a concurrent upload failed: {failures[0]!r}")
    figures.rss = {name: (before[name], vm_hwm_kib(pid) / 1024) for name, pid in nodes.items()}
    print(f"{CONCURRENT_UPLOADS} × {size_mib} MiB at once: {figures.concurrent_seconds:.1f} s",
          flush=True)


def print_cpu(figures: Figures, clients: int) -> None:
    """Each part's CPU during each measure (the run of the median's time), and the cores'
    use: where the cores are all used, the rate is CPU-bound."""
    cores = os.cpu_count() or 1
    measures = [("upload", "1 upload through a node, CPU s"),
                ("store_put", "minio's own PUT, CPU s"),
                ("sessions1", "sessions, one node, CPU ms/session"),
                (f"sessions{NODES}", "sessions, two nodes, CPU ms/session")]
    rows = []
    for name, label in measures:
        runs = sorted(figures.cpu.get(name, []), key=lambda run: run[0])
        if not runs:
            continue
        seconds, used = runs[len(runs) // 2]
        scale = _MS / clients if name.startswith("sessions") else 1.0
        rows.append([label] + [f"{used[part] * scale:.2f}" for part in CPU_PARTS]
                    + [f"{sum(used.values()) / (seconds * cores):.0%}"])
    if not rows:
        return
    print()
    print_table(f"CPU by part of the machine (the median run; {cores} cores)",
                ["measure", *CPU_PARTS, "cores busy"], rows)


def judge(args: argparse.Namespace, sizes: list[int], figures: Figures,
          quiet: Quietness) -> int:
    """Print the tables and the verdicts (each with its measures' own noise); the exit
    status."""
    checks = []
    if "sessions" in args.measures:
        checks += judge_sessions(args, figures)
    if "upload" in args.measures:
        checks += judge_upload(args, figures)
    print_cpu(figures, args.clients)
    if "added" in args.measures:
        print()
        print_table("time added after the last byte, through HAProxy (median)",
                    ["file", "added"],
                    [[f"{size / MIB:.1f} MiB", f"{median(figures.added[size]) * _MS:.0f} ms"]
                     for size in sizes])
        checks += [
            Check(f"added after the last byte, {size / MIB:.1f} MiB, "
                  f"≤ {ADDED_TARGETS[size] * _MS:.0f} ms",
                  f"{median(figures.added[size]) * _MS:.0f} ms",
                  median(figures.added[size]) <= ADDED_TARGETS[size],
                  noise=figures.noise["added"])
            for size in sizes if size in ADDED_TARGETS
        ]
    if "rss" in args.measures:
        print()
        print_table(
            f"{CONCURRENT_UPLOADS} × {args.concurrent_mib} MiB at once from 127.0.0.1"
            f" ({figures.concurrent_seconds:.1f} s): each node's RSS",
            ["node", "before", "peak (VmHWM)"],
            [[name, f"{before:.0f} MiB", f"{peak:.1f} MiB"]
             for name, (before, peak) in figures.rss.items()],
        )
        peak = max(peak for _, peak in figures.rss.values())
        checks.append(Check(f"peak RSS per node, {CONCURRENT_UPLOADS} concurrent uploads,"
                            f" ≤ {TARGET_RSS_MIB} MiB", f"{peak:.1f} MiB",
                            peak <= TARGET_RSS_MIB, noise=figures.noise["rss"]))
    return report(checks, quiet)


def judge_sessions(args: argparse.Namespace, figures: Figures) -> list[Check]:
    """One node vs two: the table and the targets."""
    one, two = figures.sessions[1], figures.sessions[NODES]
    rate = {1: median([r["rate"] for r in one]), NODES: median([r["rate"] for r in two])}
    cpu = {nodes: median([r["cpu_ms"] + r["database_ms"] for r in results])
           for nodes, results in ((1, one), (NODES, two))}
    print()
    print_table(
        f"N = {args.clients} sessions at once through HAProxy, each from its own address;"
        f" median of {args.runs} runs (server CPU = nodes + database backends)",
        ["nodes", "sessions/s", "server CPU ms/session", "of it database", "HAProxy ms/session",
         "errors", "p99 ms"],
        [[nodes, f"{rate[nodes]:.0f}", f"{cpu[nodes]:.2f}",
          f"{median([r['database_ms'] for r in results]):.2f}",
          f"{median(figures.haproxy_ms[nodes]):.2f}",
          sum(r["errors"] for r in results), f"{median([r['p99'] for r in results]) * _MS:.0f}"]
         for nodes, results in ((1, one), (NODES, two))],
    )
    print(f"sessions per node with two: {figures.spread}")
    errors = sum(r["errors"] for r in one + two)
    noise = figures.noise["sessions"]
    return [Check(f"sessions/s, two nodes ÷ one, ≥ {TARGET_SCALING}",
                  f"{rate[NODES] / rate[1]:.2f}", rate[NODES] >= TARGET_SCALING * rate[1],
                  noise=noise),
            Check("sessions, zero errors", str(errors), errors == 0, noise=noise)]


def judge_upload(args: argparse.Namespace, figures: Figures) -> list[Check]:
    """The upload through a node vs the store's own PUT: the table, the machine's bounds on
    their ratio, and the target."""
    upload_rate = args.upload_mib * MIB / MB / median(figures.upload)
    store_rate = args.upload_mib * MIB / MB / median(figures.store_put)
    cpu = {step: median([sum(used.values()) for _, used in figures.cpu[step]])
           for step in ("upload", "store_put")}
    gib = args.upload_mib / 1024
    print()
    print_table(
        f"{args.upload_mib} MiB, median of {args.runs} runs, in turn, alternated"
        " (MB = 10^6 bytes; CPU: every part of the machine counted below)",
        ["what", "seconds", "MB/s", "CPU s per GiB", "runs (MB/s)"],
        [["the client through HAProxy and a node (whole run)", f"{median(figures.upload):.2f}",
          f"{upload_rate:.0f}", f"{cpu['upload'] / gib:.1f}", rates(args, figures.upload)],
         [f"minio alone, multipart PUT ({PART_BYTES / MIB:g} MiB parts,"
          f" {MAX_PARTS_IN_FLIGHT} in flight)", f"{median(figures.store_put):.2f}", f"{store_rate:.0f}",
          f"{cpu['store_put'] / gib:.1f}", rates(args, figures.store_put)]],
    )
    cores = os.cpu_count() or 1
    least = cpu["upload"] / cores
    print(f"bounds on {cores} cores: the path's CPU ÷ {cores} = {least:.2f} s, the least time"
          f" the cores allow it (a ratio of {median(figures.store_put) / least:.2f} at best"
          f" against the PUT's time); the PUT's CPU ÷ the path's ="
          f" {cpu['store_put'] / cpu['upload']:.2f} (the ratio when both fill the cores)."
          " Each run's ratio: "
          + ", ".join(f"{put / up:.2f}" for up, put in zip(figures.upload, figures.store_put)))
    return [Check(f"{args.upload_mib} MiB through a node ÷ the store's own PUT,"
                  f" ≥ {TARGET_VS_STORE}", f"{upload_rate / store_rate:.2f}",
                  upload_rate >= TARGET_VS_STORE * store_rate, noise=figures.noise["upload"])]


def rates(args: argparse.Namespace, seconds: list[float]) -> str:
    """Each run's rate, MB/s, in run order."""
    return " ".join(f"{args.upload_mib * MIB / MB / took:.0f}" for took in seconds)


if __name__ == "__main__":
    sys.exit(main())
