"""Connections from a PROXY protocol sender (``--proxy-protocol-from``): the header first.

Behind a TCP balancer the server sees the balancer's address, not the
client's. A balancer that sends the PROXY protocol (HAProxy's
``send-proxy-v2``) puts a header naming the client before the client's
bytes (protocol/proxy_header.py). The server takes it only from the
addresses it is told to (:class:`ProxySources`): a header's address is never
trusted from anyone else, and a listed address must send one.

The loop (server/loop.py) accepts a connection from a listed address as a
:class:`HeaderWait`, not yet a channel: the connection counts toward
``--max-connections`` but toward no address's limits, since the balancer
speaks for many clients. The wait reads the header and nothing after it: it
peeks at what arrived, and takes from the socket exactly the bytes that are
header, so the client's first bytes are still the socket's when the
connection becomes a :class:`~server.channel.Channel`. The header's source
address and port are then the connection's :class:`~server.peer.Peer`, and
everything a peer's address decides is decided on them: the per-address
admission at accept (``--max-connections-per-address``), key binding, the
registration rate, the round shares and the log lines. A ``LOCAL`` header (a
health check) or one without a usable address (``UNKNOWN``) leaves the
balancer's own address.

The header must come within ``message_deadline``, the first request's
deadline (server/session.py, Rule 5). A wait that times out, reads a broken
header, or sees the connection close is closed with one line naming the
balancer's address; a connection that sent nothing (a balancer's plain TCP
health check) is counted with the loop's silent connections instead.
"""

from __future__ import annotations

import ipaddress
import logging
import selectors
import socket
from collections.abc import Iterable
from typing import Protocol

from protocol.proxy_header import (
    MAX_HEADER_SIZE,
    ProxyHeader,
    ProxyHeaderError,
    parse_proxy_header,
)

from .lograte import LogLimiter
from .peer import Peer
from .timers import Timer, Timers

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxySources:
    """The networks whose connections begin with a PROXY header (``--proxy-protocol-from``)."""

    def __init__(self, networks: Iterable[Network] = ()) -> None:
        self.networks = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __str__(self) -> str:
        return ", ".join(str(network) for network in self.networks)

    def send_headers(self, peer: Peer) -> bool:
        """Whether the connection of ``peer`` (its own address) must begin with a header."""
        try:
            ip = ipaddress.ip_address(peer.address)
        except ValueError:  # a test's name for a peer
            return False
        return any(ip in network for network in self.networks)


#: No balancer sends headers: every connection is its client's own.
NO_PROXIES = ProxySources()


class WaitPort(Protocol):
    """What a :class:`HeaderWait` needs from the loop that runs it (:class:`server.loop.Server`)."""

    def header_read(self, wait: HeaderWait, client: Peer) -> None:
        """The header named ``client``: the socket (unregistered) is the loop's now."""

    def header_wait_closed(self, wait: HeaderWait) -> None:
        """The wait closed its socket: forget it."""


class HeaderWait:
    """A connection from a PROXY protocol sender until its header is read."""

    def __init__(
        self,
        sock: socket.socket,
        proxy: Peer,
        selector: selectors.BaseSelector,
        timers: Timers,
        log_limiter: LogLimiter,
        deadline: float,
        port: WaitPort,
    ) -> None:
        self.sock = sock
        #: The sender's own address (the balancer's).
        self.proxy = proxy
        self._selector = selector
        self._clock = timers.clock
        self._log_limiter = log_limiter
        self._port = port
        self._received = bytearray()
        #: Bytes that arrived: the header's so far, and what it was refused on.
        self._bytes_in = 0
        self._opened = self._clock()
        self._timed_out = False
        #: Closed, or handed over to the loop.
        self._over = False
        selector.register(sock, selectors.EVENT_READ, self.on_readable)
        self._timer: Timer = timers.call_at(self._opened + deadline, self._on_timer)

    @property
    def opened(self) -> float:
        """When the connection was accepted (the loop's clock): its first request's deadline
        counts from then, the header's wait included."""
        return self._opened

    @property
    def silent(self) -> bool:
        """The sender sent nothing and left (a plain TCP health check); see Channel.silent."""
        return not self._bytes_in and not self._timed_out

    def on_readable(self) -> None:
        """Bytes (or EOF) arrived: take the header's bytes, and only those."""
        if self._over:
            return
        try:
            # Peeked, not read: what follows the header stays in the socket.
            arrived = self.sock.recv(MAX_HEADER_SIZE - len(self._received), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close(f"receive failed: {exc.strerror or exc}")
            return
        if not arrived:
            self.close("closed before its PROXY header")
            return
        self._bytes_in = len(self._received) + len(arrived)
        try:
            header = parse_proxy_header(self._received + arrived)
        except ProxyHeaderError as exc:
            self.close(f"no valid PROXY header: {exc}")
            return
        if not isinstance(header, ProxyHeader):  # NEED_DATA: every byte is the header's
            self._take(len(arrived))
        elif self._take(header.length - len(self._received)):
            self._hand_over(header)

    def _take(self, count: int) -> bool:
        """Read ``count`` bytes already peeked at; False if that failed (then closed)."""
        try:
            taken = self.sock.recv(count)
        except OSError as exc:
            self.close(f"receive failed: {exc.strerror or exc}")
            return False
        self._received += taken
        if len(taken) != count:
            self.close("receive failed: fewer bytes than were peeked at")
            return False
        return True

    def _hand_over(self, header: ProxyHeader) -> None:
        """The header is read: the connection is the client's from here on."""
        self._leave()
        source = header.source
        client = self.proxy
        if source is not None:
            client = Peer(source.address, source.port, self.proxy.ipv6_prefix)
        self._port.header_read(self, client)

    def _on_timer(self) -> None:
        if not self._over:
            self._timed_out = True
            self.close("timed out: no PROXY header")

    def close(self, reason: str) -> None:
        """Close the connection, with one line (DEBUG if it was silent). Idempotent."""
        if self._over:
            return
        self._leave()
        try:
            self.sock.close()
        except OSError:
            pass
        level = logging.DEBUG if self.silent else logging.INFO
        level = self._log_limiter.level(log, self.proxy.group, level)
        log.log(level, "%s (a PROXY protocol sender) closed: %s (in %d B, %.3f s)",
                self.proxy, reason, self._bytes_in, self._clock() - self._opened)
        self._port.header_wait_closed(self)

    def _leave(self) -> None:
        """Stop waiting: no timer, no selector interest (the socket stays open)."""
        self._over = True
        self._timer.cancel()
        try:
            self._selector.unregister(self.sock)
        except (KeyError, ValueError, OSError):
            pass
