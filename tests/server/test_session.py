"""The session, sans-I/O: bytes in, answers and a close verdict out, on a fake clock.

No socket, selector or loop: each test feeds a :class:`server.session.Session`
the bytes a client would send and reads back what it queues. The stores are
the memory pair (server/storage/memory.py), which tests/storage/ holds to the
same contract as SQLite and the folder. The end-to-end versions of
these rules, over TCP, are in tests/server/test_server_requests.py and
tests/hostile/.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from helpers import ANY_ID, parse_answers, Identity, file_packets, private_key, unique_name
from protocol import (
    Acknowledged,
    ClientConnection,
    CrcAbort,
    CrcOk,
    CrcRetry,
    FileReceived,
    GeneralError,
    PublicKeyReceived,
    Register,
    Registered,
    SendFilePacket,
    SendPublicKey,
    cksum,
    crypto,
)
from protocol.codes import PER_REQUEST_OPENERS, RequestCode
from protocol.editions import EDITION_2024A, EDITIONS
from server.app import App
from server.errors import StorageFault
from server.installs import OWED_PUBLISH_RETRY
from server.limits import Limits
from server.peer import Peer
from server.session import ANSWERED, OWED, UNANSWERED, Action, Model, Session, Step
from server.storage.memory import MemoryBlobs, MemoryMetadata
from server.storage.sweep import GARBAGE_GRACE

SERVER_DIR = Path(__file__).resolve().parents[2] / "server"
DATA = b"session test data " * 200  # three packets of 1024 bytes
PACKET_SIZE = 1024


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """An App on the memory stores and a fake clock; sessions on made-up peers."""

    def __init__(self, limits: Limits, blobs: MemoryBlobs | None = None) -> None:
        self.clock = Clock()
        self.metadata = MemoryMetadata()
        self.blobs = blobs if blobs is not None else MemoryBlobs()
        self.app = App.build(self.metadata, self.blobs, limits, clock=self.clock)
        self._ports = iter(range(40000, 60000))

    def session(self) -> Session:
        return Session(self.app, Peer("127.0.0.1", next(self._ports)))

    def close(self) -> None:
        self.app.uploads.close()
        self.metadata.close()


@pytest.fixture
def harness():
    made = Harness(Limits())
    yield made
    made.close()


def feed(session: Session, *requests, eof: bool = False) -> list[Step]:
    """Send requests' bytes; step until the session needs data or closes."""
    for request in requests:
        session.receive_data(ClientConnection().send(request))
    if eof:
        session.receive_data(b"")
    steps = []
    while True:
        step = session.next_step()
        steps.append(step)
        if step in (Step.NEED_DATA, Step.CLOSE):
            return steps


def answers(session: Session) -> list:
    """The responses the session queued since the last call, once the round ends (as the loop
    ends it: its commits durable, its first uploads installed)."""
    session.release(session.app.end_round(durable=True))
    return parse_answers(session.data_to_send())


def identity(harness: Harness, session: Session | None = None) -> Identity:
    """A client registered with a key (on ``session``, persistent, if given)."""
    session = session or harness.session()
    name = unique_name()
    feed(session, Register(client_id=ANY_ID, name=name))
    (registered,) = answers(session)
    assert isinstance(registered, Registered)
    key = private_key()
    public = crypto.export_public_key(key)
    feed(session, SendPublicKey(client_id=registered.client_id, name=name, public_key=public))
    (answer,) = answers(session)
    assert isinstance(answer, PublicKeyReceived)
    aes_key = crypto.decrypt_aes_key(key, answer.encrypted_aes_key)
    return Identity(name, registered.client_id, key, aes_key)


def packets(who: Identity, name: str = "a.bin"):
    return file_packets(who, name, DATA, PACKET_SIZE)


# -- the table ---------------------------------------------------------------------


