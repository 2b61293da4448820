"""client/stall.py: the kernel's evidence that a server stopped reading (issue 23, point 6)."""

from __future__ import annotations

import socket

import pytest

from client import stall
from client.config import ServerAddress
from client.errors import NetworkError
from client.session import Session
from client.stall import ReadingWatch, StallClock
from protocol import SendFilePacket

OPENING_WINDOW = 65483


def _watch(monkeypatch, readings: list[tuple[int, int]]) -> tuple[ReadingWatch, list[bool]]:
    """A watch fed ``(window, unacknowledged)`` readings, one per look; what it said at each."""
    windows = iter([OPENING_WINDOW] + [window for window, _ in readings])
    unacknowledged = iter([unacked for _, unacked in readings])
    monkeypatch.setattr(stall, "_peer_window", lambda sock: next(windows))
    monkeypatch.setattr(stall, "_unacknowledged", lambda sock: next(unacknowledged))
    sock = socket.socket()
    try:
        watch = ReadingWatch(sock)
        return watch, [watch.stopped_reading(sock) for _ in readings]
    finally:
        sock.close()


def test_a_window_at_zero_that_does_not_move_is_evidence(monkeypatch):
    _, said = _watch(monkeypatch, [(0, 900_000)] * 4)
    assert said == [True] * 4


def test_a_window_taken_by_bytes_it_does_not_acknowledge_is_evidence(monkeypatch):
    # A server whose buffer is full may go on advertising a window and
    # acknowledge nothing (seen on loopback behind a 16 KiB buffer).
    _, said = _watch(monkeypatch, [(16_384, 25_736)] * 4)
    assert said == [True] * 4


def test_a_window_too_small_for_a_request_held_back_is_evidence(monkeypatch):
    # Everything acknowledged, the window at half the opening one: not under
    # half, but too small for the 8,482 bytes waiting to go whole.
    windows = iter([16_384] + [8_192] * 3)
    monkeypatch.setattr(stall, "_peer_window", lambda sock: next(windows))
    monkeypatch.setattr(stall, "_unacknowledged", lambda sock: 0)
    with socket.socket() as sock:
        watch = ReadingWatch(sock)
        assert not watch.stopped_reading(sock)
        assert [watch.stopped_reading(sock, waiting=8_482) for _ in range(2)] == [True, True]


def test_a_server_that_reads_slowly_shows_no_stop(monkeypatch):
    # Its window is at zero at every look (the client refills it at once), but
    # the bytes it has not acknowledged fall between looks: it reads.
    _, said = _watch(monkeypatch, [(0, 900_000 - 16_384 * look) for look in range(6)])
    assert said == [True] + [False] * 5


def test_bytes_left_unread_behind_a_window_that_reopens_show_no_stop(monkeypatch):
    # Everything acknowledged, the window under half the opening one but widening.
    _, said = _watch(monkeypatch, [(1_000 + 4_096 * look, 0) for look in range(4)])
    assert said == [True, False, False, False]


@pytest.mark.parametrize("readings", [
    [(0, 900_000), (0, 880_000), (0, 880_000), (0, 880_000)],  # read, then stopped
    [(5_000, 0), (9_000, 0), (9_000, 0), (9_000, 0)],
])
def test_a_server_that_stops_after_reading_a_little_is_evidence_again(monkeypatch, readings):
    _, said = _watch(monkeypatch, readings)
    assert said == [True, False, True, True]


# -- how long the evidence must hold (a fake clock: times are given) -------------------


def test_the_hold_scales_with_the_servers_slowest_answer():
    fast, slow = 0.001, 0.010
    assert stall.evidence_hold(fast) == stall.STALL_EVIDENCE_FLOOR
    assert stall.evidence_hold(slow) == pytest.approx(stall.STALL_ANSWER_FACTOR * slow)
    assert stall.evidence_hold(slow) > stall.evidence_hold(fast)
    assert stall.evidence_hold(1.0) == stall.STALL_EVIDENCE  # never longer than before
    assert stall.evidence_hold(None) == stall.STALL_EVIDENCE  # no answer yet: no measure


def _looks_until_stop(clock: StallClock, times: list[float]) -> float | None:
    """Feed looks that all see the evidence; the time of the look that stops, if any."""
    for now in times:
        if clock.look(True, now):
            return now
    return None


def test_a_fast_server_that_stops_is_given_up_well_before_the_fixed_hold():
    """The server answered its last request in 1 ms: the evidence ends the wait
    after the floor's hold, a tenth of STALL_EVIDENCE."""
    clock = StallClock(stall.evidence_hold(0.001))
    times = [look * clock.probe for look in range(100)]
    stopped = _looks_until_stop(clock, times)
    assert stopped is not None
    assert stopped == pytest.approx(stall.STALL_EVIDENCE_FLOOR)
    assert stopped < stall.STALL_EVIDENCE


def test_a_server_that_answers_slowly_is_given_a_longer_hold():
    clock = StallClock(stall.evidence_hold(0.015))
    times = [look * stall.STALL_EVIDENCE_FLOOR / stall.STALL_LOOKS for look in range(100)]
    stopped = _looks_until_stop(clock, times)
    assert stopped is not None and stopped >= stall.STALL_ANSWER_FACTOR * 0.015


