"""docs/HOSTILE.md in every edition: the cases whose code paths an edition could bypass.

The rest of tests/hostile/ runs in v3; the requests of the other editions go
through the same session, handlers, uploads and stores, and these tests make
sure of it where an edition differs: its codes, its layouts, its key size, its
file sent whole. Each case is checked in all five editions.
"""

from __future__ import annotations

import os

import pytest

from helpers import ANY_ID, RawClient, bad_padding_packet, unique_name
from hostile_helpers import STRANGER
from protocol import (
    Acknowledged,
    ClientConnection,
    CrcOk,
    FileReceived,
    GeneralError,
    Reconnect,
    Reconnected,
    Register,
    RegistrationFailed,
    SendFilePacket,
    SendPublicKey,
    cksum,
    crypto,
)
from protocol.codes import MAX_UINT32
from protocol.editions import EDITION_2023C, EDITIONS
from protocol.events import ReconnectRefused
from protocol.events import UnknownResponse
from protocol.wire import REQUEST_HEADER_SIZE
from edition_helpers import db_rows, keyed, send_file
from timing_helpers import load_bound, round_trip

EDITION_IDS = [edition.name for edition in EDITIONS]
#: More than any two layouts of one file request differ by.
LAYOUT_PEEK = 64


def files_of(server, client_id: bytes) -> list[str]:
    folder = server.data_dir / "received_files" / client_id.hex()
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("edition", EDITIONS, ids=EDITION_IDS)
def test_b_a_name_taken_in_one_edition_is_taken_in_all(server, edition):
    text = unique_name("taken")
    with RawClient(server.address, edition=edition) as owner:
        keyed(owner, text)
    for other in EDITIONS:
        with RawClient(server.address, edition=other) as thief:
            if other is EDITION_2023C:  # it ignores the 2024A answer to a first 1025
                thief.conn = ClientConnection(other, skip_unknown=True)
                assert isinstance(thief.request(Register(client_id=ANY_ID, name=text)), UnknownResponse)
            answer = thief.request(Register(client_id=ANY_ID, name=text))
            assert isinstance(answer, RegistrationFailed), (other, answer)


@pytest.mark.parametrize("edition", EDITIONS, ids=EDITION_IDS)
def test_c2_a_public_key_is_never_replaced(server, edition):
    with RawClient(server.address, edition=edition) as client:
        who = keyed(client)
        other = crypto.export_public_key(crypto.generate_private_key())
        answer = client.request(SendPublicKey(client_id=who.client_id, name=who.name, public_key=other))
        assert isinstance(answer, GeneralError)
    stored = db_rows(server, "SELECT PublicKey FROM clients WHERE ID = ?", who.client_id)
    assert stored == [(crypto.export_public_key(who.private_key),)]


@pytest.mark.parametrize("edition", EDITIONS, ids=EDITION_IDS)
def test_c6_a_stranger_address_cannot_use_the_key(server, edition):
    with RawClient(server.address, edition=edition) as owner:
        who = keyed(owner)
        assert isinstance(send_file(owner, who, "mine.bin", b"the owner's"), FileReceived)
    with RawClient(server.address, source=STRANGER, edition=edition) as stranger:
        assert isinstance(send_file(stranger, who, "evil.bin", b"evil"), GeneralError)
        assert isinstance(stranger.request(CrcOk(client_id=who.client_id, file_name="mine.bin")), GeneralError)
    assert files_of(server, who.client_id) == ["mine.bin"]
    assert db_rows(server, "SELECT Verified FROM files WHERE ID = ?", who.client_id) == [(0,)]


def _victims_rows(server, client_id: bytes) -> list[tuple]:
    """Everything the server keeps of a client that a request could write."""
    return db_rows(server, "SELECT Edition, Crc, LastSeen, AESKey FROM clients WHERE ID = ?", client_id) \
        + db_rows(server, "SELECT Address, IssuedAt, LastUsed FROM key_bindings WHERE ID = ?", client_id)


