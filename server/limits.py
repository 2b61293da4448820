"""The server's limits: one frozen dataclass, each field a command-line flag.

Each limit is declared once, with its default, its help text, its bounds and
the reason for its default (the comment above it); ``python -m server``
generates its flags from these declarations (``--max-errors`` for
``max_errors``), and :class:`Limits` checks the bounds when it is built.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from protocol.codes import MAX_UINT32

from .peer import DEFAULT_IPV6_PREFIX, IPV6_BITS

KIB = 1024
MIB = 1024 * KIB
HELP = "help"
MINIMUM = "minimum"
#: The value must be strictly greater than the minimum.
EXCLUSIVE = "exclusive"
MAXIMUM = "maximum"


def size_text(count: int) -> str:
    """A byte count for the log: in bytes below a MiB, else in MiB."""
    return f"{count} bytes" if abs(count) < MIB else f"{count / MIB:.1f} MiB"


class LimitOutOfBounds(ValueError):
    """A limit's value outside its bounds: ``name`` is the field, ``problem`` says why."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name} {problem}")
        self.name = name
        self.problem = problem


def limit(
    default: float,
    help: str,
    *,
    minimum: float = 0,
    exclusive: bool = False,
    maximum: float = math.inf,
) -> Any:
    """Declare one limit: its default, its flag's help and its bounds."""
    return dataclasses.field(
        default=default,
        metadata={HELP: help, MINIMUM: minimum, EXCLUSIVE: exclusive, MAXIMUM: maximum},
    )


