"""Where a node's memory goes while uploads stream to an object store: the parts.

In this process, as in a node: the server's modules, psycopg and the S3 store
(server/storage/s3/) on a throwaway Ceph radosgw (tests/backends/ceph.py;
needs ``apt-get install radosgw ceph-mon ceph-osd ceph-mgr``). One thread
writes ``--uploads`` uploads of ``--size-mib`` each, 1 MiB at a time in
turn, each chunk a fresh copy, as the blob port's worker does; then seals
them (the parts fill files in the temporary folder: not this process's
memory). Prints this process's RSS before (the store open, idle), its peak
(VmHWM, reset before the writes), its RSS after, its CPU milliseconds per
MiB written (the store's threads' included) and the rate. ``--part-mib`` and ``--total`` override the
store's part size and its cap of parts in flight (for comparing settings;
S3 takes parts of 5 MiB or more). Run it once per setting, or from another
checkout for a before/after (``cd OLD && python bench/s3_parts.py``).

    python bench/s3_parts.py                                   # 4 uploads of 128 MiB
    python bench/s3_parts.py --uploads 1 --size-mib 512
    MALLOC_ARENA_MAX=2 python bench/s3_parts.py --part-mib 5
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import MB, MIB, REPO, vm_hwm_kib, vm_rss_kib

sys.path.insert(0, str(REPO / "tests"))

import psycopg  # noqa: F401  (a node on PostgreSQL has it loaded)
from backends.ceph import CephGateway, skip_reason

import server.__main__  # noqa: F401  (the node's modules)
from server.storage.base import new_blob_key
from server.storage.s3 import upload as parts
from server.storage.s3.client import Location
from server.storage.s3.store import S3Blobs
from server.storage.s3.upload import PartUploaders

BUCKET = "bench-parts"
CHUNK = MIB
CLIENT_ID = bytes(16)
_MS = 1000.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=4)
    parser.add_argument("--size-mib", type=int, default=128, help="each upload's size")
    parser.add_argument("--part-mib", type=float, help="the part size (default: the store's)")
    parser.add_argument("--total", type=int, help="parts in flight, all uploads together"
                        " (default: the store's)")
    args = parser.parse_args()
    reason = skip_reason()
    if reason:
        sys.exit(reason)
    if args.part_mib:
        parts.PART_BYTES = int(args.part_mib * MIB)
    with tempfile.TemporaryDirectory(prefix="bench-s3-parts-") as folder:
        gateway = CephGateway(Path(folder) / "ceph",
                              block_bytes=2 * args.uploads * args.size_mib * MIB).start()
        try:
            os.environ.update(gateway.environment())
            store = S3Blobs(Location(BUCKET, "parts/", endpoint=gateway.endpoint,
                                     addressing="path"))
            store.request("cannot make the bucket", "create_bucket")  # no second client
            if args.total:
                store.uploaders.close()
                store.uploaders = PartUploaders(args.total)
            try:
                measure(store, args)
            finally:
                store.close()
        finally:
            gateway.stop()
    return 0


def measure(store: S3Blobs, args: argparse.Namespace) -> None:
    """Write the uploads in turn from one thread; print the figures."""
    store.request("cannot reach the store", "head_bucket")
    pid = os.getpid()
    idle = vm_rss_kib(pid) / 1024
    Path("/proc/self/clear_refs").write_bytes(b"5")  # VmHWM from here on
    writers = [store.begin(CLIENT_ID, new_blob_key()) for _ in range(args.uploads)]
    chunk = os.urandom(CHUNK)

    def write() -> None:  # the blob port's worker: every upload's writes, in turn
        for _ in range(args.size_mib * MIB // CHUNK):
            for writer in writers:
                writer.write(bytes(chunk))
        for writer in writers:
            writer.seal()

    worker = threading.Thread(target=write)
    started, cpu = time.perf_counter(), time.process_time()
    worker.start()
    worker.join()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    written = args.uploads * args.size_mib * MIB
    print(f"{args.uploads} × {args.size_mib} MiB, parts of {parts.PART_BYTES / MIB:g} MiB, "
          f"{parts.MAX_PARTS_IN_FLIGHT} in flight per upload, "
          f"{store.uploaders.peak_sending} at most in all (MALLOC_ARENA_MAX="
          f"{os.environ.get('MALLOC_ARENA_MAX', '-')}): RSS idle {idle:.1f} MiB, "
          f"peak {vm_hwm_kib(pid) / 1024:.1f} MiB, after {vm_rss_kib(pid) / 1024:.1f} MiB; "
          f"{cpu * _MS / (written / MIB):.2f} ms CPU per MiB, {written / MB / seconds:.0f} MB/s")
    for writer in writers:
        store.request("cannot delete a blob", "delete_object", Key=writer.object_name)


if __name__ == "__main__":
    sys.exit(main())
