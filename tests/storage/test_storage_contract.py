"""The storage contract: the same cases on every (metadata, blob) pair of stores.

Each case uses only what server/storage/base.py promises, so that a backend
that passes them can stand in for another. The pairs are in :data:`PAIRS`:
a new backend (PostgreSQL, an object store) is one more line there.
"""

from __future__ import annotations

import selectors
from dataclasses import fields
from pathlib import Path
from typing import Callable

import pytest

from server.errors import BlobMissing, NameTaken, StorageFault
from server.peer import address_group
from server.storage.base import (
    BlobEntry, BlobStore, BlobWriter, DurableStep, MetadataStore, UnpublishedBlob, new_blob_key,
    timestamp,
)
from server.storage.commit import (
    Content, confirm_pending, finish_repair, keep_pending, record_first, remove_client, repair,
    repair_pointers,
)
from server.storage.factory import StoreUrls, open_stores
from server.storage.memory import MemoryBlobs, MemoryMetadata
from server.storage.sweep import GARBAGE_GRACE, Sweeper

Stores = tuple[MetadataStore, BlobStore]


def sqlite_and_folder(data_dir: Path) -> Stores:
    """The server's own pair, opened as the server opens it (no option: in the data folder)."""
    return open_stores(StoreUrls.given(None, None, data_dir), address_group)


def memory(data_dir: Path) -> Stores:
    return MemoryMetadata(), MemoryBlobs()


def sqlite_and_s3(data_dir: Path, s3_url: str) -> Stores:
    """SQLite in the data folder, the blobs in a fresh bucket of the session's radosgw."""
    return open_stores(StoreUrls.given(None, s3_url, data_dir), address_group)


def postgresql_and_folder(data_dir: Path, database_url: str) -> Stores:
    """A fresh database in the session's throwaway cluster, and a folder."""
    return open_stores(StoreUrls.given(database_url, None, data_dir), address_group)


def postgresql_and_s3(data_dir: Path, database_url: str, s3_url: str) -> Stores:
    """The cluster's pair: a fresh database and a fresh bucket."""
    return open_stores(StoreUrls.given(database_url, s3_url, data_dir), address_group)


#: How long one wait on a round's commit may take, and how many waits at most.
COMMIT_PATIENCE = 5.0
MAX_COMMIT_WAITS = 100

#: Every pair the contract is held to: (metadata, blobs) made in a fresh folder.
PAIRS: dict[str, Callable[[Path], Stores]] = {
    "sqlite+folder": sqlite_and_folder,
    "memory+memory": memory,
}
#: The pairs on real services (tests/conftest.py starts them: skipped without
#: the binaries, but not in CI): the fixtures whose URLs they are made with.
SERVER_PAIRS: dict[str, tuple[tuple[str, ...], Callable[..., Stores]]] = {
    "sqlite+s3": (("s3_url",), sqlite_and_s3),
    "postgresql+folder": (("postgres_url",), postgresql_and_folder),
    "postgresql+s3": (("postgres_url", "s3_url"), postgresql_and_s3),
}

ALICE = b"a" * 16
BOB = b"b" * 16
NOW = 1_700_000_000.0
KEY = b"public key bytes"
AES = b"k" * 32


class Closed(Exception):
    """Raised on purpose inside a transaction."""


@pytest.fixture(params=[
    *PAIRS, *(pytest.param(name, marks=pytest.mark.needed_in_ci) for name in SERVER_PAIRS)
])
def stores(request, tmp_path):
    if request.param in SERVER_PAIRS:
        fixtures, make = SERVER_PAIRS[request.param]
        metadata, blobs = make(tmp_path, *map(request.getfixturevalue, fixtures))
    else:
        metadata, blobs = PAIRS[request.param](tmp_path)
    yield metadata, blobs
    metadata.close()


@pytest.fixture
def metadata(stores) -> MetadataStore:
    return stores[0]


@pytest.fixture
def blobs(stores) -> BlobStore:
    return stores[1]


def register(metadata: MetadataStore, client_id: bytes, name: str, address: str = "127.0.0.1",
             now: float = NOW) -> None:
    with metadata.transaction():
        metadata.insert_client(client_id, name, now, "v3", address)
        metadata.set_binding(client_id, address, now)


def sealed(blobs: BlobStore, client_id: bytes, data: bytes) -> BlobWriter:
    writer = blobs.begin(client_id, new_blob_key())
    writer.write(data)
    writer.seal()
    return writer


def stored_blob(blobs: BlobStore, client_id: bytes, file_name: bytes, data: bytes) -> str:
    writer = sealed(blobs, client_id, data)
    path_name = blobs.new_path_name(client_id, file_name, writer.key)
    blobs.publish(writer.key, path_name)
    return path_name


# -- clients ---------------------------------------------------------------------------


