"""One function per request, and the start of an 828, on the stores and the uploads.

A handler sees the request event, the connection it came on
(:class:`~server.peer.Peer`) and the edition it speaks
(:class:`~server.peer.Speaking`: the AES key size, whether a returning client
sends its key again); it returns an :class:`~server.outcome.Outcome`
(its answer, what to log), or raises :class:`~server.errors.Refusal`
(1607). Store faults (:class:`~server.errors.StorageFault`) propagate to the
session, which answers 1607 and keeps serving. A handler sees only requests
the session admitted: from an address the client is bound to, but for 827
and an 826 to a keyed client (Rule 7 of server/session.py). Handlers know nothing of
sockets, nor of what a connection model owes (the session's table does).

An 828 spans many events: :func:`start_file_packet` hands the packet to the
client's uploads (server/upload.py, the one owner of a file being received),
which say where its content goes; :func:`file_packet_outcome` turns how the
packet ended into an outcome.
"""

from __future__ import annotations

import os
from typing import Callable

from protocol import (
    Acknowledged,
    CrcAbort,
    CrcOk,
    CrcRetry,
    CryptoError,
    FilePacketStarted,
    FileReceived,
    PublicKeyReceived,
    Reconnect,
    ReconnectRefused,
    Reconnected,
    Register,
    Registered,
    RegistrationFailed,
    SendPublicKey,
    crypto,
)
from protocol.codes import CLIENT_ID_SIZE
from protocol.events import Request
from protocol.printable import quoted

from . import crashpoints
from .app import App
from .binding import bind, use_key
from .errors import NameTaken, NoRoom, Refusal, StorageFault
from .labels import client_label
from .outcome import Outcome
from .packets import (
    Dropped,
    DroppedPacket,
    FileComplete,
    IncomingPacket,
    MoreToCome,
    PacketEnd,
    Refused,
    start_packet,
)
from .peer import Peer, Speaking
from .phases import Upload
from .storage import ClientRow, has_room

def _new_client_id() -> bytes:
    """A fresh client id: 128 random bits, unread.

    Two ids meet with odds of about one in 2**128 per pair, and a store
    refuses an id it holds (its key) as it refuses a taken name, so that a
    registration never overwrites another; checking first would cost a read
    (a round trip to a database server) on every 825.
    """
    return os.urandom(CLIENT_ID_SIZE)


def _registration_address(app: App, client: ClientRow) -> str | None:
    """The address a keyless registration belongs to, or None once it has lapsed.

    Until its 826, a registration is the address's that made it: nothing
    from elsewhere may move its binding, replace it or attach a key to it.
    After the key window it has lapsed: it holds its name no longer, is
    deleted before it could keep a registration from fitting under
    ``max_clients``, and the next 825 or 827 for the name registers it afresh.
    """
    binding = app.metadata.binding(client.id)
    if binding is None or app.wall_clock() - binding.issued_at > app.limits.key_window:
        return None
    return binding.address


#: Why an 825 is refused for room: the cap, or the address group's share of it.
CAP_REACHED = "client limit reached"
SHARE_REACHED = "this address's share of the client limit reached"
#: A limit a registration does not meet: a replacement leaves the total as it was, and its
#: group's count too when the replaced row was registered from the same group (the largest
#: bigint: PostgreSQL takes the limits as parameters).
NO_LIMIT = 2**63 - 1


