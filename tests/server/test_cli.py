"""Start-up and flags: one-line messages and exit codes, never a traceback (issue 14, point 2)."""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import server_env
from protocol import __version__
from server.__main__ import announce_listening, listen_failure
from server.logsetup import PLAIN_FORMAT, JournalFormatter, PlainFormatter, syslog_priority

USAGE_ERROR = 2
STARTUP_FAILED = 1
RUN_TIMEOUT = 30


def run(*args, cwd=None, program=None):
    """``python -m server ARGS`` (or started as ``program``), to its end."""
    command = [sys.executable, "-m", "server", *args]
    if program:
        command = [sys.executable, "-c",
                   f"import sys; sys.argv[0] = {program!r}; from server.__main__ import main;"
                   " sys.exit(main())", *args]
    return subprocess.run(command, env=server_env(), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, cwd=cwd)


def one_line_error(result, code=USAGE_ERROR) -> str:
    """The one line of a refused command line, without where the help is."""
    assert result.returncode == code, result.stderr
    [line] = result.stderr.splitlines()  # no usage block before it (issue 24, point 4)
    message, see = line.rsplit("; ", 1)
    assert see == f"see {line.split(':', 1)[0]} --help"
    return message


def test_version_of_both_programs():
    server = run("--version")
    assert server.returncode == 0 and server.stdout.strip() == f"python -m server {__version__}"
    client = subprocess.run([sys.executable, "-m", "client", "--version"], env=server_env(),
                            capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert client.returncode == 0 and client.stdout.strip().endswith(__version__)


def test_version_is_the_package_version():
    from setuptools.config.setupcfg import read_configuration

    from helpers import REPO
    assert read_configuration(REPO / "setup.cfg")["metadata"]["version"] == __version__


@pytest.mark.parametrize("value, message", [
    ("70000", "argument --port: must be 0 (any free port) to 65535, got 70000"),
    ("-1", "argument --port: must be 0 (any free port) to 65535, got -1"),
    ("http", "argument --port: not a whole number: 'http'"),
])
def test_bad_port_is_one_line(tmp_path, value, message):
    line = one_line_error(run("--port", value, "--data-dir", str(tmp_path)))
    assert line == f"python -m server: error: {message}"


@pytest.mark.parametrize("flag, value, message", [
    ("--max-connections", "0", "must be at least 1"),
    ("--idle-timeout", "0", "must be greater than 0"),
    ("--idle-timeout", "nan", "must be a finite number, got 'nan'"),
    ("--message-deadline", "inf", "must be a finite number, got 'inf'"),
    ("--max-errors", "2.5", "not a whole number: '2.5'"),
    ("--drain-timeout", "-1", "must be at least 0"),
])
def test_bad_limit_is_one_line(tmp_path, flag, value, message):
    line = one_line_error(run(flag, value, "--data-dir", str(tmp_path)))
    assert line.startswith(f"python -m server: error: argument {flag}: {message}"), line


@pytest.mark.parametrize("flag, value, message", [
    ("--metadata", "mysql://db/cipherdrop", "--metadata 'mysql://db/cipherdrop':"
     " scheme 'mysql:'; known: sqlite:, postgresql:"),
    ("--blobs", "gs://bucket/files", "--blobs 'gs://bucket/files': scheme 'gs:'; known: file:, s3:"),
    ("--blobs", "s3://bucket/files?secret=x", "s3://bucket/files?secret=***: s3: takes no option"
     " 'secret'; known: endpoint, region, addressing"),
    ("--metadata", "sqlite:///x.db?busy_timeout=1e300", "sqlite:///x.db?busy_timeout=1e300:"
     " busy_timeout must be seconds from 0 to 2147483"),
    ("--metadata", "sqlite://elsewhere/x.db", "sqlite://elsewhere/x.db: an SQLite database is"
     " a local file: sqlite:///PATH"),
    ("--blobs", "file:///x?mode=ro", "file:///x?mode=ro: file: takes no options"),
])
def test_a_bad_store_url_is_one_line_naming_what_is_known(tmp_path, flag, value, message):
    line = one_line_error(run(flag, value, "--data-dir", str(tmp_path)))
    assert line == f"python -m server: error: {message}"
    assert list(tmp_path.iterdir()) == []  # refused before anything is made


def test_usage_shows_the_name_it_was_started_as(tmp_path):
    result = run("--port", "x", program="/usr/local/bin/cipherdrop-server")
    assert one_line_error(result).startswith("cipherdrop-server: error: argument --port")
    assert result.stderr.endswith("; see cipherdrop-server --help\n")
    assert one_line_error(run("--port", "x")).startswith("python -m server: error: ")


def test_unknown_flag_is_one_line(tmp_path):
    line = one_line_error(run("--prot", "1256", "--data-dir", str(tmp_path)))
    assert line == "python -m server: error: unrecognized arguments: --prot 1256"


def test_help_says_what_a_missing_port_or_host_does():
    result = run("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps the help
    assert "(default: None)" not in text and "(default: )" not in text
    assert "(default: from port.info in the data folder, else 1256;" in text
    assert "(default: all interfaces," in text
    assert "(default: 1024)" in text  # the others keep theirs


#: A name the resolver refuses itself (a space): no query leaves the machine.
UNRESOLVABLE = "no such host.invalid"


def test_host_that_does_not_resolve_is_a_usage_error(tmp_path):
    result = run("--host", UNRESOLVABLE, "--port", "0", "--data-dir", str(tmp_path))
    line = one_line_error(result)
    assert line.startswith(f"python -m server: error: argument --host: {UNRESOLVABLE!r}"
                           " did not resolve to an address ("), line
    assert not (tmp_path / "defensive.db").exists()  # refused before anything started


def start_and_stop(data_dir, *flags):
    """Start on a free port, wait for the listening line, SIGTERM; the log."""
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", "0",
         "--data-dir", str(data_dir), *flags],
        env=server_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "listening on" in line or "cannot start" in line:
            break
    process.terminate()
    _, rest = process.communicate(timeout=RUN_TIMEOUT)
    return process.returncode, "".join(lines) + rest


def test_missing_data_dir_is_created(tmp_path):
    data_dir = tmp_path / "new" / "data"
    code, log = start_and_stop(data_dir)
    assert code == 0, log
    assert (data_dir / "defensive.db").is_file() and (data_dir / "received_files").is_dir()


def test_data_dir_that_is_a_file_says_so(tmp_path):
    (tmp_path / "data").write_text("")
    result = run("--host", "127.0.0.1", "--port", "0", "--data-dir", str(tmp_path / "data"))
    assert result.returncode == STARTUP_FAILED and "Traceback" not in result.stderr
    assert f"cannot start: data folder {tmp_path / 'data'} is a file, not a folder" in result.stderr


def test_database_that_is_a_folder_says_so(tmp_path):
    (tmp_path / "defensive.db").mkdir()
    result = run("--host", "127.0.0.1", "--port", "0", "--data-dir", str(tmp_path))
    assert result.returncode == STARTUP_FAILED and "Traceback" not in result.stderr
    assert f"{tmp_path / 'defensive.db'} is a folder, not a database file" in result.stderr


def test_database_link_to_nothing_says_path_and_why(tmp_path):
    (tmp_path / "defensive.db").symlink_to(tmp_path / "gone" / "x.db")
    result = run("--host", "127.0.0.1", "--port", "0", "--data-dir", str(tmp_path))
    assert result.returncode == STARTUP_FAILED and "Traceback" not in result.stderr
    assert f"cannot open {tmp_path / 'defensive.db'}: it is a symbolic link to" in result.stderr
    assert "does not exist" in result.stderr and "unable to open database file" not in result.stderr


def test_port_in_use_suggests_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run("--host", "127.0.0.1", "--port", str(port), "--data-dir", str(tmp_path))
    assert result.returncode == STARTUP_FAILED and "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if "cannot listen" in line]
    assert line.endswith(f"cannot listen on 127.0.0.1 port {port}: Address already in use:"
                         f" another program uses port {port}; pick another with --port")


def test_listen_failure_hints():
    import errno
    assert "check --host" in listen_failure(OSError(errno.EADDRNOTAVAIL, "x"), "127.0.0.9", 1)
    assert "need privileges" in listen_failure(OSError(errno.EACCES, "x"), "", 80)
    assert "cannot resolve --host" in listen_failure(socket.gaierror(-2, "Name unknown"), "nope", 1)
    # socket.create_server re-raises a failed resolution as a plain OSError(-2, ...)
    assert listen_failure(OSError(-2, "x"), "nope", 1) == "--host 'nope' did not resolve to an address"


def test_all_interfaces_is_announced_loudly(caplog):
    with caplog.at_level(logging.INFO, logger="server"):
        announce_listening("", 1256)
        announce_listening("127.0.0.1", 1256)
    loud, quiet = caplog.records
    assert loud.levelno == logging.WARNING and "ALL interfaces" in loud.getMessage()
    assert "--host 127.0.0.1" in loud.getMessage()
    assert quiet.levelno == logging.INFO and quiet.getMessage() == "listening on 127.0.0.1 port 1256"
    # the test helpers' pattern still finds the port in the loud line
    assert re.search(r"listening on \S+ port (\d+)", loud.getMessage()).group(1) == "1256"


def test_journal_format_has_priorities_and_no_timestamps(tmp_path):
    code, log = start_and_stop(tmp_path / "data", "--log-format", "journal")
    assert code == 0, log
    lines = log.splitlines()
    assert lines and all(re.match(r"<[0-7]>", line) for line in lines), log
    assert any(line.startswith("<6>listening on 127.0.0.1") for line in lines)
    assert not any(re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", line) for line in lines)
    code, plain = start_and_stop(tmp_path / "data")
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO ", plain.splitlines()[0]), plain


def test_journal_formatter_prefixes_every_traceback_line():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("server", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    text = JournalFormatter("%(message)s").format(record)
    assert text.count("\n") >= 2 and all(line.startswith("<3>") for line in text.splitlines())
    assert syslog_priority(logging.DEBUG) == 7 and syslog_priority(logging.WARNING) == 4


@settings(max_examples=200, deadline=None)
@given(created=st.lists(st.floats(min_value=0, max_value=4e9), min_size=1, max_size=6))
def test_the_plain_format_stamps_lines_as_logging_does(created):
    """The once-a-second time text gives the lines logging's own Formatter gives."""
    ours, theirs = PlainFormatter(), logging.Formatter(PLAIN_FORMAT)
    for when in created:  # in any order: the cached second must follow each
        record = logging.LogRecord("server", logging.INFO, __file__, 1, "event %s", ("x",), None)
        record.created, record.msecs = when, int((when - int(when)) * 1000)
        assert ours.format(record) == theirs.format(record)


def test_every_interface_of_one_family_is_announced_loudly(caplog):
    with caplog.at_level(logging.INFO, logger="server"):
        announce_listening("::", 1256)
        announce_listening("0.0.0.0", 1256)
        announce_listening("::1", 1256)
    six, four, local = caplog.records
    assert six.levelno == four.levelno == logging.WARNING
    assert "ALL IPv6 interfaces" in six.getMessage() and "ALL IPv4 interfaces" in four.getMessage()
    assert local.levelno == logging.INFO and local.getMessage() == "listening on ::1 port 1256"