def test_the_owed_table_has_a_row_for_every_answered_request_and_the_unanswered_828():
    # Keyed by the request's one name, its event class (as the editions list it).
    requests = {message.event for edition in EDITIONS for message in edition.requests}
    assert set(OWED) == {(request, ANSWERED) for request in requests} | {
        (SendFilePacket, UNANSWERED)
    }
    for key, row in OWED.items():
        assert set(row) == set(Model), key


def test_only_requests_without_a_reply_differ_between_the_models():
    # Rule 2: what a per-request client cannot wait for closes its connection.
    for key, row in OWED.items():
        if row[Model.PER_REQUEST] is Action.CLOSE:
            assert row[Model.PERSISTENT] in (Action.SEND_NOTHING, Action.SEND_UNLESS_FILE_FOLLOWS)
        else:
            assert row[Model.PER_REQUEST] is row[Model.PERSISTENT] is Action.SEND, key


@pytest.mark.parametrize("opener", sorted(PER_REQUEST_OPENERS, key=lambda code: code.value))
def test_the_first_request_fixes_the_model(harness, opener):
    who = identity(harness)
    session = harness.session()
    first = {
        RequestCode.SEND_FILE: packets(who)[0],
        RequestCode.CRC_OK: CrcOk(client_id=who.client_id, file_name="a.bin"),
        RequestCode.CRC_RETRY: CrcRetry(client_id=who.client_id, file_name="a.bin"),
        RequestCode.CRC_ABORT: CrcAbort(client_id=who.client_id, file_name="a.bin"),
    }[opener]
    feed(session, first)
    assert session.model is Model.PER_REQUEST


def test_a_register_opens_a_persistent_session(harness):
    session = harness.session()
    feed(session, Register(client_id=ANY_ID, name=unique_name()))
    assert session.model is Model.PERSISTENT


# -- persistent sessions -------------------------------------------------------------


def test_persistent_packets_are_answered_once_the_file_is_complete(harness):
    session = harness.session()
    who = identity(harness, session)
    first, *middle, last = packets(who)
    feed(session, first, *middle)
    assert answers(session) == []  # SEND_NOTHING
    assert session.verdict is None
    feed(session, last)
    (received,) = answers(session)
    assert isinstance(received, FileReceived) and received.cksum == cksum(DATA)
    feed(session, CrcOk(client_id=who.client_id, file_name="a.bin"))
    assert [type(a) for a in answers(session)] == [Acknowledged]
    row = harness.metadata.file_row(who.client_id, b"a.bin")
    assert row.verified and harness.blobs.open(row.path_name).read() == DATA  # in the stores


def test_901_on_a_persistent_session_waits_for_a_resend(harness):
    session = harness.session()
    who = identity(harness, session)
    feed(session, *packets(who))
    answers(session)
    feed(session, CrcRetry(client_id=who.client_id, file_name="a.bin"))
    assert answers(session) == []  # deferred (variant 8)
    due = harness.clock.now + harness.app.limits.retry_ack_delay
    assert session.answer_due == pytest.approx(due)
    harness.clock.now = due - 0.01
    session.on_time()
    assert answers(session) == []
    harness.clock.now = due
    session.on_time()
    assert [type(a) for a in answers(session)] == [Acknowledged]


def test_a_resend_within_the_delay_cancels_the_1604(harness):
    session = harness.session()
    who = identity(harness, session)
    feed(session, *packets(who))
    answers(session)
    feed(session, CrcRetry(client_id=who.client_id, file_name="a.bin"))
    harness.clock.now += harness.app.limits.retry_ack_delay / 2
    feed(session, *packets(who))
    harness.clock.now += harness.app.limits.retry_ack_delay
    session.on_time()
    assert [type(a) for a in answers(session)] == [FileReceived]  # no 1604 (Rule 4)


def test_another_request_sends_the_deferred_1604_first(harness):
    session = harness.session()
    who = identity(harness, session)
    feed(session, *packets(who))
    answers(session)
    feed(
        session,
        CrcRetry(client_id=who.client_id, file_name="a.bin"),
        CrcAbort(client_id=who.client_id, file_name="a.bin"),
    )
    assert [type(a) for a in answers(session)] == [Acknowledged, Acknowledged]


