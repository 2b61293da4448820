"""The client cap (max_clients) and each address's share of it; clients that lapse.

The counts are kept with the rows; lapsed clients are purged when a
registration meets the cap or a share.

The cost of a registration at the cap is measured in SQLite virtual-machine
steps (a progress handler), not in seconds: it must not grow with the number
of clients.
"""

from __future__ import annotations

import pytest
from backends.postgres import METADATA_BACKENDS, waiting_for_a_lock
from helpers import ANY_ID, unique_name
from timing_helpers import HANG_TIMEOUT

from protocol import Register, Registered, RegistrationFailed
from server import handlers
from server.app import App
from server.limits import Limits
from server.peer import Peer, Speaking
from server.rate import RATE_WINDOW
from server.storage.folder import FolderBlobs
from server.storage.postgres.store import PostgresMetadata
from server.storage.sqlite import DB_NAME, SqliteMetadata

KEYED = b"k" * 160
KEY_WINDOW = 3600.0
ANYONE = Peer("127.51.100.1", 1)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _app(tmp_path, **limits) -> tuple[App, FakeClock]:
    limits.setdefault("max_client_share_per_address", 1)
    made = Limits(key_window=KEY_WINDOW, **limits)
    db = SqliteMetadata.open(tmp_path / DB_NAME)
    app = App.build(db, FolderBlobs(tmp_path), made)
    clock = FakeClock()
    app.wall_clock = clock
    return app, clock


def _add(app: App, numbers: range, keyed: bool) -> None:
    with app.metadata.transaction():
        for number in numbers:
            client_id = number.to_bytes(16, "big")
            app.metadata.insert_client(client_id, f"c{number}", app.wall_clock(), "v3", "127.0.2.1")
            app.metadata.set_binding(client_id, "127.0.2.1", app.wall_clock())
            if keyed:
                app.metadata.set_keys(client_id, KEYED, bytes(32), app.wall_clock())
    app.metadata.finish_round(durable=False)


def _steps(app: App, action) -> int:
    """SQLite virtual-machine steps ``action`` takes on the app's database."""
    counted = [0]

    def count() -> int:
        counted[0] += 1
        return 0

    connection = app.metadata.store._db  # the store's own connection: its statements are counted
    connection.set_progress_handler(count, 1)
    try:
        action()
    finally:
        connection.set_progress_handler(None, 1)
    return counted[0]


def test_the_count_is_kept_with_the_rows(tmp_path):
    app, _ = _app(tmp_path, max_clients=10)
    _add(app, range(3), keyed=True)
    assert app.metadata.count_clients() == 3
    with app.metadata.transaction():
        app.metadata.forget_client((1).to_bytes(16, "big"))
    assert app.metadata.count_clients() == 2
    try:
        with app.metadata.transaction():
            app.metadata.insert_client(b"x" * 16, "rolled back", 0.0, "v3")
            raise RuntimeError
    except RuntimeError:
        pass
    assert app.metadata.count_clients() == 2  # a request's rollback takes its count back
    app.metadata.close()
    reopened = SqliteMetadata.open(tmp_path / DB_NAME, 1.0)
    assert reopened.count_clients() == 2
    reopened.close()


def test_at_the_cap_lapsed_registrations_stop_counting_at_once(tmp_path):
    app, clock = _app(tmp_path, max_clients=3)
    _add(app, range(1), keyed=True)
    _add(app, range(1, 3), keyed=False)
    assert handlers._why_no_room(app, ANYONE, None)
    clock.now += KEY_WINDOW + 1  # the keyless two lapsed; the periodic purge has not run
    assert not handlers._why_no_room(app, ANYONE, None)
    assert app.metadata.count_clients() == 1


