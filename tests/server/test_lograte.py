"""The log's per-address budget (server/lograte.py), on a fake clock (issue 22, point 6)."""

from __future__ import annotations

import logging

import pytest
from helpers import RawClient
from loop_driving import answered, run_until
from wire_by_hand import name, request

from protocol import CrcOk, GeneralError
from protocol.codes import CLIENT_ID_SIZE
from server import loop
from server.app import App
from server.limits import Limits
from server.lograte import OTHER_ADDRESSES, PURGE_PER_CALL, LogLimiter
from server.peer import Peer
from server.storage.folder import FolderBlobs
from server.storage.sqlite import DB_NAME, SqliteMetadata

BURST = 5
INTERVAL = 60.0
A, B = "127.0.2.1", "127.0.2.2"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Reports(list):
    """Every summary the limiter reported: (key, count, seconds, level)."""

    def __call__(self, key: str, count: int, seconds: float, level: int) -> None:
        self.append((key, count, seconds, level))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reports() -> Reports:
    return Reports()


def limiter(clock: Clock, reports: Reports, burst: int = BURST, **kwargs) -> LogLimiter:
    return LogLimiter(burst, INTERVAL, clock, reports, **kwargs)


def admitted(limiter: LogLimiter, key: str, lines: int, level: int = logging.INFO) -> int:
    return sum(limiter.admit(key, level) for _ in range(lines))


def test_an_address_gets_its_burst_then_its_lines_are_counted(clock, reports):
    limits = limiter(clock, reports)
    assert admitted(limits, A, 3 * BURST) == BURST
    assert reports == []  # counted, not reported while its window lasts
    clock.now += INTERVAL
    assert limits.admit(A, logging.INFO)  # a new window: the count goes out first
    assert reports == [(A, 2 * BURST, INTERVAL, logging.INFO)]
    assert admitted(limits, A, 3 * BURST) == BURST - 1


def test_the_summary_takes_the_highest_level_suppressed(clock, reports):
    limits = limiter(clock, reports)
    admitted(limits, A, BURST)
    limits.admit(A, logging.INFO)
    limits.admit(A, logging.WARNING)
    limits.admit(A, logging.INFO)
    clock.now += INTERVAL
    limits.sweep()
    assert reports == [(A, 3, INTERVAL, logging.WARNING)]


def test_one_address_over_its_budget_leaves_another_alone(clock, reports):
    limits = limiter(clock, reports)
    admitted(limits, A, 100 * BURST)
    assert admitted(limits, B, BURST) == BURST
    clock.now += INTERVAL
    limits.sweep()
    assert [report[:2] for report in reports] == [(A, 99 * BURST)]


def test_a_flood_that_falls_silent_is_counted_by_the_sweep(clock, reports):
    limits = limiter(clock, reports)
    admitted(limits, A, BURST + 7)
    clock.now += INTERVAL / 2
    limits.sweep()
    assert reports == []  # its window is not over
    clock.now += INTERVAL / 2
    limits.sweep()
    assert reports == [(A, 7, INTERVAL, logging.INFO)]
    assert len(limits) == 0  # and the address is forgotten


def test_every_ended_window_is_forgotten(clock, reports):
    limits = limiter(clock, reports)
    for number in range(1000):
        limits.admit(f"127.10.{number // 256}.{number % 256}", logging.INFO)
    assert len(limits) == 1000
    clock.now += INTERVAL
    limits.sweep()
    assert len(limits) == 0
    assert reports == []  # none was over its budget


def test_each_line_purges_a_few_ended_windows_without_a_sweep(clock, reports):
    limits = limiter(clock, reports)
    stale = 10 * PURGE_PER_CALL
    for number in range(stale):
        limits.admit(f"127.10.0.{number}", logging.INFO)
    clock.now += INTERVAL
    limits.admit(A, logging.INFO)
    assert len(limits) == stale - PURGE_PER_CALL + 1  # bounded work per line
    for _ in range(stale):
        limits.admit(A, logging.INFO)
    assert len(limits) == 1


def test_past_the_cap_new_addresses_share_one_budget(clock, reports):
    cap = 3
    limits = limiter(clock, reports, max_keys=cap)
    for number in range(cap):
        limits.admit(f"127.10.0.{number}", logging.INFO)
    newcomers = [f"127.10.1.{number}" for number in range(50)]
    allowed = sum(admitted(limits, address, BURST) for address in newcomers)
    assert allowed == BURST  # all of them together, not BURST each
    assert len(limits) == cap + 1
    clock.now += INTERVAL
    limits.sweep()
    assert reports == [(OTHER_ADDRESSES, 49 * BURST, INTERVAL, logging.INFO)]


def test_no_limit_counts_nothing(clock, reports):
    limits = limiter(clock, reports, burst=0)
    assert admitted(limits, A, 10_000) == 10_000
    assert len(limits) == 0


def test_flush_reports_windows_still_running(clock, reports):
    limits = limiter(clock, reports)
    admitted(limits, A, BURST + 2)
    clock.now += 1
    limits.flush()
    assert reports == [(A, 2, 1.0, logging.INFO)]
    assert len(limits) == 0


