"""Every IPv4 address the tests and the benches name is in 127.0.0.0/8.

A test sends traffic only to the loopback, and a label that stands for an
address (a rate limiter's key, a registering address, a PROXY header that
is only parsed) is a loopback address too, so that no test can reach
another host by a slip. ``0.0.0.0`` (every interface: something to bind to
or to print, never a destination) is the one exception.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("tests", "bench")
#: An address's four parts, each a number or an f-string's field (``f"127.0.{n}.1"``).
_PART = r"(?:\d{1,3}|\{[^{}\n]*\})"
_ADDRESS = re.compile(rf"(?<![\w.{{}}]){_PART}(?:\.{_PART}){{3}}(?![\w.{{}}])")
LOOPBACK_FIRST_PART = "127"
ANY_INTERFACE = "0.0.0.0"


def foreign_addresses(text: str) -> list[str]:
    """The IPv4 addresses (or f-string templates of one) in ``text`` outside 127.0.0.0/8."""
    return [
        found for found in _ADDRESS.findall(text)
        if found.split(".", 1)[0] != LOOPBACK_FIRST_PART and found != ANY_INTERFACE
        and not found[0] == "{"  # a field first: a version or a format, not an address
    ]


def test_the_scan_finds_addresses_and_templates_outside_the_loopback():
    private = ".".join(("10", "0", "0", "1"))  # built: this file names no such address
    assert foreign_addresses(f'x = "{private}"; y = f"172.16.{{n >> 8}}.{{n & 255}}"') == [
        private, "172.16.{n >> 8}.{n & 255}"]
    assert foreign_addresses(b"PROXY TCP4 1.1.1.1 127.0.0.1".decode()) == ["1.1.1.1"]
    assert foreign_addresses('"127.0.0.1", f"127.{10 + n}.0.{n}", "0.0.0.0", "1.2.3"') == []


def test_the_tests_and_benches_name_loopback_addresses_only():
    found = {
        f"{path.relative_to(ROOT)}:{number}": foreign
        for folder in SCANNED
        for path in sorted((ROOT / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if (foreign := foreign_addresses(line)) and path != Path(__file__).resolve()
    }
    assert found == {}, "use addresses in 127.0.0.0/8 (distinct /24s for distinct networks)"