def test_a_refusal_at_the_cap_costs_the_same_however_many_clients(tmp_path):
    def refusal_steps(clients: int, folder) -> int:
        folder.mkdir()
        app, _ = _app(folder, max_clients=clients)
        _add(app, range(clients), keyed=True)
        assert handlers._why_no_room(app, ANYONE, None)
        steps = min(_steps(app, lambda: handlers._why_no_room(app, ANYONE, None)) for _ in range(3))
        app.metadata.close()
        return steps

    few = refusal_steps(100, tmp_path / "few")
    many = refusal_steps(10_000, tmp_path / "many")
    # a scan of the rows would take 100 times the steps; an index lookup, a few more
    assert many < 2 * few, (few, many)


def _register(app: App, peer: Peer, name: str | None = None) -> bool:
    event = Register(client_id=ANY_ID, name=name or unique_name())
    answer = handlers.register(app, peer, event, Speaking()).response
    assert isinstance(answer, (Registered, RegistrationFailed))
    return isinstance(answer, Registered)


def test_one_address_gets_its_share_of_the_cap_and_no_more(tmp_path):
    app, _ = _app(tmp_path, max_clients=30, max_client_share_per_address=0.1)
    assert app.client_share == 3
    one, same_64, next_64 = (Peer(a, 1) for a in ("2001:db8::1", "2001:db8::ffff", "2001:db8:0:1::1"))
    assert [_register(app, one) for _ in range(3)] == [True] * 3
    assert not _register(app, one) and not _register(app, same_64)  # its /64 is one address
    assert _register(app, next_64) and _register(app, ANYONE)
    app.metadata.close()
    # the registering address is stored: the share holds after a restart
    reopened, _ = _app(tmp_path, max_clients=30, max_client_share_per_address=0.1)
    assert not _register(reopened, Peer("2001:db8::2", 1))
    assert _register(reopened, Peer("2001:db8:0:2::1", 1))
    reopened.metadata.close()


def test_the_smallest_share_is_one_client(tmp_path):
    app, _ = _app(tmp_path, max_clients=30, max_client_share_per_address=0.01)
    assert app.client_share == 1
    assert _register(app, ANYONE) and not _register(app, ANYONE)
    app.metadata.close()


def test_registering_the_own_keyless_name_again_fits_in_a_full_share(tmp_path):
    app, _ = _app(tmp_path, max_clients=30, max_client_share_per_address=0.01)
    name = unique_name()
    assert _register(app, ANYONE, name)
    assert _register(app, ANYONE, name)  # it replaces its own registration: no new client
    assert app.metadata.count_clients() == 1
    app.metadata.close()


def test_keyed_clients_that_never_stored_a_file_lapse(tmp_path):
    lapse = 7 * 24 * 3600.0
    app, clock = _app(tmp_path, max_clients=30, max_client_share_per_address=0.1,
                      unused_client_lapse=lapse)
    _add(app, range(3), keyed=True)  # all from 127.0.2.1: its share is full
    with app.metadata.transaction():
        app.metadata.upsert_file((0).to_bytes(16, "big"), b"kept.bin", "p")  # this one stored a file
    owner = Peer("127.0.2.1", 1)
    assert not _register(app, owner)
    clock.now += lapse / 2
    with app.metadata.transaction():  # a new key restarts its time
        app.metadata.set_binding((1).to_bytes(16, "big"), "127.0.2.1", clock.now)
    clock.now += lapse / 2 + 1
    assert _register(app, owner)  # client 2 lapsed: purged at the share, room again
    assert app.metadata.client_by_id((2).to_bytes(16, "big")) is None
    assert app.metadata.client_by_id((0).to_bytes(16, "big")) is not None
    assert app.metadata.client_by_id((1).to_bytes(16, "big")) is not None
    assert not _register(app, owner)
    app.metadata.close()


def test_unused_clients_do_not_lapse_with_a_lapse_of_zero(tmp_path):
    app, clock = _app(tmp_path, max_clients=3, unused_client_lapse=0)
    _add(app, range(3), keyed=True)
    clock.now += 10**9
    assert app.purge_lapsed_clients() == 0
    assert app.metadata.count_clients() == 3
    app.metadata.close()


