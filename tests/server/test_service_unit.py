"""contrib/cipherdrop.service (issue 14, point 4): systemd accepts it, and it is sandboxed;
the README's steps install it, on Debian 12 too (issue 24, point 1)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

UNIT = REPO / "contrib" / "cipherdrop.service"
#: The README's virtual environment (a system-wide pip install is refused: PEP 668).
VENV = "/opt/cipherdrop"
INSTALLED_PROGRAM = f"{VENV}/bin/cipherdrop-server"
SERVICE_MARKER = "<!-- service-install -->"
FENCE = "```"
#: Steps that need the real system (packages, users, a running systemd): not run.
SYSTEM_STEPS = ("apt ", "apt-get ", "useradd ", "systemctl ", "journalctl ")
SUDO = "sudo "
#: Absolute places the steps write to, moved under the temporary root.
ROOTED = re.compile(r"(?<![\w./~-])/(opt|etc)/")
INSTALL_TIMEOUT = 600
VERIFY_TIMEOUT = 60
SYSTEMD_MISSING = "systemd-analyze is not installed here: apt-get install -y systemd"
#: Where systemd's own units are (the targets the unit names): copied into the root.
SYSTEM_UNITS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))


def settings(unit: Path = UNIT) -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit (a key may repeat)."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
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


@pytest.mark.needed_in_ci
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason=SYSTEMD_MISSING)
def test_systemd_analyze_verify_finds_nothing(tmp_path):
    # verify checks that ExecStart's program exists: point it at this checkout's server.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED_PROGRAM, f"{sys.executable} -m server"))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # unknown keys are only warnings: any output is a finding
    assert result.stdout + result.stderr == "", result.stdout + result.stderr


def test_the_unit_passes_the_port_and_documents_an_existing_page():
    unit = settings()
    args = shlex.split(unit["ExecStart"][0])
    assert args[args.index("--port") + 1] == "1256"  # no "port.info not found" at each start
    [documentation] = unit["Documentation"]
    assert documentation == f"file://{VENV}/share/doc/cipherdrop/OPERATING.md"


def service_steps(readme: str) -> list[str]:
    """The README's service commands (``sudo`` dropped), comments and all."""
    after = readme.split(SERVICE_MARKER, 1)[1].lstrip("\n")
    assert after.startswith(FENCE), "no code block after the service marker"
    body = after.split("\n", 1)[1].split(FENCE, 1)[0]
    return [line.strip().removeprefix(SUDO) for line in body.splitlines() if line.strip()]


def fresh_env() -> dict[str, str]:
    """This environment without the test's own virtual environment."""
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV",
                                                                          "PYTHONPATH")}
    venv = os.environ.get("VIRTUAL_ENV")
    if venv:
        env["PATH"] = os.pathsep.join(
            part for part in env["PATH"].split(os.pathsep) if not part.startswith(venv))
    return env


@pytest.mark.slow
@pytest.mark.needed_in_ci
@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(),
                    reason="needs a git checkout and git (apt-get install git)")
def test_the_readme_service_steps_install_a_unit_systemd_accepts(tmp_path):
    root, clone = tmp_path / "root", tmp_path / "clone"
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    (root / "opt").mkdir()
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True,
                   capture_output=True, timeout=VERIFY_TIMEOUT)
    steps = service_steps((clone / "README.md").read_text())
    run = [step for step in steps if not step.startswith(SYSTEM_STEPS)]
    assert any(step.startswith(SYSTEM_STEPS) for step in steps)  # they are there, for a person
    for step in run:
        rooted = ROOTED.sub(lambda match: f"{root}/{match.group(1)}/", step)
        result = subprocess.run(["bash", "-c", rooted], cwd=clone, env=fresh_env(),
                                capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
        assert result.returncode == 0, f"{step}\n{result.stderr}"

    unit = root / "etc" / "systemd" / "system" / UNIT.name
    found = settings(unit)
    program = shlex.split(found["ExecStart"][0])[0]
    assert program == INSTALLED_PROGRAM
    version = subprocess.run([f"{root}{program}", "--version"], capture_output=True, text=True,
                             env=fresh_env(), timeout=VERIFY_TIMEOUT)
    assert version.returncode == 0 and version.stdout.startswith("cipherdrop-server ")
    [documentation] = found["Documentation"]
    assert Path(f"{root}{documentation.removeprefix('file://')}").is_file()

    if shutil.which("systemd-analyze") is None:
        pytest.skip(SYSTEMD_MISSING)
    # verify --root resolves ExecStart and the targets the unit names in the root.
    units = next(folder for folder in SYSTEM_UNITS if (folder / "sysinit.target").exists())
    shutil.copytree(units, f"{root}{units}", symlinks=True)
    verified = subprocess.run(["systemd-analyze", "verify", f"--root={root}", str(unit)],
                              capture_output=True, text=True, timeout=VERIFY_TIMEOUT,
                              cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout + verified.stderr == "", verified.stdout + verified.stderr
