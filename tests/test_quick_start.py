"""The README's two quick-start lines, run as written in a fresh clone (issue 24, point 12).

The lines are read from the clone's README.md by their markers, so the test
follows the README. Two things differ from a person's run: the home folder
is a temporary one, and port 1256 becomes a free port (another server of
this machine may hold 1256).
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from helpers import REPO, free_port

#: The comment that precedes each quick-start block in README.md.
MARKER = "<!-- quick-start: {} -->"
FENCE = "```"
DOCUMENTED_PORT = "1256"
#: A fresh virtual environment's install, then the server's start-up.
INSTALL_TIMEOUT = 600
RUN_TIMEOUT = 120
STOP_TIMEOUT = 30
LISTENING = re.compile(r"listening on \S+ port (\d+)")
#: What a fresh shell does not have: this test's own environment.
NOT_INHERITED = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")


def quick_start_line(readme: str, which: str) -> str:
    """The one command line of a marked block of the README."""
    after = readme.split(MARKER.format(which), 1)[1].lstrip("\n")
    assert after.startswith(FENCE), f"no code block after the {which} marker"
    body = after.split("\n", 1)[1].split(FENCE, 1)[0]
    [line] = [line for line in body.splitlines() if line.strip()]
    return line


def fresh_shell_env(home: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in NOT_INHERITED}
    env["HOME"] = str(home)
    venv_bin = os.environ.get("VIRTUAL_ENV")
    if venv_bin:  # the test's venv off the PATH: the lines must not need it
        env["PATH"] = os.pathsep.join(
            part for part in env["PATH"].split(os.pathsep)
            if not part.startswith(venv_bin)
        )
    return env


def read_lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


@pytest.mark.slow
@pytest.mark.needed_in_ci
@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(),
                    reason="needs a git checkout and git (apt-get install git)")
def test_the_two_quick_start_lines_serve_and_send_in_a_fresh_clone(tmp_path):
    clone, home = tmp_path / "clone", tmp_path / "home"
    home.mkdir()
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True,
                   capture_output=True, timeout=RUN_TIMEOUT)
    readme = (clone / "README.md").read_text()
    first_command = quick_start_line(readme, "server")
    assert readme.index(first_command) == readme.index(FENCE + "sh\n") + len(FENCE + "sh\n")
    assert "--host 127.0.0.1" in first_command  # the first command serves this machine only
    port = str(free_port())
    server_line = first_command.replace(DOCUMENTED_PORT, port)
    client_line = quick_start_line(readme, "client").replace(DOCUMENTED_PORT, port)
    assert server_line != first_command and port in client_line
    env = fresh_shell_env(home)

    server = subprocess.Popen(["bash", "-c", server_line], cwd=clone, env=env, text=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=read_lines, args=(server.stderr, lines), daemon=True).start()
    log = []
    try:
        while True:
            line = lines.get(timeout=INSTALL_TIMEOUT)
            assert line is not None, "".join(log)
            log.append(line)
            if LISTENING.search(line):
                break
        assert LISTENING.search(line).group(1) == port
        sent = subprocess.run(["bash", "-c", client_line], cwd=clone, env=env, text=True,
                              capture_output=True, timeout=RUN_TIMEOUT)
        assert sent.returncode == 0, sent.stderr
        assert "verified" in sent.stderr
        [stored] = (home / "cipherdrop-data" / "received_files").glob("*/hello.txt")
        assert stored.read_text() == "hello\n"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=STOP_TIMEOUT)
    assert not any(line.startswith("Traceback") for line in log)