def test_lines_past_the_budget_go_to_debug(clock, reports):
    limits = limiter(clock, reports)
    logger = logging.getLogger("test_lograte.info")
    logger.setLevel(logging.INFO)
    levels = [limits.level(logger, A, logging.WARNING) for _ in range(BURST + 2)]
    assert levels == [logging.WARNING] * BURST + [logging.DEBUG] * 2


def test_lines_the_log_leaves_out_use_no_budget(clock, reports):
    limits = limiter(clock, reports)
    logger = logging.getLogger("test_lograte.warning")
    logger.setLevel(logging.WARNING)
    for _ in range(10 * BURST):
        assert limits.level(logger, A, logging.INFO) == logging.INFO  # not written anyway
        assert limits.level(logger, A, logging.DEBUG) == logging.DEBUG
    assert len(limits) == 0
    assert limits.level(logger, A, logging.WARNING) == logging.WARNING


def test_the_server_counts_a_silent_flood_on_its_timers(tmp_path, clock, caplog):
    limits = Limits(log_lines_per_address=BURST, log_rate_interval=INTERVAL)
    metadata = SqliteMetadata.open(tmp_path / DB_NAME)
    app = App.build(metadata, FolderBlobs(tmp_path), limits, clock=clock)
    try:
        with caplog.at_level(logging.INFO, logger="server"):
            admitted(app.log_limiter, A, BURST + 3)
            clock.now += INTERVAL
            for timer in app.timers.due():
                assert timer.callback is not None
                timer.callback()
    finally:
        app.uploads.close()
        metadata.close()
    assert f"3 lines suppressed for {A}" in caplog.text


#: One host's /64: each of its connections comes from an address of its own.
HOST_64 = "2001:db8:1:2::"
#: Connections from it, each one request: several lines each without a shared budget.
HOST_CONNECTIONS = 4 * BURST
#: The 1025 series' register (docs/EDITIONS.md), and its 2100 whole: header and id.
FIRST_REGISTER = 1025
HELD_ANSWER_SIZE = 7 + CLIENT_ID_SIZE


def test_the_addresses_of_one_64_share_one_budget(tmp_path, monkeypatch, caplog):
    """Like every per-address limit, the log's budget counts an IPv6 /64 as one address."""
    real_peer = loop.Peer

    def peer(address: str, port: int, ipv6_prefix: int) -> Peer:
        return real_peer(f"{HOST_64}{port:x}", port, ipv6_prefix)

    monkeypatch.setattr(loop, "Peer", peer)
    limits = Limits(log_lines_per_address=BURST, log_rate_interval=3600.0)
    metadata = SqliteMetadata.open(tmp_path / DB_NAME)
    app = App.build(metadata, FolderBlobs(tmp_path), limits)
    server = loop.Server(app, loop.create_listener("127.0.0.1", 0))
    try:
        with caplog.at_level(logging.DEBUG, logger="server"):
            for _ in range(HOST_CONNECTIONS):
                with RawClient(server.address[:2]) as client:
                    client.send(CrcOk(client_id=bytes(CLIENT_ID_SIZE), file_name="x"))
                    run_until(server, lambda: answered(client))
                    assert isinstance(client.receive(), GeneralError)
                run_until(server, lambda: not server.channels)
    finally:
        server.close()
        metadata.close()
    host_lines = [record for record in caplog.records  # its own lines, not the summary
                  if HOST_64 in record.getMessage() and "suppressed" not in record.getMessage()]
    assert len(host_lines) >= 2 * HOST_CONNECTIONS  # a refusal and a close each...
    written = [record for record in host_lines if record.levelno >= logging.INFO]
    assert len(written) == BURST  # ...and the /64 had one budget of them above DEBUG


def test_the_edition_a_held_id_told_is_a_line_within_the_budget(tmp_path, caplog):
    """A first 1025's second line (Rule 6 of server/session.py) counts like every other."""
    limits = Limits(log_lines_per_address=1, log_rate_interval=3600.0, first_register_hold=0.01)
    metadata = SqliteMetadata.open(tmp_path / DB_NAME)
    app = App.build(metadata, FolderBlobs(tmp_path), limits)
    server = loop.Server(app, loop.create_listener("127.0.0.1", 0))
    register = request(FIRST_REGISTER, name(b"waits"), client_id=b"a" * CLIENT_ID_SIZE)
    try:
        with caplog.at_level(logging.DEBUG, logger="server"):
            with RawClient(server.address[:2]) as client:
                client.send_raw(register)  # a 2023C client: it waits for the id
                run_until(server, lambda: answered(client, HELD_ANSWER_SIZE))
            run_until(server, lambda: not server.channels)
    finally:
        server.close()
        metadata.close()
    assert "a 2023C client, the id sent" in caplog.text
    written = [record for record in caplog.records if record.levelno >= logging.INFO
               and "127.0.0.1:" in record.getMessage()]
    assert len(written) == 1, [record.getMessage() for record in written]



