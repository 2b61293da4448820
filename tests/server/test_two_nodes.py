"""Two ``python -m server`` processes sharing one PostgreSQL act as one server (issue 26, 4-5).

Each node is a real process on its own port with its own data folder
(``--metadata`` the same database, ``--node-name a`` or ``b``) and one
blob folder shared by both (``--blobs file:///…/received_files``: what
docs/OPERATING.md recommends for nodes on one host). The database is a
fresh one of the session's throwaway cluster (tests/backends/postgres.py):
skipped without the binaries, but not in CI. The same rules between nodes
in one process, on a fake clock, are in test_nodes.py.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from helpers import (
    ANY_ID,
    IO_TIMEOUT,
    Identity,
    RawClient,
    ServerProcess,
    bad_padding_packet,
    file_packets,
    make_identity,
    reconnect,
    unique_name,
    upload,
)
from server.__main__ import EXIT_STARTUP_FAILED
from protocol import (
    Acknowledged,
    ConnectionClosed,
    CrcOk,
    FileReceived,
    GeneralError,
    Reconnect,
    Reconnected,
    ReconnectRefused,
    Register,
    Registered,
    RegistrationFailed,
    crypto,
)

pytestmark = pytest.mark.needed_in_ci

#: The blob folder both nodes share, in the test's folder.
SHARED_BLOBS = Path("shared") / "received_files"
#: Seconds a hold or lease lasts in the node-kill test (the server's --message-deadline):
#: far longer than the test waits for anything, so that no lease of it lapses.
LONG_DEADLINE = 600.0
#: Seconds between two attempts at something the other node must take over.
RETRY_PAUSE = 0.1
#: Seconds to wait for a node to see a row another wrote (a lease taken).
SEEN_TIMEOUT = 10.0
#: A file of two packets (the first one leaves the upload open).
TWO_PACKETS = 1024
TWO_PACKET_FILE = b"two packets" * 150
#: Clients uploading on each node while the database restarts.
LOADERS_PER_NODE = 2
#: Seconds the load may take to be served again after the restart (a node tries
#: to connect again every second).
RESUME_TIMEOUT = 30.0
#: The loaders' files are of this many sizes (in steps of their name's length), up to
#: a few packets.
FILE_SIZES = 200
#: Seconds each commit that writes a file row takes, in the restart test: long
#: enough that the restart finds rounds committing.
SLOW_COMMIT = 0.3
#: Seconds a node's commit of a first upload takes while the other node is sent the same
#: file: long enough for the whole of it.
SLOWER_COMMIT = 2.0


@dataclass
class TwoNodes:
    """Two running nodes on one database and one blob folder."""

    a: ServerProcess
    b: ServerProcess
    url: str
    blobs: Path
    #: Starts node "a" or "b" (again) with the pair's flags.
    start: Callable[[str], ServerProcess]

    def rows(self, client_id: bytes) -> dict[bytes, tuple[str, bool]]:
        """The client's files as the database has them: name -> (path name, verified)."""
        with psycopg.connect(self.url) as db:
            return {
                bytes(name): (path, verified) for name, path, verified in db.execute(
                    "SELECT FileName, PathName, Verified FROM files WHERE ID = %s",
                    (client_id,))
            }

    def stored(self, client_id: bytes, file_name: str) -> bytes | None:
        """The content of a stored file, from the shared folder its row names (None: no file)."""
        path_name, _ = self.rows(client_id)[file_name.encode()]
        try:
            return (self.blobs.parent / path_name).read_bytes()
        except FileNotFoundError:
            return None

    def leases(self, kind: str) -> list[str]:
        """The nodes holding a hold or lease of this kind, unlapsed."""
        with psycopg.connect(self.url) as db:
            return [node for (node,) in db.execute(
                "SELECT node FROM coordination_leases WHERE kind = %s AND expires > now()",
                (kind,))]


@pytest.fixture
def start_nodes(tmp_path, server_factory, postgres_url):
    """``start_nodes(*flags)``: nodes a and b, each given ``flags``."""

    def start(*flags: str) -> TwoNodes:
        blobs = tmp_path / SHARED_BLOBS
        blobs.parent.mkdir(exist_ok=True)

        def node(name: str) -> ServerProcess:
            return server_factory(
                "--metadata", postgres_url, "--blobs", blobs.as_uri(), "--node-name", name,
                *flags, data_dir=tmp_path / name,
            )

        return TwoNodes(node("a"), node("b"), postgres_url, blobs, node)

    return start


