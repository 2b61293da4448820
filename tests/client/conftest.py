"""Fixtures of the client's tests: a work folder and an in-process runner."""

from __future__ import annotations

from pathlib import Path

import pytest
from client_runs import TIMEOUT, Run

from client.__main__ import main


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """An empty client folder."""
    folder = tmp_path / "client"
    folder.mkdir()
    return folder


@pytest.fixture
def run_client(capsys, work: Path):
    """Run ``main(argv)`` in the work folder; return the code and the output."""

    def run(*argv: str, config_dir: Path | None = None) -> Run:
        capsys.readouterr()
        code = main(["--config-dir", str(config_dir or work), "--timeout", TIMEOUT, *argv])
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        return Run(code, captured.out, captured.err)

    return run


@pytest.fixture(autouse=True)
def user_config_home(tmp_path: Path, monkeypatch) -> Path:
    """XDG_CONFIG_HOME inside the test's folder: no test reads or writes the user's own."""
    home = tmp_path / "xdg-config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home
