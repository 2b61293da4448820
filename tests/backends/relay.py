"""A TCP relay on the loopback in front of a real server, which can hold new connections
unanswered: a database host that stops answering (a network cut, a stalled host).

``Relay(target)`` listens on 127.0.0.1 and relays each connection to
``target``. :meth:`Relay.hold` cuts every relayed connection and from then
on accepts new ones but never reads nor answers them: libpq's connect then
waits for the server's reply until its ``connect_timeout``.
:meth:`Relay.forward` closes the held ones (their connect fails at once)
and relays again. Threads, not a loop: the test's own thread stays free.
"""

from __future__ import annotations

import selectors
import socket
import threading

LOOPBACK = "127.0.0.1"
#: Bytes relayed per receive.
CHUNK = 65536


class Relay:
    """One relay (see the module doc); :meth:`close` stops it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server((LOOPBACK, 0))
        self._lock = threading.Lock()
        self._holding = False
        #: Relayed connections (the client's end, the target's end).
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        #: Connections accepted while holding, never read.
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    def hold(self) -> None:
        """Cut every relayed connection; hold every new one unanswered."""
        with self._lock:
            self._holding = True
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                _shut(sock)

    def forward(self) -> None:
        """Close the held connections; relay new ones again."""
        with self._lock:
            self._holding = False
            held, self._held = self._held, []
        for sock in held:
            _shut(sock)
            sock.close()

    def held_open(self) -> int:
        """How many held connections their client has not closed (none gave up yet)."""
        with self._lock:
            held = list(self._held)
        return sum(1 for sock in held if _open(sock))

    def close(self) -> None:
        """Stop accepting; close everything."""
        self.forward()
        self.hold()
        _shut(self._listener)  # wakes the accepting thread
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            with self._lock:
                if self._holding:
                    self._held.append(client)
                    continue
            try:
                upstream = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()


def _pump(one: socket.socket, other: socket.socket) -> None:
    """Relay both ways until either end closes; then close both."""
    with selectors.DefaultSelector() as selector:
        selector.register(one, selectors.EVENT_READ, other)
        selector.register(other, selectors.EVENT_READ, one)
        try:
            while True:
                for key, _ in selector.select():
                    data = key.fileobj.recv(CHUNK)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            one.close()
            other.close()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _open(sock: socket.socket) -> bool:
    """Whether the peer has not closed (what it sent is read and dropped, never answered)."""
    try:
        while sock.recv(CHUNK, socket.MSG_DONTWAIT):
            pass
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False