@pytest.fixture
def nodes(start_nodes) -> TwoNodes:
    return start_nodes()


def confirmed(client: RawClient, who: Identity, file_name: str, data: bytes) -> None:
    """A whole upload answered 1603, then its 900 answered 1604."""
    answer = upload(client, who, file_name, data)
    assert isinstance(answer, FileReceived), answer
    answer = client.request(CrcOk(client_id=who.client_id, file_name=file_name))
    assert isinstance(answer, Acknowledged), answer


def per_request_upload(
    node: ServerProcess, who: Identity, file_name: str, data: bytes, packet_size: int
):
    """A file sent as a per-request client does, each packet on a connection of its own; the
    answer of its last packet, or the refusal of an earlier one."""
    for packet in file_packets(who, file_name, data, packet_size):
        with node.client() as client:
            client.send(packet)
            answer = client.receive()
        if not isinstance(answer, ConnectionClosed):  # a refusal, or the last packet's answer
            return answer
    return answer


def slow_commits(url: str, seconds: float) -> None:
    """Make every commit that wrote a file row take ``seconds`` more: a deferred trigger in the
    database (a test device)."""
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(
            "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS"
            f" $$ BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$")
        db.execute(
            "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT OR UPDATE ON files"
            " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()")


def committing(url: str) -> bool:
    """Whether a commit is in the slowed part (:func:`slow_commits`) now."""
    with psycopg.connect(url) as db:
        return bool(db.execute(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
            " AND datname = current_database()").fetchall())