def test_looks_that_come_late_on_a_loaded_machine_stretch_the_hold():
    """Two looks 3 s apart (the client was not scheduled in between): the time
    is there, the looks are not; the server may not have run either."""
    clock = StallClock(stall.evidence_hold(0.001))
    assert _looks_until_stop(clock, [0.0, 3.0]) is None
    late = [3.0 + look * clock.probe for look in range(1, stall.STALL_LOOKS)]
    assert _looks_until_stop(clock, late) == late[-1]


def test_a_look_that_sees_reading_starts_the_hold_again():
    clock = StallClock(stall.evidence_hold(0.001))
    probe = clock.probe
    assert _looks_until_stop(clock, [look * probe for look in range(stall.STALL_LOOKS)]) is None
    assert not clock.look(False, stall.STALL_LOOKS * probe)  # it read: no stop
    again = [(stall.STALL_LOOKS + 1 + look) * probe for look in range(stall.STALL_LOOKS + 1)]
    assert _looks_until_stop(clock, again) == again[-1]


def _first_stop(monkeypatch, readings: list[tuple[int, int]], slowest_answer: float):
    """The time (on a fake clock, one look per probe) at which a watch fed
    ``readings`` and a clock scaled from ``slowest_answer`` end the wait, if any."""
    clock = StallClock(stall.evidence_hold(slowest_answer))
    windows = iter([OPENING_WINDOW] + [window for window, _ in readings])
    unacknowledged = iter([unacked for _, unacked in readings])
    monkeypatch.setattr(stall, "_peer_window", lambda sock: next(windows))
    monkeypatch.setattr(stall, "_unacknowledged", lambda sock: next(unacknowledged))
    with socket.socket() as sock:
        watch = ReadingWatch(sock)
        for look in range(len(readings)):
            now = look * clock.probe
            if clock.look(watch.stopped_reading(sock), now):
                return now
    return None


def test_a_window_at_zero_ends_the_wait_before_the_fixed_hold_would_have(monkeypatch):
    """A send blocked behind a window at zero that does not move, on a server
    that answered in 2 ms: the wait ends at the shortest hold, where the fixed
    STALL_EVIDENCE would still be waiting."""
    stopped = _first_stop(monkeypatch, [(0, 900_000)] * 100, slowest_answer=0.002)
    assert stopped == pytest.approx(stall.STALL_EVIDENCE_FLOOR)
    assert stopped < stall.STALL_EVIDENCE


def test_a_slow_reader_behind_a_window_at_zero_never_ends_the_wait(monkeypatch):
    """The same window at zero, but fewer bytes unacknowledged at each look."""
    readings = [(0, 900_000 - 4_096 * look) for look in range(100)]
    assert _first_stop(monkeypatch, readings, slowest_answer=0.002) is None


def _room(monkeypatch, window: int | None, queued: int | None, size: int) -> bool:
    """What a watch says of room for ``size`` bytes behind ``window`` and ``queued``."""
    windows = iter([OPENING_WINDOW, window])
    monkeypatch.setattr(stall, "_peer_window", lambda sock: next(windows))
    monkeypatch.setattr(stall, "_unacknowledged", lambda sock: queued)
    with socket.socket() as sock:
        return ReadingWatch(sock).has_room(sock, size)


@pytest.mark.parametrize(("window", "queued", "size", "room"), [
    (65_483, 0, 8_482, True),  # an open window, nothing in flight
    (65_483, 60_000, 8_482, False),  # the window is nearly taken by bytes sent before
    (4_096, 0, 8_482, False),  # a server behind in its reading
    (0, 0, OPENING_WINDOW + 1, True),  # more than the window ever was: no wait could help
    (None, 0, 8_482, True),  # the kernel does not say: no wait
])
def test_room_for_a_request_in_the_servers_window(monkeypatch, window, queued, size, room):
    assert _room(monkeypatch, window, queued, size) is room


#: A time-out far longer than any hold: a wait that reaches it says so.
LONG_TIMEOUT = 20.0
#: A receive buffer small enough that a few packets fill it.
SMALL_BUFFER = 16384


def test_a_packet_waiting_for_room_ends_on_the_evidence_not_the_time_out():
    """Sending each packet whole (a server that reads a packet with one
    receive), a server that stops reading leaves no room in its window: the
    wait for room ends as a blocked send does, on the kernel's evidence held
    for the scaled hold, not at the time-out."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        session = Session(ServerAddress("127.0.0.1", listener.getsockname()[1]), LONG_TIMEOUT)
        session.whole_requests = session.watch_reading = True
        session.slowest_answer = 0.002
        packet = SendFilePacket(
            client_id=bytes(16), content_size=8192 * 64, orig_file_size=8192 * 64,
            packet_number=1, total_packets=64, file_name="f", content=bytes(8192),
        )
        try:
            with pytest.raises(NetworkError) as stopped:
                for _ in range(packet.total_packets):  # never read: the window fills
                    session.send(packet)
        finally:
            session.reset()
    assert stopped.value.timed_out
    assert "stay unread for 0.1 s" in str(stopped.value)
