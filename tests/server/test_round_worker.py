"""The round worker (server/roundworker.py): a round's blob seals and publishes leave the loop
thread free.

The folder store's seal (a fsync of the upload's file) and publish (a rename,
a fsync of the folder) run in the round worker, with the metadata store's
sync, while the loop waits for the round through its selector: a slow disk
delays the round's answers, as a slow database sync does, but the loop goes
on accepting connections meanwhile.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from helpers import RawClient, make_identity, upload
from loop_driving import PATIENCE, TURN_PAUSE, served_in_a_thread
from protocol import FileReceived, cksum
from server.app import App
from server.limits import Limits
from server.roundworker import RoundWorker
from server.storage.base import DurableStep
from server.storage.folder import RECEIVED_DIR, FolderBlobs
from server.storage.sqlite import DB_NAME, SqliteMetadata

#: How long each fsync of the folder store takes in the test: far more than an accept.
SYNC_PAUSE = 1.5
DATA = bytes(range(256)) * 64


def _wait(done) -> float:
    """Poll until ``done()``; return when (monotonic) it was."""
    give_up = time.monotonic() + PATIENCE
    while not done():
        assert time.monotonic() < give_up, "the loop never got there"
        time.sleep(TURN_PAUSE)
    return time.monotonic()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_the_loop_accepts_while_a_blob_is_synced(tmp_path, monkeypatch):
    received = str(tmp_path / RECEIVED_DIR)
    syncing = threading.Event()
    syncs: list[tuple[float, float]] = []  # (began, ended) of each slow fsync
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        if not os.readlink(f"/proc/self/fd/{fd}").startswith(received):
            real_fsync(fd)  # the database's: as fast as ever
            return
        began = time.monotonic()
        syncing.set()
        time.sleep(SYNC_PAUSE)
        real_fsync(fd)
        syncs.append((began, time.monotonic()))

    monkeypatch.setattr(os, "fsync", slow_fsync)
    with served_in_a_thread(tmp_path, FolderBlobs(tmp_path)) as (server, _db):
        address = server.address[:2]
        with RawClient(address) as uploader:
            identity = make_identity(uploader)
            answer: list = []
            sending = threading.Thread(
                target=lambda: answer.append(upload(uploader, identity, "synced.bin", DATA))
            )
            sending.start()
            assert syncing.wait(PATIENCE)  # the upload's seal is under way
            open_before = len(server.channels)
            with RawClient(address):
                accepted = _wait(lambda: len(server.channels) > open_before)
                sending.join(PATIENCE)
    (stored,) = answer
    assert isinstance(stored, FileReceived) and stored.cksum == cksum(DATA)
    # the seal's fsync and the folder's: the newcomer was accepted during the first
    assert len(syncs) == 2, syncs
    (seal_began, seal_ended), _publish = syncs
    assert seal_began < accepted < seal_ended, (accepted, syncs)


def test_a_job_after_the_workers_close_runs_at_once():
    """The server's stop closes the worker; a round ended after it (a tool's, a test's)
    must not wait for a thread that is gone."""
    worker = RoundWorker()
    ran: list[int] = []
    worker.start(lambda: ran.append(threading.get_ident()))
    _wait(worker.finished)
    worker.close()
    worker.start(lambda: ran.append(threading.get_ident()))
    assert worker.finished() and ran[1] == threading.get_ident() != ran[0]


#: Empty rounds ended in the test.
EMPTY_ROUNDS = 100


def test_an_empty_round_ends_without_a_run_time_protocol_check(tmp_path, monkeypatch):
    """The loop ends a round at every wake-up, most with nothing to commit: their end hands
    nothing to the worker, and does not ask whether the store's answer is a DurableStep
    (a run-time protocol's isinstance walks its attributes: it made each empty round's end
    several times dearer, and a loop spinning on a parked socket starved the clients' threads)."""
    checked = []
    protocol_meta = type(DurableStep)
    real_check = protocol_meta.__instancecheck__

    def counting_check(cls, instance) -> bool:
        if cls is DurableStep:
            checked.append(instance)
        return real_check(cls, instance)

    monkeypatch.setattr(protocol_meta, "__instancecheck__", counting_check)
    db = SqliteMetadata.open(tmp_path / DB_NAME)
    app = App.build(db, FolderBlobs(tmp_path), Limits())
    try:
        for _ in range(EMPTY_ROUNDS):
            assert app.begin_round(durable=False) is None
            assert app.round_committed() == set()
    finally:
        app.uploads.close()
        db.close()
    assert checked == []
