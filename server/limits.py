"""The server's limits: one frozen dataclass, each field a command-line flag.

Defaults follow HOSTILE.md, "Limits"; the comment on each says why.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.codes import MAX_UINT32

from .storage.db import DEFAULT_BUSY_TIMEOUT

KIB = 1024
MIB = 1024 * KIB

#: sshd ``MaxStartups``-like ceiling on open connections.
DEFAULT_MAX_CONNECTIONS = 1024
#: Far above what one real client opens (it uses one connection, or one per
#: request in turn), so that one address cannot hold every slot; a NAT or a
#: load test raises it (sshd ``PerSourceMaxStartups``).
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 64
#: Time to finish a started message (gunicorn ``timeout``).
DEFAULT_MESSAGE_DEADLINE = 30.0
#: Time allowed between messages (OpenSSH ClientAlive, uvicorn keep-alive).
DEFAULT_IDLE_TIMEOUT = 60.0
#: 828 content slower than this on average is cut (Apache mod_reqtimeout
#: ``MinRate``); each received byte extends the message deadline accordingly.
DEFAULT_MIN_CONTENT_RATE = 1 * KIB
#: Unsent responses per connection before reading from it stops.
DEFAULT_MAX_OUTGOING = 1 * MIB
#: Refused requests on one connection before it is closed (sshd MaxAuthTries).
DEFAULT_MAX_ERRORS = 6
#: The content_size field's own limit: 4 GiB - 1.
DEFAULT_MAX_CONTENT_SIZE = MAX_UINT32
#: A wrong-size request's payload up to this is read and dropped (1607, the
#: connection stays); a larger one closes the connection unread.
DEFAULT_MAX_SKIP_PAYLOAD = 64 * KIB
#: Free disk space kept after every upload's worst case.
DEFAULT_MIN_FREE_DISK = 64 * MIB
#: A key is usable this long after it was issued or last used (KEY_BINDING.md).
DEFAULT_KEY_WINDOW = 3600.0
#: Registered clients in the database; 825 beyond it gets 1601 (HOSTILE B5).
DEFAULT_MAX_CLIENTS = 100_000
#: Registrations per address per minute (HOSTILE B5): far above what a real
#: client does (one per run), far below a flood that fills ``max_clients``.
#: 0 is off (load tests raise it explicitly).
DEFAULT_REGISTRATIONS_PER_MINUTE = 30
#: Variant 8: after 901, wait this long for an 828 before answering 1604.
DEFAULT_RETRY_ACK_DELAY = 1.0
#: Failed decryptions under one AES key before the key is dead (server/budget.py).
DEFAULT_MAX_DECRYPTION_FAILURES_PER_KEY = 3
#: Failed decryptions per client per hour before its uploads are refused.
DEFAULT_MAX_DECRYPTION_FAILURES_PER_HOUR = 10
#: Share of the disk space free for uploads that one address may reserve.
DEFAULT_MAX_DISK_SHARE_PER_ADDRESS = 0.5


@dataclass(frozen=True)
class Limits:
    """Every bound the server enforces; see the module constants for why."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_address: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS
    message_deadline: float = DEFAULT_MESSAGE_DEADLINE
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    min_content_rate: int = DEFAULT_MIN_CONTENT_RATE
    max_outgoing: int = DEFAULT_MAX_OUTGOING
    max_errors: int = DEFAULT_MAX_ERRORS
    max_content_size: int = DEFAULT_MAX_CONTENT_SIZE
    max_skip_payload: int = DEFAULT_MAX_SKIP_PAYLOAD
    min_free_disk: int = DEFAULT_MIN_FREE_DISK
    key_window: float = DEFAULT_KEY_WINDOW
    max_clients: int = DEFAULT_MAX_CLIENTS
    registrations_per_minute: int = DEFAULT_REGISTRATIONS_PER_MINUTE
    retry_ack_delay: float = DEFAULT_RETRY_ACK_DELAY
    #: Short, not SQLite's usual seconds: the whole loop waits (HOSTILE G2).
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT
    max_decryption_failures_per_key: int = DEFAULT_MAX_DECRYPTION_FAILURES_PER_KEY
    max_decryption_failures_per_hour: int = DEFAULT_MAX_DECRYPTION_FAILURES_PER_HOUR
    max_disk_share_per_address: float = DEFAULT_MAX_DISK_SHARE_PER_ADDRESS

    def __post_init__(self) -> None:
        for name in (
            "max_connections",
            "max_errors",
            "max_outgoing",
            "min_content_rate",
            "max_decryption_failures_per_key",
            "max_decryption_failures_per_hour",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("message_deadline", "idle_timeout", "key_window"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not 0 < self.max_disk_share_per_address <= 1:
            raise ValueError("max_disk_share_per_address must be within (0, 1]")
        if not 0 < self.max_content_size <= MAX_UINT32:
            raise ValueError(f"max_content_size must be within 1..{MAX_UINT32}")
        for name in (
            "max_connections_per_address",
            "max_skip_payload",
            "min_free_disk",
            "max_clients",
            "registrations_per_minute",
            "retry_ack_delay",
            "busy_timeout",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} cannot be negative")
