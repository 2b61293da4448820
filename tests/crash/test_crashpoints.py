"""The test-only crash hook itself (server/crashpoints.py)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, server_env
from server import crashpoints


@pytest.fixture
def kills(monkeypatch):
    """Arm points without dying: record the os.kill calls instead."""
    calls = []
    monkeypatch.setattr(crashpoints.os, "kill", lambda pid, sig: calls.append((pid, sig)))
    yield calls
    crashpoints.configure(None)


def test_unarmed_points_do_nothing(kills):
    crashpoints.configure(None)
    for name in sorted(crashpoints.POINTS) * 3:
        crashpoints.reached(name)
    assert kills == []


def test_the_armed_point_kills_at_its_count_only(kills):
    assert crashpoints.configure("write.appended:3") == "write.appended"
    crashpoints.reached("write.appended")
    crashpoints.reached("write.sealed")
    crashpoints.reached("write.appended")
    assert kills == []
    crashpoints.reached("write.appended")
    assert kills == [(crashpoints.os.getpid(), signal.SIGKILL)]


def test_the_count_defaults_to_the_first_time(kills):
    crashpoints.configure("upload.committed")
    crashpoints.reached("upload.committed")
    assert len(kills) == 1


@pytest.mark.parametrize("spec", ["nowhere", "write.appended:0", "write.appended:x", "write.appended:-1"])
def test_a_bad_spec_is_refused(spec):
    with pytest.raises(ValueError):
        crashpoints.configure(spec)


def test_every_point_is_placed_in_the_server():
    sources = "\n".join(path.read_text() for path in (REPO / "server").rglob("*.py"))
    placed = set(re.findall(r'crashpoints\.reached\("([^"]+)"\)', sources))
    assert placed == crashpoints.POINTS


def test_the_server_refuses_a_bad_variable(tmp_path: Path):
    env = server_env()
    env[crashpoints.ENVIRONMENT_VARIABLE] = "no.such.point"
    result = subprocess.run(
        [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", "0",
         "--data-dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert "unknown crash point" in result.stderr and "Traceback" not in result.stderr