def wait_until(found, what: str, timeout: float = SEEN_TIMEOUT):
    """Poll ``found()`` until it is true; its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(RETRY_PAUSE)
    raise AssertionError(f"never saw {what}")


def test_a_name_registered_on_one_node_is_taken_on_the_other(nodes):
    keyed, keyless = unique_name(), unique_name()
    with nodes.a.client() as client:  # 825 + 826, then gone: the name is a client's
        make_identity(client, keyed)
    with nodes.b.client() as client:
        assert isinstance(client.request(Register(client_id=ANY_ID, name=keyed)),
                          RegistrationFailed)
    with nodes.a.client() as holder:  # 825 alone, its connection open: held by node a
        assert isinstance(holder.request(Register(client_id=ANY_ID, name=keyless)), Registered)
        with nodes.b.client() as other:
            assert isinstance(other.request(Register(client_id=ANY_ID, name=keyless)),
                              RegistrationFailed)


def test_a_client_registered_on_one_node_reconnects_uploads_and_confirms_on_the_other(nodes):
    with nodes.a.client() as client:
        who = make_identity(client)
    data = b"sent to the other node" * 40
    with nodes.b.client() as client:
        reconnect(client, who)
        confirmed(client, who, "moved.txt", data)
    assert nodes.rows(who.client_id)[b"moved.txt"][1] is True
    assert nodes.stored(who.client_id, "moved.txt") == data


def test_the_failure_budget_counts_failures_made_on_both_nodes(start_nodes):
    nodes = start_nodes("--max-decryption-failures-per-hour", "2")
    with nodes.a.client() as client:
        who = make_identity(client)
    for node, name in ((nodes.a, "x.bin"), (nodes.b, "y.bin")):  # one failure on each
        with node.client() as client:
            client.send(bad_padding_packet(who, name))
            assert isinstance(client.receive(), GeneralError)
    for node in (nodes.a, nodes.b):  # the hour's budget is spent on both
        with node.client() as client:
            assert isinstance(upload(client, who, "z.bin", b"refused"), GeneralError)
    assert "failed decryptions within an hour" in nodes.b.log()
    assert b"z.bin" not in nodes.rows(who.client_id)


def test_two_nodes_never_accept_the_same_client_and_file_at_once(nodes):
    with nodes.a.client() as sending:
        who = make_identity(sending)
        first, second = file_packets(who, "one.bin", TWO_PACKET_FILE, TWO_PACKETS)
        sending.send(first)  # receiving on node a: its lease
        wait_until(lambda: nodes.leases("upload") == ["a"], "node a's upload lease")
        assert isinstance(per_request_upload(nodes.b, who, "one.bin", TWO_PACKET_FILE,
                                             TWO_PACKETS), GeneralError)
        sending.send(second)
        assert isinstance(sending.receive(), FileReceived)  # node a's upload went on
        assert isinstance(sending.request(CrcOk(client_id=who.client_id, file_name="one.bin")),
                          Acknowledged)
    assert "on another node" in nodes.b.log()
    assert nodes.stored(who.client_id, "one.bin") == TWO_PACKET_FILE


def test_a_node_committing_a_first_upload_keeps_its_lease_until_the_row_is_there(nodes):
    with nodes.a.client() as client:
        who = make_identity(client)
    slow_commits(nodes.url, SLOWER_COMMIT)
    first, second = b"the first upload" * 20, b"the same name, sent to the other node"
    with nodes.a.client() as sending:
        for packet in file_packets(who, "same.bin", first):
            sending.send(packet)
        wait_until(lambda: committing(nodes.url), "node a commit the row")
        elsewhere = per_request_upload(nodes.b, who, "same.bin", second, len(second))
        assert isinstance(sending.receive(), FileReceived)
    assert isinstance(elsewhere, GeneralError)  # not a second first upload of the name
    assert nodes.stored(who.client_id, "same.bin") == first


def _backend_gone(url: str, node: str) -> bool:
    """Whether the database has seen the coordination connection of ``node`` end."""
    with psycopg.connect(url) as db:
        return not db.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = %s",
            (f"cipherdrop coordination {node}",)).fetchall()


def test_a_killed_node_loses_nothing_answered_and_its_holds_and_leases_go_at_once(start_nodes):
    nodes = start_nodes("--message-deadline", str(LONG_DEADLINE))
    kept = b"answered before the kill" * 50
    cut = nodes.b.client()
    who = make_identity(cut)
    confirmed(cut, who, "kept.bin", kept)
    cut.send(file_packets(who, "cut.bin", TWO_PACKET_FILE, TWO_PACKETS)[0])
    keyless = unique_name()
    holder = nodes.b.client()
    assert isinstance(holder.request(Register(client_id=ANY_ID, name=keyless)), Registered)
    wait_until(lambda: nodes.leases("upload") == ["b"], "node b's upload lease")
    assert set(nodes.leases("registration")) == {"b"}
    nodes.b.kill()  # mid-upload, holding a keyless registration
    cut.close()
    holder.close()
    # Once the database has seen node b's connection end (a killed process's socket
    # closes), its lease and hold are void: the first attempt on node a is served, long
    # before either could lapse.
    wait_until(lambda: _backend_gone(nodes.url, "b"), "node b's connection end")
    assert nodes.leases("upload") == ["b"]  # still there, unlapsed: void, not gone
    answer = per_request_upload(nodes.a, who, "cut.bin", TWO_PACKET_FILE, TWO_PACKETS)
    assert isinstance(answer, FileReceived), answer
    with nodes.a.client() as client:
        assert isinstance(client.request(Register(client_id=ANY_ID, name=keyless)), Registered)
    with nodes.a.client() as client:
        assert isinstance(client.request(CrcOk(client_id=who.client_id, file_name="cut.bin")),
                          Acknowledged)
    rows = nodes.rows(who.client_id)
    assert rows[b"kept.bin"][1] and rows[b"cut.bin"][1]
    assert nodes.stored(who.client_id, "kept.bin") == kept
    assert nodes.stored(who.client_id, "cut.bin") == TWO_PACKET_FILE


def test_a_node_whose_coordination_connection_alone_ended_cannot_record_what_another_took(
    start_nodes
):
    nodes = start_nodes("--message-deadline", str(LONG_DEADLINE))  # no renewal meanwhile
    retried = b"the client's retry, through node b" * 40
    with nodes.a.client() as sending:
        who = make_identity(sending)
        first, second = file_packets(who, "one.bin", TWO_PACKET_FILE, TWO_PACKETS)
        sending.send(first)  # receiving on node a: its lease
        wait_until(lambda: nodes.leases("upload") == ["a"], "node a's upload lease")
        with psycopg.connect(nodes.url, autocommit=True) as db:  # its metadata's stays
            db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                       " WHERE application_name = 'cipherdrop coordination a'")
        wait_until(lambda: _backend_gone(nodes.url, "a"), "node a's coordination connection end")
        answer = per_request_upload(nodes.b, who, "one.bin", retried, len(retried))
        assert isinstance(answer, FileReceived), answer
        sending.send(second)  # node a receives the rest of its upload
        assert isinstance(sending.receive(), GeneralError)
    assert "no longer holds the upload's lease" in nodes.a.log()
    assert nodes.stored(who.client_id, "one.bin") == retried
    with nodes.b.client() as client:
        assert isinstance(client.request(CrcOk(client_id=who.client_id, file_name="one.bin")),
                          Acknowledged)
    assert nodes.rows(who.client_id)[b"one.bin"][1] is True
    assert nodes.stored(who.client_id, "one.bin") == retried


def test_a_second_node_of_the_same_name_is_refused_at_start(nodes, server_factory, tmp_path):
    twin = server_factory("--metadata", nodes.url, "--blobs", nodes.blobs.as_uri(),
                          "--node-name", "a", data_dir=tmp_path / "twin", wait=False)
    assert twin.process.wait(timeout=IO_TIMEOUT) == EXIT_STARTUP_FAILED
    refusals = [line for line in twin.log().splitlines() if "cannot start" in line]
    assert len(refusals) == 1 and "another node named 'a'" in refusals[0], twin.log()
    assert "Traceback" not in twin.log()
    with nodes.a.client() as client:  # node a serves on
        make_identity(client)


def test_while_the_database_is_down_both_nodes_refuse_and_then_serve_again_by_themselves(
    nodes, postgres_cluster
):
    with nodes.a.client() as client:
        who = make_identity(client)
        confirmed(client, who, "before.bin", b"answered before the outage")
    with postgres_cluster.down():
        for node in (nodes.a, nodes.b):  # the first request finds the connection lost
            with node.client() as client:
                assert isinstance(client.request(Register(client_id=ANY_ID, name=unique_name())),
                                  GeneralError)
            with node.client() as client:
                assert isinstance(upload(client, who, "down.bin", b"refused"), GeneralError)
    for node in (nodes.a, nodes.b):
        def served(node=node) -> bool:
            with node.client() as client:
                answer = upload(client, who, f"after-{node.port}.bin", b"after")
            return isinstance(answer, FileReceived)

        wait_until(served, "the node serve again")
        assert node.process.poll() is None
        log = node.log()
        assert "database: the connection is lost" in log and "Traceback" not in log
    assert set(nodes.rows(who.client_id)) == {
        b"before.bin", f"after-{nodes.a.port}.bin".encode(), f"after-{nodes.b.port}.bin".encode()}
    assert nodes.stored(who.client_id, "before.bin") == b"answered before the outage"


@dataclass
class Loader:
    """A client uploading one new file after another to one node, on a persistent connection
    (827 on each new one), until told to stop; what it was answered."""

    node: ServerProcess
    who: Identity
    stop: threading.Event
    #: File name -> content, for each file answered 1603 (durable, then).
    answered: dict[str, bytes] = field(default_factory=dict)
    #: Those of them whose 900 was answered 1604.
    confirmed: list[str] = field(default_factory=list)
    #: What ended each attempt that did not end in 1604: "refused" (1607, 1606) or "closed".
    ends: list[str] = field(default_factory=list)
    #: Anything else: an unexpected answer, or no answer in time.
    unexpected: list[str] = field(default_factory=list)

    def run(self) -> None:
        files = itertools.count(1)
        while not self.stop.is_set():
            try:
                with self.node.client() as client:
                    self._serve(client, files)
            except TimeoutError:
                self.unexpected.append(f"no answer within {IO_TIMEOUT} s")
            except OSError:  # reset: the connection is gone unanswered
                self.ends.append("closed")
            time.sleep(RETRY_PAUSE)

    def _serve(self, client: RawClient, files: Iterator[int]) -> None:
        """827, then one new file after another, until an answer is not the one hoped for."""
        answer = client.request(Reconnect(client_id=self.who.client_id, name=self.who.name))
        if not self._expected(answer, Reconnected):
            return
        self.who.aes_key = crypto.decrypt_aes_key(self.who.private_key, answer.encrypted_aes_key)
        while not self.stop.is_set():
            number = next(files)
            name = f"{self.node.port}-{number}.bin"
            data = name.encode() * (number % FILE_SIZES + 1)
            if not self._expected(upload(client, self.who, name, data), FileReceived):
                return
            self.answered[name] = data
            answer = client.request(CrcOk(client_id=self.who.client_id, file_name=name))
            if not self._expected(answer, Acknowledged):
                return
            self.confirmed.append(name)

    def _expected(self, answer, wanted: type) -> bool:
        if isinstance(answer, wanted):
            return True
        if isinstance(answer, (GeneralError, ReconnectRefused)):
            self.ends.append("refused")
        elif isinstance(answer, ConnectionClosed):
            self.ends.append("closed")
        else:
            self.unexpected.append(repr(answer))
        return False


def test_the_database_restarted_under_load_loses_nothing_answered(nodes, postgres_cluster):
    slow_commits(nodes.url, SLOW_COMMIT)
    stop = threading.Event()
    loaders = []
    for node in (nodes.a, nodes.b):
        for _ in range(LOADERS_PER_NODE):
            with node.client() as client:
                loaders.append(Loader(node, make_identity(client), stop))
    threads = [threading.Thread(target=loader.run) for loader in loaders]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: all(loader.confirmed for loader in loaders), "every loader served")
        postgres_cluster.restart()  # fast: every connection to it is cut
        before = [len(loader.confirmed) for loader in loaders]
        wait_until(lambda: all(len(loader.confirmed) > count
                               for loader, count in zip(loaders, before)),
                   "every loader served again", RESUME_TIMEOUT)
    finally:
        stop.set()
        for thread in threads:
            thread.join(IO_TIMEOUT * 2)
    assert [loader.unexpected for loader in loaders] == [[]] * len(loaders)
    assert any("refused" in loader.ends for loader in loaders)  # 1607 while it was down
    for node in (nodes.a, nodes.b):
        assert node.process.poll() is None
        log = node.log()
        assert "database: connected again" in log and "Traceback" not in log
    lost = []
    for loader in loaders:  # answered, then lost: none
        rows = nodes.rows(loader.who.client_id)
        for name, data in loader.answered.items():
            row = rows.get(name.encode())
            if row is None or nodes.stored(loader.who.client_id, name) != data:
                lost.append(name)
            elif name in loader.confirmed and not row[1]:
                lost.append(f"{name} (its 900)")
    assert lost == []
    # the restart found rounds committing: they were closed unanswered
    assert "closed unanswered" in nodes.a.log() + nodes.b.log()


def test_a_killed_node_started_again_leaves_the_other_node_s_uploads_alone(nodes):
    stored, newer = b"the stored version" * 10, b"a new version, waiting for its 900" * 10
    with nodes.a.client() as client:
        who = make_identity(client)
        confirmed(client, who, "kept.bin", stored)
    sending = nodes.a.client()
    reconnect(sending, who)
    assert isinstance(upload(sending, who, "kept.bin", newer), FileReceived)  # pending on a
    first, second = file_packets(who, "flight.bin", TWO_PACKET_FILE, TWO_PACKETS)
    sending.send(first)  # receiving on a
    wait_until(lambda: nodes.leases("upload") == ["a"], "node a's upload lease")
    nodes.b.kill()
    nodes.b = nodes.start("b")  # its start-up repair, node a serving
    sending.send(second)
    assert isinstance(sending.receive(), FileReceived)
    for name in ("kept.bin", "flight.bin"):
        assert isinstance(sending.request(CrcOk(client_id=who.client_id, file_name=name)),
                          Acknowledged)
    sending.close()
    assert nodes.stored(who.client_id, "kept.bin") == newer
    assert nodes.stored(who.client_id, "flight.bin") == TWO_PACKET_FILE
