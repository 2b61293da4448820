"""A node's peak RSS during four concurrent uploads to the S3 store, and what it is made of.

One node per checkout (this one, and others given with ``--against``, say a
worktree of the commit before a change), each on PostgreSQL (its own
database of one throwaway cluster, tests/backends/postgres.py) and its own
bucket of one throwaway Ceph radosgw (tests/backends/ceph.py; needs
``apt-get install postgresql radosgw ceph-mon ceph-osd ceph-mgr``), as in
bench/cluster.py but without HAProxy: four real clients at once upload
``--size-mib`` each to one node, then to the next, the order alternated
from run to run. Per node and run: its RSS before (idle), its peak
(VmHWM, reset before the uploads through ``/proc/PID/clear_refs``), its RSS
after, its CPU seconds per GiB received, and at the peak the parts of its
memory (``/proc/PID/smaps``): the main heap (the loop thread's
allocations: the content queued for the blob port's worker), the other
threads' malloc arenas (the part uploaders', the worker's), Python's object
arenas and other anonymous memory (the modules' objects at start), the
files mapped (the interpreter and the libraries). Then the medians.

    python bench/node_rss.py --against /tmp/before
    python bench/node_rss.py --runs 5 --size-mib 512 --against /tmp/before
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
from pathlib import Path

from common import (
    MIB, REPO, Server, checkout_argument, cpu_seconds, make_file, reset_peak_rss, start_server,
    timed_client_run, vm_hwm_kib, vm_rss_kib,
)

sys.path.insert(0, str(REPO / "tests"))

from backends.ceph import CephGateway, skip_reason  # noqa: E402
from backends.postgres import PostgresCluster  # noqa: E402

CONCURRENT_UPLOADS = 4
CLIENT_TIMEOUT = 600.0
#: Seconds between two samples of a node's RSS (the parts of its memory are read at the
#: highest sample).
SAMPLE_INTERVAL = 0.05
#: Where each thread's malloc arena starts (glibc: its heaps are aligned on HEAP_MAX_SIZE).
_ARENA_ALIGNMENT = 64 * MIB
_KIB_PER_MIB = 1024
#: minflt's index in /proc/PID/stat past the command's closing parenthesis.
_MINFLT_FIELD = 7
#: utime's index there (stime follows), in clock ticks.
_UTIME_FIELD = 11
_TICKS = os.sysconf("SC_CLK_TCK")
_GIB = 1024 * MIB
#: The OSD's room per upload's bytes: radosgw frees a replaced object's space only at its
#: garbage collection, hours later, and a full OSD stalls every write.
BLOCK_PER_UPLOAD = 2
#: The parts of a node's memory, in the order printed.
PARTS = ("heap", "thread arenas", "anonymous", "files")


def memory_parts(pid: int) -> dict[str, float]:
    """The resident MiB of each of :data:`PARTS` (``/proc/PID/smaps``)."""
    parts = dict.fromkeys(PARTS, 0.0)
    part = "anonymous"
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                start = int(fields[0].split("-")[0], 16)
                name = fields[5] if len(fields) > 5 else ""
                part = ("files" if name.startswith("/") else "heap" if name == "[heap]"
                        else "anonymous" if name else
                        "thread arenas" if start % _ARENA_ALIGNMENT == 0 else "anonymous")
            elif fields[0] == "Rss:":
                parts[part] += int(fields[1]) / _KIB_PER_MIB
    return parts


def minor_faults(pid: int) -> int:
    """The process's minor page faults so far (a page touched for the first time)."""
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[_MINFLT_FIELD])


