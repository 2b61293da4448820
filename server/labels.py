"""How clients and wire names appear in the log."""

from __future__ import annotations


def client_label(name: str, client_id: bytes) -> str:
    """A client in the log: name/id-hex."""
    return f"{name}/{client_id.hex()}"


def printable(name: bytes) -> str:
    """A wire name for the log: quoted, control characters escaped."""
    return repr(name.decode("utf-8", errors="backslashreplace"))
