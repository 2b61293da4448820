"""The round trips a session costs the loop on PostgreSQL, request by request.

A session (825, 826, one single-packet 828, 900) is driven through a
:class:`~server.session.Session` of an App whose store and coordination are
PostgreSQL (a fresh database of the session's throwaway cluster), each
request in a round of its own, as the loop ends it. What is counted is every
message psycopg waits for the answer of (``Connection.wait``, under
``Connection.execute`` and the stores' own messages, server/storage/postgres/message.py,
on the store's connection and the coordination's): the round's COMMIT and what
goes out without waiting are not. A count does not depend on the machine's load.
"""

from __future__ import annotations

import psycopg
import pytest
from helpers import (
    ANY_ID, Identity, file_packets, parse_answers, private_key, unique_name,
)

from protocol import (
    Acknowledged,
    ClientConnection,
    CrcOk,
    FileReceived,
    GeneralError,
    PublicKeyReceived,
    Register,
    Registered,
    SendPublicKey,
    crypto,
)
from server.app import App
from server.errors import StorageFault
from server.limits import Limits
from server.peer import Peer
from server.session import Session, Step
from server.storage.coordination import UploadLease
from server.storage.folder import FolderBlobs
from server.storage.postgres.coordination import PgCoordination
from server.storage.postgres.message import PatientConnection
from server.storage.postgres.store import PostgresMetadata

pytestmark = pytest.mark.needed_in_ci

LEASE = 30.0
FILE_NAME = "one.bin"
#: Bytes per packet of an upload of several.
PACKET = 1024
HOUR = 3600.0
#: Failures under one key that kill it, in the per-key case.
PER_KEY = 2
#: The round trips each request waits for: 825 reads its name with the client counts and
#: inserts it, in one statement (its hold goes with the round's COMMIT); 826 reads its client
#: with the binding; 828 reads its client with the binding and the failure counts, then its
#: file's row (the lease goes out unanswered as the packet begins, its answer read as it
#: ends; the fence releases it with the round's COMMIT); 900 reads its client with the
#: binding and the failure counts.
ROUND_TRIPS = {"825": 1, "826": 1, "828": 2, "900": 1}
#: The coordination's messages each request sends, waited for or not: the 828's lease only.
COORDINATION_MESSAGES = {"825": 0, "826": 0, "828": 1, "900": 0}


class Waited:
    """Counts the messages waited for the answer of, on every connection (each a
    :class:`PatientConnection`, whose wait has a deadline)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        wait = PatientConnection.wait

        def counted(connection, *args, **kwargs):
            self.count += 1
            return wait(connection, *args, **kwargs)

        monkeypatch.setattr(PatientConnection, "wait", counted)


@pytest.fixture
def node(tmp_path, postgres_url):
    db = PostgresMetadata.open(postgres_url)
    coordination = PgCoordination(postgres_url, "a", LEASE)
    other = PgCoordination(postgres_url, "b", LEASE)
    limits = Limits(max_decryption_failures_per_key=PER_KEY)
    app = App.build(db, FolderBlobs(tmp_path), limits, coordination=coordination)
    yield app, other
    app.uploads.close()
    coordination.close()
    other.close()
    db.close()


def _request(app: App, session: Session, request) -> object:
    """One request in a round of its own; its one answer."""
    session.receive_data(ClientConnection().send(request))
    while session.next_step() not in (Step.NEED_DATA, Step.CLOSE):
        pass
    session.release(app.end_round(durable=False))
    (answer,) = parse_answers(session.data_to_send())
    return answer


class Cursors:
    """Counts the cursors psycopg makes (one per ``Connection.execute``, one per
    ``mogrify``), on every connection."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        made = psycopg.Cursor.__init__

        def counted(cursor, *args, **kwargs):
            self.count += 1
            made(cursor, *args, **kwargs)

        monkeypatch.setattr(psycopg.Cursor, "__init__", counted)


def _warm_up(app: App) -> None:
    """A session on a new connection, which prepares the statements sent without waiting."""
    warm_up = Session(app, Peer("127.0.0.1", 39999))
    who = _keyed(app, warm_up)
    (packet,) = file_packets(who, FILE_NAME, b"one packet")
    assert isinstance(_request(app, warm_up, packet), FileReceived)


def test_a_session_s_messages_make_no_cursor(node, monkeypatch):
    """The store's and the coordination's messages are sent and read without a psycopg
    cursor (server/storage/postgres/message.py): a cursor per call cost the loop about as
    much CPU as the rest of the call."""
    app, _ = node
    _warm_up(app)
    cursors = Cursors(monkeypatch)
    waited = Waited(monkeypatch)
    who = _keyed(app, Session(app, Peer("127.0.0.1", 40001)))
    session = Session(app, Peer("127.0.0.1", 40001))
    (packet,) = file_packets(who, FILE_NAME, b"one packet")
    assert isinstance(_request(app, session, packet), FileReceived)
    assert isinstance(_request(app, session, CrcOk(client_id=who.client_id,
                                                   file_name=FILE_NAME)), Acknowledged)
    assert waited.count == sum(ROUND_TRIPS.values())  # the messages were sent and answered
    assert cursors.count == 0


