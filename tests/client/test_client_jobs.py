"""``--jobs N``: several files over several connections of one client, against the
real server; the turns its connections take (client/turns.py)."""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from pathlib import Path

import pytest

import client.upload
from client.__main__ import ExitCode
from client.turns import Turns

from test_client_e2e import address, client_id, received, run

#: Sizes around the packet size (1024 in these runs) and a few packets.
SIZES = (0, 1, 1023, 1024, 1025, 5000, 40_000)
PACKET_SIZE = "1024"
#: Seconds a thread is given to show that it is (not) blocked.
SETTLE = 0.2


def make_files(folder: Path, sizes=SIZES) -> dict[str, bytes]:
    files = {}
    for number, size in enumerate(sizes):
        data = os.urandom(size)
        name = f"file-{number}.bin"
        (folder / name).write_bytes(data)
        files[name] = data
    return files


def verified_rows(server, home: Path) -> dict[str, int]:
    with sqlite3.connect(server.data_dir / "defensive.db") as db:
        rows = db.execute(
            "SELECT FileName, Verified FROM files WHERE ID = ?", (bytes.fromhex(client_id(home)),)
        ).fetchall()
    return {os.fsdecode(name): verified for name, verified in rows}


@pytest.mark.parametrize("jobs", [2, 3])
def test_files_over_several_connections_are_all_stored_and_verified(server, tmp_path, jobs):
    home = tmp_path / "home"
    home.mkdir()
    files = make_files(home)
    result = run(
        home,
        "--server", address(server), "--name", f"jobs-{jobs}",
        "--packet-size", PACKET_SIZE, "--jobs", str(jobs), *files,
    )
    assert result.returncode == ExitCode.OK, result.stderr
    assert "refused the layout" not in result.stderr
    folder = received(server, client_id(home))
    for name, data in files.items():
        assert (folder / name).read_bytes() == data, name
    assert verified_rows(server, home) == {name: 1 for name in files}
    # The files went over `jobs` connections, with no key per file and no refusal.
    lines = server.log().splitlines()
    carriers = {re.search(r"127\.0\.0\.1:(\d+) 828 ", line).group(1) for line in lines if " 828 " in line}
    assert len(carriers) == jobs
    assert sum(" 827 " in line for line in lines) == jobs - 1  # the first registered
    assert "1607" not in server.log()


def test_a_file_that_fails_does_not_stop_the_others(server, work, run_client, monkeypatch):
    files = make_files(work, (3000, 5000, 7000, 9000))
    bad = "file-1.bin"
    real_plan_file = client.upload.plan_file

    def plan_file(path, *args, **kwargs):
        if path.name == bad:
            raise ValueError("grew past the limit")
        return real_plan_file(path, *args, **kwargs)

    monkeypatch.setattr(client.upload, "plan_file", plan_file)
    result = run_client(
        "--server", address(server), "--name", "jobs-failing",
        "--packet-size", PACKET_SIZE, "--jobs", "2", *(str(work / name) for name in files),
    )
    assert result.code == ExitCode.PARTIAL
    assert bad in result.err and "too large" in result.err
    folder = received(server, client_id(work))
    stored = {path.name for path in folder.iterdir()}
    assert stored == set(files) - {bad}
    for name in stored:
        assert (folder / name).read_bytes() == files[name]


def test_jobs_is_checked_on_the_command_line(run_client):
    for wrong in ("0", "x", "17"):
        result = run_client("--jobs", wrong, "a")
        assert result.code == ExitCode.USAGE
        assert "--jobs" in result.err


# -- the turns ---------------------------------------------------------------------


def in_thread(action) -> threading.Event:
    done = threading.Event()

    def target() -> None:
        action()
        done.set()

    threading.Thread(target=target, daemon=True).start()
    return done


def second_sender(turns: Turns) -> threading.Event:
    def second() -> None:
        with turns.sending():
            pass

    return in_thread(second)


def streaming_beside(turns: Turns) -> tuple[threading.Event, threading.Event]:
    """Another connection streams until ``stop`` is set; ``started`` when it does."""
    started, stop = threading.Event(), threading.Event()

    def other() -> None:
        with turns.sending():
            started.set()
            stop.wait(SETTLE * 50)

    threading.Thread(target=other, daemon=True).start()
    assert started.wait(SETTLE * 10)
    return started, stop


def test_connections_stream_at_once_until_a_refusal_beside_another():
    turns = Turns()
    with turns.sending():
        assert not turns.refused_beside()  # alone: a refusal says nothing of turns
    _, stop = streaming_beside(turns)
    with turns.sending():  # at once, beside the other
        assert turns.refused_beside()  # refused while the other streamed
        assert not turns.refused_beside()  # said once
    stop.set()
    _, stop = streaming_beside(turns)
    done = second_sender(turns)
    assert not done.wait(SETTLE)  # one at a time from now on
    stop.set()
    assert done.wait(SETTLE * 10)


def test_a_new_key_waits_for_other_connections_streaming():
    turns = Turns()
    _, stop = streaming_beside(turns)
    done = in_thread(turns.before_new_key)
    assert not done.wait(SETTLE)  # a new key would drop the other's upload
    stop.set()
    assert done.wait(SETTLE * 10)

    def own_stream_then_new_key() -> None:
        with turns.sending():
            turns.before_new_key()  # its own streaming does not hold it

    assert in_thread(own_stream_then_new_key).wait(SETTLE * 10)


def test_jobs_take_turns_with_a_server_that_streams_one_file_per_client(
    server_factory, tmp_path
):
    # A server that takes one upload of a client at a time refuses the second
    # connection's first packet (1607): the client then takes turns, and
    # every file is still stored and verified.
    server = server_factory("--max-uploads-per-client", "1")
    home = tmp_path / "home"
    home.mkdir()
    files = make_files(home, (200_000, 200_000, 200_000, 200_000))
    result = run(
        home,
        "--server", address(server), "--name", "jobs-turns", "-v",
        "--packet-size", PACKET_SIZE, "--jobs", "2", *files,
    )
    assert result.returncode == ExitCode.OK, result.stderr
    folder = received(server, client_id(home))
    for name, data in files.items():
        assert (folder / name).read_bytes() == data, name
    assert verified_rows(server, home) == {name: 1 for name in files}
    # Four files of 196 packets over two connections: they meet, are refused once, take turns.
    assert "too many uploads of this client in progress" in server.log()
    assert "take turns from now on" in result.stderr


def test_a_new_key_waits_for_the_files_awaiting_their_verdict():
    turns = Turns()
    turns.verdict_begins()
    done = in_thread(turns.before_new_key)
    assert not done.wait(SETTLE)
    turns.verdict_ends()
    assert done.wait(SETTLE * 10)
    assert in_thread(turns.before_new_key).wait(SETTLE * 10)  # nothing waits any more