# -- an 825's answers, the same on every store ----------------------------------------------------


@pytest.fixture(params=METADATA_BACKENDS)
def any_store(request, tmp_path):
    """A metadata store of each kind the server takes (PostgreSQL checks the cap and the
    share in the statement that registers)."""
    if request.param == "sqlite":
        return SqliteMetadata.open(tmp_path / DB_NAME)
    return PostgresMetadata.open(request.getfixturevalue("postgres_url"))


def _answer(app: App, peer: Peer, name: str) -> str:
    """An 825's outcome as its log line tells it."""
    outcome = handlers.register(app, peer, Register(client_id=ANY_ID, name=name), Speaking())
    app.metadata.finish_round(durable=False)
    if isinstance(outcome.response, Registered):
        return f"registered{': ' + outcome.detail if outcome.detail else ''}"
    assert isinstance(outcome.response, RegistrationFailed) and outcome.refused
    return outcome.detail


def test_an_825_is_answered_the_same_on_every_store(tmp_path, any_store):
    """Each rule of an 825 in its order (the name, the cap, the address's share, the rate),
    and the rate counting only the registrations the other rules let through."""
    limits = Limits(key_window=KEY_WINDOW, max_clients=6, max_client_share_per_address=0.5,
                    registrations_per_minute=2)
    clock = FakeClock()
    app = App.build(any_store, FolderBlobs(tmp_path), limits, clock=clock)
    app.wall_clock = clock
    one, one_again, two, three, four = (
        Peer(address, 1) for address in
        ("127.51.100.1", "127.51.100.1", "127.51.100.2", "127.51.100.3", "127.51.100.4")
    )
    _add(app, range(1), keyed=True)  # c0, keyed, from 127.0.2.1
    answers = [
        _answer(app, one, "a"),
        _answer(app, two, "a"),
        _answer(app, one_again, "a"),
        _answer(app, one, "a"),  # its own keyless name again: replaced, counted by the rate
        _answer(app, one, "b"),
        _answer(app, two, "c0"),
        _answer(app, two, "b"),
    ]
    clock.now += RATE_WINDOW + 1
    answers += [
        _answer(app, one, "b"),  # two's, within the key window
        _answer(app, one, "c"),
        _answer(app, one, "d"),
        _answer(app, one, "e"),  # its share of 6 is 3
        _answer(app, three, "e"),  # the sixth client
        _answer(app, four, "f"),
    ]
    assert answers == [
        "registered",
        "name being registered from another address",
        "name being registered by another connection",
        "registered: keyless registration replaced",  # the refusals above were not counted
        "registration rate limit for this address",
        "name taken",
        "registered",
        "name being registered from another address",
        "registered",
        "registered",
        "this address's share of the client limit reached",
        "registered",
        "client limit reached",
    ]
    assert app.metadata.count_clients() == 6
    any_store.close()


# -- the registration rate: every stale address is forgotten --------------------------------------