def test_the_peers_close_sends_the_deferred_1604(harness):
    session = harness.session()
    who = identity(harness, session)
    feed(session, *packets(who))
    answers(session)
    steps = feed(session, CrcRetry(client_id=who.client_id, file_name="a.bin"), eof=True)
    assert steps[-1] is Step.CLOSE and session.verdict.reason == "peer closed"
    assert [type(a) for a in answers(session)] == [Acknowledged]


def _pending_version(harness: Harness) -> tuple[Session, Identity]:
    """A stored, verified a.bin and a later version of it, pending (its row's second pointer)."""
    session = harness.session()
    who = identity(harness, session)
    feed(session, *packets(who))
    answers(session)
    feed(session, CrcOk(client_id=who.client_id, file_name="a.bin"))
    answers(session)
    feed(session, *file_packets(who, "a.bin", DATA[::-1], PACKET_SIZE))
    (received,) = answers(session)
    assert isinstance(received, FileReceived)
    assert harness.metadata.file_row(who.client_id, b"a.bin").pending_key is not None
    return session, who


@pytest.mark.parametrize("ending", ["901", "902", "timeout"])
def test_a_discarded_pending_version_leaves_no_pointer_at_it(harness, ending):
    session, who = _pending_version(harness)
    if ending == "901":
        feed(session, CrcRetry(client_id=who.client_id, file_name="a.bin"))
    elif ending == "902":
        feed(session, CrcAbort(client_id=who.client_id, file_name="a.bin"))
    else:
        harness.clock.now += harness.app.limits.idle_timeout + 1
        for timer in harness.app.timers.due():
            if timer.callback is not None:
                timer.callback()
    answers(session)
    row = harness.metadata.file_row(who.client_id, b"a.bin")
    assert row.pending_key is None and row.verified
    assert harness.blobs.open(row.path_name).read() == DATA  # the stored version stays
    assert harness.metadata.referenced_keys(_unpublished_keys(harness)) == set()  # garbage
    _fire_timers_after(harness, GARBAGE_GRACE)
    _fire_timers_after(harness, GARBAGE_GRACE)
    assert harness.blobs.unpublished() == []  # swept by the App's sweeper


def _unpublished_keys(harness: Harness) -> set[str]:
    return {blob.key for blob in harness.blobs.unpublished()}


def _fire_timers_after(harness: Harness, delay: float) -> None:
    """Run the timers due ``delay`` later, then end the round, as the loop does after them
    (an owed publish retried is the round's)."""
    harness.clock.now += delay
    for timer in harness.app.timers.due():
        if timer.callback is not None:
            timer.callback()
    harness.app.end_round(durable=False)


def _fail_publishes(monkeypatch, times: int) -> None:
    """The memory store's next ``times`` publishes fail as a disk would."""
    real_publish = MemoryBlobs.publish
    failing = {"left": times}

    def publish(self, key, path_name):
        if failing["left"]:
            failing["left"] -= 1
            raise StorageFault("cannot install a received file: Input/output error")
        real_publish(self, key, path_name)

    monkeypatch.setattr(MemoryBlobs, "publish", publish)


def test_a_confirmed_version_whose_publish_failed_is_published_later_without_a_900(
    harness, monkeypatch
):
    session, who = _pending_version(harness)
    _fail_publishes(monkeypatch, 2)
    feed(session, CrcOk(client_id=who.client_id, file_name="a.bin"))
    (answer,) = answers(session)
    assert isinstance(answer, GeneralError)  # 1607: the client never sends the 900 again
    row = harness.metadata.file_row(who.client_id, b"a.bin")
    assert harness.blobs.open(row.path_name).read() == DATA  # the row's version is not there
    _fire_timers_after(harness, OWED_PUBLISH_RETRY)  # fails again: owed still
    assert harness.blobs.open(row.path_name).read() == DATA
    _fire_timers_after(harness, OWED_PUBLISH_RETRY)
    assert harness.blobs.open(row.path_name).read() == DATA[::-1]
    assert harness.blobs.unpublished() == []


