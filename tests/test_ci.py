""".ci/run fails when a test CI needs is skipped (issue 24, point 1: the
service unit is checked with systemd-analyze in CI, not skipped there)."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import REPO

#: A test that skips where systemd-analyze is missing, and that CI needs.
NEEDED = "tests/server/test_service_unit.py::test_systemd_analyze_verify_finds_nothing"
CI_ENV = "CIPHERDROP_CI"


def _run_without_systemd(tmp_path, **extra: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != CI_ENV}
    env.update(PATH=str(tmp_path), **extra)  # no systemd-analyze on this PATH
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", NEEDED],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_a_needed_test_skipped_in_ci_fails_the_run(tmp_path):
    outside = _run_without_systemd(tmp_path)
    assert outside.returncode == 0 and "1 skipped" in outside.stdout, outside.stdout
    in_ci = _run_without_systemd(tmp_path, **{CI_ENV: "1"})
    assert in_ci.returncode != 0, in_ci.stdout
    assert "skipped, but CI needs it" in in_ci.stdout and "systemd-analyze" in in_ci.stdout


def test_ci_runs_the_suite_as_ci():
    script = (REPO / ".ci" / "run").read_text()
    assert f"export {CI_ENV}=1" in script
    assert script.index(f"export {CI_ENV}=1") < script.index("python -m pytest")


def _installed_by_ci() -> dict[str, str]:
    """.ci/run's NEEDED list: each program a backend test runs, and the package that has it."""
    script = (REPO / ".ci" / "run").read_text()
    listed = script.split('NEEDED="', 1)[1].split('"', 1)[0]
    return dict(pair.split(":", 1) for pair in listed.split())


def test_ci_installs_the_package_of_every_backend_a_test_starts():
    from backends.ceph import PACKAGES as CEPH_PACKAGES

    packages = set(_installed_by_ci().values())
    assert {"postgresql", "haproxy", "systemd", *CEPH_PACKAGES} <= packages
    script = (REPO / ".ci" / "run").read_text()
    assert script.index("apt-get install") < script.index("python -m pytest")
