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