def test_a_client_is_found_by_id_and_name_with_what_it_registered(metadata):
    with metadata.transaction():
        metadata.insert_client(ALICE, "alice", NOW, "2023C", "127.0.0.7")
    by_id, by_name = metadata.client_by_id(ALICE), metadata.client_by_name("alice")
    assert by_id == by_name
    assert (by_id.id, by_id.name, by_id.edition, by_id.registered_from) == (
        ALICE, "alice", "2023C", "127.0.0.7")
    assert (by_id.public_key, by_id.aes_key, by_id.crc) == (None, None, "cksum")
    assert by_id.last_seen == timestamp(NOW)
    assert metadata.client_by_id(BOB) is None and metadata.client_by_name("bob") is None


def test_a_taken_name_raises_name_taken_and_writes_nothing(metadata):
    register(metadata, ALICE, "alice")
    with pytest.raises(NameTaken):
        with metadata.transaction():
            metadata.insert_client(BOB, "alice", NOW, "v3", "127.0.0.2")
    assert metadata.client_by_id(BOB) is None and metadata.count_clients() == 1


def test_a_taken_id_raises_name_taken_and_overwrites_nothing(metadata):
    register(metadata, ALICE, "alice")
    with pytest.raises(NameTaken):
        with metadata.transaction():
            metadata.insert_client(ALICE, "bob", NOW, "v3", "127.0.0.2")
    assert metadata.client_by_id(ALICE).name == "alice" and metadata.count_clients() == 1
    assert metadata.client_by_name("bob") is None


def test_keys_edition_and_crc_are_kept(metadata):
    register(metadata, ALICE, "alice")
    with metadata.transaction():
        metadata.set_keys(ALICE, KEY, AES, NOW + 5)
        metadata.set_edition(ALICE, "2024A")
        metadata.set_crc(ALICE, "crc32")
    row = metadata.client_by_id(ALICE)
    assert (row.public_key, row.aes_key, row.edition, row.crc) == (KEY, AES, "2024A", "crc32")
    assert row.last_seen == timestamp(NOW + 5)
    with metadata.transaction():
        metadata.set_aes_key(ALICE, b"n" * 32, NOW + 9)
    row = metadata.client_by_id(ALICE)
    assert (row.public_key, row.aes_key, row.last_seen) == (KEY, b"n" * 32, timestamp(NOW + 9))


def test_a_request_time_is_written_with_the_next_transaction_or_flush(metadata):
    register(metadata, ALICE, "alice")
    metadata.note_seen(ALICE, NOW + 60)
    metadata.flush()
    assert metadata.client_by_id(ALICE).last_seen == timestamp(NOW + 60)
    metadata.note_seen(ALICE, NOW + 120)
    with metadata.transaction():
        metadata.set_crc(ALICE, "crc32")
    assert metadata.client_by_id(ALICE).last_seen == timestamp(NOW + 120)


def test_counts_follow_the_rows_in_all_and_per_address_group(metadata):
    register(metadata, ALICE, "alice", "127.0.0.1")
    register(metadata, BOB, "bob", "127.0.0.1")
    register(metadata, b"c" * 16, "carol", "127.0.0.9")
    assert metadata.count_clients() == 3
    assert metadata.count_clients(address_group("127.0.0.1")) == 2
    assert metadata.count_clients(address_group("127.0.0.9")) == 1
    assert metadata.count_clients(address_group("127.0.2.1")) == 0
    with metadata.transaction():
        metadata.delete_client(BOB)
        metadata.forget_client(b"c" * 16)
    assert metadata.count_clients() == 1
    assert metadata.count_clients(address_group("127.0.0.1")) == 1
    assert metadata.count_clients(address_group("127.0.0.9")) == 0


def test_both_counts_read_together_are_the_counts(metadata):
    register(metadata, ALICE, "alice", "127.0.0.1")
    register(metadata, BOB, "bob", "127.0.0.9")
    assert metadata.client_counts(address_group("127.0.0.1")) == (2, 1)
    assert metadata.client_counts(address_group("127.0.2.1")) == (2, 0)  # a group never seen
    with metadata.transaction():  # inside a request, its own writes counted
        metadata.insert_client(b"c" * 16, "carol", NOW, "v3", "127.0.0.1")
        assert metadata.client_counts(address_group("127.0.0.1")) == (3, 2)


#: Room for many clients, in all and per address group.
ROOMY = (100, 100)


def _register_if_free(metadata: MetadataStore, client_id: bytes, name: str, address: str,
                      room: tuple[int, int] = ROOMY):
    with metadata.transaction():
        return metadata.register_if_free(
            client_id, name, NOW, "2023C", address, address_group(address), room
        )


