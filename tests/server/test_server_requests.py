"""Every request and response path of PROTOCOL.md, against the real server."""

from __future__ import annotations

import os
import sqlite3
import time

import pytest

from helpers import (
    ANY_ID,
    make_identity,
    private_key,
    raw_header,
    reconnect,
    unique_name,
    upload,
)
from protocol import (
    Acknowledged,
    ConnectionClosed,
    CrcAbort,
    CrcOk,
    CrcRetry,
    FileReceived,
    GeneralError,
    PublicKeyReceived,
    Reconnect,
    ReconnectRefused,
    Register,
    Registered,
    RegistrationFailed,
    SendPublicKey,
    cksum,
    crypto,
)
from protocol.codes import RequestCode
from protocol.names import NameField


def db_rows(server, sql, *args):
    with sqlite3.connect(server.data_dir / "defensive.db") as db:
        return db.execute(sql, args).fetchall()


# -- 825 -----------------------------------------------------------------------


def test_825_new_name_gets_a_fresh_id_and_a_row(server):
    name = unique_name()
    with server.client() as client:
        answer = client.request(Register(client_id=b"a" * 16, name=name))
    assert isinstance(answer, Registered)
    assert answer.client_id not in (b"a" * 16, ANY_ID)
    rows = db_rows(server, "SELECT ID, Name, PublicKey, AESKey FROM clients")
    assert rows == [(answer.client_id, name, None, None)]


def test_825_name_with_key_is_taken(server):
    with server.client() as client:
        owner = make_identity(client)
        assert isinstance(client.request(Register(client_id=ANY_ID, name=owner.name)), RegistrationFailed)
    assert db_rows(server, "SELECT ID FROM clients") == [(owner.client_id,)]


def test_825_keyless_name_is_registered_anew(server):
    name = unique_name()
    with server.client() as client:
        first = client.request(Register(client_id=ANY_ID, name=name))
        second = client.request(Register(client_id=ANY_ID, name=name))
    assert isinstance(second, Registered) and second.client_id != first.client_id
    assert db_rows(server, "SELECT ID FROM clients") == [(second.client_id,)]


@pytest.mark.parametrize(
    "field",
    [bytes(255), b"x" * 255, b"bad\x01name".ljust(255, b"\0"), b"caf\xc3\xa9".ljust(255, b"\0")],
    ids=["empty", "no-nul", "control", "non-ascii"],
)
def test_825_invalid_names_get_1601_and_keep_the_connection(server, field):
    with server.client() as client:
        client.send_raw(raw_header(RequestCode.REGISTER, 255) + field)
        assert isinstance(client.receive(), RegistrationFailed)
        assert isinstance(client.request(Register(client_id=ANY_ID, name=unique_name())), Registered)
    assert len(db_rows(server, "SELECT ID FROM clients")) == 1


# -- 826 -----------------------------------------------------------------------


def test_826_stores_the_key_and_answers_an_aes_key(server):
    with server.client() as client:
        identity = make_identity(client)
    ((public_key, aes_key),) = db_rows(server, "SELECT PublicKey, AESKey FROM clients")
    assert public_key == crypto.export_public_key(identity.private_key)
    assert aes_key == identity.aes_key


def _send_key(client, client_id, name, key_bytes):
    return client.request(SendPublicKey(client_id=client_id, name=name, public_key=key_bytes))


def test_826_unknown_id_or_other_name_is_1607(server):
    key = crypto.export_public_key(private_key())
    with server.client() as client:
        a = client.request(Register(client_id=ANY_ID, name=unique_name()))
        b_name = unique_name()
        client.request(Register(client_id=ANY_ID, name=b_name))
        assert isinstance(_send_key(client, os.urandom(16), b_name, key), GeneralError)
        assert isinstance(_send_key(client, a.client_id, b_name, key), GeneralError)
    assert db_rows(server, "SELECT COUNT(*) FROM clients WHERE PublicKey IS NOT NULL") == [(0,)]


def test_826_never_replaces_a_stored_key(server):
    with server.client() as client:
        victim = make_identity(client)
    with server.client() as attacker:
        answer = _send_key(attacker, victim.client_id, victim.name, crypto.export_public_key(private_key()))
    assert isinstance(answer, GeneralError)
    ((stored,),) = db_rows(server, "SELECT PublicKey FROM clients")
    assert stored == crypto.export_public_key(victim.private_key)


def _bad_key(kind: str) -> bytes:
    from Crypto.PublicKey import RSA

    if kind == "zeros":
        return bytes(160)
    if kind == "random":
        return os.urandom(160)
    if kind == "truncated-65537":
        return RSA.generate(1024, e=65537).public_key().export_key("DER")[:160]
    if kind == "trailing-garbage":
        return crypto.export_public_key(private_key())[:-1] + b"\x01"
    modulus = private_key().n >> 512 | 1  # a 512-bit key, zero-padded
    return RSA.construct((modulus, 17), consistency_check=False).export_key("DER").ljust(160, b"\0")


@pytest.mark.parametrize("kind", ["zeros", "random", "truncated-65537", "trailing-garbage", "512-bit"])
def test_826_bad_keys_are_1607_and_store_nothing(server, kind):
    name = unique_name()
    with server.client() as client:
        registered = client.request(Register(client_id=ANY_ID, name=name))
        answer = _send_key(client, registered.client_id, name, _bad_key(kind))
        assert isinstance(answer, GeneralError)
        # the connection goes on, and the right key is still accepted
        good = _send_key(client, registered.client_id, name, crypto.export_public_key(private_key()))
        assert isinstance(good, PublicKeyReceived)


def _name_of(server, client_id) -> str:
    return db_rows(server, "SELECT Name FROM clients WHERE ID = ?", client_id)[0][0]


