"""Every request and response path of docs/PROTOCOL.md, against the real server.

The refusals of docs/HOSTILE.md (bad names and keys, key substitution, 827
refused...) are in tests/hostile/, one test per case.
"""

from __future__ import annotations

import os
import sqlite3
import time

from helpers import (
    ANY_ID,
    make_identity,
    private_key,
    unique_name,
    upload,
)
from protocol import (
    Acknowledged,
    ConnectionClosed,
    CrcOk,
    CrcRetry,
    FileReceived,
    GeneralError,
    PublicKeyReceived,
    Reconnect,
    ReconnectRefused,
    Register,
    Registered,
    SendPublicKey,
    cksum,
    crypto,
)
from server.limits import Limits
from timing_helpers import HANG_TIMEOUT, TIMER_EARLY, round_trip, timer_bound

DEFAULT_RETRY_ACK_DELAY = Limits().retry_ack_delay


def db_rows(server, sql, *args):
    with sqlite3.connect(server.data_dir / "defensive.db") as db:
        return db.execute(sql, args).fetchall()


# -- 825 -----------------------------------------------------------------------


def test_825_keyless_name_is_registered_anew(server):
    name = unique_name()
    with server.client() as client:
        first = client.request(Register(client_id=ANY_ID, name=name))
        second = client.request(Register(client_id=ANY_ID, name=name))
    assert isinstance(second, Registered) and second.client_id != first.client_id
    assert db_rows(server, "SELECT ID FROM clients") == [(second.client_id,)]


# -- 826 -----------------------------------------------------------------------


def test_826_stores_the_key_and_answers_an_aes_key(server):
    with server.client() as client:
        identity = make_identity(client)
    ((public_key, aes_key),) = db_rows(server, "SELECT PublicKey, AESKey FROM clients")
    assert public_key == crypto.export_public_key(identity.private_key)
    assert aes_key == identity.aes_key


def _send_key(client, client_id, name, key_bytes):
    return client.request(SendPublicKey(client_id=client_id, name=name, public_key=key_bytes))


def _name_of(server, client_id) -> str:
    return db_rows(server, "SELECT Name FROM clients WHERE ID = ?", client_id)[0][0]


# -- 827 -----------------------------------------------------------------------


def test_827_unknown_name_registers_it_afresh_variant9(server):
    name = unique_name()
    with server.client() as client:
        answer = client.request(Reconnect(client_id=b"z" * 16, name=name))
        assert isinstance(answer, ReconnectRefused)
        new_id = answer.client_id
        # variant 9, second kind: take the id and send 826 at once
        key = private_key()
        got = _send_key(client, new_id, name, crypto.export_public_key(key))
        assert isinstance(got, PublicKeyReceived) and got.client_id == new_id


def test_1606_then_825_again_variant9_first_kind(server):
    with server.client() as client:
        refused = client.request(Reconnect(client_id=ANY_ID, name="returning-" + unique_name()))
        name = _name_of(server, refused.client_id)
        again = client.request(Register(client_id=ANY_ID, name=name))
    assert isinstance(again, Registered)


# -- 828, 900, 901, 902 ----------------------------------------------------------------


def test_variant8_901_then_silence_gets_1604_after_a_second(server):
    baseline = round_trip(server)
    with server.client() as client:
        identity = make_identity(client)
        upload(client, identity, "f.bin", b"data")
        started = time.monotonic()  # before the 901: the delay starts later
        client.send(CrcRetry(client_id=identity.client_id, file_name="f.bin"))
        answer = client.receive(timeout=DEFAULT_RETRY_ACK_DELAY + HANG_TIMEOUT)
        waited = time.monotonic() - started
        assert isinstance(answer, Acknowledged) and answer.client_id == identity.client_id
        assert DEFAULT_RETRY_ACK_DELAY - TIMER_EARLY <= waited <= timer_bound(DEFAULT_RETRY_ACK_DELAY, baseline)
        # and then the resend works on the same connection
        assert isinstance(upload(client, identity, "f.bin", b"data2"), FileReceived)


def test_900_after_a_new_upload_of_the_same_name_replaces_the_file(server):
    stored = None
    with server.client() as client:
        identity = make_identity(client)
        upload(client, identity, "same.txt", b"first version")
        client.request(CrcOk(client_id=identity.client_id, file_name="same.txt"))
        stored = server.data_dir / "received_files" / identity.client_id.hex() / "same.txt"
        assert isinstance(upload(client, identity, "same.txt", b"second"), FileReceived)
        # a pending version until its 900: the verified file is untouched
        assert db_rows(server, "SELECT COUNT(*), Verified FROM files") == [(1, 1)]
        assert stored.read_bytes() == b"first version"
        ack = client.request(CrcOk(client_id=identity.client_id, file_name="same.txt"))
        assert isinstance(ack, Acknowledged)
    assert db_rows(server, "SELECT COUNT(*), Verified FROM files") == [(1, 1)]
    assert stored.read_bytes() == b"second"


def test_empty_file(server):
    with server.client() as client:
        identity = make_identity(client)
        answer = upload(client, identity, "empty", b"")
    assert isinstance(answer, FileReceived) and answer.cksum == cksum(b"") and answer.content_size == 16


def test_828_for_unknown_client_or_without_key_is_1607(server):
    with server.client() as client:
        ghost = make_identity(client)
    ghost.client_id = os.urandom(16)
    with server.client() as client:
        assert isinstance(upload(client, ghost, "x", b"abc"), GeneralError)
        name = unique_name()
        registered = client.request(Register(client_id=ANY_ID, name=name))
        ghost.client_id = registered.client_id
        assert isinstance(upload(client, ghost, "x", b"abc"), GeneralError)
    assert db_rows(server, "SELECT COUNT(*) FROM files") == [(0,)]


def test_last_seen_is_recorded(server):
    with server.client() as client:
        make_identity(client)
    ((last_seen,),) = db_rows(server, "SELECT LastSeen FROM clients")
    assert last_seen and last_seen.startswith(time.strftime("%Y", time.gmtime()))


def test_eof_at_a_boundary_closes_quietly(server):
    with server.client() as client:
        client.sock.shutdown(1)
        assert isinstance(client.receive(), ConnectionClosed)


def test_keyless_name_is_free_again_once_its_connection_closed(server):
    name = unique_name()
    with server.client() as a:
        first = a.request(Register(client_id=ANY_ID, name=name))
        port = a.sock.getsockname()[1]
    server.wait_log(rf":{port} \S+ closed: ")  # the name is freed with the close
    with server.client() as b:
        second = b.request(Register(client_id=ANY_ID, name=name))
    assert isinstance(second, Registered) and second.client_id != first.client_id
