"""Every log line of a connection's event names the peer and the client (issue 14, point 4)."""

from __future__ import annotations

import logging
import os
import re

import pytest

from helpers import (
    CrcAbort, CrcOk, CrcRetry, FileReceived, RawClient, bad_padding_packet, file_packets,
    make_identity, raw_header, reconnect, upload,
)
from protocol import Acknowledged, GeneralError, RegistrationFailed, RequestCode, crypto
from protocol.editions import EDITION_2022
from server.logsetup import JournalFormatter, PlainFormatter

#: Lines about the server or a connection before it names any client.
NOT_A_CLIENT_EVENT = re.compile(
    r"listening on|listens on all|connected \(\d+ open\)|connections closed without"
    r"|stop asked|drained in|stopped|using port|data folder|descriptor limit|cipherdrop"
)


def _event_lines(log: str) -> list[str]:
    started = log.index("listening on")
    return [line for line in log[started:].splitlines()[1:]
            if line.strip() and not NOT_A_CLIENT_EVENT.search(line)]


def test_each_event_line_names_the_address_and_the_client(server):
    with server.client() as client:
        identity = make_identity(client)
        for _ in range(2):  # the second confirmed upload overwrites the first
            assert isinstance(upload(client, identity, "a.bin", os.urandom(3000)), FileReceived)
            assert isinstance(client.request(CrcOk(client_id=identity.client_id, file_name="a.bin")),
                              Acknowledged)
        assert isinstance(upload(client, identity, "b.bin", os.urandom(3000)), FileReceived)
        client.request(CrcRetry(client_id=identity.client_id, file_name="b.bin"))
        assert isinstance(upload(client, identity, "b.bin", os.urandom(3000)), FileReceived)
        client.request(CrcAbort(client_id=identity.client_id, file_name="b.bin"))
        client.send(file_packets(identity, "d.bin", os.urandom(5000))[0])  # cut by the close
        for _ in range(3):  # the third kills the key: the budget's warning
            assert isinstance(client.request(bad_padding_packet(identity, "c.bin")), GeneralError)
    server.wait_log(r"\S+ closed: ")
    assert server.stop() == 0
    lines = _event_lines(server.log())
    wanted = ("overwritten", "'d.bin' for client", "failed decryptions under one key", "closed: ")
    for word in wanted:  # the events this test means to see did happen
        assert any(word in line for line in lines), (word, lines)
    for line in lines:
        assert "127.0.0.1" in line, line
        assert identity.client_id.hex() in line, line


#: A log budget small enough to pass at once, and a window no test outlasts:
#: what is asserted is counts, never times.
FLOOD_BUDGET = 20
FLOOD_CONNECTIONS = 40
FLOOD_ADDRESS, BYSTANDER = "127.0.0.1", "127.0.0.2"
_SUPPRESSED = re.compile(r"(\d+) lines suppressed for (\S+)")


def _refused_requests(server, source: str, connections: int) -> int:
    """Requests the server refuses (a verdict on a file nobody sent), each connection
    until the server closes it at ``--max-errors``; how many were refused."""
    refused = 0
    for _ in range(connections):
        with server.client(source) as client:
            while True:
                answer = client.request(CrcOk(client_id=os.urandom(16), file_name="x.bin"))
                if not isinstance(answer, GeneralError):
                    break
                refused += 1
    return refused


def _lines_about(log: str, address: str) -> list[str]:
    return [line for line in log.splitlines()
            if f" {address}:" in line and not _SUPPRESSED.search(line)]


def test_a_flood_from_one_address_writes_a_bounded_log_and_says_how_much_it_left_out(
    server_factory,
):
    server = server_factory(
        "--log-lines-per-address", str(FLOOD_BUDGET), "--log-rate-interval", "3600",
    )
    flooded = _refused_requests(server, FLOOD_ADDRESS, FLOOD_CONNECTIONS)
    assert flooded > 5 * FLOOD_BUDGET  # each refusal alone is a line past the budget
    bystander = _refused_requests(server, BYSTANDER, 1)
    server.wait_log(rf" {re.escape(BYSTANDER)}:\d+ \S+ closed: ")
    assert server.stop() == 0
    log = server.log()
    assert len(_lines_about(log, FLOOD_ADDRESS)) <= FLOOD_BUDGET
    summaries = {address: int(count) for count, address in _SUPPRESSED.findall(log)}
    assert summaries.get(FLOOD_ADDRESS, 0) >= flooded - FLOOD_BUDGET, log[-2000:]
    assert BYSTANDER not in summaries
    bystander_lines = _lines_about(log, BYSTANDER)
    assert sum("-> 1607 refused" in line for line in bystander_lines) == bystander
    assert any("closed: " in line for line in bystander_lines)

