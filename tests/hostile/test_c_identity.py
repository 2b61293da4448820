"""docs/HOSTILE.md C: key exchange, reconnect and identity, against the real server.

The bystander of hostile_helpers.Guard is the victim wherever a case needs one:
``guard.check()`` proves its row, key, binding and files did not change.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time

import pytest
from Crypto.PublicKey import RSA

from helpers import (
    ANY_ID,
    Identity,
    file_packets,
    make_identity,
    packet_bytes,
    private_key,
    raw_header,
    reconnect,
    unique_name,
    upload,
)
from hostile_helpers import STRANGER, Guard, client_dir, db_rows, file_count, temp_files_gone
from protocol import (
    Acknowledged,
    ClientConnection,
    CrcAbort,
    CrcOk,
    CrcRetry,
    FileReceived,
    GeneralError,
    PublicKeyReceived,
    Reconnect,
    ReconnectRefused,
    Reconnected,
    Register,
    SendPublicKey,
    cksum,
    crypto,
)
from protocol.codes import RequestCode
from protocol.wire import RESPONSE_HEADER_SIZE, ResponseHeader

#: C6's key window (s): a fresh 827 and a one-packet upload fit in it many
#: times over even on a loaded machine.
KEY_WINDOW = 3


def _send_key(client, client_id, name, key_bytes):
    return client.request(SendPublicKey(client_id=client_id, name=name, public_key=key_bytes))


def _keys_of(server, client_id) -> list[tuple]:
    return db_rows(server, "SELECT PublicKey, AESKey FROM clients WHERE ID = ?", client_id)


# -- C1: bad public keys ----------------------------------------------------------------------


def _bad_key(kind: str) -> bytes:
    n = private_key().n
    if kind == "zeros":
        return bytes(160)
    if kind == "random":
        return os.urandom(160)
    if kind == "der-last-2-bytes-zeroed":
        return crypto.export_public_key(private_key())[:-2] + bytes(2)
    if kind == "trailing-garbage":
        return crypto.export_public_key(private_key())[:-1] + b"\x01"
    if kind == "truncated-65537":
        return RSA.generate(1024, e=65537).public_key().export_key("DER")[:160]
    if kind == "512-bit-zero-padded":
        return RSA.construct((n >> 512 | 1, 17), consistency_check=False).export_key("DER").ljust(160, b"\0")
    if kind == "e-1":
        return RSA.construct((n, 1), consistency_check=False).export_key("DER")
    if kind == "e-even":
        return RSA.construct((n, 16), consistency_check=False).export_key("DER")
    if kind == "private-key":
        return crypto.export_private_key(private_key())[:160]
    raise ValueError(kind)


BAD_KEYS = [
    "zeros", "random", "der-last-2-bytes-zeroed", "trailing-garbage", "truncated-65537",
    "512-bit-zero-padded", "e-1", "e-even", "private-key",
]


@pytest.mark.parametrize("kind", BAD_KEYS)
def test_c1_bad_key(server, kind):
    guard = Guard(server)
    name = unique_name()
    key_bytes = _bad_key(kind)
    assert len(key_bytes) == 160
    with server.client() as client:
        registered = client.request(Register(client_id=ANY_ID, name=name))
        assert isinstance(_send_key(client, registered.client_id, name, key_bytes), GeneralError)
        # nothing stored, no AES key made
        assert _keys_of(server, registered.client_id) == [(None, None)]
        # the connection goes on, and a good key is still accepted
        good = crypto.export_public_key(private_key())
        assert isinstance(_send_key(client, registered.client_id, name, good), PublicKeyReceived)
    assert _keys_of(server, registered.client_id)[0][0] == good
    assert "unusable public key" in server.log()
    guard.check()


def test_c1_der_with_2_trailing_zeros_does_not_fit_the_field(server):
    """A 160-byte DER plus two zeros is 162 bytes: an 826 of 417, a size error."""
    guard = Guard(server)
    name = unique_name()
    with server.client() as client:
        registered = client.request(Register(client_id=ANY_ID, name=name))
        good = crypto.export_public_key(private_key())
        payload = name.encode().ljust(255, b"\0") + good + bytes(2)
        client.send_raw(raw_header(RequestCode.SEND_PUBLIC_KEY, len(payload), registered.client_id) + payload)
        assert isinstance(client.receive(), GeneralError)
        assert _keys_of(server, registered.client_id) == [(None, None)]
        assert isinstance(_send_key(client, registered.client_id, name, good), PublicKeyReceived)
    guard.check()


# -- C2: unknown id, or another client's name --------------------------------------------------


def test_c2_826_with_an_unknown_id_or_another_clients_name(server):
    guard = Guard(server)
    key = crypto.export_public_key(private_key())
    with server.client() as client:
        a_name, b_name = unique_name(), unique_name()
        a = client.request(Register(client_id=ANY_ID, name=a_name))
        b = client.request(Register(client_id=ANY_ID, name=b_name))
        assert isinstance(_send_key(client, os.urandom(16), a_name, key), GeneralError)
        assert isinstance(_send_key(client, a.client_id, b_name, key), GeneralError)
        assert isinstance(_send_key(client, b.client_id, a_name, key), GeneralError)
        # and with the victim's name: no key lands on the victim either
        assert isinstance(_send_key(client, a.client_id, guard.identity.name, key), GeneralError)
    assert db_rows(server, "SELECT COUNT(*) FROM clients") == [(3,)]  # none created by 826
    assert _keys_of(server, a.client_id) == [(None, None)]
    assert _keys_of(server, b.client_id) == [(None, None)]
    guard.check()


# -- C3: key substitution -----------------------------------------------------------------------


@pytest.mark.parametrize("source", [None, STRANGER], ids=["same-address", "other-address"])
def test_c3_key_substitution_from_a_second_connection(server, source):
    guard = Guard(server)
    victim = guard.identity
    with server.client(source=source) as attacker:
        answer = _send_key(attacker, victim.client_id, victim.name, crypto.export_public_key(private_key()))
        assert isinstance(answer, GeneralError)
        # and the attacker cannot reconnect as the victim with a key of his own
        refused = attacker.request(Reconnect(client_id=victim.client_id, name=victim.name))
        assert isinstance(refused, Reconnected)  # 827 needs no proof (KEY_BINDING.md)...
        with pytest.raises(Exception):  # ...but the new AES key is sealed for the victim's key
            crypto.decrypt_aes_key(private_key(), refused.encrypted_aes_key)
    stored = db_rows(server, "SELECT PublicKey FROM clients WHERE ID = ?", victim.client_id)
    assert stored == [(crypto.export_public_key(victim.private_key),)]
    assert "never replaced" in server.log()
    # the 827 rotated the victim's AES key (a denial of service the protocol allows);
    # the victim reconnects and goes on
    with server.client() as client:
        reconnect(client, victim)
        assert isinstance(upload(client, victim, "after.bin", b"still mine"), FileReceived)
    guard.refresh()
    guard.check()


def test_c3_826_for_a_fresh_registration_from_another_address(server):
    guard = Guard(server)
    name = unique_name()
    with server.client() as client:
        registered = client.request(Register(client_id=ANY_ID, name=name))
        with server.client(source=STRANGER) as stranger:
            answer = _send_key(stranger, registered.client_id, name, crypto.export_public_key(private_key()))
        assert isinstance(answer, GeneralError)
        assert _keys_of(server, registered.client_id) == [(None, None)]
        # the real client's 826 still works
        good = crypto.export_public_key(private_key())
        assert isinstance(_send_key(client, registered.client_id, name, good), PublicKeyReceived)
    assert "key is bound to another address" in server.log()
    guard.check()


# -- C4: 827 refused ------------------------------------------------------------------------------


def test_c4_827_unknown_name(server):
    guard = Guard(server)
    name = unique_name()
    header_id = os.urandom(16)
    with server.client() as client:
        answer = client.request(Reconnect(client_id=header_id, name=name))
    assert isinstance(answer, ReconnectRefused)  # variant 9: registered afresh, the new id
    assert answer.client_id != header_id
    assert db_rows(server, "SELECT ID, PublicKey, AESKey FROM clients WHERE Name = ?", name) == [
        (answer.client_id, None, None)
    ]
    guard.check()


@pytest.mark.parametrize("wrong_id", ["random", "another-clients-id"])
def test_c4_827_id_and_name_mismatch(server, wrong_id):
    guard = Guard(server)
    with server.client() as client:
        other = make_identity(client)
        request_id = os.urandom(16) if wrong_id == "random" else other.client_id
        answer = client.request(Reconnect(client_id=request_id, name=guard.identity.name))
    # 1606 echoing the request's id: the owner's id is never revealed, no key rotated
    assert isinstance(answer, ReconnectRefused) and answer.client_id == request_id
    guard.check()


def test_c4_827_for_a_client_without_a_key(server):
    guard = Guard(server)
    name = unique_name()
    with server.client() as client:
        registered = client.request(Register(client_id=ANY_ID, name=name))
        answer = client.request(Reconnect(client_id=registered.client_id, name=name))
        assert isinstance(answer, ReconnectRefused) and answer.client_id == registered.client_id
        # variant 9, second kind: the client sends its 826 now and goes on
        key = private_key()
        keyed = _send_key(client, registered.client_id, name, crypto.export_public_key(key))
        assert isinstance(keyed, PublicKeyReceived)
    assert "stored key unusable" not in server.log()
    guard.check()


# -- C5: a valid 827 --------------------------------------------------------------------------------


def test_c5_valid_827_gives_a_fresh_key_and_updates_last_seen(server):
    guard = Guard(server)
    with server.client() as client:
        identity = make_identity(client)
    old_key = identity.aes_key
    with sqlite3.connect(server.data_dir / "defensive.db") as db:
        db.execute("UPDATE clients SET LastSeen = '2000-01-01T00:00:00+00:00' WHERE ID = ?", (identity.client_id,))
    with server.client() as client:
        wire = ClientConnection().send(Reconnect(client_id=identity.client_id, name=identity.name))
        client.send_raw(wire)
        head = client.sock.recv(RESPONSE_HEADER_SIZE, socket.MSG_WAITALL)  # the header as sent
        header = ResponseHeader.parse(head)
        assert (header.version, header.code, header.payload_size) == (3, 1605, 16 + 128)
        client.conn.receive_data(head)
        answer = client.receive()
        assert isinstance(answer, Reconnected) and answer.client_id == identity.client_id
        identity.aes_key = crypto.decrypt_aes_key(identity.private_key, answer.encrypted_aes_key)
        assert identity.aes_key != old_key
        assert _keys_of(server, identity.client_id)[0][1] == identity.aes_key
        ((last_seen,),) = db_rows(server, "SELECT LastSeen FROM clients WHERE ID = ?", identity.client_id)
        assert last_seen.startswith(time.strftime("%Y-", time.gmtime()))
        # the old key is dead: ciphertext under it does not decrypt
        stale = Identity(identity.name, identity.client_id, identity.private_key, old_key)
        assert isinstance(upload(client, stale, "f.bin", os.urandom(3000)), GeneralError)
        data = os.urandom(3000)
        answer = upload(client, identity, "f.bin", data)
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
        # and a second 827 gives yet another key
        again = reconnect(client, Identity(identity.name, identity.client_id, identity.private_key, b""))
        assert again.aes_key not in (old_key, identity.aes_key)
    guard.check()


# -- C6: a stranger with a victim's id ----------------------------------------------------------------


def test_c6_stranger_address_is_refused_before_decryption(server):
    guard = Guard(server)
    victim = guard.identity
    with server.client(source=STRANGER) as stranger:
        # 828 with the victim's real key would decrypt: the binding refuses it first
        assert isinstance(upload(stranger, victim, "bystander.bin", b"evil"), GeneralError)
        assert isinstance(upload(stranger, victim, "new.bin", b"evil"), GeneralError)
        for request in (CrcOk, CrcRetry, CrcAbort):
            stranger.send(request(client_id=victim.client_id, file_name="bystander.bin"))
            assert isinstance(stranger.receive(), GeneralError)
    assert server.log().count("key is bound to another address") == 5
    assert "decryption failed" not in server.log()
    assert temp_files_gone(server) and file_count(server, victim.client_id) == 1
    guard.check(flow=False)  # nothing of the victim's changed
    # a per-request client of the owner (same address) keeps working
    (packet,) = file_packets(victim, "owner.bin", b"the owner's own file")
    with server.client() as same_address:
        assert isinstance(same_address.request(packet), FileReceived)
    with server.client() as same_address:
        ack = same_address.request(CrcOk(client_id=victim.client_id, file_name="owner.bin"))
        assert isinstance(ack, Acknowledged)
    guard.refresh()  # the owner's own use moved its LastSeen and LastUsed
    guard.check()


def test_c6_key_unused_past_the_window_is_dead(server_factory):
    server = server_factory("--key-window", str(KEY_WINDOW))
    guard = Guard(server)
    with server.client() as client:
        identity = make_identity(client)
        time.sleep(KEY_WINDOW + 0.3)  # past the window: only ever later on a slow machine
        assert isinstance(upload(client, identity, "late.txt", b"x"), GeneralError)
        assert "key binding expired" in server.log()
        reconnect(client, identity)  # a fresh 827 revives it
        assert isinstance(upload(client, identity, "late.txt", b"x"), FileReceived)
    guard.check()


# -- C7: replay -----------------------------------------------------------------------------------------


def test_c7_replayed_827_and_828s_on_a_new_connection(server):
    guard = Guard(server)
    first = os.urandom(5000)
    with server.client() as client:
        identity = make_identity(client)
        captured_827 = ClientConnection().send(Reconnect(client_id=identity.client_id, name=identity.name))
        client.send_raw(captured_827)
        reconnected = client.receive()
        identity.aes_key = crypto.decrypt_aes_key(identity.private_key, reconnected.encrypted_aes_key)
        captured_828s = b"".join(packet_bytes(p) for p in file_packets(identity, "c7.bin", first))
        client.send_raw(captured_828s)
        answer = client.receive()
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(first)
        assert isinstance(client.request(CrcOk(client_id=identity.client_id, file_name="c7.bin")), Acknowledged)
    with server.client() as replayer:  # same address: the binding alone cannot tell
        replayer.send_raw(captured_827)
        again = replayer.receive()
        assert isinstance(again, Reconnected) and again.encrypted_aes_key != reconnected.encrypted_aes_key
        replayer.send_raw(captured_828s)
        answer = replayer.receive()
    stored = (client_dir(server, identity.client_id) / "c7.bin").read_bytes()
    verified = db_rows(server, "SELECT Verified FROM files WHERE ID = ?", identity.client_id)
    if not isinstance(answer, GeneralError):  # the usual case: garbage padding under the new key
        # one time in ~256 the garbage pads right: kept as a pending version, which only
        # a 900 would make the file
        assert isinstance(answer, FileReceived) and answer.cksum != cksum(first)
    assert (stored, verified) == (first, [(1,)])  # the verified version stays, either way
    guard.check()
