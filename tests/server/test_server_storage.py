"""Storage units: safe stored names (docs/HOSTILE.md, names), the metadata store, limits."""

from __future__ import annotations

import ntpath
import os
import posixpath
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.limits import Limits
from server.errors import DurabilityLost, NameTaken, StorageFault, StoreUnusable
from server.storage import new_blob_key
from server.storage.commit import Content, confirm_pending, keep_pending, repair
from server.storage.base import StoreUrl
from server.storage.folder import TEMP_PREFIX, FolderBackend, FolderBlobs
from server.storage.names import MAX_STORED_NAME_BYTES, stored_name
from server.storage.sqlite import DEFAULT_BUSY_TIMEOUT, SqliteMetadata

BUSY_TIMEOUT = DEFAULT_BUSY_TIMEOUT


def open_metadata(path) -> SqliteMetadata:
    return SqliteMetadata.open(path, BUSY_TIMEOUT)

RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"{d}{n}" for d in ("COM", "LPT") for n in range(1, 10)}


def assert_safe(name: str) -> None:
    assert name and name not in (".", "..")
    assert not name.startswith(".")
    for flavour in (posixpath, ntpath):
        assert flavour.basename(name) == name
        assert not flavour.isabs(name)
    assert ntpath.splitdrive(name)[0] == ""
    assert not set(name) & set('<>:"/\\|?*\0')
    assert all(ch.isprintable() for ch in name)
    assert not name.endswith((".", " "))
    assert name.split(".")[0].rstrip(" ").upper() not in RESERVED
    assert len(name.encode("utf-8")) <= MAX_STORED_NAME_BYTES


@pytest.mark.parametrize(
    "wire, expected",
    [
        (b"report.pdf", "report.pdf"),
        (b"../../etc/passwd", "%2E.%2F..%2Fetc%2Fpasswd"),
        (b"..", "%2E%2E"),
        (b".", "%2E"),
        (b"/etc/passwd", "%2Fetc%2Fpasswd"),
        (b"C:\\Windows\\win.ini", "C%3A%5CWindows%5Cwin.ini"),
        (b"\\\\host\\share\\x", "%5C%5Chost%5Cshare%5Cx"),
        (b"CON", "%43ON"),
        (b"nul.txt", "%6Eul.txt"),
        (b"COM1", "%43OM1"),
        (b"name.", "name%2E"),
        (b"name ", "name%20"),
        (b"a:stream", "a%3Astream"),
        (b"100%", "100%25"),
        (b"tab\there", "tab%09here"),
        (b"caf\xc3\xa9", "café"),
        (b"\xe9t\xe9", "%E9t%E9"),
        (b".tmp-1234", "%2Etmp-1234"),
    ],
)
def test_stored_names(wire, expected):
    assert stored_name(wire) == expected
    assert_safe(stored_name(wire))


def test_long_names_are_shortened_with_a_digest():
    long_a, long_b = b"a" * 254, b"a" * 253 + b"b"
    assert stored_name(long_a) != stored_name(long_b)
    assert_safe(stored_name(long_a))
    assert_safe(stored_name(b"\x01" * 254))


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=1, max_size=254).filter(lambda b: b"\0" not in b))
def test_property_every_name_is_safe(wire):
    assert_safe(stored_name(wire))


@settings(max_examples=400, deadline=None)
@given(
    st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b),
    st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b),
)
def test_property_distinct_names_never_share_a_file(a, b):
    if a != b:
        assert stored_name(a) != stored_name(b)


def test_database_schema_wal_and_normal_sync(tmp_path):
    db = open_metadata(tmp_path / "defensive.db")
    db.close()
    raw = sqlite3.connect(tmp_path / "defensive.db")
    assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    columns = {
        t: [r[1] for r in raw.execute(f"PRAGMA table_info({t})")] for t in ("clients", "files")
    }
    assert columns == {
        "clients": ["ID", "Name", "PublicKey", "LastSeen", "AESKey", "Edition", "Crc",
                    "UnusedSince", "RegisteredFrom"],
        "files": ["ID", "FileName", "PathName", "Verified", "Cksum", "Size", "BlobKey",
                  "PendingKey"],
    }
    raw.close()
    db = open_metadata(tmp_path / "defensive.db")
    assert db._db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL: sync() fsyncs
    db.close()