def test_an_owed_publish_replaced_by_a_later_version_is_not_published(harness, monkeypatch):
    session, who = _pending_version(harness)
    _fail_publishes(monkeypatch, 1)
    feed(session, CrcOk(client_id=who.client_id, file_name="a.bin"))
    answers(session)
    third = b"third version " * 100
    feed(session, *file_packets(who, "a.bin", third, PACKET_SIZE))
    answers(session)
    feed(session, CrcOk(client_id=who.client_id, file_name="a.bin"))
    assert [type(a) for a in answers(session)] == [Acknowledged]
    _fire_timers_after(harness, OWED_PUBLISH_RETRY)
    row = harness.metadata.file_row(who.client_id, b"a.bin")
    assert harness.blobs.open(row.path_name).read() == third
    assert harness.blobs.unpublished() != []  # the replaced version: garbage, in its grace
    _fire_timers_after(harness, GARBAGE_GRACE)
    _fire_timers_after(harness, GARBAGE_GRACE)
    assert harness.blobs.unpublished() == []  # swept by the App's sweeper


def test_a_store_that_cannot_count_its_room_admits_uploads_without_the_disk_checks():
    harness = Harness(Limits(), MemoryBlobs(capacity=None))
    try:
        session = harness.session()
        who = identity(harness, session)
        feed(session, *packets(who))
        (received,) = answers(session)
        assert isinstance(received, FileReceived) and received.cksum == cksum(DATA)
    finally:
        harness.close()


def test_a_cut_upload_leaves_garbage_that_the_sweeper_deletes_after_its_grace(harness):
    session = harness.session()
    who = identity(harness, session)
    first, *_ = packets(who)
    feed(session, first)
    answers(session)
    (key,) = harness.app.uploads.live_blob_keys()
    session.connection_lost()  # cut after its first packet: the upload is discarded
    assert harness.app.uploads.live_blob_keys() == set()
    assert _unpublished_keys(harness) == {key}  # garbage: nothing waited for it to go
    assert harness.metadata.referenced_keys([key]) == set()
    _fire_timers_after(harness, GARBAGE_GRACE)  # found unreferenced: its grace begins
    assert _unpublished_keys(harness) == {key}
    _fire_timers_after(harness, GARBAGE_GRACE)
    assert harness.blobs.unpublished() == []


def test_first_uploads_of_names_equal_but_for_case_in_one_round_get_distinct_path_names(harness):
    session = harness.session()
    who = identity(harness, session)
    feed(session, *file_packets(who, "a.txt", DATA, len(DATA) + 1024),
         *file_packets(who, "A.TXT", DATA[::-1], len(DATA) + 1024))
    assert [type(answer) for answer in answers(session)] == [FileReceived, FileReceived]
    rows = [harness.metadata.file_row(who.client_id, name) for name in (b"a.txt", b"A.TXT")]
    assert rows[0].path_name.lower() != rows[1].path_name.lower()  # one round: the store held it
    assert [harness.blobs.open(row.path_name).read() for row in rows] == [DATA, DATA[::-1]]


def test_the_sweeper_leaves_the_blob_of_an_upload_in_flight(harness):
    session = harness.session()
    who = identity(harness, session)
    first, *rest = packets(who)
    feed(session, first)
    answers(session)
    sweeper = harness.app.sweeper
    sweeper.sweep()
    harness.clock.now += GARBAGE_GRACE
    assert sweeper.sweep() == 0
    feed(session, *rest)
    (received,) = answers(session)
    assert isinstance(received, FileReceived) and received.cksum == cksum(DATA)


# -- per-request sessions ---------------------------------------------------------------


# -- the first 1025 (Rule 6) -----------------------------------------------------------


