"""contrib/cipherdrop.service (issue 14, point 4): systemd accepts it, and it is sandboxed."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys

import pytest

from helpers import REPO

UNIT = REPO / "contrib" / "cipherdrop.service"
INSTALLED_PROGRAM = "/usr/local/bin/cipherdrop-server"


def settings() -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit (a key may repeat)."""
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_unit_is_sandboxed_and_writes_only_its_data_folder():
    unit = settings()
    [command] = unit["ExecStart"]
    args = shlex.split(command)
    data_dir = args[args.index("--data-dir") + 1]
    assert args[0] == INSTALLED_PROGRAM
    assert unit["ReadWritePaths"] == [data_dir] and unit["ProtectSystem"] == ["strict"]
    assert unit["NoNewPrivileges"] == ["yes"] and unit["User"] == ["cipherdrop"]
    assert args[args.index("--log-format") + 1] == "journal"
    assert unit["KillSignal"] == ["SIGTERM"]
    # systemd's stop timeout leaves room for the server's drain (30 s by default)
    assert int(unit["TimeoutStopSec"][0]) > 30


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed on this machine")
def test_systemd_analyze_verify_finds_nothing(tmp_path):
    # verify checks that ExecStart's program exists: point it at this checkout's server.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED_PROGRAM, f"{sys.executable} -m server"))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # unknown keys are only warnings: any output is a finding
    assert result.stdout + result.stderr == "", result.stdout + result.stderr
