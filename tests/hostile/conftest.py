"""Fixtures of the docs/HOSTILE.md tests: fault injection and a small tmpfs.

``faults`` starts real servers with tests/hostile/inject/sitecustomize.py on
their PYTHONPATH and arms or disarms faults while they run. ``tmpfs`` mounts a
size-limited tmpfs (real ENOSPC), remounts it read-only, or binds a file
read-only over itself, when the test runs as root with mount rights; each
returns False otherwise and the test falls back to an injected fault or skips.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

INJECT_DIR = Path(__file__).resolve().parent / "inject"


class Faults:
    """Start servers with fault injection and control their faults."""

    def __init__(self, server_factory, control: Path, monkeypatch) -> None:
        self._factory = server_factory
        self.control = control
        self._monkeypatch = monkeypatch

    def start(self, *flags: str, **kwargs):
        """A real server whose faults this object controls."""
        pythonpath = os.pathsep.join(filter(None, [str(INJECT_DIR), os.environ.get("PYTHONPATH")]))
        with self._monkeypatch.context() as env:
            env.setenv("PYTHONPATH", pythonpath)
            env.setenv("CIPHERDROP_FAULTS", str(self.control))
            return self._factory(*flags, **kwargs)

    def arm(self, **faults) -> None:
        """Set the faults (replacing any armed before)."""
        temp = self.control.with_suffix(".new")
        temp.write_text(json.dumps(faults))
        os.replace(temp, self.control)

    def disarm(self) -> None:
        """No more faults."""
        self.arm()


@pytest.fixture
def faults(server_factory, tmp_path, monkeypatch) -> Faults:
    """Real servers with fault injection (see inject/sitecustomize.py)."""
    folder = tmp_path / "control"  # made before any server, so no Guard sees it appear
    folder.mkdir()
    return Faults(server_factory, folder / "faults.json", monkeypatch)


class Tmpfs:
    """Size-limited tmpfs mounts, unmounted at the end of the test."""

    def __init__(self) -> None:
        self.mounts: list[Path] = []

    def mount(self, where: Path, size: str = "2m", options: str = "") -> bool:
        """Mount a tmpfs of ``size`` at ``where``; False if this host cannot."""
        where.mkdir(parents=True, exist_ok=True)
        opts = f"size={size},mode=0700" + (f",{options}" if options else "")
        try:
            result = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
                capture_output=True, timeout=10,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        if result.returncode != 0:
            return False
        self.mounts.append(where)
        return True

    def remount(self, where: Path, options: str) -> bool:
        """Change the options of a mount made here (``ro``, ``rw``); False if it fails."""
        result = subprocess.run(
            ["mount", "-o", f"remount,{options}", str(where)], capture_output=True, timeout=10
        )
        return result.returncode == 0

    def bind_read_only(self, path: Path) -> bool:
        """Make one file or folder read-only in place (a read-only bind mount over it).

        Root ignores permission bits; a read-only mount stops root too.
        False if this host cannot.
        """
        try:
            bound = subprocess.run(["mount", "--bind", str(path), str(path)],
                                   capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return False
        if bound.returncode != 0:
            return False
        self.mounts.append(path)
        return self.remount(path, "bind,ro")

    def unmount_all(self) -> None:
        for where in reversed(self.mounts):
            # lazy: a server that still has a file open there must not block teardown
            subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10)
        self.mounts.clear()


@pytest.fixture
def tmpfs():
    """Mount small tmpfs file systems (real ENOSPC, read-only folders)."""
    mounts = Tmpfs()
    yield mounts
    mounts.unmount_all()