def _why_no_room(
    app: App, peer: Peer, replace: ClientRow | None, counts: tuple[int, int] | None = None
) -> str | None:
    """Why one more client does not fit: the cap, or the peer's address group's share of it.

    A registration that replaces another (a lapsed or the peer's own keyless
    one) leaves the total as it is, and its group's count too if the
    replaced row was registered from the same group. The counts are numbers
    the store keeps with its rows; only when one is reached are the lapsed
    clients deleted (reading only those: indexes by age) and the counts read
    again. So a registration refused at the cap costs the same with 100
    clients as with 100,000. ``counts``: the total and the peer's group's,
    read with the name (:func:`register`); after a purge they are read again.
    """
    grows_group = replace is None or app.group_of(replace.registered_from) != peer.group

    def full(counts: tuple[int, int] | None) -> str | None:
        if replace is None:  # one more client, in all and in its group: read together
            total, in_group = counts or app.metadata.client_counts(peer.group)
            if total >= app.limits.max_clients:
                return CAP_REACHED
        elif grows_group:
            in_group = counts[1] if counts else app.metadata.count_clients(peer.group)
        else:
            return None
        if in_group >= app.client_share:
            return SHARE_REACHED
        return None

    if full(counts) is None:
        return None
    app.purge_lapsed_clients()
    return full(None)


def _can_register(
    app: App, peer: Peer, replace: ClientRow | None, counts: tuple[int, int] | None = None
) -> str | None:
    """Why a new registration is refused (client cap and share, rate per address), or None
    (``counts``: see :func:`_why_no_room`)."""
    refusal = _why_no_room(app, peer, replace, counts)
    if refusal:
        return refusal
    if not app.registrations.allow(peer.group):
        return "registration rate limit for this address"
    return None


def _room_for(app: App, peer: Peer, replace: ClientRow | None) -> tuple[int, int]:
    """The limits (the total's, the peer's group's) a registration replacing ``replace``
    (None: none) must be below, checked by the store with its insert."""
    if replace is None:
        return app.limits.max_clients, app.client_share
    grows_group = app.group_of(replace.registered_from) != peer.group
    return NO_LIMIT, app.client_share if grows_group else NO_LIMIT


def _register_name(
    app: App, peer: Peer, name: str, replace: ClientRow | None, speaking: Speaking
) -> bytes:
    """Insert a keyless client bound to the peer's address, in place of ``replace`` if any;
    return its id. The store checks the room with the insert (:func:`_room_for`), as in an
    825's usual case: the counts the rules read may have changed since (another node's
    registration), and nodes sharing one store keep the cap between them.

    Raises:
        NameTaken: the name was taken meanwhile.
        Refusal: the room was taken meanwhile (its reason; nothing is written).
    """
    client_id = _new_client_id()
    now = app.wall_clock()
    room = _room_for(app, peer, replace)
    with app.metadata.transaction():
        if replace is not None:
            app.metadata.delete_client(replace.id)
        found, counts, inserted = app.metadata.register_if_free(
            client_id, name, now, speaking.record, peer.address, peer.group, room
        )
        if not inserted:  # the savepoint undoes the deletion
            if found is None and not has_room(counts, room):
                raise Refusal(CAP_REACHED if counts[0] >= room[0] else SHARE_REACHED)
            raise NameTaken(name)
        bind(app.metadata, client_id, peer.address, now)
    if replace is not None:
        app.live_registrations.release(replace.id)
    return client_id


def _why_name_is_held(app: App, peer: Peer, existing: ClientRow | None) -> str | None:
    """Why 825 may not take this name from this connection, or None."""
    if existing is None:
        return None
    if existing.public_key is not None:
        return "name taken"
    address = _registration_address(app, existing)
    if address is None:
        return None
    if address != peer.address:
        return "name being registered from another address"
    holder = app.live_registrations.holder(existing.id)
    if holder is not None and holder is not peer:
        return "name being registered by another connection"
    if holder is None and app.live_registrations.held_elsewhere(existing.id):
        return "name being registered by another connection"
    return None


