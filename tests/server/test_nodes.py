"""Two nodes sharing one metadata store and one coordination act as one server.

Each node is an App of its own (its connections, uploads, timers) on the
same memory stores, with its own node of one coordination
(server/storage/coordination.py): in memory, and in a throwaway PostgreSQL
(tests/backends/postgres.py), each node on its own connection. Sessions
from the same address may land on either, as after a balancer's failover.
The cases that let time pass run in memory, on a fake clock. The
coordination itself is held to its contract in tests/storage/test_coordination.py.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
import time
from collections.abc import Callable

import pytest
from helpers import (
    ANY_ID,
    Identity,
    bad_padding_packet,
    file_packets,
    private_key,
    unique_name,
)
from test_session import PACKET_SIZE, Clock, answers, feed, packets

from protocol import (
    Acknowledged,
    CrcOk,
    FileReceived,
    GeneralError,
    PublicKeyReceived,
    Register,
    Registered,
    RegistrationFailed,
    SendPublicKey,
    crypto,
)
from server.app import App
from server.errors import StorageFault
from server.limits import Limits
from server.peer import Peer
from server.session import Session
from server.storage.coordination import Coordination, MemoryCoordination, UploadLease
from server.storage.memory import MemoryBlobs, MemoryMetadata
from server.storage.sweep import GARBAGE_GRACE

ADDRESS = "127.0.0.1"


#: Two nodes of one coordination, each made from its node name and the lease time.
NodePair = Callable[[Clock, float], tuple[Coordination, Coordination]]
LIMITS = Limits(max_decryption_failures_per_hour=2)
#: Seconds a terminated backend may take to exit, and between two looks.
BACKEND_EXIT_TIMEOUT = 10.0
BACKEND_EXIT_PAUSE = 0.05


def in_memory(clock: Clock, lease: float) -> tuple[Coordination, Coordination]:
    first = MemoryCoordination(clock, "a", lease=lease)
    return first, first.join("b")


class Nodes:
    """Two Apps on the same stores, each its own node of one coordination, on one fake clock."""

    def __init__(self, limits: Limits, pair: NodePair = in_memory) -> None:
        self.clock = Clock()
        self.metadata = MemoryMetadata()
        self.blobs = MemoryBlobs()
        first, second = pair(self.clock, limits.message_deadline)
        self.a = App.build(self.metadata, self.blobs, limits, clock=self.clock, coordination=first)
        self.b = App.build(self.metadata, self.blobs, limits, clock=self.clock, coordination=second)
        self._ports = iter(range(40000, 60000))

    def session(self, app: App) -> Session:
        return Session(app, Peer(ADDRESS, next(self._ports)))

    def close(self) -> None:
        for app in (self.a, self.b):
            app.uploads.close()
            app.coordination.close()
        self.metadata.close()


def in_postgres(conninfo: str) -> NodePair:
    from server.storage.postgres.coordination import PgCoordination

    def pair(clock: Clock, lease: float) -> tuple[Coordination, Coordination]:
        return PgCoordination(conninfo, "a", lease), PgCoordination(conninfo, "b", lease)

    return pair


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.needed_in_ci)])
def nodes(request: pytest.FixtureRequest):
    """Two nodes, in memory or in PostgreSQL: the cases that need no time to pass."""
    if request.param == "memory":
        made = Nodes(LIMITS)
    else:
        made = Nodes(LIMITS, in_postgres(request.getfixturevalue("postgres_url")))
    yield made
    made.close()


@pytest.fixture
def memory_nodes():
    """Two nodes in memory: their fake clock moves the leases' time too."""
    made = Nodes(LIMITS)
    yield made
    made.close()


def keyed(session: Session) -> Identity:
    """A client registered with a key on ``session`` (then a one-connection client's)."""
    name = unique_name()
    feed(session, Register(client_id=ANY_ID, name=name))
    (registered,) = answers(session)
    key = private_key()
    public = crypto.export_public_key(key)
    feed(session, SendPublicKey(client_id=registered.client_id, name=name, public_key=public))
    (answer,) = answers(session)
    assert isinstance(answer, PublicKeyReceived)
    aes_key = crypto.decrypt_aes_key(key, answer.encrypted_aes_key)
    return Identity(name, registered.client_id, key, aes_key)


def send_per_request(nodes: Nodes, app: App, who: Identity, sent: list | None = None) -> list:
    """A file's packets (``sent``, or :func:`packets`), each on a connection of its own (a
    per-request client); the answers."""
    for packet in packets(who) if sent is None else sent:
        session = nodes.session(app)
        feed(session, packet)
    return answers(session)