#: Every control character (C0 but NUL, which ends a name; DEL; C1 in UTF-8) and U+202E.
CONTROLS = [bytes([point]) for point in (*range(1, 0x20), 0x7F)] + [
    chr(point).encode() for point in (*range(0x80, 0xA0), 0x202E)
]
#: A line feed, then what a forged log line of the plain format would say.
FORGED = b"x\n2099-01-01 00:00:00,000 INFO 127.0.0.1 827 forged/" + bytes(16).hex().encode() + b" \x1b[0m"
#: How each format's lines begin: a line that does not is not the server's.
LINE_START = {
    "plain": re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ "),
    "journal": re.compile(r"<\d>"),
}
REGISTER_2022 = 1100
NAME_REQUESTS = ("825", "826", "827", "828", "900", "901", "902", str(REGISTER_2022))


def _names_with_controls() -> list[bytes]:
    return [b"a" + control + b"b" for control in CONTROLS] + [FORGED]


def _field(name: bytes) -> bytes:
    return name.ljust(255, b"\0")


@pytest.mark.parametrize("log_format", ["plain", "journal"])
def test_control_characters_in_names_never_break_a_log_line(server_factory, log_format):
    # issue 22 point 4: one line per event, and nothing in it a terminal or a log reader acts on
    server = server_factory("--log-format", log_format, "--max-errors", "1000000")
    names = _names_with_controls()
    with server.client() as client:
        identity = make_identity(client)
        key = crypto.export_public_key(identity.private_key)
        for name in names:
            # 825, 826 and 827 with a name that is no client name: refused, and logged
            client.send_raw(raw_header(RequestCode.REGISTER, 255) + _field(name))
            assert isinstance(client.receive(), RegistrationFailed)
            client.send_raw(raw_header(RequestCode.SEND_PUBLIC_KEY, 255 + len(key), identity.client_id)
                            + _field(name) + key)
            client.receive()
            client.send_raw(raw_header(RequestCode.RECONNECT, 255, identity.client_id) + _field(name))
            client.receive()
        reconnect(client, identity)
        for name in names:
            # 828 stores a file under the name; 900, 901 and 902 name it (or an unknown one)
            assert isinstance(upload(client, identity, name, b"data"), FileReceived)
            client.request(CrcOk(client_id=identity.client_id, file_name=name))
            client.request(CrcRetry(client_id=identity.client_id, file_name=name + b"?"))
            client.request(CrcAbort(client_id=identity.client_id, file_name=name + b"!"))
    # edition 2022's register carries the name alone (docs/EDITIONS.md, variant 1)
    with RawClient(server.address, edition=EDITION_2022) as client:
        for name in names:
            client.send_raw(raw_header(REGISTER_2022, len(name)) + name)
            client.receive()
    server.wait_log(r"\S+ closed: (.|\n)*\S+ closed: ")
    assert server.stop() == 0
    log = server.log()
    lines = log.splitlines()
    for line in lines:
        assert LINE_START[log_format].match(line), ascii(line)
        assert line.isprintable(), ascii(line)
    assert "2099-01-01" not in "".join(line[:40] for line in lines)
    for code in NAME_REQUESTS:  # one line per request, none split, none forged
        # a request line: "ADDRESS CODE CLIENT -> ...", or "ADDRESS - - -> ...: CODE: ..." for
        # one refused before it was understood
        pattern = re.compile(rf"127\.0\.0\.1:\d+ (?:{code} |- - -> .*?: {code}: )")
        count = sum(bool(pattern.search(line)) for line in lines)
        sent = len(names) + int(code in ("825", "826", "827"))
        assert count == sent, (code, count)
    assert any("a\\x1bb" in line for line in lines) and any("a\\u202eb" in line for line in lines)


@pytest.mark.parametrize("formatter", [PlainFormatter(), JournalFormatter("%(message)s")],
                         ids=["plain", "journal"])
def test_the_formatters_keep_a_record_on_one_line(formatter):
    # the last line of defence: text that reached a message unescaped is escaped there
    record = logging.LogRecord("server", logging.INFO, __file__, 1, "%s stored %s",
                               ("127.0.0.1:1", "a\n<3>forged\x1b[2J\u202e\\x41"), None)
    line = formatter.format(record)
    assert "\n" not in line and line.isprintable(), ascii(line)
    assert line.endswith("stored a\\x0a<3>forged\\x1b[2J\\u202e\\x41")  # backslashes left alone