def _register_if_free(
    app: App, peer: Peer, name: str, speaking: Speaking
) -> tuple[bytes | None, ClientRow | None, tuple[int, int]]:
    """An 825's usual case, in one read of the store (one round trip on a database server):
    a name no one holds, room under the cap and the address's share, the rate allowing it:
    registered (its id, and the registration counted by the rate). Otherwise nothing is
    written: None, with the name's row and the counts, for the rules of :func:`register`
    to answer from, as they would have without this step."""
    if not app.registrations.allows(peer.group):  # a refusal of some kind: the rules say which
        existing, counts = app.metadata.client_by_name_and_counts(name, peer.group)
        return None, existing, counts
    client_id = _new_client_id()
    now = app.wall_clock()
    room = (app.limits.max_clients, app.client_share)
    try:
        with app.metadata.transaction():
            existing, counts, inserted = app.metadata.register_if_free(
                client_id, name, now, speaking.record, peer.address, peer.group, room
            )
            if inserted:
                bind(app.metadata, client_id, peer.address, now)
    except StorageFault:
        # the store cannot write (locked, read-only, down): a refusal needs no write, and
        # is still answered from a read; a registration that needs one fails (1607)
        existing, counts = app.metadata.client_by_name_and_counts(name, peer.group)
        if existing is None and has_room(counts, room):
            raise
        return None, existing, counts
    if not inserted:
        return None, existing, counts
    app.registrations.allow(peer.group)  # allowed above: counted, as the rules count it
    return client_id, None, counts


def register(app: App, peer: Peer, event: Register, speaking: Speaking) -> Outcome:
    """825: a new name gets a fresh id; a keyless name of this address is registered anew."""
    client_id, existing, counts = _register_if_free(app, peer, event.name, speaking)
    if client_id is None:
        refusal = _why_name_is_held(app, peer, existing) or _can_register(
            app, peer, existing, counts
        )
        if refusal:
            return Outcome(RegistrationFailed(), event.name, refusal, refused=True)
        try:
            client_id = _register_name(app, peer, event.name, existing, speaking)
        except NameTaken:
            return Outcome(RegistrationFailed(), event.name, "name taken", refused=True)
        except Refusal as exc:
            return Outcome(RegistrationFailed(), event.name, str(exc), refused=True)
    app.live_registrations.hold(client_id, peer)
    detail = "keyless registration replaced" if existing else ""
    label = client_label(event.name, client_id)
    return Outcome(Registered(client_id=client_id), label, detail)


def send_public_key(app: App, peer: Peer, event: SendPublicKey, speaking: Speaking) -> Outcome:
    """826: store the key once and answer with a fresh AES key under it.

    An edition without a reconnect (2022) sends its key again instead: the
    same key, byte for byte, gets a fresh AES key as a reconnect would. A
    keyless client's 826 reaches here only from the address that registered
    it, within the key window (Rule 7 of server/session.py).
    """
    client = app.metadata.client_by_id(event.client_id)
    if client is None or client.name != event.name:
        raise Refusal("826 for an unknown client id, or another client's name")
    if client.public_key is not None:
        if not speaking.edition.has_reconnect and client.public_key == event.public_key:
            outcome = _fresh_key(app, peer, client, speaking, PublicKeyReceived)
            return Outcome(outcome.response, outcome.client, "returning client")
        raise Refusal("the client already has a public key; it is never replaced")
    now = app.wall_clock()
    try:
        public_key = crypto.read_public_key(event.public_key)
    except CryptoError as exc:
        raise Refusal(f"unusable public key: {exc}") from None
    aes_key = crypto.new_aes_key(speaking.edition.aes_key_size)
    sealed = crypto.encrypt_aes_key(public_key, aes_key)
    with app.metadata.transaction():
        app.metadata.set_keys(client.id, event.public_key, aes_key, now)
        bind(app.metadata, client.id, peer.address, now)
    crashpoints.reached("key.committed")
    app.live_registrations.release(client.id)
    return Outcome(
        PublicKeyReceived(client_id=client.id, encrypted_aes_key=sealed),
        client_label(client.name, client.id),
    )


def _register_by_reconnect(
    app: App, peer: Peer, name: str, replace: ClientRow | None, speaking: Speaking
) -> Outcome:
    """Variant 9: 827 for an unknown (or lapsed keyless) name registers it; 1606 carries the id."""
    refusal = _can_register(app, peer, replace)
    if refusal:
        raise Refusal(refusal)
    try:
        client_id = _register_name(app, peer, name, replace, speaking)
    except NameTaken:
        raise Refusal("name registered meanwhile") from None
    return Outcome(
        ReconnectRefused(client_id=client_id),
        client_label(name, client_id),
        "unknown name: registered afresh, no key yet",
    )