def test_a_session_waits_for_five_round_trips_and_what_answers_nothing_is_in_place(
    node, monkeypatch
):
    app, other = node
    _warm_up(app)  # a connection's first prepares its statements sent without waiting: once
    session = Session(app, Peer("127.0.0.1", 40000))
    waited = Waited(monkeypatch)
    counts: dict[str, int] = {}
    coordination: dict[str, int] = {}

    def request(code: str, message) -> object:
        before, sent = waited.count, _coordination_messages(app)
        answer = _request(app, session, message)
        counts[code] = waited.count - before
        coordination[code] = _coordination_messages(app) - sent
        return answer

    name = unique_name()
    registered = request("825", Register(client_id=ANY_ID, name=name))
    assert isinstance(registered, Registered)
    assert other.registration_held_elsewhere(registered.client_id)  # the hold, committed
    key = private_key()
    keyed = request("826", SendPublicKey(client_id=registered.client_id, name=name,
                                         public_key=crypto.export_public_key(key)))
    assert isinstance(keyed, PublicKeyReceived)
    who = Identity(name, registered.client_id, key,
                   crypto.decrypt_aes_key(key, keyed.encrypted_aes_key))
    (packet,) = file_packets(who, FILE_NAME, b"one packet")
    assert isinstance(request("828", packet), FileReceived)
    confirmed = request("900", CrcOk(client_id=who.client_id, file_name=FILE_NAME))
    assert isinstance(confirmed, Acknowledged)
    assert counts == ROUND_TRIPS
    assert sum(counts.values()) == 5
    assert coordination == COORDINATION_MESSAGES
    released = UploadLease(who.client_id, FILE_NAME.encode(), "another blob")
    assert other.take_upload(released)  # the 828's lease, released unanswered, is free


def _keyed(app: App, session: Session) -> Identity:
    """A client registered, with its key, on ``session``."""
    name = unique_name()
    registered = _request(app, session, Register(client_id=ANY_ID, name=name))
    key = private_key()
    keyed = _request(app, session, SendPublicKey(
        client_id=registered.client_id, name=name, public_key=crypto.export_public_key(key)
    ))
    return Identity(name, registered.client_id, key,
                    crypto.decrypt_aes_key(key, keyed.encrypted_aes_key))


def test_failures_counted_on_another_node_under_the_client_s_key_are_read_with_its_row(
    node, monkeypatch
):
    """The per-key count the read brings is the one under the key the row holds."""
    app, other = node
    session = Session(app, Peer("127.0.0.1", 40000))
    who = _keyed(app, session)
    (packet,) = file_packets(who, FILE_NAME, b"one packet")
    assert isinstance(_request(app, session, packet), FileReceived)
    for _ in range(PER_KEY):  # under another key: not this one's
        other.note_decrypt_failure(who.client_id, b"x" * len(who.aes_key), HOUR)
    waited = Waited(monkeypatch)
    confirm = CrcOk(client_id=who.client_id, file_name=FILE_NAME)
    assert isinstance(_request(app, session, confirm), Acknowledged)
    assert waited.count == 1  # the counts came with the client's row
    for _ in range(PER_KEY):  # under the client's key, on the other node: the key is dead
        other.note_decrypt_failure(who.client_id, who.aes_key, HOUR)
    before = waited.count
    assert isinstance(_request(app, session, confirm), GeneralError)
    assert waited.count - before == 1


def test_an_upload_s_lease_sent_without_waiting_is_held_once_its_first_packet_ends(node):
    app, other = node
    session = Session(app, Peer("127.0.0.1", 40000))
    who = _keyed(app, session)
    first, *_ = file_packets(who, FILE_NAME, bytes(2 * PACKET), packet_size=PACKET)
    session.receive_data(ClientConnection().send(first))
    while session.next_step() not in (Step.NEED_DATA, Step.CLOSE):
        pass
    assert parse_answers(session.data_to_send()) == []  # receiving: more to come
    elsewhere = UploadLease(who.client_id, FILE_NAME.encode(), "another blob")
    assert not other.take_upload(elsewhere)  # this node's, unlapsed
    app.uploads.discard(app.uploads.get(who.client_id, FILE_NAME.encode()), "test over")
    app.coordination.settle()
    assert other.take_upload(elsewhere)  # let go with the upload


def _coordination_messages(app: App) -> int:
    """The messages the node's coordination sent so far, waited for or not."""
    return app.coordination.round_trips + app.coordination.unanswered


def test_a_complete_upload_s_lease_goes_with_its_round_s_commit_not_a_message_of_its_own(node):
    """The fence deletes the lease's row in the round's transaction: the 828 sends the
    coordination its take only, and the lease is free for another node once the round is
    committed."""
    app, other = node
    _warm_up(app)
    session = Session(app, Peer("127.0.0.1", 40000))
    who = _keyed(app, session)
    (packet,) = file_packets(who, FILE_NAME, b"one packet")
    before = _coordination_messages(app)
    assert isinstance(_request(app, session, packet), FileReceived)
    assert _coordination_messages(app) - before == 1  # the take, sent without waiting
    assert app.uploads.leased() == []
    released = UploadLease(who.client_id, FILE_NAME.encode(), "another blob")
    assert other.take_upload(released)


def test_a_complete_upload_s_lease_is_let_go_by_the_coordination_when_its_round_is_lost(
    node, postgres_cluster
):
    """A round rolled back keeps the fence's delete undone: the lease's row stays this node's
    until the coordination lets it go, at once."""
    app, other = node
    session = Session(app, Peer("127.0.0.1", 40000))
    who = _keyed(app, session)
    (packet,) = file_packets(who, FILE_NAME, b"one packet")
    session.receive_data(ClientConnection().send(packet))
    while session.next_step() not in (Step.NEED_DATA, Step.CLOSE):
        pass
    store = app.metadata.store
    store._db.close()  # the round is lost with its connection, before its commit
    with pytest.raises(StorageFault):
        app.end_round(durable=False)
    released = UploadLease(who.client_id, FILE_NAME.encode(), "another blob")
    assert other.take_upload(released)  # let go by the coordination, not held until renewed