def _register_1025(name: str, cut: int | None = None) -> bytes:
    data = ClientConnection(EDITION_2024A).send(Register(client_id=ANY_ID, name=name))
    return data if cut is None else data[:cut]


def test_a_first_1025_is_answered_with_the_2100_header_and_its_id_after_the_hold(harness):
    session = harness.session()
    session.receive_data(_register_1025(unique_name()))
    assert session.next_step() is Step.REQUEST
    header = session.data_to_send()
    assert header[1:] == (2100).to_bytes(2, "little") + (16).to_bytes(4, "little")
    due = harness.clock.now + harness.app.limits.first_register_hold
    assert session.answer_due == pytest.approx(due)
    harness.clock.now = due - 0.01
    session.on_time()
    assert session.data_to_send() == b""
    harness.clock.now = due
    session.on_time()
    client_id = session.data_to_send()
    assert len(client_id) == 16 and session.answer_due is None
    assert harness.metadata.client_by_id(client_id).edition == "2023C"


def test_a_request_within_the_hold_is_a_2024a_client_and_the_id_is_never_sent(harness):
    session = harness.session()
    name = unique_name()
    session.receive_data(_register_1025(name))
    session.next_step()
    first_header = session.data_to_send()
    session.receive_data(_register_1025(name))  # it read the header alone, and asks again
    assert session.next_step() is Step.REQUEST
    answer = session.data_to_send()
    assert (first_header[1:3], answer[1:3], len(answer)) == (
        (2100).to_bytes(2, "little"), (1600).to_bytes(2, "little"), 7 + 16
    )
    harness.clock.now += 10 * harness.app.limits.first_register_hold
    session.on_time()
    assert session.data_to_send() == b"" and session.answer_due is None
    assert harness.metadata.client_by_name(name).edition == "2024A"


def test_a_request_begun_when_the_hold_ends_is_a_2024a_client(harness):
    # The id never goes out behind a client that did not wait for it.
    session = harness.session()
    name = unique_name()
    session.receive_data(_register_1025(name))
    session.next_step()
    session.data_to_send()
    session.receive_data(_register_1025(name, cut=30))
    assert session.next_step() is Step.NEED_DATA
    harness.clock.now += harness.app.limits.first_register_hold
    session.on_time()
    assert session.data_to_send() == b""
    session.receive_data(_register_1025(name)[30:])
    session.next_step()
    assert session.data_to_send()[1:3] == (1600).to_bytes(2, "little")


def test_per_request_packets_close_without_a_reply_until_the_last(harness):
    who = identity(harness)
    *early, last = packets(who)
    for packet in early:
        session = harness.session()
        steps = feed(session, packet)
        assert steps[-1] is Step.CLOSE
        assert session.verdict.reason == "per-request connection, request without reply"
        assert answers(session) == []
        session.connection_lost()
    session = harness.session()
    feed(session, last)
    (received,) = answers(session)
    assert isinstance(received, FileReceived) and received.cksum == cksum(DATA)
    assert session.verdict is None  # answered: the client closes