def loop_seconds(pid: int) -> float:
    """CPU seconds of the process's main thread (the server's loop: it receives, decrypts
    and queues the content; the blob port's worker and the part uploaders are others)."""
    with open(f"/proc/{pid}/task/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[_UTIME_FIELD]) + int(fields[_UTIME_FIELD + 1])) / _TICKS


def concurrent_uploads(node: Server, homes: list[Path], size_mib: int) -> dict[str, float]:
    """The four uploads at once to ``node``; its figures."""
    pid = node.pid
    idle = vm_rss_kib(pid) / _KIB_PER_MIB
    reset_peak_rss(pid)
    cpu, loop, faults = cpu_seconds(pid), loop_seconds(pid), minor_faults(pid)
    at_peak: dict[str, float] = {}
    done = threading.Event()

    def sample() -> None:
        highest = 0
        while not done.wait(SAMPLE_INTERVAL):
            rss = vm_rss_kib(pid)
            if rss > highest:
                highest = rss
                at_peak.update(memory_parts(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    clients = [threading.Thread(target=timed_client_run, args=(
        home, node.address[1], f"bench{index}", [str(home / "big.bin")], CLIENT_TIMEOUT))
        for index, home in enumerate(homes)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    done.set()
    sampler.join()
    return {"idle": idle, "peak": vm_hwm_kib(pid) / _KIB_PER_MIB,
            "after": vm_rss_kib(pid) / _KIB_PER_MIB,
            "CPU s/GiB": (cpu_seconds(pid) - cpu) / (len(homes) * size_mib * MIB / _GIB),
            "loop CPU s/GiB": (loop_seconds(pid) - loop) / (len(homes) * size_mib * MIB / _GIB),
            "faults/MiB": (minor_faults(pid) - faults) / (len(homes) * size_mib),
            **at_peak}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=256, help="each upload's size")
    parser.add_argument("--against", type=checkout_argument, nargs="*", default=[],
                        help="other checkouts, a node each")
    args = parser.parse_args()
    reason = skip_reason()
    if reason:
        sys.exit(reason)
    checkouts = [REPO, *args.against]
    with tempfile.TemporaryDirectory(prefix="bench-node-rss-") as folder:
        root = Path(folder)
        gateway = CephGateway(root / "ceph", block_bytes=BLOCK_PER_UPLOAD * CONCURRENT_UPLOADS
                              * args.size_mib * MIB * len(checkouts) * args.runs).start()
        postgres: PostgresCluster | None = None
        nodes: dict[Path, Server] = {}
        try:
            postgres = PostgresCluster.start()
            environment = gateway.environment()
            os.environ.update(environment)
            store = gateway.client()
            homes = make_homes(root, checkouts, args.size_mib)
            for number, tree in enumerate(checkouts):
                bucket = f"node-rss-{number}"
                store.create_bucket(Bucket=bucket)
                nodes[tree] = start_server(
                    root / f"node{number}", "--metadata", postgres.database(f"rss{number}"),
                    "--blobs", f"s3://{bucket}/p/?endpoint={gateway.endpoint}"
                    "&region=us-east-1&addressing=path", checkout=tree)
                for index, home in enumerate(homes[tree]):  # registered
                    timed_client_run(home, nodes[tree].address[1], f"bench{index}",
                                     [str(home / "first.bin")], CLIENT_TIMEOUT)
            measure(nodes, homes, args)
        finally:
            for node in nodes.values():
                node.stop()
            if postgres is not None:
                postgres.stop()
            gateway.stop()
    return 0


def make_homes(root: Path, checkouts: list[Path], size_mib: int) -> dict[Path, list[Path]]:
    """Each client's folder per node (its own identity there), the same files in each."""
    homes: dict[Path, list[Path]] = {}
    for index in range(CONCURRENT_UPLOADS):
        files = root / f"files{index}"
        files.mkdir()
        make_file(files / "big.bin", size_mib * MIB)
        make_file(files / "first.bin", 1024)
        for number, checkout in enumerate(checkouts):
            home = root / f"client{index}-node{number}"
            home.mkdir()
            for name in ("big.bin", "first.bin"):
                os.link(files / name, home / name)
            homes.setdefault(checkout, []).append(home)
    return homes


def measure(nodes: dict[Path, Server], homes: dict[Path, list[Path]],
            args: argparse.Namespace) -> None:
    """The runs, the nodes in turn (alternated); each run's figures, then the medians."""
    figures: dict[Path, list[dict[str, float]]] = {checkout: [] for checkout in nodes}
    order = list(nodes)
    for run in range(args.runs):
        for checkout in order if run % 2 == 0 else order[::-1]:
            result = concurrent_uploads(nodes[checkout], homes[checkout], args.size_mib)
            figures[checkout].append(result)
            print(f"run {run} {checkout}: " + ", ".join(
                f"{name} {value:.2f}" for name, value in result.items()), flush=True)
    print(f"{CONCURRENT_UPLOADS} × {args.size_mib} MiB at once, medians of {args.runs}"
          " (MiB; at the peak: its parts):")
    for checkout, results in figures.items():
        print(f"  {checkout}: " + ", ".join(
            f"{name} {statistics.median(result[name] for result in results):.1f}"
            for name in results[0]))


if __name__ == "__main__":
    sys.exit(main())
