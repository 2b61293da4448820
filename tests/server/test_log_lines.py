"""Every log line of a connection's event names the peer and the client (issue 14, point 4)."""

from __future__ import annotations

import os
import re

from helpers import (
    CrcAbort, CrcOk, CrcRetry, FileReceived, bad_padding_packet, file_packets, make_identity,
    upload,
)
from protocol import Acknowledged, GeneralError

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