def test_a_keyless_registration_open_on_one_node_holds_its_name_on_the_other(nodes):
    name = unique_name()
    holder = nodes.session(nodes.a)
    feed(holder, Register(client_id=ANY_ID, name=name))
    assert isinstance(answers(holder)[0], Registered)
    other = nodes.session(nodes.b)
    feed(other, Register(client_id=ANY_ID, name=name))
    assert isinstance(answers(other)[0], RegistrationFailed)
    nodes.a.connection_closed(holder.peer)  # its connection closes: the name is free again
    again = nodes.session(nodes.b)
    feed(again, Register(client_id=ANY_ID, name=name))
    assert isinstance(answers(again)[0], Registered)


def test_a_node_that_stops_renewing_loses_its_holds_within_a_lease(memory_nodes):
    nodes = memory_nodes
    name = unique_name()
    holder = nodes.session(nodes.a)
    feed(holder, Register(client_id=ANY_ID, name=name))
    answers(holder)
    nodes.clock.now += nodes.a.limits.message_deadline + 1  # node a stopped: no renewal
    other = nodes.session(nodes.b)
    feed(other, Register(client_id=ANY_ID, name=name))
    assert isinstance(answers(other)[0], Registered)


def test_a_renewing_node_keeps_its_holds_past_a_lease(memory_nodes):
    nodes = memory_nodes
    name = unique_name()
    holder = nodes.session(nodes.a)
    feed(holder, Register(client_id=ANY_ID, name=name))
    answers(holder)
    for _ in range(4):  # the loop's timer renews every third of a lease
        nodes.clock.now += nodes.a.limits.message_deadline / 2
        nodes.a._renew_periodically()
    other = nodes.session(nodes.b)
    feed(other, Register(client_id=ANY_ID, name=name))
    assert isinstance(answers(other)[0], RegistrationFailed)


def test_two_nodes_never_receive_the_same_client_and_file_at_once(nodes, caplog):
    sending = nodes.session(nodes.a)
    who = keyed(sending)
    first, *rest = packets(who)
    feed(sending, first)
    assert answers(sending) == []  # receiving on node a
    elsewhere = nodes.session(nodes.b)
    with caplog.at_level(logging.INFO):
        feed(elsewhere, first)
        assert isinstance(answers(elsewhere)[0], GeneralError)
    assert "on another node" in caplog.text
    feed(sending, *rest)
    assert isinstance(answers(sending)[0], FileReceived)  # node a's upload went on
    # a's upload stopped receiving: b may take the name
    assert isinstance(send_per_request(nodes, nodes.b, who)[0], FileReceived)


def test_a_complete_upload_keeps_its_lease_until_its_round_is_over(nodes):
    sending = nodes.session(nodes.a)
    who = keyed(sending)
    feed(sending, *packets(who))  # complete on node a; its round not yet committed
    elsewhere = nodes.session(nodes.b)
    feed(elsewhere, packets(who)[0])
    assert [type(answer) for answer in answers(elsewhere)] == [GeneralError]  # no second first
    # upload of the name
    assert isinstance(answers(sending)[0], FileReceived)  # a's round is over: the row is there
    assert nodes.a.uploads.leased() == []
    assert isinstance(send_per_request(nodes, nodes.b, who)[0], FileReceived)  # a new version


class PostgresNodes(Nodes):
    """Two Apps on one PostgreSQL database, each with its own metadata connection and its
    own coordination connection (as two processes are), and one blob store."""

    def __init__(self, conninfo: str, cluster) -> None:
        from server.storage.postgres.coordination import PgCoordination
        from server.storage.postgres.store import PostgresMetadata

        self.clock = Clock()
        self.blobs = MemoryBlobs()
        self.cluster = cluster
        #: The database's name, for the cluster's own statements.
        self.database = conninfo.rsplit("/", 1)[-1]
        self.stores = [PostgresMetadata.open(conninfo, node=name) for name in ("a", "b")]
        self.a, self.b = (
            App.build(store, self.blobs, LIMITS, clock=self.clock,
                      coordination=PgCoordination(conninfo, store.node, LIMITS.message_deadline))
            for store in self.stores
        )
        self._ports = iter(range(40000, 60000))

    def cut_coordination(self, node: str) -> None:
        """End the node's coordination connection alone (its metadata connection lives)."""
        gone = f"application_name = 'cipherdrop coordination {node}'"
        self.cluster.sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {gone}")
        deadline = time.monotonic() + BACKEND_EXIT_TIMEOUT
        while self.cluster.sql(f"SELECT 1 FROM pg_stat_activity WHERE {gone}"):
            assert time.monotonic() < deadline, "the coordination's backend never exited"
            time.sleep(BACKEND_EXIT_PAUSE)

    def close(self) -> None:
        for app in (self.a, self.b):
            app.uploads.close()
            app.coordination.close()
        for store in self.stores:
            store.close()