def test_a_free_name_with_room_is_registered_in_one_call_with_the_counts_before(metadata):
    register(metadata, BOB, "bob", "127.0.0.1")
    assert _register_if_free(metadata, ALICE, "alice", "127.0.0.1") == (None, (1, 1), True)
    row = metadata.client_by_id(ALICE)
    assert (row.name, row.edition, row.registered_from, row.last_seen) == (
        "alice", "2023C", "127.0.0.1", timestamp(NOW))
    assert row.public_key is None and metadata.client_by_name("alice") == row
    assert metadata.client_counts(address_group("127.0.0.1")) == (2, 2)


def test_a_held_name_is_returned_with_the_counts_and_nothing_is_written(metadata):
    register(metadata, ALICE, "alice", "127.0.0.1")
    held = metadata.client_by_id(ALICE)
    assert _register_if_free(metadata, BOB, "alice", "127.0.0.9") == (held, (1, 0), False)
    assert metadata.client_by_id(BOB) is None and metadata.count_clients() == 1


def test_no_room_in_all_or_in_the_group_writes_nothing(metadata):
    register(metadata, ALICE, "alice", "127.0.0.1")
    register(metadata, BOB, "bob", "127.0.0.9")
    group = address_group("127.0.0.1")
    assert _register_if_free(metadata, b"c" * 16, "carol", "127.0.0.1", room=(2, 100)) == (
        None, (2, 1), False)  # the cap reached
    assert _register_if_free(metadata, b"c" * 16, "carol", "127.0.0.1", room=(100, 1)) == (
        None, (2, 1), False)  # the group's share reached
    assert metadata.client_by_name("carol") is None and metadata.client_counts(group) == (2, 1)
    assert _register_if_free(metadata, b"c" * 16, "carol", "127.0.0.1", room=(3, 2)) == (
        None, (2, 1), True)  # one below each


def test_a_registration_is_undone_with_its_transaction(metadata):
    with pytest.raises(Closed):
        with metadata.transaction():
            metadata.register_if_free(ALICE, "alice", NOW, "v3", "127.0.0.1",
                                      address_group("127.0.0.1"), ROOMY)
            raise Closed
    assert metadata.client_by_name("alice") is None and metadata.count_clients() == 0


def test_a_taken_id_registers_nothing_and_overwrites_nothing(metadata):
    register(metadata, ALICE, "alice", "127.0.0.1")
    assert _register_if_free(metadata, ALICE, "bob", "127.0.0.1") == (None, (1, 1), False)
    assert metadata.client_by_id(ALICE).name == "alice" and metadata.count_clients() == 1
    assert metadata.client_by_name("bob") is None


def test_ipv6_peers_of_one_network_share_a_count(metadata):
    register(metadata, ALICE, "alice", "2001:db8::1")
    register(metadata, BOB, "bob", "2001:db8::2")
    assert metadata.count_clients(address_group("2001:db8::99")) == 2


def test_clients_lapse_by_their_unused_time_until_they_store_a_file(metadata):
    with metadata.transaction():
        metadata.insert_client(ALICE, "keyless", NOW, "v3", "127.0.0.1")
    register(metadata, BOB, "keyed", now=NOW)
    register(metadata, b"c" * 16, "user", now=NOW)
    with metadata.transaction():
        metadata.set_keys(BOB, KEY, AES, NOW)
        metadata.set_keys(b"c" * 16, KEY, AES, NOW)
        metadata.upsert_file(b"c" * 16, b"f.txt", "x")  # used: never lapses
    assert metadata.unused_clients(NOW) == []  # unused since NOW: not before it
    assert metadata.unused_clients(NOW + 1) == [BOB]
    with metadata.transaction():
        metadata.set_binding(BOB, "127.0.0.1", NOW + 50)  # a new key starts the time again
    assert metadata.unused_clients(NOW + 1) == []
    with metadata.transaction():
        assert metadata.delete_stale_keyless(NOW) == 0
        assert metadata.delete_stale_keyless(NOW + 1) == 1
    assert metadata.client_by_id(ALICE) is None and metadata.binding(ALICE) is None
    assert metadata.client_by_id(BOB) is not None and metadata.count_clients() == 2


# -- bindings --------------------------------------------------------------------------


def test_a_binding_records_its_address_and_the_last_use(metadata):
    register(metadata, ALICE, "alice", "127.0.0.5", now=NOW)
    binding = metadata.binding(ALICE)
    assert (binding.id, binding.address, binding.issued_at, binding.last_used) == (
        ALICE, "127.0.0.5", NOW, NOW)
    metadata.note_key_used(ALICE, NOW + 30)
    assert metadata.binding(ALICE).last_used == NOW + 30  # seen before it is written
    metadata.flush()
    metadata.note_key_used(ALICE, NOW + 10)  # older: never moves it back
    metadata.flush()
    assert metadata.binding(ALICE).last_used == NOW + 30
    with metadata.transaction():
        metadata.set_binding(ALICE, "127.0.0.6", NOW + 40)
    assert metadata.binding(ALICE) == type(binding)(ALICE, "127.0.0.6", NOW + 40, NOW + 40)
    assert metadata.binding(BOB) is None


