"""The code stays checked: ruff and mypy, configured in setup.cfg, find nothing."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP_CFG = ROOT / "setup.cfg"
RUFF_SECTION = "tool:ruff"
CHECKED = ("protocol", "server", "client", "tests", "bench")


def ruff_overrides() -> list[str]:
    """setup.cfg's ruff section as ``--config`` arguments (ruff reads no setup.cfg)."""
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    section = config[RUFF_SECTION]
    assert section, f"setup.cfg has no [{RUFF_SECTION}] section"
    return [arg for key, value in section.items() for arg in ("--config", f"{key} = {value}")]


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)


def _tool(name: str) -> str:
    """The tool beside this interpreter (installed by the test extras)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return found


def test_ruff_finds_nothing():
    result = _run(_tool("ruff"), "check", "--isolated", *ruff_overrides(), *CHECKED)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_configuration_is_applied():
    # The overrides reach ruff: a line over the configured length is reported.
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    length = int(config[RUFF_SECTION]["line-length"])
    result = subprocess.run(
        [_tool("ruff"), "check", "--isolated", *ruff_overrides(), "--stdin-filename", "x.py", "-"],
        input=f"X = {'1' * length}\n",
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 1 and "E501" in result.stdout, result.stdout + result.stderr


def test_mypy_finds_nothing():
    # setup.cfg's [mypy] section names the packages checked.
    result = _run(_tool("mypy"), "--config-file", str(SETUP_CFG))
    assert result.returncode == 0, result.stdout + result.stderr