@pytest.mark.parametrize("per_request", [False, True])
def test_a_refused_attempt_is_answered_once_and_its_last_packet_is_owed_nothing(per_request):
    # The first packet is over the quota: 1607 once; the rest of the attempt,
    # its last packet included (final, logged at INFO), goes unanswered.
    harness = Harness(Limits(max_bytes_per_client=len(DATA) // 2))
    try:
        session = harness.session()
        who = identity(harness, None if per_request else session)  # Rule 1
        first, *rest = packets(who)
        feed(session, first)
        assert [type(a) for a in answers(session)] == [GeneralError]
        assert session.model is (Model.PER_REQUEST if per_request else Model.PERSISTENT)
        for packet in rest:
            if per_request:
                session.connection_lost()
                session = harness.session()
            steps = feed(session, packet)
            assert answers(session) == []
            assert (steps[-1] is Step.CLOSE) is per_request
    finally:
        harness.close()


def test_901_on_a_per_request_session_closes_at_once(harness):
    who = identity(harness)
    for packet in packets(who):
        session = harness.session()
        feed(session, packet)
    assert [type(a) for a in answers(session)] == [FileReceived]
    retry = harness.session()
    steps = feed(retry, CrcRetry(client_id=who.client_id, file_name="a.bin"))
    assert steps[-1] is Step.CLOSE and answers(retry) == []


# -- refusals and faults (Rule 3) ---------------------------------------------------------


def test_refusals_are_answered_and_close_at_max_errors():
    harness = Harness(Limits(max_errors=3))
    try:
        session = harness.session()
        who = identity(harness, session)
        unknown = CrcOk(client_id=who.client_id, file_name="never-sent.bin")
        for number in range(1, 4):
            steps = feed(session, unknown)
            assert [type(a) for a in answers(session)] == [GeneralError]
            assert session.errors == number
        assert steps[-1] is Step.CLOSE and session.verdict.reason == "3 errors"
    finally:
        harness.close()


def test_a_refusal_does_not_restart_the_idle_timer(harness):
    session = harness.session()
    who = identity(harness, session)
    feed(session, *packets(who))
    answers(session)
    idle_end, why = session.deadline()
    assert why == "idle"
    harness.clock.now += 10
    feed(session, CrcOk(client_id=who.client_id, file_name="never-sent.bin"))
    assert session.deadline() == (idle_end, "idle")
    feed(session, CrcOk(client_id=who.client_id, file_name="a.bin"))
    assert session.deadline()[0] == idle_end + 10  # a request that succeeded


def test_a_broken_header_is_answered_then_closes(harness):
    session = harness.session()
    header = ANY_ID + bytes([3]) + (999).to_bytes(2, "little") + (2**31).to_bytes(4, "little")
    session.receive_data(header)
    assert session.next_step() is Step.CLOSE
    assert [type(a) for a in answers(session)] == [GeneralError]
    assert session.verdict.reason == "protocol error"


def test_an_unexpected_error_is_answered_1607_and_closes(harness, caplog):
    session = harness.session()
    feed(session, Register(client_id=ANY_ID, name=unique_name()))
    answers(session)
    try:
        raise ZeroDivisionError("a bug")
    except ZeroDivisionError:
        session.fail()
    assert [type(a) for a in answers(session)] == [GeneralError]
    assert session.verdict is not None
    assert "unexpected error" in caplog.text and "ZeroDivisionError" in caplog.text


# -- deadlines (Rule 5) ---------------------------------------------------------------------


def test_deadlines_follow_the_message(harness):
    limits = harness.app.limits
    session = harness.session()
    opened = harness.clock.now
    assert session.deadline() == (opened + limits.message_deadline, "no request")
    harness.clock.now += 1
    request = ClientConnection().send(Register(client_id=ANY_ID, name=unique_name()))
    session.receive_data(request[:5])
    assert session.next_step() is Step.NEED_DATA
    assert session.deadline() == (opened + 1 + limits.message_deadline, "message not completed in time")
    harness.clock.now += 1
    session.receive_data(request[5:])
    feed(session)
    assert session.deadline() == (harness.clock.now + limits.idle_timeout, "idle")


def test_the_idle_time_runs_from_the_release_of_the_answer_a_request_waited_for(harness):
    # a round's commit slower than the idle timeout: the peer waited for its answer, it
    # was not idle; a refusal's answer restarts nothing (Rule 3)
    limits = harness.app.limits
    session = harness.session()
    who = identity(harness, session)
    feed(session, Register(client_id=ANY_ID, name=unique_name()))
    harness.clock.now += 2 * limits.idle_timeout  # the round's commit
    answers(session)
    released = harness.clock.now
    assert session.deadline() == (released + limits.idle_timeout, "idle")
    feed(session, CrcOk(client_id=who.client_id, file_name="never-sent.bin"))
    harness.clock.now += limits.idle_timeout / 2
    assert [type(a) for a in answers(session)] == [GeneralError]
    assert session.deadline() == (released + limits.idle_timeout, "idle")


def test_the_idle_deadline_waits_while_an_answer_waits_for_the_servers_storage(harness):
    # a first upload's 1603 held while the blob store is still at work on it (a publish in
    # the blob port's worker): the peer waits for us, no idle deadline; a message it begins
    # meanwhile has its own deadline
    limits = harness.app.limits
    session = harness.session()
    who = identity(harness, session)
    feed(session, *packets(who))
    upload = harness.app.uploads.completed(who.client_id, b"a.bin")
    ticket = harness.app.uploads.installs.awaiting_install(upload)
    assert ticket is not None
    session.release(harness.app.end_round(durable=True), pending={ticket})
    assert session.data_to_send() == b"" and session.holds_answers
    assert session.deadline()[0] == float("inf")
    harness.clock.now += 2 * limits.idle_timeout  # the store is slow
    assert session.deadline()[0] > harness.clock.now
    begun = harness.clock.now
    session.receive_data(ClientConnection().send(CrcOk(who.client_id, "a.bin"))[:5])
    assert session.next_step() is Step.NEED_DATA
    assert session.deadline() == (begun + limits.message_deadline, "message not completed in time")
    session.release(set(), pending=set())
    released = harness.clock.now
    assert [type(a) for a in parse_answers(session.data_to_send())] == [FileReceived]
    assert session.deadline()[0] == begun + limits.message_deadline  # its message still
    session.receive_data(ClientConnection().send(CrcOk(who.client_id, "a.bin"))[5:])
    feed(session)
    assert session.deadline() == (released + limits.idle_timeout, "idle")


# -- what the session does not hold -----------------------------------------------------------


def test_the_session_holds_no_socket_selector_or_descriptor():
    source = (SERVER_DIR / "session.py").read_text()
    assert not re.search(r"^\s*(import|from)\s+(socket|selectors|select|os)\b", source, re.M)


def test_nothing_outside_storage_imports_sqlite3():
    importers = [
        path.relative_to(SERVER_DIR).as_posix()
        for path in SERVER_DIR.rglob("*.py")
        if re.search(r"^\s*(import|from)\s+sqlite3\b", path.read_text(), re.M)
    ]
    assert importers and all(name.startswith("storage/") for name in importers), importers


# -- the request's log line ------------------------------------------------------------------


def test_a_request_line_is_not_formatted_when_its_level_is_off(harness, caplog, monkeypatch):
    session = harness.session()
    calls = []
    real = Session._answer_code
    monkeypatch.setattr(Session, "_answer_code", lambda self, r: (calls.append(r), real(self, r))[1])
    caplog.set_level(logging.WARNING, logger="server.session")
    feed(session, Register(client_id=ANY_ID, name=unique_name()))
    assert [type(a) for a in answers(session)] == [Registered]
    assert calls == []  # no code text made for a line nobody writes
    caplog.set_level(logging.INFO, logger="server.session")
    feed(session, CrcOk(client_id=ANY_ID, file_name="none.bin"))  # refused: 1607
    assert [type(a) for a in answers(session)] == [GeneralError]
    assert len(calls) == 1
    assert re.search(r" 900 0{32} -> 1607 refused \(in \d+ B", caplog.text)


def test_the_disk_reservation_of_an_upload_counts_against_its_address_group(harness):
    from server.peer import Peer

    session = Session(harness.app, Peer("2001:db8:1:2::1", 40000))
    who = identity(harness, session)
    first, *_ = packets(who)
    feed(session, first)  # the upload is in progress: its worst case is reserved
    reserved = harness.app.uploads.reserved_bytes()
    assert reserved > 0
    # the same /64 is the same address for the disk share; the next /64 is not
    assert harness.app.uploads.reserved_bytes(Peer("2001:db8:1:2::ffff", 1).group) == reserved
    assert harness.app.uploads.reserved_bytes(Peer("2001:db8:1:3::1", 1).group) == 0
