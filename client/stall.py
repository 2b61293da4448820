"""Whether a server stopped reading, from what the kernel knows of the connection.

docs/CLIENT.md, "Fallbacks": a server that dropped the layout may stop
reading without a word. The kernel shows it: bytes sent that the server has
not acknowledged filling all its receive window (at zero, or smaller than
them: its buffer is full), or
everything acknowledged while the window it advertises stays under half of
the one it opened the connection with (bytes it received and has not read; a
server that reads them announces the reopened window at once, as it has
doubled). That is evidence, where a silent wait is not, as long as it does
not move: a server that reads, however slowly, acknowledges more bytes or
opens its window between two looks, and is not taken to have stopped.

How long it must not move (:func:`evidence_hold`) is scaled from the server
itself: ``STALL_ANSWER_FACTOR`` times the slowest answer it gave in the run
(from the end of a request to the end of its answer; a server's answer waits
for the same things its reading does: its loop, its disk, the machine's
load), never under ``STALL_EVIDENCE_FLOOR`` nor over ``STALL_EVIDENCE``, and
over at least ``STALL_LOOKS`` looks (:class:`StallClock`): on a loaded
machine the looks come late, and the hold stretches with them.

A server that has read more than :data:`LAYOUT_TAKEN_BYTES` of the
connection (the bytes it acknowledged, less what its receive buffer can hold
unread: :meth:`ReadingWatch.has_read`) has taken the layout: a server that
drops it stops within the first packet of a file. A stop after that is the
server holding back (its storage behind, its machine loaded: ours stops
reading a connection whose file's blob is behind), and only the time-out
ends that wait.

Linux only (``TCP_INFO`` and ``SIOCOUTQ``); elsewhere there is no evidence,
and the time-out alone decides.
"""

from __future__ import annotations

import socket
import struct

try:
    import fcntl
    import termios

    _OUTQ: int | None = termios.TIOCOUTQ  # SIOCOUTQ: bytes not yet acknowledged
except (ImportError, AttributeError):  # not Linux
    _OUTQ = None

#: ``struct tcp_info``: the offset of ``tcpi_snd_wnd`` (the window the peer
#: advertises, scaled), the last field of Linux's, and the size up to its end.
_SND_WND_OFFSET = 228
_TCP_INFO_SIZE = _SND_WND_OFFSET + 4
_INT = struct.Struct("i")
_UINT = struct.Struct("I")

#: The longest the evidence must hold, and the hold before the server has
#: answered anything (no measure of its pace yet).
STALL_EVIDENCE = 1.0
#: The shortest hold, however fast the server answered.
STALL_EVIDENCE_FLOOR = 0.1
#: The hold in multiples of the server's slowest answer of the run.
STALL_ANSWER_FACTOR = 50
#: The looks the evidence must hold over; they come every hold / STALL_LOOKS.
STALL_LOOKS = 5
#: Bytes of a connection a server has read, past what its receive buffer can hold unread,
#: once it has taken the layout: a default packet (a server that drops the layout stops
#: within the first packet of a file; the 1,291-byte one reads one 1,314-byte request).
LAYOUT_TAKEN_BYTES = 1024 * 1024
#: What a server's receive buffer can hold unread, in windows it opened the connection with
#: (Linux's buffer is about twice its window, and grows only as the server reads).
UNREAD_WINDOWS = 4


def evidence_hold(slowest_answer: float | None) -> float:
    """Seconds the evidence must hold, from the server's slowest answer so far (None: none yet)."""
    if slowest_answer is None:
        return STALL_EVIDENCE
    scaled = STALL_ANSWER_FACTOR * slowest_answer
    return min(max(scaled, STALL_EVIDENCE_FLOOR), STALL_EVIDENCE)


class StallClock:
    """How long, and over how many looks, the evidence has held (sans-I/O: the
    caller gives the time and what each look saw)."""

    def __init__(self, hold: float) -> None:
        #: Seconds the evidence must hold.
        self.hold = hold
        self._since: float | None = None
        self._looks = 0

    @property
    def probe(self) -> float:
        """Seconds between two looks."""
        return self.hold / STALL_LOOKS

    def look(self, stopped: bool, now: float) -> bool:
        """Count one look; whether the evidence has now held ``hold`` seconds
        and ``STALL_LOOKS`` looks after the first that saw it."""
        if not stopped:
            self._since, self._looks = None, 0
            return False
        if self._since is None:
            self._since = now
            return False
        self._looks += 1
        return self._looks >= STALL_LOOKS and now - self._since >= self.hold


def _peer_window(sock: socket.socket) -> int | None:
    """The receive window the server advertises, or None where unknown."""
    tcp_info = getattr(socket, "TCP_INFO", None)
    if tcp_info is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, _TCP_INFO_SIZE)
    except OSError:
        return None
    if len(info) < _TCP_INFO_SIZE:  # a kernel without tcpi_snd_wnd
        return None
    return _UINT.unpack_from(info, _SND_WND_OFFSET)[0]


def _unacknowledged(sock: socket.socket) -> int | None:
    """Bytes sent or queued that the server has not acknowledged, or None where unknown."""
    if _OUTQ is None:
        return None
    try:
        return _INT.unpack(fcntl.ioctl(sock.fileno(), _OUTQ, bytes(_INT.size)))[0]
    except OSError:
        return None


class ReadingWatch:
    """Watches one connection for a server that stopped reading."""

    def __init__(self, sock: socket.socket) -> None:
        #: The window the server opened the connection with (nothing unread yet).
        self._opening_window = _peer_window(sock)
        #: (window, unacknowledged) at the last look that showed unread bytes.
        self._last: tuple[int, int] | None = None
        #: Bytes sent on the connection so far.
        self.sent = 0

    def has_read(self, sock: socket.socket) -> bool:
        """Whether the server has read more than :data:`LAYOUT_TAKEN_BYTES` of what was
        :attr:`sent` (the bytes it acknowledged, less what its receive buffer can hold
        unread): it has taken the layout. False where the kernel does not say."""
        unacknowledged = _unacknowledged(sock)
        if unacknowledged is None or not self._opening_window:
            return False
        unread_at_most = UNREAD_WINDOWS * self._opening_window
        return self.sent - unacknowledged - unread_at_most > LAYOUT_TAKEN_BYTES

    def has_room(self, sock: socket.socket, size: int) -> bool:
        """Whether the server's window can take ``size`` more bytes at once,
        beyond those sent or queued before them; True where the kernel does
        not say, or where the window never could (its opening one is smaller)."""
        window, queued = _peer_window(sock), _unacknowledged(sock)
        if window is None or queued is None or not self._opening_window:
            return True
        return window - queued >= size or size > self._opening_window

    def stopped_reading(self, sock: socket.socket, waiting: int = 0) -> bool:
        """Whether the kernel shows bytes the server has not read, and no read
        since the last look (no byte more acknowledged, no wider window).

        ``waiting``: bytes of a request held back until the window can take
        them all; a window too small for them shows unread bytes too.
        """
        window, unacknowledged = _peer_window(sock), _unacknowledged(sock)
        if window is None or unacknowledged is None or not self._opening_window:
            self._last = None
            return False
        if unacknowledged:
            unread = unacknowledged >= window  # its window is taken: it accepts no more
        else:
            unread = window < self._opening_window // 2 or window < waiting
        last, self._last = self._last, ((window, unacknowledged) if unread else None)
        if not unread:
            return False
        read_since = last is not None and (unacknowledged < last[1] or window > last[0])
        return not read_since