@pytest.fixture
def postgres_nodes(postgres_cluster, postgres_url):
    made = PostgresNodes(postgres_url, postgres_cluster)
    yield made
    made.close()


@pytest.mark.needed_in_ci
def test_a_node_that_lost_its_lease_cannot_record_the_upload_another_node_took_over(
    postgres_nodes, caplog
):
    nodes = postgres_nodes
    sending = nodes.session(nodes.a)
    who = keyed(sending)
    first, *rest = packets(who)
    feed(sending, first)
    assert answers(sending) == []  # receiving on node a, its lease a's
    nodes.cut_coordination("a")  # node a's leases are void at once; its store goes on
    retried = file_packets(who, "a.bin", b"the retry through node b " * 100, PACKET_SIZE)
    assert isinstance(send_per_request(nodes, nodes.b, who, retried)[0], FileReceived)
    recorded = nodes.stores[1].file_row(who.client_id, b"a.bin")
    with caplog.at_level(logging.INFO):
        feed(sending, *rest)  # node a receives the rest of its upload
        (answer,) = answers(sending)
    assert isinstance(answer, GeneralError)
    refusal = [line for line in caplog.messages if "lease" in line and "server fault" in line]
    assert len(refusal) == 1 and str(sending.peer) in refusal[0], caplog.messages
    assert nodes.stores[0].file_row(who.client_id, b"a.bin") == recorded  # b's, untouched
    assert recorded is not None and recorded.pending_key is None and recorded.node == "b"
    with nodes.blobs.open(recorded.path_name) as stored:
        assert stored.read() == b"the retry through node b " * 100
    assert not any(blob.key == recorded.blob_key for blob in nodes.blobs.unpublished())


@pytest.mark.needed_in_ci
def test_the_fence_keeps_another_node_from_taking_the_lease_over_until_the_round_is_over(
    postgres_nodes
):
    nodes = postgres_nodes
    sending = nodes.session(nodes.a)
    who = keyed(sending)
    feed(sending, *packets(who))  # complete on node a, its round open: its row not committed
    nodes.cut_coordination("a")
    taken: list[bool] = []
    taking = threading.Thread(target=lambda: taken.append(nodes.b.coordination.take_upload(
        UploadLease(who.client_id, b"a.bin", "b's blob"))))
    taking.start()
    try:
        waiting = "application_name = 'cipherdrop coordination b' AND wait_event_type = 'Lock'"
        deadline = time.monotonic() + BACKEND_EXIT_TIMEOUT
        while not nodes.cluster.sql(f"SELECT 1 FROM pg_stat_activity WHERE {waiting}"):
            assert taking.is_alive() and time.monotonic() < deadline, "b's take never waited"
            time.sleep(BACKEND_EXIT_PAUSE)
        assert isinstance(answers(sending)[0], FileReceived)  # a's round commits
    finally:
        taking.join()
    assert taken == [True]  # then b takes it over, and finds a's row: its upload is a new version
    assert nodes.stores[1].file_row(who.client_id, b"a.bin").node == "a"


@pytest.mark.needed_in_ci
def test_a_node_renews_its_leases_while_its_round_records_an_upload(postgres_nodes, caplog):
    nodes = postgres_nodes
    who = keyed(nodes.session(nodes.a))
    feed(nodes.session(nodes.a), packets(who)[0])  # a.bin receiving (a per-request client)
    *before, last = packets(who, "b.bin")
    for packet in before:
        feed(nodes.session(nodes.a), packet)
    completing = nodes.session(nodes.a)
    feed(completing, last)  # b.bin complete, its round open: its lease's row fenced
    with caplog.at_level(logging.ERROR):
        nodes.a._renew_periodically()
    assert "cannot renew" not in caplog.text
    assert isinstance(answers(completing)[0], FileReceived)
    held = nodes.cluster.sql(
        "SELECT node FROM coordination_leases WHERE kind = 'upload'", nodes.database
    )
    assert held == [("a",)]  # a.bin's, renewed (b.bin's went with its round)


