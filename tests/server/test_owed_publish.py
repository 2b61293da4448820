"""A confirmed version whose publish failed is owed: retried every OWED_PUBLISH_RETRY
seconds until the name reads it (server/installs.py), even where a retry finds the
metadata store unreadable (a database away for a moment): that retry is the next's,
not the last."""

from __future__ import annotations

import threading
import time

import pytest

from helpers import RawClient, make_identity, upload
from loop_driving import served_in_a_thread
from protocol import Acknowledged, CrcOk, FileReceived, GeneralError
from server.errors import StorageFault
from server.storage.folder import RECEIVED_DIR, FolderBlobs

FIRST, SECOND = b"the first version\n", b"the confirmed second version\n"
FILE_NAME = "report.txt"
#: Seconds the test waits for the owed publish (the retries come every second).
PATIENCE = 30.0
#: The round worker's thread (server/roundworker.py).
ROUND_WORKER = "round-storage"


class FlakyFolder(FolderBlobs):
    """The folder store, whose next ``failing`` publishes fail; it notes the thread of each."""

    failing = 0

    def __init__(self, data_dir) -> None:
        super().__init__(data_dir)
        self.threads: list[str] = []

    def publish(self, key: str, path_name: str) -> None:
        self.threads.append(threading.current_thread().name)
        if self.failing:
            self.failing -= 1
            raise StorageFault("the store is away for a moment")
        super().publish(key, path_name)


@pytest.fixture
def served(tmp_path):
    """A server on the flaky store and SQLite, its loop in a thread of its own (SQLite's with
    it); the server, the store and the db."""
    store = FlakyFolder(tmp_path)
    with served_in_a_thread(tmp_path, store) as (server, db):
        yield server, store, db


def test_an_owed_publish_is_retried_after_a_retry_that_could_not_read_the_row(
    served, tmp_path
):
    server, store, db = served
    client = RawClient(server.address[:2])
    identity = make_identity(client)
    assert isinstance(upload(client, identity, FILE_NAME, FIRST), FileReceived)
    assert isinstance(client.request(CrcOk(identity.client_id, FILE_NAME)), Acknowledged)
    assert isinstance(upload(client, identity, FILE_NAME, SECOND), FileReceived)
    store.failing = 1
    real_file_row = db.file_row
    unreadable = []

    def file_row(client_id: bytes, file_name: bytes):
        if not unreadable:  # the first retry finds the database away
            unreadable.append(True)
            raise StorageFault("database: unreachable, trying again shortly")
        return real_file_row(client_id, file_name)

    # the 900's swap is durable, its publish fails: 1607, and the publish is owed
    assert isinstance(client.request(CrcOk(identity.client_id, FILE_NAME)), GeneralError)
    db.file_row = file_row  # type: ignore[method-assign]
    stored = tmp_path / RECEIVED_DIR / identity.client_id.hex() / FILE_NAME
    give_up = time.monotonic() + PATIENCE
    while stored.read_bytes() != SECOND and time.monotonic() < give_up:
        time.sleep(0.1)
    assert unreadable == [True]
    assert stored.read_bytes() == SECOND
    client.close()
    # every publish, the retries too, in the round worker: none in the loop's thread
    assert set(store.threads) == {ROUND_WORKER}, store.threads
