"""The throwaway backends' fixtures: without the binaries a test skips, saying how to
install them (and CI, which needs them, fails instead: tests/test_ci.py)."""

from __future__ import annotations

import pytest

from backends import postgres


def test_without_postgresql_binaries_the_tests_skip_with_the_install_line(monkeypatch, tmp_path):
    monkeypatch.setattr(postgres.shutil, "which", lambda name: None)
    monkeypatch.setattr(postgres, "DEBIAN_BINARIES", str(tmp_path / "*" / "bin"))
    assert postgres.find_binaries() is None
    with pytest.raises(pytest.skip.Exception, match="apt-get install postgresql"):
        postgres.start_or_skip()


def test_the_debian_folder_is_found_when_the_binaries_are_not_on_path(monkeypatch, tmp_path):
    folder = tmp_path / "15" / "bin"
    folder.mkdir(parents=True)
    (folder / "initdb").touch()
    monkeypatch.setattr(postgres.shutil, "which", lambda name: None)
    monkeypatch.setattr(postgres, "DEBIAN_BINARIES", str(tmp_path / "*" / "bin"))
    assert postgres.find_binaries() == folder