@pytest.mark.needed_in_ci
def test_a_name_completed_in_the_round_may_start_again_on_the_same_node(postgres_nodes):
    nodes = postgres_nodes
    who = keyed(nodes.session(nodes.a))
    *before, last = packets(who)
    for packet in before:
        feed(nodes.session(nodes.a), packet)
    completing = nodes.session(nodes.a)
    feed(completing, last)  # complete, its round open: its lease's row fenced
    again = nodes.session(nodes.a)
    first, *rest = packets(who)
    feed(again, first)  # the name again, in the same round: the lease is a's already
    assert isinstance(answers(completing)[0], FileReceived)
    assert answers(again) == []  # receiving
    assert isinstance(send_per_request(nodes, nodes.a, who, rest)[0], FileReceived)  # pending


@pytest.mark.needed_in_ci
def test_a_registration_held_in_the_round_holds_its_name_on_the_other_node(postgres_nodes):
    # the hold goes with the round's commit on node a's store connection, as the row does
    nodes = postgres_nodes
    name = unique_name()
    holder = nodes.session(nodes.a)
    feed(holder, Register(client_id=ANY_ID, name=name))
    (registered,) = answers(holder)
    assert isinstance(registered, Registered)
    assert nodes.b.coordination.registration_held_elsewhere(registered.client_id)
    other = nodes.session(nodes.b)
    feed(other, Register(client_id=ANY_ID, name=name))
    assert isinstance(answers(other)[0], RegistrationFailed)


@pytest.mark.needed_in_ci
def test_a_connection_closed_before_its_825_s_round_commits_leaves_no_hold(postgres_nodes):
    # the coordination cannot see a hold its round has not committed yet: it is let go once
    # the round is over, and the name is free on the other node at once, not at a renewal
    nodes = postgres_nodes
    name = unique_name()
    closing = nodes.session(nodes.a)
    feed(closing, Register(client_id=ANY_ID, name=name))
    other_name = nodes.session(nodes.a)
    feed(other_name, Register(client_id=ANY_ID, name=unique_name()))  # sends a's hold along
    closing.connection_lost()  # before the round's commit
    nodes.a.end_round(durable=True)
    row = nodes.stores[1].client_by_name(name)
    assert row is not None and row.public_key is None  # the registration was committed
    assert not nodes.b.coordination.registration_held_elsewhere(row.id)
    again = nodes.session(nodes.b)
    feed(again, Register(client_id=ANY_ID, name=name))
    assert isinstance(answers(again)[0], Registered)


@pytest.mark.needed_in_ci
def test_a_node_renews_its_holds_while_its_round_holds_a_new_registration(
    postgres_nodes, caplog
):
    # the renewal would wait for the round's lock on the new hold's row, the round for the
    # loop that waits on the renewal: the hold is renewed once its round is over
    nodes = postgres_nodes
    opened = nodes.session(nodes.a)
    feed(opened, Register(client_id=ANY_ID, name=unique_name()))
    (earlier,) = answers(opened)
    holder = nodes.session(nodes.a)
    feed(holder, Register(client_id=ANY_ID, name=unique_name()))
    feed(nodes.session(nodes.a), Register(client_id=ANY_ID, name=unique_name()))  # a's round
    # is open, the new hold's row in it
    with caplog.at_level(logging.ERROR):
        nodes.a._renew_periodically()
    assert "cannot renew" not in caplog.text
    (registered,) = answers(holder)
    assert isinstance(registered, Registered)
    for client_id in (earlier.client_id, registered.client_id):
        assert nodes.b.coordination.registration_held_elsewhere(client_id)


def test_an_upload_cut_on_one_node_frees_its_name_for_the_other(nodes):
    sending = nodes.session(nodes.a)
    who = keyed(sending)
    first = packets(who)[0]
    feed(sending, first)
    answers(sending)
    nodes.a.connection_closed(sending.peer)
    # The loop's turn that saw the cut ends as every turn does, with a round: its release of
    # the lease, sent without waiting, is then in place for every node (Coordination.settle).
    nodes.a.end_round(durable=False)
    assert isinstance(send_per_request(nodes, nodes.b, who)[0], FileReceived)


def test_the_failure_budget_counts_failures_made_on_both_nodes(nodes):
    who = keyed(nodes.session(nodes.a))
    for app, name in ((nodes.a, "x.bin"), (nodes.b, "y.bin")):  # the hourly budget is 2
        session = nodes.session(app)
        feed(session, bad_padding_packet(who, name))
        assert isinstance(answers(session)[0], GeneralError)
    for app in (nodes.a, nodes.b):  # blocked for the hour on both
        session = nodes.session(app)
        feed(session, *file_packets(who, "z.bin", b"one packet"))
        assert isinstance(answers(session)[0], GeneralError)