def test_the_rate_limiter_forgets_every_stale_address():
    from server.rate import PURGE_PER_CALL, RATE_WINDOW, RegistrationLimiter

    clock = FakeClock()
    limiter = RegistrationLimiter(per_minute=2, clock=clock)
    for number in range(50_000):
        assert limiter.allow(f"127.{10 + (number >> 16)}.{(number >> 8) & 255}.{number & 255}")
    assert len(limiter) == 50_000
    clock.now += RATE_WINDOW / 2
    assert limiter.allow("127.0.2.1")
    assert len(limiter) == 50_001  # all still within the window
    clock.now += RATE_WINDOW * 60  # an hour later
    assert limiter.allow("127.0.2.2")
    # one call forgets a bounded number of stale addresses, never all 50,001 at once
    assert len(limiter) == 50_001 - PURGE_PER_CALL + 1
    for number in range(3, 3 + 50_000 // PURGE_PER_CALL):
        assert limiter.allow(f"127.51.{number >> 8}.{number & 255}")
    # each call forgot more stale addresses than it added: the old ones are gone
    assert len(limiter) == 1 + 50_000 // PURGE_PER_CALL
    clock.now += RATE_WINDOW * 60
    limiter.sweep()  # the timers' sweep forgets the rest, with no 825 at all
    assert len(limiter) == 0


def test_the_servers_timers_sweep_the_rate_limiter_when_825s_stop(tmp_path):
    from server.app import PURGE_INTERVAL

    clock = FakeClock()
    db = SqliteMetadata.open(tmp_path / DB_NAME)
    app = App.build(db, FolderBlobs(tmp_path), Limits(), clock=clock)
    for number in range(100):
        assert app.registrations.allow(f"127.51.100.{number}")
    clock.now += PURGE_INTERVAL  # no 825 since: only the timers can forget them
    for timer in app.timers.due():
        if timer.callback is not None:
            timer.callback()
    assert len(app.registrations) == 0
    db.close()


def test_the_rate_limiter_still_counts_each_address():
    from server.rate import RATE_WINDOW, RegistrationLimiter

    clock = FakeClock()
    limiter = RegistrationLimiter(per_minute=2, clock=clock)
    assert [limiter.allow("127.0.2.1") for _ in range(3)] == [True, True, False]
    clock.now += RATE_WINDOW / 2
    assert limiter.allow("127.0.2.2")  # another address is not held back
    assert not limiter.allow("127.0.2.1")
    clock.now += RATE_WINDOW / 2 + 1  # the first two left the window
    assert limiter.allow("127.0.2.1")
    assert len(limiter) == 2


# -- two nodes sharing one PostgreSQL database --------------------------------------------------


@pytest.mark.needed_in_ci
def test_a_replacement_on_one_node_meets_the_share_another_node_filled(tmp_path, postgres_url):
    """A lapsed keyless registration from another group, taken over by an address whose
    group has room for one more client as the rules read it, while another node's round
    (not committed) registers that one more from the same group (an address the balancer
    moved): the store checks the room with the insert once that round has committed, and
    the replacement is refused, the lapsed registration kept; the share holds."""
    limits = Limits(key_window=KEY_WINDOW, max_clients=100, max_client_share_per_address=0.02)
    clock = FakeClock()
    first, second = (
        App.build(PostgresMetadata.open(postgres_url), FolderBlobs(tmp_path), limits,
                  clock=clock)
        for _ in range(2)
    )
    for app in (first, second):
        app.wall_clock = clock
    moved, elsewhere = "127.0.5.1", "127.0.6.1"
    with first.metadata.transaction():
        for client_id, name, address in ((b"g" * 16, "g1", moved), (b"b" * 16, "bob", elsewhere)):
            first.metadata.insert_client(client_id, name, clock.now, "v3", address)
            first.metadata.set_binding(client_id, address, clock.now)
    first.metadata.finish_round(durable=True)
    clock.now += KEY_WINDOW + 1  # bob's keyless registration lapsed
    assert first.client_share == 2
    register = Register(client_id=ANY_ID, name="carol")
    assert isinstance(handlers.register(second, Peer(moved, 2), register, Speaking()).response,
                      Registered)  # its round stays open
    replacement = waiting_for_a_lock(
        lambda: _answer(first, Peer(moved, 1), "bob"),
        postgres_url, first.metadata.store._live().info.backend_pid,
    )
    second.metadata.finish_round(durable=True)
    assert replacement.result(timeout=HANG_TIMEOUT) == handlers.SHARE_REACHED
    assert first.metadata.count_clients(moved) == 2
    assert first.metadata.client_by_name("bob").registered_from == elsewhere
    for app in (first, second):
        app.metadata.close()
