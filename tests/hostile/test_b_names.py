"""docs/HOSTILE.md B: registration and names (825), against the real server.

Every test ends with ``guard.check()`` (see hostile_helpers.Guard): the
bystander registered there is the "existing row, key, files" of B2 and B3.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from helpers import ANY_ID, RawClient, make_identity, raw_header, reconnect, unique_name, upload
from hostile_helpers import STRANGER, Guard, db_rows, normal_flow
from timing_helpers import load_bound, round_trip, within_load
from protocol import (
    ClientConnection,
    FileReceived,
    Register,
    Registered,
    RegistrationFailed,
    cksum,
)
from protocol.codes import RequestCode


def _register_raw(client: RawClient, field: bytes, client_id: bytes = ANY_ID):
    client.send_raw(raw_header(RequestCode.REGISTER, 255, client_id) + field)
    return client.receive()


# -- B1 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("header_id", ["zeros", "letters", "ones", "another-clients-id"])
def test_b1_new_name_with_a_garbage_header_id(server, header_id):
    guard = Guard(server)
    garbage = {
        "zeros": bytes(16),
        "letters": b"a" * 16,
        "ones": b"\xff" * 16,
        "another-clients-id": guard.identity.client_id,
    }[header_id]
    ids = []
    with server.client() as client:
        for _ in range(8):
            name = unique_name()
            answer = client.request(Register(client_id=garbage, name=name))
            assert isinstance(answer, Registered)
            # the row is committed before the reply: another connection sees it now
            assert db_rows(server, "SELECT ID, PublicKey, AESKey FROM clients WHERE Name = ?", name) == [
                (answer.client_id, None, None)
            ]
            ids.append(answer.client_id)
    assert garbage not in ids and len(set(ids)) == len(ids)
    # random, not counted: no shared prefixes, no small differences
    assert len({i[:4] for i in ids}) == len(ids)
    numbers = sorted(int.from_bytes(i, "big") for i in ids)
    assert min(b - a for a, b in zip(numbers, numbers[1:])) > 2**64
    guard.check()


# -- B2 ------------------------------------------------------------------------------------


def test_b2_name_already_registered(server):
    guard = Guard(server)
    name = guard.identity.name
    with server.client() as client:
        for header_id in (ANY_ID, guard.identity.client_id, os.urandom(16)):
            answer = client.request(Register(client_id=header_id, name=name))
            assert isinstance(answer, RegistrationFailed)  # 1601 with no payload, not 1607
    with server.client(source=STRANGER) as other:
        assert isinstance(other.request(Register(client_id=ANY_ID, name=name)), RegistrationFailed)
    assert db_rows(server, "SELECT COUNT(*) FROM clients WHERE Name = ?", name) == [(1,)]
    guard.check()  # the owner's row, key, binding and files are byte for byte the same


# -- B3 ------------------------------------------------------------------------------------

INVALID_NAMES = {
    "empty": bytes(255),
    "no-nul": b"x" * 255,
    "no-nul-leading-text": b"alice" + b"y" * 250,
    "utf8": "café".encode().ljust(255, b"\0"),
    "latin1": b"caf\xe9".ljust(255, b"\0"),
    "high-bytes": b"\x80\xff".ljust(255, b"\0"),
    "control": b"bad\x01name".ljust(255, b"\0"),
    "escape-prints-like-alice": b"alice\x1b[0m".ljust(255, b"\0"),
    "tab": b"tab\tname".ljust(255, b"\0"),
    "del": b"del\x7f".ljust(255, b"\0"),
}


@pytest.mark.parametrize("kind", INVALID_NAMES)
def test_b3_invalid_name(server, kind):
    guard = Guard(server)
    with server.client() as client:
        assert isinstance(_register_raw(client, INVALID_NAMES[kind]), RegistrationFailed)
        # the connection goes on (a name error is not a framing error)
        assert isinstance(client.request(Register(client_id=ANY_ID, name=unique_name())), Registered)
    assert db_rows(server, "SELECT COUNT(*) FROM clients") == [(2,)]  # bystander and the valid one
    guard.check()


def test_b3_cut_at_the_first_nul_and_left_padding(server):
    guard = Guard(server)
    name = unique_name()
    with server.client() as client:
        answer = _register_raw(client, (name.encode() + b"\0garbage\xff\x01").ljust(255, b"\x07"))
        assert isinstance(answer, Registered)
        # the text before the NUL is the name; the same name padded on the left is the same name
        taken = guard.identity.name.encode()
        for field in (
            (taken + b"\0trailing junk").ljust(255, b"\0"),
            taken.rjust(254, b"\0") + b"\0",
            taken.rjust(255, b"\0"),  # variant 1: leading NULs, no terminator
        ):
            assert isinstance(_register_raw(client, field), RegistrationFailed)
        left = unique_name()
        assert isinstance(_register_raw(client, left.encode().rjust(255, b"\0")), Registered)
    names = {n for (n,) in db_rows(server, "SELECT Name FROM clients")}
    assert names == {guard.identity.name, name, left}  # nothing after the NUL kept
    guard.check()


# -- B4 ------------------------------------------------------------------------------------


def test_b4_concurrent_same_name(server):
    guard = Guard(server)
    connections = 8
    for _ in range(3):
        name = unique_name()
        wire = ClientConnection().send(Register(client_id=ANY_ID, name=name))
        clients = [server.client() for _ in range(connections)]
        barrier = threading.Barrier(connections)

        def send(client):
            barrier.wait(5)
            client.send_raw(wire)

        threads = [threading.Thread(target=send, args=(c,)) for c in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        try:
            answers = sorted(type(c.receive()).__name__ for c in clients)
        finally:
            for client in clients:
                client.close()
        assert answers == ["Registered"] + ["RegistrationFailed"] * (connections - 1)
        assert len(db_rows(server, "SELECT ID FROM clients WHERE Name = ?", name)) == 1
    assert "IntegrityError" not in server.log()
    guard.check()


# -- B5 ------------------------------------------------------------------------------------


#: The squatter pipelines its 825s on one connection, and past the limits each
#: is a refusal (1601): lift the error budget that would close it after six.
SQUAT_FLAGS = ("--max-errors", "1000000")


def _squat(server, count: int) -> list:
    """``count`` × 825 with fresh names from another address, all in one go."""
    conn = ClientConnection()
    wire = b"".join(conn.send(Register(client_id=ANY_ID, name=unique_name("squat"))) for _ in range(count))
    with server.client(source=STRANGER) as squatter:
        squatter.send_raw(wire)
        answers = [squatter.receive() for _ in range(count)]
        assert squatter.nothing_within(0.2)  # nothing more
    return answers


def test_b5_registration_rate_per_address(server_factory):
    server = server_factory("--registrations-per-minute", "20", *SQUAT_FLAGS)
    guard = Guard(server)
    alone = normal_flow(server)  # the baseline, before the squatter (one more client row)
    started = time.monotonic()
    answers = _squat(server, 1000)
    print(f"\nB5: 1000 registrations answered in {time.monotonic() - started:.2f} s")
    assert [type(a) for a in answers[:20]] == [Registered] * 20
    assert all(isinstance(a, RegistrationFailed) for a in answers[20:])
    assert db_rows(server, "SELECT COUNT(*) FROM clients") == [(1 + 1 + 20,)]
    elapsed = guard.check()  # the other address is not slowed down or locked out
    assert within_load(elapsed, alone), (alone, elapsed)


def test_b5_global_client_cap(server_factory):
    server = server_factory("--max-clients", "50", *SQUAT_FLAGS)
    guard = Guard(server)
    baseline = round_trip(server)  # registers nobody
    answers = _squat(server, 1000)
    assert sum(isinstance(a, Registered) for a in answers) == 49
    assert db_rows(server, "SELECT COUNT(*) FROM clients") == [(50,)]
    size = sum(p.stat().st_size for p in server.data_dir.glob("defensive.db*"))
    assert size < 2 * 1024 * 1024  # bounded
    guard.check(flow=False)  # no new client fits: the flow below is the bystander's own
    # registered clients are served as before: the bystander reconnects and uploads
    data = os.urandom(5000)
    started = time.monotonic()
    with server.client() as client:
        reconnect(client, guard.identity)
        answer = upload(client, guard.identity, "after.bin", data)
    assert isinstance(answer, FileReceived) and answer.cksum == cksum(data)
    assert time.monotonic() - started <= load_bound(baseline)
    assert "client limit reached" in server.log()
    assert "Traceback" not in server.log()
    with server.client() as client:  # a new client is refused cleanly, the connection goes on
        assert isinstance(client.request(Register(client_id=ANY_ID, name=unique_name())), RegistrationFailed)
        assert isinstance(client.request(Register(client_id=ANY_ID, name=guard.identity.name)), RegistrationFailed)


def test_b5_one_address_cannot_fill_the_cap_for_good(server_factory, tmp_path):
    """Issue 22: 30 keyed clients from one address held ``--max-clients 30`` for good."""
    data_dir = tmp_path / "data"
    flags = ("--max-clients", "30", "--max-client-share-per-address", "0.2", *SQUAT_FLAGS)
    # the real server's per-address defaults, but for the registration rate
    load_flags = ("--registrations-per-minute", "0")
    server = server_factory(*flags, data_dir=data_dir, load_flags=load_flags)
    with server.client() as hog:
        for _ in range(6):  # a fifth of the cap, each with its key: they never lapse by the window
            make_identity(hog)
        assert isinstance(hog.request(Register(client_id=ANY_ID, name=unique_name())), RegistrationFailed)
    assert "this address's share of the client limit reached" in server.log()
    with server.client(source=STRANGER) as newcomer:  # another address still gets in
        make_identity(newcomer)
    server.stop()
    restarted = server_factory(*flags, data_dir=data_dir, load_flags=load_flags)
    with restarted.client() as hog:  # the share is kept across a restart
        assert isinstance(hog.request(Register(client_id=ANY_ID, name=unique_name())), RegistrationFailed)
    with restarted.client(source=STRANGER) as newcomer:
        make_identity(newcomer)
