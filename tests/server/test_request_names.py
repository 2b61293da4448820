"""One name per request: the server finds a request's handler by its event class.

A request is its event class (protocol/events.py) with its v3 code on it
(``code``, a ``RequestCode``); the editions say which code carries it
(protocol/editions.py), the handlers are keyed by it (server/handlers.py).
"""

from __future__ import annotations

from protocol import SendFilePacket
from protocol.editions import EDITIONS
from server.handlers import HANDLERS


def test_every_request_of_one_message_has_a_handler_keyed_by_its_event():
    # The decoder hands the session events; 828 streams (start_file_packet).
    one_message = {
        message.event
        for edition in EDITIONS
        for message in edition.requests
        if message.event is not SendFilePacket
    }
    assert set(HANDLERS) == one_message