def test_a_client_and_its_binding_are_read_together_as_each_alone(metadata):
    register(metadata, ALICE, "alice", "127.0.0.5", now=NOW)
    with metadata.transaction():
        metadata.insert_client(BOB, "bob", NOW, "v3", "127.0.0.6")  # no binding yet
    metadata.note_key_used(ALICE, NOW + 30)  # a noted use counts, as in binding()
    assert metadata.client_and_binding(ALICE) == (
        metadata.client_by_id(ALICE), metadata.binding(ALICE))
    assert metadata.client_and_binding(ALICE)[1].last_used == NOW + 30
    assert metadata.client_and_binding(BOB) == (metadata.client_by_id(BOB), None)
    assert metadata.client_and_binding(b"c" * 16) == (None, None)


# -- files -----------------------------------------------------------------------------


@pytest.mark.parametrize("file_name", [b"report.pdf", "caf\u00e9.txt".encode(), b"\xff\xfe raw"])
def test_a_file_row_is_upserted_verified_measured_and_deleted(metadata, file_name):
    register(metadata, ALICE, "alice")
    with metadata.transaction():
        metadata.upsert_file(ALICE, file_name, "p/1")
        metadata.set_content(ALICE, file_name, 1000, 1234)
    row = metadata.file_row(ALICE, file_name)
    assert (row.id, row.file_name, row.path_name, row.verified) == (ALICE, file_name, "p/1", False)
    assert metadata.stored_bytes(ALICE) == 1000
    with metadata.transaction():
        metadata.set_verified(ALICE, file_name, True)
    assert metadata.file_row(ALICE, file_name).verified
    with metadata.transaction():  # a new upload of the name: unverified, the content kept
        metadata.upsert_file(ALICE, file_name, "p/2")
    assert metadata.file_row(ALICE, file_name) == type(row)(ALICE, file_name, "p/2", False)
    assert metadata.stored_bytes(ALICE) == 1000
    assert metadata.file_rows() == [metadata.file_row(ALICE, file_name)]
    with metadata.transaction():
        metadata.delete_file(ALICE, file_name)
    assert metadata.file_row(ALICE, file_name) is None and metadata.stored_bytes(ALICE) == 0


def test_stored_bytes_sums_one_clients_files_only(metadata):
    register(metadata, ALICE, "alice")
    register(metadata, BOB, "bob")
    with metadata.transaction():
        for client_id, name, size in ((ALICE, b"a", 10), (ALICE, b"b", 20), (BOB, b"a", 400)):
            metadata.upsert_file(client_id, name, f"{client_id.hex()}/{name.decode()}")
            metadata.set_content(client_id, name, size, 1)
        metadata.upsert_file(ALICE, b"c", "no content recorded")
    assert (metadata.stored_bytes(ALICE), metadata.stored_bytes(BOB)) == (30, 400)


def test_forget_client_removes_its_files_binding_and_row_and_no_one_elses(metadata):
    register(metadata, ALICE, "alice")
    register(metadata, BOB, "bob")
    with metadata.transaction():
        metadata.upsert_file(ALICE, b"a", "pa")
        metadata.upsert_file(BOB, b"b", "pb")
    with metadata.transaction():
        metadata.forget_client(ALICE)
    assert metadata.client_by_id(ALICE) is None and metadata.binding(ALICE) is None
    assert metadata.file_row(ALICE, b"a") is None
    assert [row.id for row in metadata.file_rows()] == [BOB] and metadata.binding(BOB)


# -- transactions and rounds -----------------------------------------------------------


def test_a_failing_request_rolls_back_all_its_writes_together(metadata):
    register(metadata, ALICE, "alice")
    with pytest.raises(Closed):
        with metadata.transaction():
            metadata.insert_client(BOB, "bob", NOW, "v3", "127.0.0.2")
            metadata.set_binding(BOB, "127.0.0.2", NOW)
            metadata.upsert_file(ALICE, b"f", "pf")
            metadata.set_content(ALICE, b"f", 5, 5)
            metadata.set_edition(ALICE, "2024A")
            metadata.forget_client(ALICE)
            raise Closed
    assert metadata.client_by_id(BOB) is None and metadata.binding(BOB) is None
    assert metadata.client_by_id(ALICE).edition == "v3" and metadata.binding(ALICE)
    assert metadata.file_rows() == [] and metadata.count_clients() == 1
    assert metadata.count_clients(address_group("127.0.0.2")) == 0
    with metadata.transaction():  # the name is free again
        metadata.insert_client(BOB, "bob", NOW, "v3", "127.0.0.2")