def reconnect(app: App, peer: Peer, event: Reconnect, speaking: Speaking) -> Outcome:
    """827: a fresh AES key, or 1606 with the id variant 9 calls for."""
    client = app.metadata.client_by_name(event.name)
    now = app.wall_clock()
    if client is None:
        return _register_by_reconnect(app, peer, event.name, None, speaking)
    keyless_address = _registration_address(app, client) if client.public_key is None else None
    if client.public_key is None and keyless_address is None:
        return _register_by_reconnect(app, peer, event.name, client, speaking)
    label = client_label(client.name, client.id)
    if client.id != event.client_id:
        # Never reveal the id of the name's owner: echo the request's id.
        return Outcome(
            ReconnectRefused(client_id=event.client_id),
            client=event.name,
            detail="client id does not match the name",
            refused=True,
        )
    if client.public_key is None:
        if keyless_address != peer.address:
            return Outcome(
                ReconnectRefused(client_id=client.id),
                client=label,
                detail="no public key yet; registered from another address, binding kept",
                refused=True,
            )
        with app.metadata.transaction():
            bind(app.metadata, client.id, peer.address, now)
            app.metadata.note_seen(client.id, now)
        return Outcome(ReconnectRefused(client_id=client.id), label, "no public key yet")
    return _fresh_key(app, peer, client, speaking, Reconnected)


def _fresh_key(
    app: App,
    peer: Peer,
    client: ClientRow,
    speaking: Speaking,
    answer: type[Reconnected] | type[PublicKeyReceived],
) -> Outcome:
    """A keyed client comes back: a fresh AES key under its stored public key."""
    label = client_label(client.name, client.id)
    try:
        public_key = crypto.read_public_key(client.public_key or b"")
    except CryptoError:
        if answer is PublicKeyReceived:
            raise Refusal("stored public key unusable") from None
        return Outcome(
            ReconnectRefused(client_id=client.id),
            client=label,
            detail="stored key unusable",
            refused=True,
        )
    aes_key = crypto.new_aes_key(speaking.edition.aes_key_size)
    sealed = crypto.encrypt_aes_key(public_key, aes_key)
    now = app.wall_clock()
    app.uploads.discard_client(client.id, "the client got a new AES key")
    with app.metadata.transaction():
        app.metadata.set_aes_key(client.id, aes_key, now)
        bind(app.metadata, client.id, peer.address, now)
    crashpoints.reached("key.committed")
    return Outcome(answer(client_id=client.id, encrypted_aes_key=sealed), label)


def _keyed_client(app: App, peer: Peer, client_id: bytes) -> tuple[ClientRow, bytes]:
    """The client whose key this request uses, and the key, if the budget allows it.

    The session admitted the request first: the peer's address may use the
    client's keys (Rule 7 of server/session.py).

    Raises:
        Refusal: 1607, before anything is decrypted.
    """
    client = app.metadata.client_by_id(client_id)
    if client is None:
        raise Refusal("unknown client id")
    now = app.wall_clock()
    aes_key = use_key(app.metadata, client, now)
    if app.budget.key_dead(client.id, aes_key):
        raise Refusal("key refused after failed decryptions; reconnect (827) for a fresh key")
    app.metadata.note_seen(client.id, now)
    return client, aes_key


def _completed_upload(
    app: App, peer: Peer, event: CrcOk | CrcRetry | CrcAbort
) -> tuple[ClientRow, Upload]:
    """The upload a 900/901/902 speaks of: completed under the client's current key.

    Raises:
        Refusal: 1607; nothing is changed.
    """
    client, aes_key = _keyed_client(app, peer, event.client_id)
    name = event.file_name.text
    # No name: a 2022 CRC request without payload, about the last file sent.
    if name:
        upload = app.uploads.completed(client.id, name)
    else:
        upload = app.uploads.last_completed(client.id)
    if upload is None or upload.aes_key != aes_key:
        raise Refusal(
            f"no upload of {quoted(event.file_name.text)} was completed under the current key"
        )
    return client, upload


