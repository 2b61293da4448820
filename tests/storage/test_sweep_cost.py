"""A sweep costs what it finds (server/storage/sweep.py): the metadata reads are counted.

The sweeper runs every minute; with many files and no garbage it must read
no file row, and with garbage ask the metadata store about those keys only.
Counted on every store pair of the contract, and for SQLite the query plan
shows that asking reads through the indexes, not the table.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

from server.storage import sweep
from server.storage.base import new_blob_key
from server.storage.folder import FolderBlobs
from server.storage.sqlite import _REFERENCED_KEYS, SqliteMetadata
from server.storage.sweep import GARBAGE_GRACE, Sweeper
from test_storage_contract import NOW, PAIRS, register, sealed

#: Files kept by the store (each with a published blob) while nothing is garbage.
MANY_FILES = 300
CLIENT = b"m" * 16


class CountedReads:
    """A metadata store whose reads of file rows and keys asked about are counted."""

    def __init__(self, store) -> None:
        self._store = store
        self.rows_read = 0
        self.keys_asked: Counter = Counter()
        self.queries = 0

    def __getattr__(self, name):
        return getattr(self._store, name)

    def file_rows(self):
        rows = self._store.file_rows()
        self.rows_read += len(rows)
        return rows

    def file_row(self, client_id, file_name):
        self.rows_read += 1
        return self._store.file_row(client_id, file_name)

    def referenced_keys(self, keys):
        self.queries += 1
        self.keys_asked.update(keys)
        return self._store.referenced_keys(keys)


@pytest.fixture(params=list(PAIRS))
def many_files(request, tmp_path):
    """A store pair holding MANY_FILES files, each row pointing at its blob."""
    metadata, blobs = PAIRS[request.param](tmp_path)
    register(metadata, CLIENT, "many")
    with metadata.transaction():
        for number in range(MANY_FILES):
            name = f"f{number}".encode()
            writer = sealed(blobs, CLIENT, name)
            path_name = blobs.new_path_name(CLIENT, name, writer.key)
            blobs.publish(writer.key, path_name)
            metadata.upsert_file(CLIENT, name, path_name, writer.key)
    metadata.sync()
    yield metadata, blobs
    metadata.close()


def test_a_sweep_with_no_garbage_reads_no_file_row(many_files):
    metadata, blobs = many_files
    in_flight = blobs.begin(CLIENT, new_blob_key())
    counted = CountedReads(metadata)
    now = [NOW]
    sweeper = Sweeper(counted, blobs, lambda: now[0], lambda: {in_flight.key})
    for _ in range(3):
        assert sweeper.sweep() == 0
        now[0] += GARBAGE_GRACE
    assert (counted.rows_read, counted.queries) == (0, 0)


def test_a_sweep_asks_about_the_blobs_it_finds_only_in_batches(many_files, monkeypatch):
    metadata, blobs = many_files
    monkeypatch.setattr(sweep, "KEYS_PER_QUERY", 2)
    garbage = {sealed(blobs, CLIENT, b"garbage").key for _ in range(3)}
    pending = sealed(blobs, CLIENT, b"pending")
    with metadata.transaction():
        metadata.set_pending(CLIENT, b"f0", pending.key)
    counted = CountedReads(metadata)
    now = [NOW]
    sweeper = Sweeper(counted, blobs, lambda: now[0], lambda: set())
    assert sweeper.sweep() == 0
    now[0] += GARBAGE_GRACE
    assert sweeper.sweep() == len(garbage)
    assert counted.rows_read == 0
    asked = garbage | {pending.key}
    assert counted.keys_asked == Counter({key: 2 for key in asked})  # each sweep, once each
    assert counted.queries == 2 * 2  # two batches of at most two keys, per sweep
    assert {blob.key for blob in blobs.unpublished()} == {pending.key}


def test_sqlite_asks_about_keys_through_its_indexes(tmp_path):
    metadata = SqliteMetadata.open(tmp_path / "defensive.db")
    try:
        keys = [new_blob_key(), new_blob_key()]
        query = _REFERENCED_KEYS.format(marks=", ".join("?" * len(keys)))
        plan = metadata._db.execute(f"EXPLAIN QUERY PLAN {query}", keys + keys).fetchall()
        details = [row[-1] for row in plan]
        assert not any(detail.startswith("SCAN files") for detail in details), details
        assert any("files_blob_key" in detail for detail in details), details
        assert any("files_pending_key" in detail for detail in details), details
    finally:
        metadata.close()


def test_the_folder_lists_again_only_the_folders_where_blobs_were_begun(tmp_path, monkeypatch):
    store = FolderBlobs(tmp_path)
    clients = [bytes([number]) * 16 for number in range(1, 31)]
    for client_id in clients:
        writer = sealed(store, client_id, b"stored")
        store.publish(writer.key, store.new_path_name(client_id, b"f", writer.key))
    listed = []
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path: listed.append(path) or real_scandir(path))
    assert store.unpublished() == []  # the first listing: every client folder
    assert len(listed) == 1 + len(clients)
    listed.clear()
    assert store.unpublished() == [] and listed == []  # nothing begun since: nothing listed
    in_flight = store.begin(clients[0], new_blob_key())
    assert [blob.key for blob in store.unpublished()] == [in_flight.key]
    assert listed == [store.root / clients[0].hex()]
    in_flight.seal()
    store.publish(in_flight.key, store.new_path_name(clients[0], b"g", in_flight.key))
    listed.clear()
    assert store.unpublished() == [] and len(listed) == 1  # found empty: not listed again
    listed.clear()
    assert store.unpublished() == [] and listed == []