def test_an_inner_failure_undoes_its_own_writes_and_an_outer_one_undoes_both(metadata):
    with metadata.transaction():
        metadata.insert_client(ALICE, "alice", NOW, "v3", "127.0.0.1")
        with pytest.raises(Closed):
            with metadata.transaction():
                metadata.insert_client(BOB, "bob", NOW, "v3", "127.0.0.1")
                raise Closed
    assert metadata.client_by_id(ALICE) and metadata.client_by_id(BOB) is None
    with pytest.raises(Closed):
        with metadata.transaction():
            with metadata.transaction():
                metadata.insert_client(BOB, "bob", NOW, "v3", "127.0.0.1")
            raise Closed
    assert metadata.client_by_id(BOB) is None and metadata.count_clients() == 1


def test_requests_of_a_round_stand_alone_and_a_finished_round_stays(metadata):
    register(metadata, ALICE, "alice")  # request 1 of the round
    with pytest.raises(Closed):  # request 2 fails: request 1 stays
        with metadata.transaction():
            metadata.set_crc(ALICE, "crc32")
            raise Closed
    metadata.finish_round(durable=False)
    register(metadata, BOB, "bob")
    metadata.finish_round(durable=True)
    with pytest.raises(Closed):
        with metadata.transaction():
            metadata.forget_client(ALICE)
            metadata.forget_client(BOB)
            raise Closed
    metadata.sync()
    assert metadata.client_by_id(ALICE).crc == "cksum" and metadata.client_by_id(BOB)
    with metadata.transaction():
        metadata.set_crc(BOB, "crc32")
    metadata.sync()  # mid-round: what is written so far is kept
    assert metadata.client_by_id(BOB).crc == "crc32"


def _advance_until_done(commit) -> int:
    """Complete a round's commit as the loop does: a durable step run (in this thread, as the
    round worker would), else advanced, waiting on its descriptor; return the waits."""
    waits = 0
    if isinstance(commit, DurableStep):
        assert commit.run()
        commit.finish()
        return waits
    while not commit.advance():
        event = selectors.EVENT_WRITE if commit.wants_write else selectors.EVENT_READ
        with selectors.DefaultSelector() as selector:
            selector.register(commit.fileno(), event)
            selector.select(COMMIT_PATIENCE)
        waits += 1
        assert waits < MAX_COMMIT_WAITS, "the round's commit never completed"
    return waits


def test_a_round_committed_later_keeps_its_writes_once_its_commit_says_done(metadata):
    register(metadata, ALICE, "alice")
    commit = metadata.begin_round_commit(durable=True)
    if commit is not None:  # else done at once
        _advance_until_done(commit)
    assert not metadata.begin_round_commit(durable=True)  # nothing left to make durable
    register(metadata, BOB, "bob")
    commit = metadata.begin_round_commit(durable=False)  # a commit, no sync to wait for
    if commit is not None:  # a database server answers later all the same
        _advance_until_done(commit)
    with pytest.raises(Closed):  # the next round's failed request leaves both
        with metadata.transaction():
            metadata.forget_client(ALICE)
            raise Closed
    metadata.finish_round(durable=True)
    assert metadata.client_by_id(ALICE) and metadata.client_by_id(BOB)


def test_a_closed_store_refuses_with_a_storage_fault(stores):
    metadata, _ = stores
    register(metadata, ALICE, "alice")
    metadata.note_seen(ALICE, NOW + 1)
    metadata.close()
    with pytest.raises(StorageFault):
        metadata.client_by_id(ALICE)


# -- blobs -----------------------------------------------------------------------------


def test_a_blob_is_written_under_its_key_sealed_published_and_read_back(blobs):
    writer = blobs.begin(ALICE, new_blob_key())
    path_name = blobs.new_path_name(ALICE, b"report.pdf", writer.key)
    writer.write(b"first part, ")
    writer.write(memoryview(b"second part"))
    assert writer.size == len(b"first part, second part")
    writer.seal()
    assert not blobs.exists(path_name)  # nobody reads it before it is published
    assert blobs.unpublished() == [UnpublishedBlob(ALICE, writer.key)]
    blobs.publish(writer.key, path_name)
    assert blobs.exists(path_name) and blobs.unpublished() == []
    with blobs.open(path_name) as file:
        assert file.read() == b"first part, second part"
    blobs.publish(writer.key, path_name)  # again (a retry, or repair): nothing changes
    writer.abort()  # after publishing: nothing happens
    assert blobs.exists(path_name)
    assert [(entry.owner, entry.path_name) for entry in blobs.stored()] == [
        (ALICE.hex(), path_name)]