def test_a_commit_is_unsynced_until_sync_fsyncs_the_wal(tmp_path, monkeypatch):
    from server.storage import sqlite as sqlite_module

    db = open_metadata(tmp_path / "defensive.db")
    synced = []
    real_fsync = sqlite_module.os.fsync
    monkeypatch.setattr(sqlite_module.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    db.sync()
    assert not db.unsynced and synced == []  # nothing committed: nothing to sync
    with db.transaction():
        db.insert_client(b"i" * 16, "alice", 0.0, "v3")
    with db.transaction():
        db.insert_client(b"j" * 16, "bob", 0.0, "v3")
    assert db.unsynced and synced == []  # two commits, no fsync yet
    db.sync()
    assert not db.unsynced
    wal_syncs = [fd for fd in synced if fd == db._wal_fd]
    assert len(wal_syncs) == 1  # one fsync of the WAL for both commits (and the folder once)
    db.sync()
    assert len(synced) <= 2  # no new commit: no new fsync
    db.close()


def test_a_failed_sync_loses_durability_for_good(tmp_path, monkeypatch):
    from server.storage import sqlite as sqlite_module

    db = open_metadata(tmp_path / "defensive.db")
    with db.transaction():
        db.insert_client(b"i" * 16, "alice", 0.0, "v3")

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(sqlite_module.os, "fsync", broken)
    with pytest.raises(DurabilityLost, match="sync"):
        db.sync()
    assert db.unsynced
    monkeypatch.undo()
    # the fsync works again, but the pages of the failed one may be gone:
    # no later sync may say the database is durable
    with pytest.raises(DurabilityLost, match="failed earlier"):
        db.sync()
    with pytest.raises(DurabilityLost):
        db.close()


def test_database_missing_column_is_refused(tmp_path):
    raw = sqlite3.connect(tmp_path / "defensive.db")
    raw.execute("CREATE TABLE clients (ID BLOB PRIMARY KEY, Name TEXT)")
    raw.commit()
    raw.close()
    with pytest.raises(StoreUnusable, match="lacks"):
        open_metadata(tmp_path / "defensive.db")


def test_rollback_on_error_leaves_no_half_state(tmp_path):
    db = open_metadata(tmp_path / "defensive.db")
    with pytest.raises(RuntimeError):
        with db.transaction():
            db.insert_client(b"i" * 16, "alice", 0.0, "v3")
            raise RuntimeError("boom")
    assert db.client_by_name("alice") is None
    db.close()


def test_non_utf8_file_names_round_trip(tmp_path):
    db = open_metadata(tmp_path / "defensive.db")
    with db.transaction():
        db.upsert_file(b"i" * 16, b"\xe9t\xe9", "received_files/x/y")
        db.upsert_file(b"i" * 16, "été".encode(), "received_files/x/z")
    assert {row.file_name for row in db.file_rows()} == {b"\xe9t\xe9", "été".encode()}
    db.close()


def test_file_store_refuses_path_names_that_leave_it(tmp_path):
    store = FolderBlobs(tmp_path)
    for path_name in ("../x", "received_files/../../x", "received_files/" + "a" * 32 + "/..",
                      "/etc/passwd", "received_files/" + "a" * 32 + "/x\\..\\y"):
        assert not store.exists(path_name)


def test_reading_a_fifo_planted_as_a_stored_file_is_refused_without_waiting(tmp_path):
    import os
    import threading

    store = FolderBlobs(tmp_path)
    path_name = store.new_path_name(b"\x01" * 16, b"pipe", new_blob_key())
    store.client_dir(b"\x01" * 16)
    os.mkfifo(store.resolve(path_name))
    outcome = []

    def read() -> None:
        try:
            store.open(path_name)
        except StorageFault as exc:
            outcome.append(str(exc))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(30)  # a blocking open would wait for a writer for ever
    if reader.is_alive():
        with open(store.resolve(path_name), "wb"):  # let the stuck reader go
            pass
    assert outcome == ["not a regular file"]


def test_uploads_are_written_under_their_key_with_the_reserved_prefix(tmp_path):
    key = new_blob_key()
    writer = FolderBlobs(tmp_path).begin(b"\x01" * 16, key)
    assert writer.name == f"{TEMP_PREFIX}{key}"
    writer.write(b"abc")
    writer.abort()
    assert not writer.path.exists()


def _stored(store: FolderBlobs, client_id: bytes, file_name: bytes) -> str:
    writer = store.begin(client_id, new_blob_key())
    writer.write(file_name)
    writer.seal()
    path_name = store.new_path_name(client_id, file_name, writer.key)
    store.publish(writer.key, path_name)
    return path_name


def test_a_folder_the_store_made_gives_names_without_listing_it(tmp_path, monkeypatch):
    store, client_id = FolderBlobs(tmp_path), b"\x01" * 16
    first = _stored(store, client_id, b"a.txt")
    listed = []
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path: listed.append(path) or real_scandir(path))
    second = _stored(store, client_id, b"A.TXT")  # the store knows a.txt: no listing
    assert listed == [] and second.lower() != first.lower()
    store.delete(first)
    assert store.new_path_name(client_id, b"a.txt", new_blob_key()) == first  # free again
    restarted = FolderBlobs(tmp_path)  # a folder it did not make: listed once per name asked
    assert restarted.new_path_name(client_id, b"a.TXT", new_blob_key()).lower() != second.lower()
    assert len(listed) == 1


