"""H. Trust: what an outsider who reads a session off the wire, or only has bandwidth, can do.

An independent review walked through these holes; each test is named after
its point (h1 … h12) and checks docs/HOSTILE.md's spirit as well: a defined
answer, nothing lost, others unharmed (:class:`Guard`).

The outsider knows what travels in clear: names, client ids and file names.
He sends from another address (``STRANGER``) unless the case says otherwise.
"""

from __future__ import annotations

import os
import re
import time
import unicodedata

import pytest

from helpers import (
    ANY_ID,
    bad_padding_packet,
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
from hostile_helpers import (
    STRANGER,
    Guard,
    changed,
    client_dir,
    client_files,
    db_rows,
    temp_files,
    verified_upload,
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
    Reconnected,
    Register,
    Registered,
    RegistrationFailed,
    SendFilePacket,
    SendPublicKey,
    cksum,
    crypto,
)
from protocol.codes import NAME_FIELD_SIZE
from timing_helpers import HANG_TIMEOUT, wait_until

MIB = 1024 * 1024


def _rows(server, identity) -> list[tuple]:
    return db_rows(
        server, "SELECT FileName, Verified FROM files WHERE ID = ? ORDER BY FileName", identity.client_id
    )


def _stored(server, identity, name: str = "doc.bin") -> bytes:
    return (client_dir(server, identity.client_id) / name).read_bytes()


def _stranger_key(server, victim: Identity) -> Identity:
    """What an outsider who knows name and id gets from 827: a key bound to him.

    He cannot read it (it is sealed to the victim's public key); the test
    can, to play the outsider whose guesses are as good as they get.
    """
    with server.client(source=STRANGER) as stranger:
        answer = stranger.request(Reconnect(client_id=victim.client_id, name=victim.name))
    assert isinstance(answer, Reconnected), answer
    key = crypto.decrypt_aes_key(victim.private_key, answer.encrypted_aes_key)
    return Identity(victim.name, victim.client_id, victim.private_key, key)


# -- h1: a fresh registration cannot be taken over -----------------------------------------


def test_h1_stranger_cannot_take_over_a_fresh_registration(server):
    guard = Guard(server)
    name = unique_name("fresh")
    owner_key, stranger_key = private_key(), private_key()
    with server.client() as owner:
        registered = owner.request(Register(client_id=ANY_ID, name=name))
        assert isinstance(registered, Registered)
        client_id = registered.client_id
        with server.client(source=STRANGER) as stranger:
            # variant 9 answers 827 for a keyless client with 1606 ...
            answer = stranger.request(Reconnect(client_id=client_id, name=name))
            assert isinstance(answer, ReconnectRefused) and answer.client_id == client_id
            # ... but nothing from elsewhere moves its binding or attaches a key
            answer = stranger.request(SendPublicKey(
                client_id=client_id, name=name, public_key=crypto.export_public_key(stranger_key)))
            assert isinstance(answer, GeneralError)
            assert isinstance(stranger.request(Register(client_id=ANY_ID, name=name)), RegistrationFailed)
        assert db_rows(server, "SELECT Address FROM key_bindings WHERE ID = ?", client_id) == [("127.0.0.1",)]
        answer = owner.request(SendPublicKey(
            client_id=client_id, name=name, public_key=crypto.export_public_key(owner_key)))
        assert isinstance(answer, PublicKeyReceived)
    assert db_rows(server, "SELECT PublicKey FROM clients WHERE ID = ?", client_id) == [
        (crypto.export_public_key(owner_key),)
    ]
    guard.check()


# -- h2: a verified file is replaced only by a confirmed upload ------------------------------


@pytest.mark.parametrize("ending", ["verified-later", "902", "901", "new-key", "timeout"])
def test_h2a_a_new_version_waits_for_its_900(server_factory, ending):
    server = server_factory(*(("--idle-timeout", "1") if ending == "timeout" else ()))
    guard = Guard(server)
    old, new = os.urandom(3000), os.urandom(4000)
    with server.client() as client:
        identity = make_identity(client)
        verified_upload(client, identity, "doc.bin", old)
        reconnect(client, identity)
    (packet,) = file_packets(identity, "doc.bin", new, 8192)
    with server.client() as client:
        # per-request (its first request is an 828): the upload outlives the connection
        answer = client.request(packet)
        assert isinstance(answer, FileReceived) and answer.cksum == cksum(new)
        # answered, but not installed: the verified file and its flag stay
        assert (_stored(server, identity), _rows(server, identity)) == (old, [("doc.bin", 1)])
        if ending in ("901", "902"):
            code = CrcRetry if ending == "901" else CrcAbort
            client.send(code(client_id=identity.client_id, file_name="doc.bin"))
            assert isinstance(client.receive(timeout=HANG_TIMEOUT), (Acknowledged, ConnectionClosed))
        elif ending == "new-key":
            with server.client() as other:
                reconnect(other, identity)
    if ending == "timeout":
        server.wait_log("no verdict in time", timeout=HANG_TIMEOUT)
    if ending != "verified-later":
        # whatever came, a 900 now has no upload to speak of
        with server.client() as client:
            assert isinstance(client.request(CrcOk(client_id=identity.client_id, file_name="doc.bin")),
                              GeneralError)
    else:
        with server.client() as client:  # a per-request 900 still finds it, and installs it
            assert isinstance(client.request(CrcOk(client_id=identity.client_id, file_name="doc.bin")),
                              Acknowledged)
        old = new
    wait_until(lambda: not temp_files(server), "no pending version left")
    assert (_stored(server, identity), _rows(server, identity)) == (old, [("doc.bin", 1)])
    guard.check()


def test_h2a_a_one_connection_client_that_leaves_discards_its_pending_version(server):
    guard = Guard(server)
    old = os.urandom(3000)
    with server.client() as client:
        identity = make_identity(client)
        verified_upload(client, identity, "doc.bin", old)
        assert isinstance(upload(client, identity, "doc.bin", os.urandom(4000)), FileReceived)
        assert temp_files(server)  # the pending version
    wait_until(lambda: not temp_files(server), "the pending version discarded at the close")
    with server.client() as client:
        assert isinstance(client.request(CrcOk(client_id=identity.client_id, file_name="doc.bin")),
                          GeneralError)
    assert (_stored(server, identity), _rows(server, identity)) == (old, [("doc.bin", 1)])
    guard.check()


def test_h2a_a_confirmed_new_version_replaces_the_file(server):
    guard = Guard(server)
    old, new = os.urandom(3000), os.urandom(4000)
    with server.client() as client:
        identity = make_identity(client)
        verified_upload(client, identity, "doc.bin", old)
        verified_upload(client, identity, "doc.bin", new)
        assert (_stored(server, identity), _rows(server, identity)) == (new, [("doc.bin", 1)])
    guard.check()


def test_h2b_failed_decryptions_are_a_budget(server):
    """Guessing padding from many addresses: 3 guesses per key, 10 per client-hour."""
    guard = Guard(server)
    with server.client() as client:
        victim = make_identity(client)
        verified_upload(client, victim, "doc.bin", b"the victim's verified file")
    answers = []
    for _ in range(5):  # five keys, each from an outsider's 827
        attacker = _stranger_key(server, victim)
        for source in (STRANGER, STRANGER, STRANGER, STRANGER):
            with server.client(source=source) as stranger:
                answers.append(stranger.request(bad_padding_packet(attacker, "doc.bin")))
    assert all(isinstance(answer, GeneralError) for answer in answers), answers
    log = server.log()
    # the decryptor saw 3 guesses per key, and 10 in all: the rest were refused before it
    assert len(re.findall(r"-> 1607 refused .*: decryption failed$", log, re.MULTILINE)) == 10, log
    assert log.count("key refused after failed decryptions") == 3  # keys 1-3: their 4th guess
    assert "likely padding-guessing attack" in log
    assert "too many failed decryptions for this client in the last hour" in log
    # the accepted price: the victim's own uploads wait for the hour too
    with server.client() as client:
        reconnect(client, victim)
        assert isinstance(upload(client, victim, "new.bin", b"mine"), GeneralError)
    assert (_stored(server, victim), _rows(server, victim)) == (b"the victim's verified file", [("doc.bin", 1)])
    guard.check()


def test_h2b_a_dead_key_comes_back_with_827(server):
    guard = Guard(server)
    with server.client() as client:
        identity = make_identity(client)
        for _ in range(3):
            assert isinstance(client.request(bad_padding_packet(identity, "x.bin")), GeneralError)
        # the key is dead: even a good upload (and any verdict) is refused
        assert isinstance(upload(client, identity, "x.bin", b"good"), GeneralError)
        assert "key refused after failed decryptions" in server.log()
        reconnect(client, identity)
        verified_upload(client, identity, "x.bin", b"good")
    guard.check()


# -- h3: verdicts only for an upload the same key completed -----------------------------------


def test_h3_verdicts_without_an_upload_change_nothing(server):
    guard = Guard(server)
    with server.client() as client:
        identity = make_identity(client)
        verified_upload(client, identity, "yes.bin", b"verified")
        assert isinstance(upload(client, identity, "no.bin", b"given up"), FileReceived)
        assert isinstance(client.request(CrcAbort(client_id=identity.client_id, file_name="no.bin")),
                          Acknowledged)
    before = _rows(server, identity)
    assert before == [("no.bin", 0), ("yes.bin", 1)]
    # an outsider's 827 (a fresh key bound to him), then verdicts on names seen on the wire
    attacker = _stranger_key(server, identity)
    with server.client(source=STRANGER) as stranger:
        for request, name in ((CrcAbort, "yes.bin"), (CrcOk, "no.bin"), (CrcRetry, "no.bin")):
            stranger.send(request(client_id=attacker.client_id, file_name=name))
            assert isinstance(stranger.receive(), GeneralError)
    # and the owner himself, with a fresh key: no upload under it, no verdict
    with server.client() as client:
        reconnect(client, identity)
        for request, name in ((CrcAbort, "yes.bin"), (CrcOk, "no.bin")):
            assert isinstance(client.request(request(client_id=identity.client_id, file_name=name)),
                              GeneralError)
    assert _rows(server, identity) == before
    guard.check()


# -- h4: a key changed while a packet streams ---------------------------------------------


def test_h4_827_while_a_packet_streams_is_a_defined_refusal(server):
    guard = Guard(server)
    data = os.urandom(200_000)
    with server.client() as uploader:
        identity = make_identity(uploader)
        wire = packet_bytes(file_packets(identity, "big.bin", data, len(data) + 16)[0])
        half = len(wire) // 2
        uploader.send_raw(wire[:half])
        wait_until(lambda: temp_files(server), "the packet streams into a temp file")
        with server.client() as other:
            reconnect(other, identity)  # a new key: the upload in progress is discarded
        uploader.send_raw(wire[half:])
        assert isinstance(uploader.receive(), GeneralError)
        assert "discarded while its packet was arriving" in server.log()
        # the connection goes on: a new upload under the new key works
        verified_upload(uploader, identity, "big.bin", data)
    guard.check()  # no traceback


# -- h5: interleaved uploads of one file ---------------------------------------------------


def test_h5_interleaved_per_request_uploads_of_one_name(server):
    guard = Guard(server)
    a, b = os.urandom(3000), os.urandom(3000)
    with server.client() as client:
        identity = make_identity(client)
    packets_a = file_packets(identity, "same.bin", a, 1024)
    packets_b = file_packets(identity, "same.bin", b, 1024)
    assert len(packets_a) == len(packets_b) == 3
    replies = []
    for packet in (packets_a[0], packets_b[0], packets_a[1], packets_a[2]):
        with server.client() as client:  # one connection per request (variant 7)
            client.send(packet)
            replies.append(client.receive(timeout=HANG_TIMEOUT))
    kinds = [type(reply) for reply in replies]
    assert kinds == [ConnectionClosed, GeneralError, ConnectionClosed, FileReceived], replies
    assert replies[-1].cksum == cksum(a)
    assert _stored(server, identity, "same.bin") == a  # one complete upload, never a mix
    assert "another upload of this client and file is in progress" in server.log()
    guard.check()


# -- h6: orig_file_size must be the plaintext's size, in every layout ------------------------


@pytest.mark.parametrize("layout", ["one-packet", "packets", "swapped", "per-packet"])
def test_h6_orig_file_size_is_checked(server, layout):
    guard = Guard(server)
    plain = os.urandom(17 if layout == "one-packet" else 3000)
    claimed = len(plain) + 3  # the same padded size, another plaintext size
    assert crypto.padded_size(claimed) == crypto.padded_size(len(plain))
    size = 4096 if layout == "one-packet" else 1024
    with server.client() as client:
        identity = make_identity(client)
        packets = file_packets(identity, "d.bin", plain, size,
                               swapped=layout == "swapped", per_packet=layout == "per-packet")
        for packet in packets:
            client.send(changed(packet, orig_file_size=claimed))
        assert isinstance(client.receive(), GeneralError)
        assert temp_files(server) == []  # at once: the refusal waited for its removal
        assert client_files(server, identity.client_id) == []
        # the same file with its true size is served
        assert isinstance(upload(client, identity, "d.bin", plain, size), FileReceived)
    guard.check()


# -- h7: names that print the same ----------------------------------------------------------


def _register_raw(client, text: bytes):
    client.send_raw(raw_header(825, NAME_FIELD_SIZE) + text.ljust(NAME_FIELD_SIZE, b"\0"))
    return client.receive()


def test_h7_names_with_outer_spaces_are_refused(server):
    guard = Guard(server)
    base = unique_name("space").encode()
    with server.client() as client:
        assert isinstance(_register_raw(client, base), Registered)
        for text in (base + b" ", b" " + base, base + b"  ", b"   "):
            assert isinstance(_register_raw(client, text), RegistrationFailed), text
        # a space inside a name is a name
        spaced = base.replace(b"-", b" ", 1)
        assert isinstance(_register_raw(client, spaced), Registered)
    suffix = base.decode().split("-", 1)[1]
    names = db_rows(server, "SELECT Name FROM clients WHERE Name LIKE ? ORDER BY Name", f"%{suffix}%")
    assert names == sorted([(base.decode(),), (spaced.decode(),)])
    guard.check()


def test_h7_file_names_equal_but_for_case_stay_apart(server):
    guard = Guard(server)
    names = ["a.txt", "A.txt", "a.TXT", "CON", "con", "Straße", "STRASSE", "e\u0301.txt", "\u00e9.txt"]
    contents = {name: f"{name} ".encode() * 20 for name in names}
    with server.client() as client:
        identity = make_identity(client)
        for name in names:
            verified_upload(client, identity, name, contents[name])
        verified_upload(client, identity, "A.txt", b"A.txt again")  # same name: same stored file
        contents["A.txt"] = b"A.txt again"
    stored = client_files(server, identity.client_id)
    folded = {unicodedata.normalize("NFD", name).casefold() for name in stored}
    assert len(stored) == len(folded) == len(names), stored  # distinct on NTFS and APFS too
    rows = dict(db_rows(server, "SELECT FileName, PathName FROM files WHERE ID = ?", identity.client_id))
    for name in names:
        assert (server.data_dir / rows[name]).read_bytes() == contents[name]
    guard.check()


# -- h8: disk reserved by uploads that never send ------------------------------------------------


def _claim(identity: Identity, name: str, plain_size: int) -> SendFilePacket:
    """A first packet that claims a file of ``plain_size`` bytes in 9 packets."""
    first = file_packets(identity, name, b"x" * 100)[0]
    return changed(first, content_size=crypto.padded_size(plain_size), orig_file_size=plain_size,
                    total_packets=9)


def test_h8_a_stalled_upload_gives_its_disk_back(server_factory, tmpfs, tmp_path):
    data_dir = tmp_path / "data"
    if not tmpfs.mount(data_dir / "received_files", "4m"):
        pytest.skip("needs a small tmpfs (root with mount rights)")
    server = server_factory("--min-free-disk", "0", "--message-deadline", "2", data_dir=data_dir)
    guard = Guard(server)
    with server.client() as hog, server.client() as other:
        hogger = make_identity(hog)
        hog.send(_claim(hogger, "hog.bin", 3 * MIB))  # accepted, then nothing
        assert hog.nothing_within(0.2)
        victim = make_identity(other)
        data = os.urandom(2 * MIB)
        assert isinstance(upload(other, victim, "v.bin", data, 65536), GeneralError)
        # keep-alives from the hog do not keep the reservation
        started = time.monotonic()
        while "no progress in time" not in server.log():
            assert time.monotonic() - started < HANG_TIMEOUT
            assert isinstance(hog.request(Register(client_id=ANY_ID, name=unique_name())), Registered)
            time.sleep(0.2)
        assert isinstance(upload(other, victim, "v.bin", data, 65536), FileReceived)
    assert "not enough disk space" in server.log()
    guard.check()


def test_h8_one_address_reserves_at_most_its_share(server_factory, tmpfs, tmp_path):
    data_dir = tmp_path / "data"
    if not tmpfs.mount(data_dir / "received_files", "4m"):
        pytest.skip("needs a small tmpfs (root with mount rights)")
    # the default share (one half) of the disk, as a real server has it
    server = server_factory("--min-free-disk", "0", data_dir=data_dir, load_flags=(
        "--max-connections-per-address", "0", "--registrations-per-minute", "0"))
    guard = Guard(server)
    with server.client() as a, server.client() as b, server.client(source=STRANGER) as c:
        first, second, elsewhere = make_identity(a), make_identity(b), make_identity(c)
        a.send(_claim(first, "a.bin", 1_500_000))
        assert a.nothing_within(0.2)  # accepted
        b.send(_claim(second, "b.bin", 1_500_000))
        assert isinstance(b.receive(), GeneralError)  # the same address: over its half
        c.send(_claim(elsewhere, "c.bin", 1_500_000))
        assert c.nothing_within(0.2)  # another address: room left
    assert "not enough disk space" in server.log()
    guard.check(temps=True)


def test_h8_the_room_is_told_coarsely():
    from server.admission import DISK_ROOM_PRECISION_BITS, coarse

    step = 1 << 20
    for amount in (5, 1000, 2 * MIB + 12345, 53 * 10**9 + 777, 2**32 - 1):
        rounded = coarse(amount)
        assert rounded <= amount < rounded * (1 + 2 ** -(DISK_ROOM_PRECISION_BITS - 1)) + 1
        # a probe 16 bytes apart sees no difference, far from a step boundary
        assert coarse(amount) == coarse(amount - 16) or amount - rounded < 16
    assert len({coarse(53 * 10**9 + offset) for offset in range(0, 16 * step, step)}) <= 2
    assert coarse(-1) == coarse(0) == 0


# -- h11: closing a connection does not scan every registration ---------------------------------


def test_h11_closing_costs_what_the_connection_held():
    from server.app import LiveRegistrations
    from server.peer import Peer

    def close_many(registrations) -> float:
        peers = [Peer("127.0.0.1", port) for port in range(2000)]
        started = time.perf_counter()
        for peer in peers:
            registrations.connection_closed(peer)
        return time.perf_counter() - started

    empty = LiveRegistrations()
    baseline = min(close_many(empty) for _ in range(3))
    crowded = LiveRegistrations()
    holder = Peer("127.0.0.1", 1)
    for number in range(20_000):
        crowded.hold(number.to_bytes(16, "big"), holder)
    loaded = min(close_many(crowded) for _ in range(3))
    # a scan would cost 20,000 steps per close; an index, one
    assert loaded < 20 * baseline + 0.01, (loaded, baseline)
    assert len(crowded) == 20_000
    crowded.connection_closed(holder)
    assert len(crowded) == 0


# -- h12: registrations that never get a key lapse ------------------------------------------------


def test_h12_keyless_registrations_lapse_and_free_the_cap(server_factory, tmp_path):
    data_dir = tmp_path / "data"
    window = 2.0
    flags = ("--max-clients", "4", "--key-window", str(window))
    server = server_factory(*flags, data_dir=data_dir)
    with server.client() as client:
        make_identity(client)  # one client with a key: it never lapses
        for _ in range(3):
            assert isinstance(client.request(Register(client_id=ANY_ID, name=unique_name())), Registered)
        assert isinstance(client.request(Register(client_id=ANY_ID, name=unique_name())), RegistrationFailed)
    assert "client limit reached" in server.log()
    time.sleep(window + 0.5)
    with server.client() as client:  # the keyless three lapsed: room again
        assert isinstance(client.request(Register(client_id=ANY_ID, name=unique_name())), Registered)
    server.stop()
    restarted = server_factory(*flags, data_dir=data_dir)
    with restarted.client() as client:  # and after a restart too
        assert isinstance(client.request(Register(client_id=ANY_ID, name=unique_name())), Registered)


def test_h12_registrations_per_address_are_limited_by_default(server_factory):
    server = server_factory(load_flags=("--max-connections-per-address", "0"))
    with server.client() as client:
        answers = [client.request(Register(client_id=ANY_ID, name=unique_name())) for _ in range(31)]
    assert [type(answer) for answer in answers] == [Registered] * 30 + [RegistrationFailed]
    with server.client(source=STRANGER) as other:  # another address is not held back
        assert isinstance(other.request(Register(client_id=ANY_ID, name=unique_name())), Registered)
    assert "registration rate limit for this address" in server.log()