def test_publishing_replaces_what_the_name_reads_at_once(blobs):
    path_name = stored_blob(blobs, ALICE, b"f", b"old version")
    pending = sealed(blobs, ALICE, b"new")
    with blobs.open(path_name) as file:
        assert file.read() == b"old version"  # a pending version leaves it untouched
    blobs.publish(pending.key, path_name)
    with blobs.open(path_name) as file:
        assert file.read() == b"new"


def test_an_aborted_blob_is_garbage_never_published_and_a_sealed_one_cannot_grow(
    metadata, blobs
):
    writer = sealed(blobs, ALICE, b"data")
    with pytest.raises(StorageFault):
        writer.write(b"more")
    writer.abort()
    writer.abort()  # twice: never raises
    with pytest.raises(StorageFault):  # given up: never published
        blobs.publish(writer.key, blobs.new_path_name(ALICE, b"f", writer.key))
    assert blobs.stored() == []
    # Gone at once, or (a store that leaves it to the sweeper) once its grace is over.
    now = [NOW]
    sweeper = Sweeper(metadata, blobs, lambda: now[0], set)
    sweeper.sweep()
    now[0] += GARBAGE_GRACE
    sweeper.sweep()
    assert blobs.unpublished() == []


def test_a_blob_is_published_only_in_its_own_clients_namespace(blobs):
    others = blobs.new_path_name(BOB, b"f", new_blob_key())
    writer = sealed(blobs, ALICE, b"x")
    with pytest.raises(StorageFault):
        blobs.publish(writer.key, others)
    assert not blobs.exists(others)
    writer.abort()


def test_a_new_path_name_is_distinct_from_the_clients_stored_and_held_ones_even_by_case(blobs):
    stored = stored_blob(blobs, ALICE, b"Report.PDF", b"stored")
    held = blobs.new_path_name(ALICE, b"report.pdf", new_blob_key())  # not yet published
    third = blobs.new_path_name(ALICE, b"REPORT.pdf", new_blob_key())
    assert len({path_name.lower() for path_name in (stored, held, third)}) == 3
    assert blobs.new_path_name(BOB, b"report.pdf", new_blob_key()) not in (stored, held, third)


def test_a_new_path_name_is_distinct_from_those_the_metadata_records_even_by_case(blobs):
    writer = blobs.begin(ALICE, new_blob_key())
    recorded = blobs.new_path_name(ALICE, b"report.pdf", writer.key)
    writer.abort()  # free in the store: only the metadata's rows hold it now
    again = blobs.new_path_name(ALICE, b"REPORT.pdf", new_blob_key(), [recorded])
    assert again.lower() != recorded.lower()
    assert blobs.new_path_name(ALICE, b"report.pdf", new_blob_key(), [recorded]) != recorded
    assert blobs.new_path_name(BOB, b"report.pdf", new_blob_key(), [recorded]) != recorded


def test_a_name_is_held_until_its_blob_is_published_or_aborted(blobs):
    first = sealed(blobs, ALICE, b"first")
    name = blobs.new_path_name(ALICE, b"a.txt", first.key)
    assert blobs.new_path_name(ALICE, b"A.TXT", new_blob_key()).lower() != name.lower()
    first.abort()  # the name is free again: a later upload of it gets it
    second = sealed(blobs, ALICE, b"second")
    assert blobs.new_path_name(ALICE, b"a.txt", second.key) == name
    blobs.publish(second.key, name)  # held by the stored blob from now on
    assert blobs.new_path_name(ALICE, b"a.txt", new_blob_key()) != name


def test_a_missing_blob_is_missing_and_removing_it_is_fine(blobs):
    path_name = blobs.new_path_name(ALICE, b"f", new_blob_key())
    with pytest.raises(BlobMissing):
        blobs.open(path_name)
    blobs.delete(path_name)
    stored = stored_blob(blobs, ALICE, b"g", b"g")
    blobs.delete(stored)
    assert not blobs.exists(stored) and blobs.stored() == []


def test_room_is_a_count_of_bytes_or_unknown(blobs):
    room = blobs.room()
    assert room is None or (isinstance(room, int) and room > 0)


def test_an_unbounded_store_has_no_room_to_count():
    assert MemoryBlobs(capacity=None).room() is None


def test_unpublished_blobs_are_listed_and_deleted_but_not_stored_ones(blobs):
    kept = stored_blob(blobs, ALICE, b"kept", b"kept")
    left = [blobs.begin(ALICE, new_blob_key()), blobs.begin(BOB, new_blob_key())]
    left[0].write(b"half an upload")
    found = blobs.unpublished()
    assert sorted(found, key=lambda blob: blob.client_id) == [
        UnpublishedBlob(ALICE, left[0].key), UnpublishedBlob(BOB, left[1].key)]
    for blob in found:
        blobs.delete_unpublished(blob)
        blobs.delete_unpublished(blob)  # absent: fine
    assert blobs.unpublished() == [] and blobs.exists(kept)
    for writer in left:
        writer.abort()
    assert blobs.foreign_entries() == []


