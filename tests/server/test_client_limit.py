"""The client cap (max_clients) reads every row only when the cap may be reached."""

from __future__ import annotations

from server import handlers
from server.app import App
from server.limits import Limits
from server.storage.folder import FolderBlobs
from server.storage.sqlite import DB_NAME, SqliteMetadata

KEYED = b"k" * 160


def _app(tmp_path, max_clients: int, monkeypatch) -> tuple[App, list[float]]:
    limits = Limits(max_clients=max_clients)
    db = SqliteMetadata.open(tmp_path / DB_NAME, limits.busy_timeout)
    app = App.build(db, FolderBlobs(tmp_path), limits)
    scans: list[float] = []
    real = db.count_live_clients
    monkeypatch.setattr(db, "count_live_clients", lambda since: (scans.append(since), real(since))[1])
    return app, scans


def _add(app: App, number: int, keyed: bool) -> None:
    client_id = number.to_bytes(16, "big")
    with app.metadata.transaction():
        app.metadata.insert_client(client_id, f"c{number}", app.wall_clock(), "v3")
        if keyed:
            app.metadata.set_keys(client_id, KEYED, bytes(32), app.wall_clock())


def test_below_the_cap_the_live_count_is_not_read(tmp_path, monkeypatch):
    app, scans = _app(tmp_path, 3, monkeypatch)
    for number in range(2):
        _add(app, number, keyed=True)
        assert not handlers._at_client_limit(app)
    assert scans == []


def test_at_the_cap_live_clients_decide(tmp_path, monkeypatch):
    app, scans = _app(tmp_path, 2, monkeypatch)
    _add(app, 1, keyed=True)
    _add(app, 2, keyed=False)  # keyless and never bound: not live
    assert not handlers._at_client_limit(app)
    assert len(scans) == 1
    _add(app, 3, keyed=True)
    assert handlers._at_client_limit(app)


# -- the registration rate: every stale address is forgotten --------------------------------------


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


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
