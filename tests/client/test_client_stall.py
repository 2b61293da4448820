"""client/stall.py: the kernel's evidence that a server stopped reading (issue 23, point 6)."""

from __future__ import annotations

import socket

import pytest

from client import stall
from client.stall import ReadingWatch

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
