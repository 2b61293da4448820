"""What a run tells a person: one line per file, the per-file summary, the exit
codes of all ok / some failed / all failed, decimal units and plurals."""

from __future__ import annotations

import os

import pytest

import client.upload
from client.__main__ import ExitCode
from client.units import format_bytes, format_rate, plural

from test_client_e2e import address, client_id, received


def make_files(folder, sizes: dict[str, int]) -> list[str]:
    for name, size in sizes.items():
        (folder / name).write_bytes(os.urandom(size))
    return [str(folder / name) for name in sizes]


@pytest.fixture
def failing(monkeypatch):
    """Make the upload of the named files fail (as a file grown past the limit)."""
    real_plan_file = client.upload.plan_file
    names: set[str] = set()

    def plan_file(path, *args, **kwargs):
        if path.name in names:
            raise ValueError("grew past the limit")
        return real_plan_file(path, *args, **kwargs)

    monkeypatch.setattr(client.upload, "plan_file", plan_file)
    return names


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_all_verified_exits_0_with_one_line_per_file_and_a_summary(
    server, work, run_client, jobs
):
    files = make_files(work, {"a.bin": 2000, "b.bin": 300_000})
    result = run_client("--server", address(server), "--name", f"ok-{jobs}", "-j", jobs, *files)
    assert result.code == ExitCode.OK, result.err
    lines = result.err.splitlines()
    for name in ("a.bin", "b.bin"):
        about = [line for line in lines if name in line]
        assert len(about) == 2, about  # its own line, and its line in the summary
        assert any(line.startswith(f"uploaded '{name}'") for line in about)
    assert "summary: 2 files, 2 verified, 0 failed" in lines
    assert "  a.bin: 2.0 kB sent, cksum verified" in lines
    assert "  b.bin: 300.0 kB sent, cksum verified" in lines
    assert not any(line.startswith("sending ") for line in lines)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_some_failed_exits_7_and_the_summary_says_which_and_why(
    server, work, run_client, failing, jobs
):
    files = make_files(work, {"good.bin": 5000, "bad.bin": 5000, "fine.bin": 100})
    failing.add("bad.bin")
    result = run_client("--server", address(server), "--name", f"some-{jobs}", "-j", jobs, *files)
    assert result.code == ExitCode.PARTIAL == 7
    lines = result.err.splitlines()
    assert "summary: 3 files, 2 verified, 1 failed" in lines
    assert "  good.bin: 5.0 kB sent, cksum verified" in lines
    assert "  fine.bin: 100 B sent, cksum verified" in lines
    assert any(
        line.startswith("  bad.bin: failed: bad.bin: too large") for line in lines
    ), lines
    # The file after the failed one was still sent.
    assert {path.name for path in received(server, client_id(work)).iterdir()} == {
        "good.bin", "fine.bin"
    }


def test_all_failed_exits_with_the_code_of_the_failure(server, work, run_client, failing):
    files = make_files(work, {"x.bin": 10, "y.bin": 10})
    failing.update({"x.bin", "y.bin"})
    result = run_client("--server", address(server), "--name", "none", *files)
    assert result.code == ExitCode.CONFIG
    assert "summary: 2 files, 0 verified, 2 failed" in result.err


def test_one_file_prints_no_summary(server, work, run_client):
    files = make_files(work, {"tiny.bin": 10})
    result = run_client("--server", address(server), "--name", "single", "-v", *files)
    assert result.code == ExitCode.OK
    assert "summary:" not in result.err
    assert "(10 bytes, 1 packet of up to" in result.err  # not "1 packets"
    assert "0.0 MB/s" not in result.err


def test_the_exit_code_of_some_failed_is_documented():
    from client.__main__ import build_parser

    help_text = build_parser().format_help()
    assert "  7    some files failed" in help_text
    docs = (client.upload.__file__.rsplit("/client/", 1)[0]) + "/docs/CLIENT.md"
    with open(docs, encoding="utf-8") as handle:
        assert "| 7 | some files failed" in handle.read()


def test_plurals_and_decimal_units():
    assert plural(1, "packet") == "1 packet"
    assert plural(0, "packet") == "0 packets"
    assert plural(2, "file") == "2 files"
    assert format_bytes(0) == "0 B"
    assert format_bytes(999) == "999 B"
    assert format_bytes(1000) == "1.0 kB"
    assert format_bytes(1_500_000) == "1.5 MB"
    assert format_bytes(2 * 10**9) == "2.0 GB"


def test_a_rate_only_when_it_means_something():
    assert format_rate(10, 0.001) is None  # a tiny file: latency, not throughput
    assert format_rate(0, 5.0) is None
    assert format_rate(10_000_000, 2.0) == "5.0 MB/s"
