"""A node killed mid-upload, and radosgw restarted, under the cluster (issue 27 point 3).

What must hold: the client's retry completes through another node, and
every file answered with 1603 and confirmed with 900 is in the store
afterwards, intact (read back through the store, and ``admin verify`` on
every row the session's tests left). Each test leaves the session's cluster
as it found it: the killed node is started again, radosgw too.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from client.__main__ import ExitCode
from edition_helpers import read_stored
from helpers import (
    IO_TIMEOUT,
    POLL_INTERVAL,
    RawClient,
    file_packets,
    make_identity,
    reconnect,
    server_env,
    unique_name,
    upload,
)
from server.errors import StorageFault
from protocol import Acknowledged, CrcOk, FileReceived, GeneralError, cksum

pytestmark = pytest.mark.needed_in_ci

#: Several of the store's 8 MiB parts: a part reaches the store long before the end.
BIG_FILE_BYTES = 48 * 1024 * 1024
SMALL_FILES = {"first.bin": 100_000, "second.bin": 300_000}
#: Seconds the real client's run may take (a 48 MB file sent twice, on a loaded machine).
CLIENT_TIMEOUT = 300
PACKET = 64 * 1024
#: The radosgw restart's files: one before, one across (two parts and a half), one after.
RESTART_FILES = {"before.bin": 300_000, "across.bin": 20 * 1024 * 1024, "after.bin": 300_000}
RESTART_SOURCE = "127.0.0.201"
IN_FLIGHT_SOURCE = "127.0.0.202"
#: A file of two parts and a half, being received while another node restarts.
IN_FLIGHT_BYTES = 20 * 1024 * 1024


def _wait_for(condition, what: str, timeout: float = IO_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(POLL_INTERVAL)
    return found


def _multipart_uploads(cluster) -> set[str]:
    listed = cluster.gateway.client().list_multipart_uploads(Bucket=cluster.bucket)
    return {upload["UploadId"] for upload in listed.get("Uploads", [])}


def _assert_intact(cluster, client_id: bytes, files: dict[str, bytes]) -> None:
    for file_name, data in files.items():
        assert read_stored(cluster.as_server(), client_id, file_name) == data, file_name
    verified = cluster.verify()
    assert verified.returncode == 0, verified.stdout + verified.stderr


def _read_back(cluster, client_id: bytes, files: dict[str, bytes]) -> dict[str, bool]:
    """Whether each file is in the store, intact; and ``admin verify``'s verdict on every row."""
    intact = {}
    for file_name, data in files.items():
        try:
            intact[file_name] = read_stored(cluster.as_server(), client_id, file_name) == data
        except (ValueError, StorageFault):  # no row (or more than one), no blob
            intact[file_name] = False
    verified = cluster.verify()
    intact["admin verify"] = verified.returncode == 0
    return intact


@dataclass
class NodeKilled:
    """What a real client's run saw when its node was killed (SIGKILL) mid-upload."""

    client: subprocess.CompletedProcess
    #: What it printed (its report of each file; its retries).
    output: str
    killed: int
    #: The node that logged the client's requests after the kill.
    took_over: int | None
    #: The files the client reported verified (answered 1603, confirmed with 900, 1604).
    confirmed: list[str]
    #: :func:`_read_back` with the node down, and after it started again (its start-up repair).
    read_while_down: dict[str, bool]
    read_after_restart: dict[str, bool]