def test_a_folder_nodes_share_gives_names_apart_from_the_other_node_s(tmp_path):
    client_id = b"\x01" * 16
    here, there = (FolderBackend().open(StoreUrl("file", tmp_path, text=tmp_path.as_uri()), shared=True)
                   for _ in range(2))
    _stored(here, client_id, b"x.bin")  # node "here" made the client's folder
    theirs = _stored(there, client_id, b"A.TXT")
    ours = _stored(here, client_id, b"a.txt")
    assert ours.lower() != theirs.lower()  # one file, where case is ignored


@pytest.mark.parametrize(
    "bad", [dict(max_connections=0), dict(idle_timeout=0), dict(max_content_size=2**32), dict(min_free_disk=-1)]
)
def test_limits_are_validated(bad):
    with pytest.raises(ValueError):
        Limits(**bad)


def test_a_taken_name_is_the_stores_own_error(tmp_path):
    db = open_metadata(tmp_path / "defensive.db")
    with db.transaction():
        db.insert_client(b"i" * 16, "alice", 0.0, "v3")
    with pytest.raises(NameTaken):
        with db.transaction():
            db.insert_client(b"j" * 16, "alice", 0.0, "v3")
    assert db.client_by_name("alice").id == b"i" * 16
    db.close()


def test_sqlite_errors_cross_the_seam_as_storage_faults(tmp_path):
    db = open_metadata(tmp_path / "defensive.db")
    db._db.close()  # the connection is gone: every statement fails in sqlite3
    with pytest.raises(StorageFault):
        db.client_by_name("alice")
    with pytest.raises(StorageFault):
        with db.transaction():
            db.insert_client(b"i" * 16, "alice", 0.0, "v3")


def test_a_database_of_before_the_editions_gets_the_edition_column(tmp_path):
    raw = sqlite3.connect(tmp_path / "defensive.db")
    raw.execute(
        "CREATE TABLE clients (ID BLOB PRIMARY KEY, Name TEXT NOT NULL UNIQUE,"
        " PublicKey BLOB, LastSeen TEXT, AESKey BLOB)"
    )
    raw.execute("INSERT INTO clients (ID, Name) VALUES (?, 'old')", (b"o" * 16,))
    raw.commit()
    raw.close()
    db = open_metadata(tmp_path / "defensive.db")
    assert db.client_by_name("old").edition == "v3"
    with db.transaction():
        db.insert_client(b"n" * 16, "new", 0.0, "2023C")
        db.set_edition(b"o" * 16, "2024A")
    assert (db.client_by_name("new").edition, db.client_by_name("old").edition) == ("2023C", "2024A")
    db.close()