@dataclass(frozen=True)
class Limits:
    """Every bound the server enforces."""

    #: Like sshd ``MaxStartups``: a ceiling on open connections.
    max_connections: int = limit(
        1024, "open connections; one more is accepted and closed at once", minimum=1
    )
    #: Far above what one real client opens (one connection, or one per
    #: request in turn), so that one address cannot hold every slot; a NAT or
    #: a load test raises it (sshd ``PerSourceMaxStartups``).
    max_connections_per_address: int = limit(
        64,
        "open connections per IP address, far above one client's needs;"
        " raise it for clients behind one NAT (0: no limit)",
    )
    #: gunicorn's ``timeout``.
    message_deadline: float = limit(
        30.0, "seconds to finish a message once its first byte came", exclusive=True
    )
    #: OpenSSH ClientAlive, uvicorn keep-alive.
    idle_timeout: float = limit(
        60.0, "seconds a connection may stay silent between messages", exclusive=True
    )
    #: Apache mod_reqtimeout ``MinRate``: each received byte of an 828
    #: extends its deadline by 1/rate seconds.
    min_content_rate: int = limit(
        KIB, "bytes/s below which a slow 828 packet runs out of time", minimum=1
    )
    #: asyncio's and uvicorn's high-water marks.
    max_outgoing: int = limit(
        MIB, "bytes of unsent responses before reading from a peer stops", minimum=1
    )
    #: sshd ``MaxAuthTries``.
    max_errors: int = limit(
        6, "refused requests on one connection before it is closed", minimum=1
    )
    #: The content_size field's own limit.
    max_content_size: int = limit(
        MAX_UINT32,
        "largest file accepted, in ciphertext bytes (content_size)",
        minimum=1,
        maximum=MAX_UINT32,
    )
    #: Enough for any well-framed request of a wrong size; a larger payload
    #: would have to be read just to be dropped.
    max_skip_payload: int = limit(
        64 * KIB,
        "wrong-size payloads up to this many bytes are skipped (1607, connection"
        " kept); larger ones close the connection unread",
    )
    #: Room for the database and the log after every upload's worst case.
    min_free_disk: int = limit(64 * MIB, "bytes of disk that must stay free after an upload")
    #: docs/KEY_BINDING.md.
    key_window: float = limit(
        3600.0,
        "seconds an AES key stays usable after it was issued or last used"
        " (see docs/KEY_BINDING.md)",
        exclusive=True,
    )
    #: Bounds the database against registration floods.
    #: A client uploading several files at once (``--jobs``) sends each on its
    #: own connection; each upload reserves room and a blob in the store, so a few.
    max_uploads_per_client: int = limit(
        8,
        "files one client may be sending at once (each of another name), new versions"
        " of stored files waiting for their 900 included",
        minimum=1,
    )
    max_clients: int = limit(100_000, "registered clients; more registrations get 1601")
    #: Off by default: the protocol has no way to delete a file, so a quota
    #: is a policy the operator chooses (docs/OPERATING.md).
    max_bytes_per_client: int = limit(
        0,
        "bytes one client may keep: its stored files (verified or not), its new"
        " versions waiting for their 900 and its uploads in progress; an upload"
        " that would go over it gets 1607 (0: no limit)",
    )
    #: So that no one address can fill ``max_clients`` (a NAT of many users
    #: raises it): 1,000 clients per address at the default cap.
    max_client_share_per_address: float = limit(
        0.01,
        "share (0 to 1] of --max-clients that the clients registered from one IP address"
        " (an IPv6 /64: --ipv6-prefix) may take; at least one client",
        exclusive=True,
        maximum=1,
    )
    #: A registration that got its key and never stored a file holds a name
    #: and a share of the cap; a week is far beyond a real first upload.
    unused_client_lapse: float = limit(
        7 * 24 * 3600.0,
        "seconds after its last key (826/827) that a client which never stored a file"
        " lapses and is deleted, freeing its name and its share of --max-clients (0: never)",
    )
    #: Far above what a real client does (one per run), far below a flood
    #: that fills ``max_clients``.
    registrations_per_minute: int = limit(
        30, "registrations per IP address per minute (0: no limit)"
    )
    #: One connection's turn is at most 4 requests; these two bound all the
    #: connections of one address together, so that many connections from
    #: one address cannot fill every loop round with their work and stall
    #: the other clients (server/shares.py, bench/fairness.py).
    requests_per_address_per_round: int = limit(
        8,
        "requests the connections of one IP address may have handled in one"
        " loop round, together; the rest wait for the next rounds (0: no limit)",
    )
    #: A file made durable costs the blob store's syncs in the loop thread,
    #: milliseconds each where another request costs microseconds: one per
    #: address per round keeps another client's round trip short.
    durable_files_per_address_per_round: int = limit(
        1,
        "uploads completed (or confirmed versions installed) for one IP address"
        " in one loop round, together; the rest wait for the next rounds (0: no limit)",
    )
    #: Variant 8 (docs/PROTOCOL.md): clients that wait for 1604 wait this long.
    retry_ack_delay: float = limit(
        1.0, "seconds to wait after 901 for an 828 before answering 1604"
    )
    #: docs/EDITIONS.md, "Telling the editions apart": a 2024A client asks
    #: again as soon as it has read the header, a round trip; a 2023C client
    #: waits this long once, at its registration.
    first_register_hold: float = limit(
        0.5,
        "seconds the id of a connection's first 1025 waits behind its 2100 header"
        " (a 2024A client asks again within it; a 2023C client then reads it)",
        minimum=0,
        exclusive=True,
    )
    #: server/budget.py: each failed decryption answers a guess about the key.
    max_decryption_failures_per_key: int = limit(
        3,
        "failed decryptions under one AES key before the key is refused until"
        " the next 826/827",
        minimum=1,
    )
    max_decryption_failures_per_hour: int = limit(
        10,
        "failed decryptions per client in any hour before its uploads are"
        " refused for the rest of that hour",
        minimum=1,
    )
    #: One address may not reserve all the disk for its uploads.
    max_disk_share_per_address: float = limit(
        0.5,
        "share (0 to 1] of the disk free for uploads that the uploads from one"
        " IP address may reserve",
        exclusive=True,
        maximum=1,
    )

    #: A client's run writes a few lines (connect, key, close) and about three
    #: per file (827, 828, 900): some sixty files a minute from one address
    #: at INFO, while a flood of refused requests writes a few hundred lines a
    #: minute instead of hundreds of thousands (server/lograte.py, journald's
    #: RateLimitBurst per peer).
    log_lines_per_address: int = limit(
        200,
        "event lines logged per IP address per --log-rate-interval; past it its"
        " lines go to DEBUG and one line counts them (0: no limit)",
    )
    #: journald's RateLimitIntervalSec is 30 s; a minute halves the summaries.
    log_rate_interval: float = limit(
        60.0, "seconds of the window of --log-lines-per-address", exclusive=True
    )
    #: RFC 6177: a host or a home network gets a /64; counting each IPv6
    #: address alone would give one machine 2^64 "addresses" (server/peer.py).
    ipv6_prefix: int = limit(
        DEFAULT_IPV6_PREFIX,
        "IPv6 peers count as one address per network of this many leading bits for"
        " every per-address limit (128: each address alone); key binding stays per"
        " exact address",
        minimum=1,
        maximum=IPV6_BITS,
    )

    #: systemd's default stop timeout is 90 s (then SIGKILL): well within it.
    drain_timeout: float = limit(
        30.0,
        "seconds uploads in progress get to finish after SIGTERM (or Ctrl-C) before"
        " their connections are cut; 0: cut at once",
    )

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            problem = out_of_bounds(spec, getattr(self, spec.name))
            if problem:
                raise LimitOutOfBounds(spec.name, problem)


def out_of_bounds(spec: dataclasses.Field, value: float) -> str | None:
    """Why ``value`` is outside a limit's bounds, or None."""
    minimum, maximum = spec.metadata[MINIMUM], spec.metadata[MAXIMUM]
    if spec.metadata[EXCLUSIVE] and value <= minimum:
        return f"must be greater than {minimum:g}"
    if value < minimum:
        return f"must be at least {minimum:g}"
    if value > maximum:
        return f"must be at most {maximum:g}"
    return None