@pytest.mark.parametrize("victim_edition", EDITIONS, ids=EDITION_IDS)
@pytest.mark.parametrize("stranger_edition", EDITIONS, ids=EDITION_IDS)
def test_c6_a_stranger_in_any_edition_writes_nothing_for_a_fresh_client(
    server, victim_edition, stranger_edition
):
    # Between its registration and its first file request, a client of one
    # edition is named by a stranger elsewhere in another edition's layouts
    # (a 271-byte 1104 against 2023A, a 255-byte one against 2022, a 2023C
    # 1028 against 2024A...): refused, and nothing of the client is written,
    # so the client goes on in its own edition (docs/KEY_BINDING.md).
    with RawClient(server.address, edition=victim_edition) as owner:
        who = keyed(owner)
        before = _victims_rows(server, who.client_id)
        with RawClient(server.address, source=STRANGER, edition=stranger_edition) as stranger:
            guessed = type(who)(who.name, who.client_id, who.private_key, os.urandom(stranger_edition.aes_key_size))
            assert isinstance(send_file(stranger, guessed, "f.bin", b"the stranger's"), GeneralError)
            assert isinstance(stranger.request(CrcOk(client_id=who.client_id, file_name="f.bin")), GeneralError)
            if stranger_edition.has_reconnect:
                # By id, under a name of its own: that name is registered
                # afresh (variant 9), or refused in another family.
                answer = stranger.request(Reconnect(client_id=who.client_id, name=unique_name("s")))
                assert isinstance(answer, GeneralError) or (
                    isinstance(answer, ReconnectRefused) and answer.client_id != who.client_id
                ), answer
        assert _victims_rows(server, who.client_id) == before
        data = b"the owner's own file" * 100
        answer = send_file(owner, who, "mine.bin", data)
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
        assert isinstance(owner.request(CrcOk(client_id=who.client_id, file_name="mine.bin")), Acknowledged)
        if victim_edition.has_reconnect:
            answer = owner.request(Reconnect(client_id=who.client_id, name=who.name))
            assert isinstance(answer, Reconnected), answer
            fresh = crypto.decrypt_aes_key(who.private_key, answer.encrypted_aes_key, victim_edition.aes_key_size)
            assert len(fresh) == victim_edition.aes_key_size
    assert db_rows(server, "SELECT Edition FROM clients WHERE ID = ?", who.client_id) == [(victim_edition.name,)]
    assert files_of(server, who.client_id) == ["mine.bin"]


@pytest.mark.parametrize("edition", EDITIONS, ids=EDITION_IDS)
def test_d3_a_file_that_does_not_decrypt_is_refused_and_leaves_nothing(server, edition):
    with RawClient(server.address, edition=edition) as client:
        who = keyed(client)
        # surely bad: a flipped ciphertext byte would leave valid padding 1 time in 256
        client.send(bad_padding_packet(who, "bad.bin"))
        assert isinstance(client.receive(), GeneralError)
        assert isinstance(send_file(client, who, "good.bin", b"fine"), FileReceived)  # it goes on
    assert files_of(server, who.client_id) == ["good.bin"]
    assert "decryption failed" in server.log()


@pytest.mark.parametrize("edition", EDITIONS, ids=EDITION_IDS)
def test_e1_file_names_stay_in_the_client_folder(server, edition):
    names = ["../../escape.txt", "/etc/passwd", "C:\\Windows\\win.ini", "..", "a/b/c.txt"]
    with RawClient(server.address, edition=edition) as client:
        who = keyed(client)
        for wire_name in names:
            assert isinstance(send_file(client, who, wire_name, b"contained"), FileReceived)
    root = server.data_dir / "received_files"
    assert sorted(path.name for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")) \
        >= [who.client_id.hex()]
    assert len(files_of(server, who.client_id)) == len(names)
    assert not (server.data_dir.parent / "escape.txt").exists()
    assert all(path.parent.parent == root for path in root.rglob("*") if path.is_file())


@pytest.mark.parametrize("edition", EDITIONS, ids=EDITION_IDS)
def test_a3_a_file_request_longer_than_its_content_size_allows_is_refused_unread(server, edition):
    # payload_size 0xFFFFFFFF for a file of 16 bytes: no layout can take that
    # content, so it is refused at its fixed fields, not read past for 4 GiB.
    baseline = round_trip(server)
    with RawClient(server.address, edition=edition) as client:
        who = keyed(client)
        request = SendFilePacket(who.client_id, 16, 1, 1, 1, "huge.bin", content=b"")
        fixed = len(client.conn.send_parts(request, content_length=0)[0]) - REQUEST_HEADER_SIZE
        head, _ = client.conn.send_parts(request, content_length=MAX_UINT32 - fixed)
        # A few bytes of content, no more: 2022 and 2023A share their codes,
        # and a file request is told apart by the fields of the longer layout.
        client.send_raw(head + bytes(LAYOUT_PEEK))
        assert isinstance(client.receive(load_bound(baseline)), GeneralError)
        assert client.closed_within(load_bound(baseline))
    assert "too large to skip, closing" in server.log()
    assert files_of(server, who.client_id) == []


@pytest.mark.parametrize("edition", EDITIONS, ids=EDITION_IDS)
def test_a3_d1_a_file_over_the_size_limit_is_refused(server_factory, edition):
    server = server_factory("--max-content-size", "4096")
    with RawClient(server.address, edition=edition) as client:
        who = keyed(client)
        assert isinstance(send_file(client, who, "big.bin", os.urandom(10_000)), GeneralError)
        assert isinstance(send_file(client, who, "small.bin", b"fits"), FileReceived)  # it goes on
        # Far over the limit: refused at its header, the connection closed unread.
        huge = 4096 + 128 * 1024
        head, _ = client.conn.send_parts(
            SendFilePacket(who.client_id, huge, huge - 1, 1, 1, "huge.bin", content=b""),
            content_length=huge,
        )
        client.send_raw(head)
        assert client.closed_within(5)
    assert files_of(server, who.client_id) == ["small.bin"]
    assert "over the limit" in server.log()