def test_a_database_of_before_blob_keys_opens_and_its_files_are_kept_by_repair(tmp_path):
    """Rows of before BlobKey/PendingKey: no key (their content is what PathName reads)."""
    client_id = b"o" * 16
    raw = sqlite3.connect(tmp_path / "defensive.db")
    raw.execute(
        "CREATE TABLE clients (ID BLOB PRIMARY KEY, Name TEXT NOT NULL UNIQUE,"
        " PublicKey BLOB, LastSeen TEXT, AESKey BLOB)"
    )
    raw.execute("CREATE TABLE files (ID BLOB NOT NULL, FileName TEXT NOT NULL, PathName TEXT"
                " NOT NULL, Verified INTEGER NOT NULL DEFAULT 0, Cksum INTEGER, Size INTEGER,"
                " PRIMARY KEY (ID, FileName))")
    raw.execute("INSERT INTO clients (ID, Name) VALUES (?, 'old')", (client_id,))
    blobs = FolderBlobs(tmp_path)
    path_name = blobs.path_name(client_id, "old.bin")
    blobs.client_dir(client_id).joinpath("old.bin").write_bytes(b"old content")
    raw.execute("INSERT INTO files (ID, FileName, PathName, Verified) VALUES (?, 'old.bin', ?, 1)",
                (client_id, path_name))
    raw.commit()
    raw.close()
    db = open_metadata(tmp_path / "defensive.db")
    (row,) = db.file_rows()
    assert (row.path_name, row.verified, row.blob_key, row.pending_key) == (path_name, True, None, None)
    report = repair(db, blobs)
    assert (report.rows_removed, report.published, report.blobs_set_aside) == (0, 0, 0)
    pending = blobs.begin(client_id, new_blob_key())
    pending.write(b"new content")
    pending.seal()
    keep_pending(db, client_id, b"old.bin", pending.key)
    confirm_pending(db, client_id, b"old.bin", pending.key, Content(11, 1))
    db.sync()
    blobs.publish(pending.key, path_name)
    assert db.file_row(client_id, b"old.bin").blob_key == pending.key
    assert (tmp_path / path_name).read_bytes() == b"new content"
    db.close()


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_last_seen_text_is_the_iso_second_of_the_time(now):
    from datetime import datetime, timezone

    from server.storage.sqlite import timestamp

    expected = datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds")
    assert timestamp(now) == expected


def test_a_database_of_before_the_lapse_gets_each_clients_unused_time_and_address(tmp_path):
    raw = sqlite3.connect(tmp_path / "defensive.db")
    raw.execute(
        "CREATE TABLE clients (ID BLOB PRIMARY KEY, Name TEXT NOT NULL UNIQUE,"
        " PublicKey BLOB, LastSeen TEXT, AESKey BLOB)"
    )
    raw.execute("CREATE TABLE key_bindings (ID BLOB PRIMARY KEY, Address TEXT NOT NULL,"
                " IssuedAt REAL NOT NULL, LastUsed REAL NOT NULL)")
    raw.execute("CREATE TABLE files (ID BLOB NOT NULL, FileName TEXT NOT NULL, PathName TEXT"
                " NOT NULL, Verified INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (ID, FileName))")
    rows = {b"a" * 16: None, b"b" * 16: None, b"c" * 16: b"k", b"d" * 16: b"k"}
    for client_id, key in rows.items():
        raw.execute("INSERT INTO clients (ID, Name, PublicKey) VALUES (?, ?, ?)",
                    (client_id, client_id.decode(), key))
    for client_id in (b"a" * 16, b"c" * 16):
        raw.execute("INSERT INTO key_bindings VALUES (?, '127.0.2.1', 5.0, 6.0)", (client_id,))
    raw.execute("INSERT INTO files VALUES (?, 'f', 'p', 1)", (b"c" * 16,))
    raw.commit()
    raw.close()
    db = open_metadata(tmp_path / "defensive.db")
    unused = dict(db._db.execute("SELECT Name, UnusedSince FROM clients").fetchall())
    assert db.count_clients() == 4
    # the address a key is bound to stands for the one that registered (its share)
    assert db.client_by_id(b"c" * 16).registered_from == "127.0.2.1"
    assert db.client_by_id(b"d" * 16).registered_from is None
    assert db.count_clients("127.0.2.1") == 2
    db.close()
    letters = {name[0]: value for name, value in unused.items()}
    assert letters["a"] == 5.0  # keyless: from its binding
    assert letters["b"] == 0  # keyless, never bound: lapsed, as it was
    assert letters["c"] is None  # it stored a file: it never lapses
    assert letters["d"] > 1_000_000_000  # keyed, no file, no binding: from the migration
