"""How clients appear in the log (names in the one printable form: protocol/printable.py)."""

from __future__ import annotations

from protocol.printable import printable


def client_label(name: str, client_id: bytes) -> str:
    """A client in the log: name/id-hex."""
    return f"{printable(name)}/{client_id.hex()}"