# -- both stores -----------------------------------------------------------------------


def test_removing_a_client_takes_its_blobs_and_rows_and_is_finished_if_cut(stores):
    metadata, blobs = stores
    register(metadata, ALICE, "alice")
    register(metadata, BOB, "bob")
    kept = stored_blob(blobs, BOB, b"b", b"bob's")
    gone = stored_blob(blobs, ALICE, b"a", b"alice's")
    record_first(metadata, ALICE, b"a", gone, new_blob_key(), Content(7, 1))
    record_first(metadata, BOB, b"b", kept, new_blob_key(), Content(5, 1))
    metadata.sync()
    blobs.begin_removal(ALICE)  # cut here: the blobs are out, the rows not yet
    assert not blobs.exists(gone) and blobs.pending_removals() == [ALICE]
    assert repair(metadata, blobs).removals_finished == 1
    assert blobs.pending_removals() == [] and metadata.client_by_id(ALICE) is None
    remove_client(metadata, blobs, BOB)
    assert not blobs.exists(kept) and metadata.file_rows() == [] and metadata.count_clients() == 0


def test_a_cut_removals_rows_go_before_serving_and_its_blobs_are_left_to_finish_repair(stores):
    # the server deletes them while it serves (Sweeper.finish_repair): nothing of them is
    # set aside meanwhile, and the other clients' files are untouched
    metadata, blobs = stores
    register(metadata, ALICE, "alice")
    register(metadata, BOB, "bob")
    gone = stored_blob(blobs, ALICE, b"a", b"alice's")
    kept = stored_blob(blobs, BOB, b"b", b"bob's")
    record_first(metadata, ALICE, b"a", gone, new_blob_key(), Content(7, 1))
    record_first(metadata, BOB, b"b", kept, new_blob_key(), Content(5, 1))
    metadata.sync()
    blobs.begin_removal(ALICE)  # cut here
    report = repair_pointers(metadata, blobs)
    assert report.removed == (ALICE,) and report.removals_finished == 1
    assert (report.blobs_set_aside, report.rows_removed) == (0, 0)
    assert metadata.client_by_id(ALICE) is None and blobs.pending_removals() == [ALICE]
    finish_repair(blobs, report)
    assert blobs.pending_removals() == [] and not blobs.exists(gone) and blobs.exists(kept)
    assert [row.file_name for row in metadata.file_rows()] == [b"b"]


def test_repair_drops_rows_without_blobs_and_sets_aside_blobs_without_rows(stores):
    metadata, blobs = stores
    register(metadata, ALICE, "alice")
    present = stored_blob(blobs, ALICE, b"present", b"p")
    orphan = stored_blob(blobs, ALICE, b"orphan", b"o")
    with metadata.transaction():
        metadata.upsert_file(ALICE, b"present", present)
        metadata.upsert_file(ALICE, b"lost", blobs.new_path_name(ALICE, b"lost", new_blob_key()))
    report = repair(metadata, blobs)
    assert (report.rows_removed, report.blobs_set_aside) == (1, 1)
    assert [row.file_name for row in metadata.file_rows()] == [b"present"]
    assert [entry.path_name for entry in blobs.stored()] == [present]
    assert not blobs.exists(orphan)


def test_a_row_points_at_its_blob_and_a_900_swaps_the_pending_pointer(metadata):
    register(metadata, ALICE, "alice")
    first, later = new_blob_key(), new_blob_key()
    record_first(metadata, ALICE, b"f", "p/f", first, Content(1, 1))
    keep_pending(metadata, ALICE, b"f", later)
    row = metadata.file_row(ALICE, b"f")
    assert (row.blob_key, row.pending_key, row.verified) == (first, later, False)
    confirm_pending(metadata, ALICE, b"f", later, Content(2, 2))
    row = metadata.file_row(ALICE, b"f")
    assert (row.blob_key, row.pending_key, row.verified) == (later, None, True)
    with pytest.raises(RuntimeError), metadata.transaction():  # a failed 900: no half swap
        metadata.set_pending(ALICE, b"f", first)
        metadata.promote_pending(ALICE, b"f", first)
        raise RuntimeError("the request failed")
    assert metadata.file_row(ALICE, b"f") == row