def _verdict_outcome(
    app: App, client: ClientRow, upload: Upload, detail: str
) -> Outcome:
    """The 1604 of a verdict; held with the file's 1603 while the file waits to take its name."""
    return Outcome(
        Acknowledged(client_id=client.id),
        client_label(client.name, client.id),
        f"{quoted(upload.file_name)} {detail}",
        awaits_install=app.uploads.installs.awaiting_install(upload),
    )


def crc_ok(app: App, peer: Peer, event: CrcOk, speaking: Speaking) -> Outcome:
    """900: the upload is verified: a pending version is installed, or the flag set (idempotent)."""
    client, upload = _completed_upload(app, peer, event)
    detail = app.uploads.confirm(upload)
    return _verdict_outcome(app, client, upload, detail)


def crc_retry(app: App, peer: Peer, event: CrcRetry, speaking: Speaking) -> Outcome:
    """901: the file will come again; 1604 only if no 828 follows in time."""
    client, upload = _completed_upload(app, peer, event)
    crashpoints.reached("retry.received")
    app.uploads.retry(upload)
    return _verdict_outcome(app, client, upload, "to be sent again")


def crc_abort(app: App, peer: Peer, event: CrcAbort, speaking: Speaking) -> Outcome:
    """902: the client gives up: an installed upload stays unverified, a pending one goes."""
    client, upload = _completed_upload(app, peer, event)
    detail = app.uploads.abandon(upload)
    return _verdict_outcome(app, client, upload, detail)


Handler = Callable[[App, Peer, Request, Speaking], Outcome]

#: The handler of every request but 828 (whose packets stream: see below), by its event.
HANDLERS: dict[type[Request], Handler] = {
    Register: register,  # type: ignore[dict-item]
    SendPublicKey: send_public_key,  # type: ignore[dict-item]
    Reconnect: reconnect,  # type: ignore[dict-item]
    CrcOk: crc_ok,  # type: ignore[dict-item]
    CrcRetry: crc_retry,  # type: ignore[dict-item]
    CrcAbort: crc_abort,  # type: ignore[dict-item]
}


def start_file_packet(
    app: App, peer: Peer, per_request: bool, event: FilePacketStarted
) -> tuple[str, IncomingPacket]:
    """828: the client (for the log) and where the packet's content goes.

    A refusal at the start is not raised: the packet's content must still be
    read, so the packet carries it (a :class:`Refused` end) and 1607 comes
    once, after the content.
    """
    try:
        client, aes_key = _keyed_client(app, peer, event.client_id)
    except (Refusal, StorageFault) as exc:
        refused = Refused.of(exc)
        return event.client_id.hex(), DroppedPacket(refused)
    label = client_label(client.name, client.id)
    return label, start_packet(app.uploads, client.id, aes_key, peer, per_request, event)


def file_packet_outcome(client: str, end: PacketEnd) -> Outcome:
    """The outcome of an 828 from how its packet ended.

    Raises:
        Refusal: the packet was refused (1607).
        StorageFault: a store failed while it was received.
    """
    if isinstance(end, FileComplete):
        result = end.result
        return Outcome(
            FileReceived(
                client_id=end.client_id,
                content_size=result.content_size,
                file_name=result.file_name,
                cksum=end.crc,
            ),
            client,
            end.detail,
            awaits_install=end.awaits_install,
        )
    if isinstance(end, MoreToCome):
        return Outcome(None, client, end.detail, final=False)
    if isinstance(end, Dropped):
        return Outcome(
            None,
            client,
            "packet of a failed attempt dropped",
            final=end.last,
        )
    if end.fault:
        raise StorageFault(end.reason)
    if end.no_room:
        raise NoRoom(end.reason)
    raise Refusal(end.reason)