@pytest.fixture(scope="module")
def node_killed(cluster, tmp_path_factory) -> NodeKilled:
    """A real client sends two small files and a big one; its node is killed once a part of
    the big one is in the store (the client stopped meanwhile), then started again."""
    home = tmp_path_factory.mktemp("user")
    files = {name: os.urandom(size) for name, size in SMALL_FILES.items()}
    files["big.bin"] = os.urandom(BIG_FILE_BYTES)
    for file_name, data in files.items():
        (home / file_name).write_bytes(data)
    name = unique_name("killed")
    earlier = _multipart_uploads(cluster)
    host, port = cluster.address
    process = subprocess.Popen(
        [sys.executable, "-m", "client", "--server", f"{host}:{port}", "--name", name, *files],
        cwd=home, env=server_env(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # The small files are confirmed (one after another) before the big one's first part
        # is in the store: stop the client there, kill its node, let it go on.
        _wait_for(lambda: _multipart_uploads(cluster) - earlier or process.poll() is not None,
                  "no part of big.bin reached the store", CLIENT_TIMEOUT)
        process.send_signal(signal.SIGSTOP)
        assert process.poll() is None, "the client ended before its node could be killed"
        killed = cluster.node_that_logged(name)
        assert killed is not None
        cluster.kill_node(killed)
    finally:
        process.send_signal(signal.SIGCONT)
        out, err = process.communicate(timeout=CLIENT_TIMEOUT)
    client = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    try:
        took_over = cluster.node_that_logged(name)
        client_id = bytes.fromhex((home / "me.info").read_text().splitlines()[1])
        confirmed = [f for f in files
                     if re.search(rf"^uploaded '{re.escape(f)}'.* verified$", out + err, re.M)]
        read_while_down = _read_back(cluster, client_id, {f: files[f] for f in confirmed})
    finally:
        cluster.start_node(killed)
    read_after_restart = _read_back(cluster, client_id, {f: files[f] for f in confirmed})
    return NodeKilled(client, out + err, killed, took_over, confirmed, read_while_down, read_after_restart)


def test_a_node_killed_mid_upload_loses_no_confirmed_file(node_killed):
    assert set(SMALL_FILES) <= set(node_killed.confirmed), node_killed.output
    assert all(node_killed.read_while_down.values()), node_killed.read_while_down
    assert all(node_killed.read_after_restart.values()), node_killed.read_after_restart


def test_a_node_killed_mid_upload_the_clients_retry_reaches_another_node(node_killed):
    assert node_killed.took_over not in (None, node_killed.killed)
    assert "retrying on a new connection" in node_killed.output


def test_a_node_killed_mid_upload_the_clients_retry_completes_through_another(node_killed):
    assert node_killed.client.returncode == ExitCode.OK, node_killed.output
    assert "big.bin" in node_killed.confirmed
    assert all(node_killed.read_after_restart.values()), node_killed.read_after_restart


def _confirmed(client: RawClient, who, file_name: str, data: bytes) -> None:
    """Send the file on this connection, confirm its cksum: 1603, then 900 -> 1604."""
    answer = upload(client, who, file_name, data, PACKET)
    assert isinstance(answer, FileReceived) and answer.cksum == cksum(data), answer
    assert isinstance(client.request(CrcOk(client_id=who.client_id, file_name=file_name)),
                      Acknowledged)


def test_radosgw_restarted_service_resumes_and_nothing_answered_is_lost(cluster):
    files = {name: os.urandom(size) for name, size in RESTART_FILES.items()}
    with RawClient(cluster.address, source=RESTART_SOURCE) as client:
        who = make_identity(client)
        _confirmed(client, who, "before.bin", files["before.bin"])
        # One more, its first part in the store when radosgw goes (its multipart upload).
        packets = file_packets(who, "across.bin", files["across.bin"], PACKET)
        half = len(packets) // 2
        earlier = _multipart_uploads(cluster)
        for packet in packets[:half]:
            client.send(packet)
        _wait_for(lambda: _multipart_uploads(cluster) - earlier, "no part reached the store")
        cluster.gateway.restart_gateway()
        for packet in packets[half:]:
            client.send(packet)
        across = client.receive()
        if isinstance(across, FileReceived):  # answered: then it must be kept
            assert across.cksum == cksum(files["across.bin"])
            assert isinstance(client.request(CrcOk(client_id=who.client_id,
                                                   file_name="across.bin")), Acknowledged)
    with RawClient(cluster.address, source=RESTART_SOURCE) as client:
        who = reconnect(client, who)
        if not isinstance(across, FileReceived):  # refused: the client sends it again
            assert isinstance(across, GeneralError), across
            _confirmed(client, who, "across.bin", files["across.bin"])
        _confirmed(client, who, "after.bin", files["after.bin"])
    _assert_intact(cluster, who.client_id, files)


def _send_half(cluster, client: RawClient, packets: list) -> list:
    """Send the first half of a file's packets, until a part is in the store; the rest."""
    half = len(packets) // 2
    earlier = _multipart_uploads(cluster)
    for packet in packets[:half]:
        client.send(packet)
    _wait_for(lambda: _multipart_uploads(cluster) - earlier, "no part reached the store")
    return packets[half:]


def test_a_node_restarting_leaves_the_other_nodes_uploads_in_flight(cluster):
    first, second, big = (os.urandom(300_000), os.urandom(200_000),
                          os.urandom(IN_FLIGHT_BYTES))
    with RawClient(cluster.address, source=IN_FLIGHT_SOURCE) as client:
        who = make_identity(client)
        _confirmed(client, who, "pending.bin", first)
        answer = upload(client, who, "pending.bin", second, PACKET)  # a version awaiting its 900
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(second), answer
        rest = _send_half(cluster, client, file_packets(who, "across.bin", big, PACKET))
        serving = cluster.node_that_logged(who.name)
        other = next(i for i in cluster.live_nodes() if i != serving)
        cluster.kill_node(other)
        cluster.start_node(other)  # its start-up repair runs beside this node's uploads
        for packet in rest:
            client.send(packet)
        answer = client.receive()
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(big), answer
        for file_name in ("across.bin", "pending.bin"):
            assert isinstance(client.request(CrcOk(client_id=who.client_id,
                                                   file_name=file_name)), Acknowledged)
    intact = _read_back(cluster, who.client_id, {"pending.bin": second, "across.bin": big})
    assert all(intact.values()), intact
