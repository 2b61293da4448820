"""``python -m client --edition E`` against the real server, for every edition.

Each run is what a person does: a first run registers, a second run logs in
again (827, its edition's reconnect, or the 2022 public key sent again) and
sends two files; every file must arrive whole and be verified.
"""

from __future__ import annotations

import os
import re
import sqlite3

import pytest

from client.__main__ import ExitCode
from protocol import events
from protocol.editions import EDITIONS, V3

from test_client_e2e import address, client_id, new_user, run, stored

EDITION_NAMES = [edition.name.lower() for edition in EDITIONS]


def verified_rows(server, home):
    with sqlite3.connect(server.data_dir / "defensive.db") as db:
        return db.execute(
            "SELECT FileName, Verified FROM files WHERE ID = ? ORDER BY FileName",
            (bytes.fromhex(client_id(home)),),
        ).fetchall()


@pytest.mark.parametrize("edition", EDITION_NAMES)
def test_the_client_speaks_every_edition(server, tmp_path, edition):
    home = new_user(tmp_path, address(server), f"ed-{edition}-{os.getpid()}", size=100_000)
    first = run(home, "--edition", edition)
    assert first.returncode == ExitCode.OK, first.stderr
    assert "Traceback" not in first.stderr
    (home / "big.bin").write_bytes(os.urandom(5_000_000))
    (home / "empty.bin").write_bytes(b"")
    second = run(home, "--edition", edition, "big.bin", "empty.bin")
    assert second.returncode == ExitCode.OK, second.stderr
    # Our server serves the standard layout: the client never falls back.
    assert "refused the layout" not in first.stderr + second.stderr
    for name in ("notes.txt", "big.bin", "empty.bin"):
        assert stored(server, home, name) == (home / name).read_bytes()
    assert verified_rows(server, home) == [("big.bin", 1), ("empty.bin", 1), ("notes.txt", 1)]
    with sqlite3.connect(server.data_dir / "defensive.db") as db:
        (recorded,) = db.execute(
            "SELECT Edition FROM clients WHERE ID = ?", (bytes.fromhex(client_id(home)),)
        ).fetchone()
    assert recorded.lower() == edition


@pytest.mark.parametrize("edition", [e for e in EDITIONS if e is not V3], ids=str)
def test_verbose_logs_the_editions_own_codes_and_what_is_sent(server, tmp_path, edition):
    home = new_user(tmp_path, address(server), f"log-{edition.name}-{os.getpid()}", size=3_000_000)
    result = run(home, "--edition", edition.name.lower(), "-v")
    assert result.returncode == ExitCode.OK, result.stderr
    logged = re.findall(r"(?:->|<-) (\d+) (\w+)", result.stderr)
    assert logged
    for code, name in logged:
        kind = getattr(events, name)
        message = edition.request_for(kind) or edition.response_for(kind)
        if message is None:  # an answer the client skips (2023C) is named by its own code
            assert kind is events.UnknownResponse, (edition.name, code, name)
            continue
        assert int(code) == message.code, (edition.name, code, name)
    if edition.whole_file:
        assert "in one request" in result.stderr and "packets of up to" not in result.stderr
