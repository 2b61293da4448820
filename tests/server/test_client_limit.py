"""The client cap (max_clients): a count kept with the rows, lapsed registrations purged at the cap.

The cost of a registration at the cap is measured in SQLite virtual-machine
steps (a progress handler), not in seconds: it must not grow with the number
of clients.
"""

from __future__ import annotations

from server import handlers
from server.app import App
from server.limits import Limits
from server.storage.folder import FolderBlobs
from server.storage.sqlite import DB_NAME, SqliteMetadata

KEYED = b"k" * 160
KEY_WINDOW = 3600.0


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _app(tmp_path, **limits) -> tuple[App, FakeClock]:
    made = Limits(key_window=KEY_WINDOW, **limits)
    db = SqliteMetadata.open(tmp_path / DB_NAME, made.busy_timeout)
    app = App.build(db, FolderBlobs(tmp_path), made)
    clock = FakeClock()
    app.wall_clock = clock
    return app, clock


def _add(app: App, numbers: range, keyed: bool) -> None:
    with app.metadata.transaction():
        for number in numbers:
            client_id = number.to_bytes(16, "big")
            app.metadata.insert_client(client_id, f"c{number}", app.wall_clock(), "v3")
            app.metadata.set_binding(client_id, "192.0.2.1", app.wall_clock())
            if keyed:
                app.metadata.set_keys(client_id, KEYED, bytes(32), app.wall_clock())
    app.metadata.finish_round(durable=False)


def _steps(app: App, action) -> int:
    """SQLite virtual-machine steps ``action`` takes on the app's database."""
    counted = [0]

    def count() -> int:
        counted[0] += 1
        return 0

    connection = app.metadata._db  # the store's own connection: its statements are counted
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
    assert handlers._at_client_limit(app)
    clock.now += KEY_WINDOW + 1  # the keyless two lapsed; the periodic purge has not run
    assert not handlers._at_client_limit(app)
    assert app.metadata.count_clients() == 1


def test_a_refusal_at_the_cap_costs_the_same_however_many_clients(tmp_path):
    def refusal_steps(clients: int, folder) -> int:
        folder.mkdir()
        app, _ = _app(folder, max_clients=clients)
        _add(app, range(clients), keyed=True)
        assert handlers._at_client_limit(app)
        steps = min(_steps(app, lambda: handlers._at_client_limit(app)) for _ in range(3))
        app.metadata.close()
        return steps

    few = refusal_steps(100, tmp_path / "few")
    many = refusal_steps(10_000, tmp_path / "many")
    # a scan of the rows would take 100 times the steps; an index lookup, a few more
    assert many < 2 * few, (few, many)


# -- the registration rate: every stale address is forgotten --------------------------------------


def test_the_rate_limiter_forgets_every_stale_address():
    from server.rate import RATE_WINDOW, RegistrationLimiter

    clock = FakeClock()
    limiter = RegistrationLimiter(per_minute=2, clock=clock)
    for number in range(50_000):
        assert limiter.allow(f"10.{number >> 16}.{(number >> 8) & 255}.{number & 255}")
    assert len(limiter) == 50_000
    clock.now += RATE_WINDOW / 2
    assert limiter.allow("192.0.2.1")
    assert len(limiter) == 50_001  # all still within the window
    clock.now += RATE_WINDOW * 60  # an hour later
    assert limiter.allow("192.0.2.2")
    assert len(limiter) == 1  # only the address that just registered is kept


def test_the_rate_limiter_still_counts_each_address():
    from server.rate import RATE_WINDOW, RegistrationLimiter

    clock = FakeClock()
    limiter = RegistrationLimiter(per_minute=2, clock=clock)
    assert [limiter.allow("192.0.2.1") for _ in range(3)] == [True, True, False]
    clock.now += RATE_WINDOW / 2
    assert limiter.allow("192.0.2.2")  # another address is not held back
    assert not limiter.allow("192.0.2.1")
    clock.now += RATE_WINDOW / 2 + 1  # the first two left the window
    assert limiter.allow("192.0.2.1")
    assert len(limiter) == 2
