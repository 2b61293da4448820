"""The throwaway backends' fixtures: without the binaries a test skips, saying how to
install them (and CI, which needs them, fails instead: tests/test_ci.py)."""

from __future__ import annotations

from pathlib import Path

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


def test_a_spare_node_is_listed_in_maintenance_and_the_others_to_be_checked(tmp_path):
    from backends.haproxy import Backend, render_config

    text = render_config(("127.0.0.1", 8000), [Backend("node0", "127.0.0.11", 8001),
                                               Backend("node1", "127.0.0.12", 8002, spare=True)],
                         stats_socket=tmp_path / "admin.sock")
    servers = [line.split() for line in text.splitlines() if line.strip().startswith("server ")]
    assert servers == [["server", "node0", "127.0.0.11:8001"],
                       ["server", "node1", "127.0.0.12:8002", "disabled"]]
    assert "    option redispatch" in text.splitlines()


def test_waiting_for_a_state_takes_that_state_exactly():
    from backends.haproxy import HAProxy

    class Going:
        """HAProxy's view of a node between its first failed check and DOWN."""

        def server_states(self) -> dict[str, str]:
            return {"node0": "UP 1/2"}

    with pytest.raises(TimeoutError, match="node0 not UP"):
        HAProxy.wait_state(Going(), "node0", "UP", timeout=0.2)  # type: ignore[arg-type]
    HAProxy.wait_state(Going(), "node0", "UP 1/2", timeout=0.2)  # type: ignore[arg-type]


def test_docs_scaling_shows_the_haproxy_configuration_the_cluster_tests_run():
    from backends.haproxy import Backend, render_config
    from helpers import REPO

    text = (REPO / "docs" / "SCALING.md").read_text()
    shown = text.split("\n```\nglobal\n", 1)[1].split("```", 1)[0]
    nodes = [Backend(f"node{i}", f"127.0.0.1{1 + i}", 1256, spare=i == 2) for i in range(3)]
    assert "global\n" + shown == render_config(("127.0.0.1", 1256), nodes,
                                               stats_socket=Path("/run/haproxy/admin.sock"))
