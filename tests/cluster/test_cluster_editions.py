"""Every edition's flows through the cluster (issue 27 point 3).

The flows are the ones tests/server/test_server_editions.py runs against one
server on each metadata store: every test of it that takes ``backend_server``
runs here again, with ``backend_server`` the session's cluster behind HAProxy
(tests/cluster/conftest.py): PostgreSQL metadata, files in radosgw, read back
through the store.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.needed_in_ci

_FLOWS_FILE = Path(__file__).resolve().parents[1] / "server" / "test_server_editions.py"


def _flows_module():
    """tests/server/test_server_editions.py, imported once under its own name."""
    name = _FLOWS_FILE.stem
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _FLOWS_FILE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_FLOWS = {
    name: flow for name, flow in vars(_flows_module()).items()
    if name.startswith("test_") and "backend_server" in inspect.signature(flow).parameters
}
assert _FLOWS, f"no flow on backend_server in {_FLOWS_FILE}"
globals().update(_FLOWS)  # collected here, with this folder's backend_server
