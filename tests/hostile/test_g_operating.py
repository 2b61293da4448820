"""HOSTILE.md G, operating faults: what an operator (or a slip) does to a real server.

Two servers on one data folder.
"""

from __future__ import annotations

import os
import time

from helpers import file_packets, make_identity
from hostile_helpers import (
    LOCK_FILE,
    Guard,
    client_dir,
    start_refused,
    temp_files,
)
from protocol import FileReceived, cksum
from server.storage.lock import is_locked

PACKET = 65536
TEMP_WAIT = 5.0


def _wait_for_temp(server) -> list:
    deadline = time.monotonic() + TEMP_WAIT
    while not temp_files(server):
        assert time.monotonic() < deadline, "no temp file appeared"
        time.sleep(0.01)
    return temp_files(server)


# -- 13: one server per data folder ----------------------------------------------------------


def test_g_second_server_on_the_same_folder_refuses_to_start(server_factory, tmp_path):
    """The second server must not remove the first one's temp file (nor start at all)."""
    data_dir = tmp_path / "data"
    first = server_factory(data_dir=data_dir)
    guard = Guard(first)
    data = os.urandom(5 * PACKET)
    with first.client() as client:
        identity = make_identity(client)
        packets = file_packets(identity, "doc.bin", data, PACKET)
        for packet in packets[:2]:
            client.send(packet)
        in_progress = _wait_for_temp(first)

        second = start_refused(data_dir)
        log = second.log()
        assert second.process.returncode != 0
        assert log.count("\n") == 1 and "Traceback" not in log, log  # one line
        assert str(data_dir) in log and "another server" in log and LOCK_FILE in log, log
        assert is_locked(data_dir)  # what an admin tool reading beside it can ask

        assert temp_files(first) == in_progress  # start-up repair never ran
        for packet in packets[2:]:
            client.send(packet)
        answer = client.receive()
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(data), answer
    assert (client_dir(first, identity.client_id) / "doc.bin").read_bytes() == data
    guard.check()
    assert first.stop() == 0
    assert not is_locked(data_dir)  # released on exit: the folder serves again
    guard.server = server_factory(data_dir=data_dir)
    guard.check()