def _cut_between_swap_and_publish(metadata, blobs, old: bytes, new: bytes) -> str:
    """A stored file whose confirmed new version's swap is durable and publish never ran."""
    register(metadata, ALICE, "alice")
    first = sealed(blobs, ALICE, old)
    path_name = blobs.new_path_name(ALICE, b"f", first.key)
    record_first(metadata, ALICE, b"f", path_name, first.key, Content(len(old), 1))
    metadata.sync()
    blobs.publish(first.key, path_name)
    pending = sealed(blobs, ALICE, new)
    keep_pending(metadata, ALICE, b"f", pending.key)
    confirm_pending(metadata, ALICE, b"f", pending.key, Content(len(new), 2))
    metadata.sync()
    return path_name


def test_repair_publishes_a_confirmed_version_whose_publish_a_crash_cut(stores):
    metadata, blobs = stores
    path_name = _cut_between_swap_and_publish(metadata, blobs, b"old", b"confirmed")
    report = repair(metadata, blobs)
    assert (report.published, report.unpublished_deleted, report.rows_removed) == (1, 0, 0)
    with blobs.open(path_name) as file:
        assert file.read() == b"confirmed"
    assert blobs.unpublished() == [] and metadata.file_row(ALICE, b"f").verified


def test_repair_rolls_back_a_first_upload_and_deletes_garbage_and_stale_pointers(stores):
    metadata, blobs = stores
    register(metadata, ALICE, "alice")
    path_name = stored_blob(blobs, ALICE, b"kept", b"kept")
    unanswered, never_confirmed, aborted = (sealed(blobs, ALICE, b"x") for _ in range(3))
    record_first(metadata, ALICE, b"kept", path_name, new_blob_key(), Content(4, 1))
    record_first(metadata, ALICE, b"new", blobs.new_path_name(ALICE, b"new", unanswered.key),
                 unanswered.key, Content(1, 1))
    keep_pending(metadata, ALICE, b"kept", never_confirmed.key)
    metadata.sync()
    report = repair(metadata, blobs)
    assert (report.published, report.unpublished_deleted, report.rows_removed) == (0, 3, 1)
    assert blobs.unpublished() == [] and [entry.path_name for entry in blobs.stored()] == [path_name]
    (row,) = metadata.file_rows()
    assert (row.file_name, row.pending_key) == (b"kept", None)
    aborted.abort()


def test_referenced_keys_are_those_a_row_points_at_now(metadata):
    register(metadata, ALICE, "alice")
    current, pending, unknown = new_blob_key(), new_blob_key(), new_blob_key()
    with metadata.transaction():
        metadata.upsert_file(ALICE, b"f", "f", current)
        metadata.set_pending(ALICE, b"f", pending)
    assert metadata.referenced_keys([current, pending, unknown]) == {current, pending}
    assert metadata.referenced_keys([]) == set()
    with metadata.transaction():
        metadata.promote_pending(ALICE, b"f", pending)
    assert metadata.referenced_keys([current, pending]) == {pending}
    with metadata.transaction():
        metadata.delete_file(ALICE, b"f")
    assert metadata.referenced_keys([current, pending]) == set()


# -- the garbage sweeper ----------------------------------------------------------------


def test_the_sweeper_deletes_a_blob_only_once_unreferenced_for_the_grace_period(metadata, blobs):
    client_id = b"s" * 16
    register(metadata, client_id, "swept")
    path_name = stored_blob(blobs, client_id, b"kept", b"stored")
    current = sealed(blobs, client_id, b"current")
    pending = sealed(blobs, client_id, b"pending")
    in_flight = blobs.begin(client_id, new_blob_key())
    sealed(blobs, client_id, b"garbage")
    with metadata.transaction():
        metadata.upsert_file(client_id, b"kept", path_name, current.key)
        metadata.set_pending(client_id, b"kept", pending.key)
    now = [NOW]
    sweeper = Sweeper(metadata, blobs, lambda: now[0], lambda: {in_flight.key})
    assert sweeper.sweep() == 0  # found unreferenced: its grace begins
    now[0] += GARBAGE_GRACE / 2
    assert sweeper.sweep() == 0
    now[0] += GARBAGE_GRACE / 2
    assert sweeper.sweep() == 1
    left = {blob.key for blob in blobs.unpublished()}
    assert left == {current.key, pending.key, in_flight.key}
    with metadata.transaction():  # the pending version is given up: garbage from now on
        metadata.set_pending(client_id, b"kept", None)
    assert sweeper.sweep() == 0
    now[0] += GARBAGE_GRACE
    assert sweeper.sweep() == 1
    assert {blob.key for blob in blobs.unpublished()} == {current.key, in_flight.key}


def test_the_blob_store_interface_says_what_any_store_does_not_how_a_folder_does_it():
    names = {name for name in dir(BlobStore) if not name.startswith("_")}
    assert not names & {"strays", "set_aside"}
    assert {"foreign_entries", "quarantine"} <= names
    assert [field.name for field in fields(BlobEntry)] == ["owner", "name", "path_name"]
