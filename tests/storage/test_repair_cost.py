"""What start-up repair costs in requests to an S3 store (the session's radosgw), per file.

A server starting on a bucket of N stored files reads each file's name
once (the names' blob keys, which the listing of garbage needs anyway) and
lists the prefixes; it sends no request per file beyond that. Measured as
the difference between two bucket sizes, so that the listings, a constant,
drop out.
"""

from __future__ import annotations

import collections
from typing import Any

import pytest

from server.peer import address_group
from server.storage.base import new_blob_key
from server.storage.commit import Content, record_first, repair
from server.storage.factory import StoreUrls, open_stores
from server.storage.s3.backend import location
from server.storage.s3.store import S3Blobs

ALICE = b"a" * 16
NOW = 1_700_000_000.0
#: The two bucket sizes compared.
FEW, MANY = 4, 16
#: Requests per stored file a repair may send: the read of its name.
REQUESTS_PER_FILE = 1


class CountedS3Blobs(S3Blobs):
    """The S3 store, counting its requests by operation."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requests: collections.Counter[str] = collections.Counter()

    def request(self, action: str, operation: str, **params: Any) -> Any:
        self.requests[operation] += 1
        return super().request(action, operation, **params)


def _repair_requests(tmp_path, s3_url: str, files: int) -> collections.Counter[str]:
    """The requests a repair sends (with a cold cache, as at start-up) to a bucket of ``files``."""
    tmp_path.mkdir()
    urls = StoreUrls.given(None, s3_url, tmp_path)
    metadata, blobs = open_stores(urls, address_group)
    try:
        with metadata.transaction():
            metadata.insert_client(ALICE, "alice", NOW, "v3", "127.0.0.1")
        for number in range(files):
            file_name = f"file-{number}".encode()
            writer = blobs.begin(ALICE, new_blob_key())
            writer.write(file_name)
            writer.seal()
            path_name = blobs.new_path_name(ALICE, file_name, writer.key)
            record_first(metadata, ALICE, file_name, path_name, writer.key, Content(1, 1))
            metadata.sync()
            blobs.publish(writer.key, path_name)
        starting = CountedS3Blobs(location(urls.blobs))
        report = repair(metadata, starting)
        assert (report.rows_removed, report.blobs_set_aside) == (0, 0)
        return starting.requests
    finally:
        metadata.close()


@pytest.mark.needed_in_ci
def test_repair_reads_each_file_s_name_once_and_lists_the_rest(tmp_path, ceph_gateway,
                                                               s3_environment):
    bucket = "cipherdrop-repair-cost-{}"
    counts = {}
    for files in (FEW, MANY):
        ceph_gateway.client().create_bucket(Bucket=bucket.format(files))
        url = (f"s3://{bucket.format(files)}/node?endpoint={ceph_gateway.endpoint}"
               "&addressing=path")
        counts[files] = _repair_requests(tmp_path / str(files), url, files)
    per_file = (sum(counts[MANY].values()) - sum(counts[FEW].values())) / (MANY - FEW)
    assert per_file <= REQUESTS_PER_FILE, (counts[FEW], counts[MANY])