def test_only_one_node_runs_the_periodic_purges(nodes, monkeypatch):
    ran: list[str] = []
    for name, app in (("a", nodes.a), ("b", nodes.b)):
        monkeypatch.setattr(app, "purge_lapsed_clients", lambda name=name: ran.append(name) or 0)
    nodes.a._purge_periodically()
    nodes.b._purge_periodically()
    assert ran == ["a"]
    nodes.a.coordination.close()  # node a stops: b takes over
    nodes.b._purge_periodically()
    assert ran == ["a", "b"]


#: The coordination's calls: each one statement, one round trip, in PostgreSQL.
CALLS = (
    "hold_registration", "registration_held_elsewhere", "release_registrations",
    "take_upload", "release_upload", "uploading", "live_blobs", "renew",
    "decrypt_failures", "note_decrypt_failure", "may_run_purges", "purge",
)


class Counting(MemoryCoordination):
    """A node that counts the calls it is asked (each a round trip in PostgreSQL)."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.calls: collections.Counter[str] = collections.Counter()

    def __getattribute__(self, name: str):
        found = super().__getattribute__(name)
        if name in CALLS:
            self.calls[name] += 1
        return found


def counted_app() -> tuple[App, Counting, Session]:
    clock = Clock()
    counting = Counting(clock)
    app = App.build(MemoryMetadata(), MemoryBlobs(), Limits(), clock=clock, coordination=counting)
    return app, counting, Session(app, Peer(ADDRESS, 40000))


def test_a_first_packet_reads_the_failure_counts_once():
    app, counting, session = counted_app()
    who = keyed(session)
    counting.calls.clear()
    feed(session, *file_packets(who, "one.bin", b"one packet"))
    assert isinstance(answers(session)[0], FileReceived)
    assert counting.calls["decrypt_failures"] == 1  # the key's verdict and the hour's
    app.uploads.close()


def test_a_session_makes_one_call_per_decision():
    app, counting, session = counted_app()
    who = keyed(session)  # 825 (the hold), 826 (none: let go at the renewal)
    feed(session, *file_packets(who, "one.bin", b"one packet"))
    feed(session, CrcOk(client_id=who.client_id, file_name="one.bin"))
    assert [type(answer) for answer in answers(session)] == [FileReceived, Acknowledged]
    assert counting.calls == {
        "hold_registration": 1,
        "decrypt_failures": 2,  # the 828's (key and hour), the 900's (key)
        "take_upload": 1,
        "release_upload": 1,
    }
    app.uploads.close()


def test_a_blob_one_node_receives_is_not_garbage_to_the_other_s_sweeper(nodes):
    sending = nodes.session(nodes.a)
    who = keyed(sending)
    first, *rest = packets(who)
    feed(sending, first)
    answers(sending)
    receiving = {blob.key for blob in nodes.blobs.unpublished()}
    assert receiving  # node a's upload, written under its key in the shared blob store
    for _ in range(2):  # found unreferenced, then past the grace: would be deleted
        nodes.b.sweeper.sweep()
        nodes.clock.now += GARBAGE_GRACE + 1
    assert receiving <= {blob.key for blob in nodes.blobs.unpublished()}
    feed(sending, *rest)
    assert isinstance(answers(sending)[0], FileReceived)


class Unreachable(MemoryCoordination):
    """A node whose database is down: every call of the coordination fails."""

    def __getattribute__(self, name: str):
        if name in CALLS:
            def fail(*args, **kwargs):
                raise StorageFault("the database is unreachable")
            return fail
        return super().__getattribute__(name)


def test_a_node_whose_database_is_down_refuses_what_needs_it_and_keeps_serving(caplog):
    clock = Clock()
    app = App.build(MemoryMetadata(), MemoryBlobs(), Limits(), clock=clock,
                    coordination=Unreachable(clock))
    session = Session(app, Peer(ADDRESS, 40000))
    with caplog.at_level(logging.WARNING):
        who = keyed(session)  # the registration is held on this node only
        feed(session, *file_packets(who, "one.bin", b"one packet"))
        assert isinstance(answers(session)[0], GeneralError)  # the budget cannot be read
        app._renew_periodically()
        app._purge_periodically()
        app._sweep_garbage_periodically()
    assert "held on this node only" in caplog.text
    assert "cannot renew" in caplog.text and "cannot delete lapsed clients" in caplog.text
    app.connection_closed(session.peer)
    app.uploads.close()


def test_a_node_is_named_by_its_option_or_by_its_host_and_port():
    from server.__main__ import build_parser, node_name

    assert node_name(None, 1256) == f"{socket.gethostname()}:1256"
    named = build_parser().parse_args(["--node-name", "drop-2"]).node_name
    assert node_name(named, 1256) == "drop-2"