# -- 827 -----------------------------------------------------------------------


def test_827_gives_a_fresh_key(server):
    with server.client() as client:
        identity = make_identity(client)
    old = identity.aes_key
    with server.client() as client:
        reconnect(client, identity)
    assert identity.aes_key != old
    assert db_rows(server, "SELECT AESKey FROM clients") == [(identity.aes_key,)]


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


def test_827_id_mismatch_is_1606_without_revealing_the_owner(server):
    with server.client() as client:
        owner = make_identity(client)
        stranger_id = os.urandom(16)
        answer = client.request(Reconnect(client_id=stranger_id, name=owner.name))
    assert isinstance(answer, ReconnectRefused) and answer.client_id == stranger_id


def test_827_without_public_key_is_1606(server):
    name = unique_name()
    with server.client() as client:
        registered = client.request(Register(client_id=ANY_ID, name=name))
        answer = client.request(Reconnect(client_id=registered.client_id, name=name))
    assert isinstance(answer, ReconnectRefused) and answer.client_id == registered.client_id


def test_1606_then_825_again_variant9_first_kind(server):
    with server.client() as client:
        refused = client.request(Reconnect(client_id=ANY_ID, name="returning-" + unique_name()))
        name = _name_of(server, refused.client_id)
        again = client.request(Register(client_id=ANY_ID, name=name))
    assert isinstance(again, Registered)


# -- 828, 900, 901, 902 ----------------------------------------------------------------


def test_upload_then_900(server):
    data = os.urandom(100_000)
    with server.client() as client:
        identity = make_identity(client)
        answer = upload(client, identity, "report.pdf", data)
        assert isinstance(answer, FileReceived)
        assert (answer.client_id, answer.content_size, answer.cksum) == (
            identity.client_id, crypto.padded_size(len(data)), cksum(data))
        assert answer.file_name.raw == NameField.from_text("report.pdf").raw
        assert db_rows(server, "SELECT Verified FROM files") == [(0,)]
        assert isinstance(client.request(CrcOk(client_id=identity.client_id, file_name="report.pdf")), Acknowledged)
        assert isinstance(client.request(CrcOk(client_id=identity.client_id, file_name="report.pdf")), Acknowledged)
    assert db_rows(server, "SELECT FileName, PathName, Verified FROM files") == [
        ("report.pdf", f"received_files/{identity.client_id.hex()}/report.pdf", 1)]
    stored = server.data_dir / "received_files" / identity.client_id.hex() / "report.pdf"
    assert stored.read_bytes() == data


def test_900_for_a_file_never_uploaded_is_1607(server):
    with server.client() as client:
        identity = make_identity(client)
        assert isinstance(client.request(CrcOk(client_id=identity.client_id, file_name="nope")), GeneralError)
        assert isinstance(client.request(CrcAbort(client_id=identity.client_id, file_name="nope")), GeneralError)


def test_901_resend_then_902_keeps_the_file_unverified(server):
    data = os.urandom(5000)
    with server.client() as client:
        identity = make_identity(client)
        for attempt in range(3):
            assert isinstance(upload(client, identity, "f.bin", data), FileReceived)
            client.send(CrcRetry(client_id=identity.client_id, file_name="f.bin"))
            # resend at once: no 1604 may come for the 901 (variant 8)
        assert isinstance(upload(client, identity, "f.bin", data), FileReceived)
        answer = client.request(CrcAbort(client_id=identity.client_id, file_name="f.bin"))
        assert isinstance(answer, Acknowledged)
        assert client.nothing_within(1.5)
    assert db_rows(server, "SELECT Verified FROM files") == [(0,)]
    assert (server.data_dir / "received_files" / identity.client_id.hex() / "f.bin").read_bytes() == data


def test_variant8_901_then_silence_gets_1604_after_a_second(server):
    with server.client() as client:
        identity = make_identity(client)
        upload(client, identity, "f.bin", b"data")
        client.send(CrcRetry(client_id=identity.client_id, file_name="f.bin"))
        started = time.monotonic()
        answer = client.receive(timeout=5)
        waited = time.monotonic() - started
        assert isinstance(answer, Acknowledged) and answer.client_id == identity.client_id
        assert 0.8 <= waited <= 3.0
        # and then the resend works on the same connection
        assert isinstance(upload(client, identity, "f.bin", b"data2"), FileReceived)


def test_900_after_a_new_upload_of_the_same_name_replaces_the_file(server):
    with server.client() as client:
        identity = make_identity(client)
        upload(client, identity, "same.txt", b"first version")
        client.request(CrcOk(client_id=identity.client_id, file_name="same.txt"))
        assert isinstance(upload(client, identity, "same.txt", b"second"), FileReceived)
    assert db_rows(server, "SELECT COUNT(*), Verified FROM files") == [(1, 0)]
    assert (server.data_dir / "received_files" / identity.client_id.hex() / "same.txt").read_bytes() == b"second"


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


def test_b4_same_new_name_from_two_connections_at_once(server):
    name = unique_name()
    with server.client() as a, server.client() as b:
        wire = a.conn.send(Register(client_id=ANY_ID, name=name))
        a.send_raw(wire)
        b.send_raw(wire)
        answers = sorted(type(x.receive()).__name__ for x in (a, b))
    assert answers == ["Registered", "RegistrationFailed"]
    assert len(db_rows(server, "SELECT ID FROM clients WHERE Name = ?", name)) == 1


def test_keyless_name_is_free_again_once_its_connection_closed(server):
    name = unique_name()
    with server.client() as a:
        first = a.request(Register(client_id=ANY_ID, name=name))
    time.sleep(0.2)
    with server.client() as b:
        second = b.request(Register(client_id=ANY_ID, name=name))
    assert isinstance(second, Registered) and second.client_id != first.client_id
