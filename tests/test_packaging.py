"""What a person gets with only the clone: the sdist carries the licence and
docs/, the metadata names the licence the LICENSE file holds, and the README's
test command is the one CI runs (issue 14, point 11)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: Not part of a clean clone: a venv, caches and build output.
NOT_IN_A_CLONE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache",
    ".mypy_cache", ".ruff_cache", "build", "dist", "fuzz-corpus", "received_files", "*.db*",
)
BUILD_TIMEOUT = 120
LICENSE_NAME = "MIT"


def metadata_field(pkg_info: str, field: str) -> list[str]:
    prefix = f"{field}: "
    return [line[len(prefix):] for line in pkg_info.splitlines() if line.startswith(prefix)]


def test_the_sdist_carries_license_readme_and_docs_and_says_the_license(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=NOT_IN_A_CLONE)
    subprocess.run(
        [sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "sdist",
         "--dist-dir", str(tmp_path / "dist")],
        cwd=source, check=True, capture_output=True, timeout=BUILD_TIMEOUT,
    )
    [archive] = (tmp_path / "dist").glob("cipherdrop-*.tar.gz")
    with tarfile.open(archive) as sdist:
        members = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
        pkg_info = sdist.extractfile(sdist.getmember(f"{archive.name[:-7]}/PKG-INFO")).read().decode()
    expected_docs = {f"docs/{path.name}" for path in (REPO / "docs").glob("*.md")}
    assert expected_docs and expected_docs <= members
    assert {"LICENSE", "README.md"} <= members
    assert metadata_field(pkg_info, "License") == [LICENSE_NAME]
    classifiers = metadata_field(pkg_info, "Classifier")
    assert f"License :: OSI Approved :: {LICENSE_NAME} License" in classifiers
    assert any(c.startswith("Programming Language :: Python :: 3.") for c in classifiers)
    assert (REPO / "LICENSE").read_text().startswith(f"{LICENSE_NAME} License")


def test_the_readme_test_command_is_what_ci_runs():
    ci_command = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    readme = (REPO / "README.md").read_text()
    assert f"\n{ci_command}\n" in readme


def test_the_readme_quick_start_uses_the_installed_commands():
    readme = (REPO / "README.md").read_text()
    start = readme.index("## Quick start")
    quick_start = readme[start:readme.index("\n## ", start + 1)]
    for text in ("pipx install .", ". .venv/bin/activate", "cipherdrop-server", "cipherdrop-client",
                 "transfer.info", "--host 127.0.0.1"):
        assert text in quick_start, text
