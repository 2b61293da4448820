"""``python -m client`` as a real process: exit codes, output, signals, terminals."""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from client.__main__ import ExitCode
from client.upload import MAX_RETRIES
from protocol import Register

from client_fakes import (
    NAME,
    FakeServer,
    Keys,
    accept_upload,
    handshake_register,
    make_file,
    write_transfer_info,
)

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 60


def client_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "client", *args]


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the client in folder, as a person would: no arguments needed."""
    return subprocess.run(
        client_command("--timeout", "10", *args),
        cwd=folder,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def test_help_explains_flags_and_exit_codes(work):
    result = run(work, "--help")
    assert result.returncode == 0
    for word in ("--server", "--name", "--config-dir", "--timeout", "--quiet", "--verbose",
                 "transfer.info", "me.info", "priv.key", "exit codes"):
        assert word in result.stdout
    for code in ExitCode:
        assert f"\n  {int(code):<4} " in result.stdout


def test_help_states_one_retry_budget_per_file(work):
    # issue 23 point 9: the count never starts again within a file
    text = " ".join(run(work, "--help").stdout.split())
    assert f"retries: {MAX_RETRIES} in all for a file" in text
    assert "retries the step" not in text


def test_exit_codes_are_in_the_module_docstring():
    import client.__main__ as module

    for code in ExitCode:
        assert f"\n    {int(code):<4} " in module.__doc__


def test_bad_flag_is_a_usage_error(work):
    result = run(work, "--packet-size", "1000")
    assert result.returncode == ExitCode.USAGE
    assert "multiple of 16" in result.stderr


@pytest.mark.parametrize("flags", [("--packet-size", "1000"), ("--no-such-flag",), ("--jobs",)])
def test_a_refused_command_line_is_one_line_as_the_servers(work, flags):
    """The error and where the help is, as the server says it: no usage block."""
    result = run(work, *flags)
    assert result.returncode == ExitCode.USAGE
    [line] = result.stderr.splitlines()
    program = line.split(": error: ", 1)[0]
    assert line.startswith(f"{program}: error: ") and line.endswith(f"; see {program} --help")


def test_config_error_exits_3_without_traceback(work):
    (work / "transfer.info").write_text("localhost:99999\nalice\nx\n")
    result = run(work)
    assert result.returncode == ExitCode.CONFIG
    assert result.stderr.strip() == (
        "error: transfer.info line 1: bad port '99999' in 'localhost:99999' (expected 1 to 65535)"
    )


def test_no_server_exits_5(work):
    make_file(work)
    write_transfer_info(work, "127.0.0.1:1", NAME, "data.bin")
    result = run(work)
    assert result.returncode == ExitCode.NETWORK
    assert "Traceback" not in result.stderr
    assert "connection refused" in result.stderr


def test_upload_in_batch_mode_with_plain_log_lines(work):
    data = make_file(work, size=300_000)
    keys = Keys()
    got = {}

    def script(server):
        peer = server.accept()
        handshake_register(peer, keys)
        got["file"] = accept_upload(peer, keys)
        peer.expect_closed()

    with FakeServer(script) as server:
        write_transfer_info(work, server.address, NAME, "data.bin")
        result = run(work)
    assert result.returncode == ExitCode.OK, result.stderr
    assert got["file"].plaintext == data.read_bytes()
    assert "\r" not in result.stderr  # no bar when stderr is not a terminal
    assert "uploaded 'data.bin'" in result.stderr
    assert (work / "me.info").exists() and (work / "priv.key").exists()


def test_quiet_prints_nothing_on_success(work):
    make_file(work)
    keys = Keys()

    def script(server):
        peer = server.accept()
        handshake_register(peer, keys)
        accept_upload(peer, keys)

    with FakeServer(script) as server:
        write_transfer_info(work, server.address, NAME, "data.bin")
        result = run(work, "--quiet")
    assert result.returncode == ExitCode.OK, result.stderr
    assert result.stderr == "" and result.stdout == ""


@pytest.mark.parametrize("sized", [True, False], ids=["120x24", "0x0"])
def test_progress_bar_on_a_terminal(work, sized):
    make_file(work, size=1_000_000)
    keys = Keys()

    def script(server):
        peer = server.accept()
        handshake_register(peer, keys)
        accept_upload(peer, keys)

    with FakeServer(script) as server:
        write_transfer_info(work, server.address, NAME, "data.bin")
        master, slave = pty.openpty()
        if sized:
            rows_cols = struct.pack("HHHH", 24, 120, 0, 0)
            fcntl.ioctl(slave, termios.TIOCSWINSZ, rows_cols)
        process = subprocess.Popen(
            client_command("--timeout", "10"),
            cwd=work,
            env=environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=slave,
        )
        os.close(slave)
        output = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            output += chunk
        os.close(master)
        assert process.wait(RUN_TIMEOUT) == ExitCode.OK
    text = output.decode(errors="replace")
    assert "data.bin" in text and "100%" in text and "B/s" in text


def _ctrl_c_as_at_a_terminal() -> None:
    """SIGINT's default action, as a shell at a terminal gives it: a background job of a
    shell without job control (CI started with ``&``) inherits it ignored, and Python then
    raises no KeyboardInterrupt at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_exits_130_without_traceback(work):
    make_file(work)

    def script(server):
        peer = server.accept()
        peer.expect(Register)
        peer.expect_closed()  # says nothing until the client goes away

    with FakeServer(script) as server:
        write_transfer_info(work, server.address, NAME, "data.bin")
        process = subprocess.Popen(
            client_command("--timeout", "30"),
            cwd=work,
            env=environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_ctrl_c_as_at_a_terminal,
        )
        deadline = time.monotonic() + RUN_TIMEOUT
        while not server.peers and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the client is now waiting for the reply to 825
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=RUN_TIMEOUT)
    assert process.returncode == ExitCode.INTERRUPTED
    assert "Traceback" not in err and "interrupted" in err


def test_usage_names_the_program_as_it_was_started():
    from client.__main__ import program_name

    assert program_name("/usr/local/bin/cipherdrop-client") == "cipherdrop-client"
    assert program_name("/work/client/__main__.py") == "python -m client"
    result = subprocess.run([sys.executable, "-m", "client", "--help"], capture_output=True,
                            text=True, env=environment(), timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("usage: python -m client "), result.stdout
