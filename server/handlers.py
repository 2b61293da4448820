"""One function per request code, and :class:`FilePacket` for 828.

Handlers see the request event and where it came from (:class:`Peer`); they
return an :class:`Outcome` (the response, if any) or raise
``RemoteProtocolError`` for 1607. They know nothing of sockets or of the
connection model (variant 7): the channel applies that.

Server faults (:class:`StorageError`, ``sqlite3.Error``) propagate to the
channel, which answers 1607 and keeps serving (HOSTILE.md G1, G2).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import dataclass
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
    RemoteProtocolError,
    RequestCode,
    SendPublicKey,
)
from protocol import crypto
from protocol.codes import CLIENT_ID_SIZE
from protocol.events import Response
from protocol.upload import DecryptionFailed, IncomingFile, is_first_packet

from . import crashpoints
from .app import App, Peer
from .binding import bind, check_key_use, check_registration
from .storage.db import ClientRow
from .storage.files import StorageError, TempFile, unique_stored_name
from .uploads import Upload, UploadState

log = logging.getLogger(__name__)

#: The disk room a first packet is checked against is told only to about
#: 1/64 of itself (6 bits): enough to accept what fits, too coarse to read
#: the free space, or others' uploads, byte by byte by probing sizes.
DISK_ROOM_PRECISION_BITS = 6


@dataclass
class Outcome:
    """What a request led to.

    ``deferred`` is a response sent later unless an 828 starts first (901,
    variant 8); ``final`` is False after a non-final 828 packet; ``refused``
    marks an answer that is a refusal although it is not 1607 (1601, and a
    1606 that registers nothing): it counts toward the connection's errors
    and does not keep the connection alive.
    """

    response: Response | None = None
    deferred: Response | None = None
    client: str = ""
    detail: str = ""
    final: bool = True
    refused: bool = False


def _refuse(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, close=False)


def client_label(name: str, client_id: bytes) -> str:
    """How a client appears in the log: name/id-hex."""
    return f"{name}/{client_id.hex()}"


def printable(name: bytes) -> str:
    """A wire name for the log: quoted, control characters escaped."""
    return repr(name.decode("utf-8", errors="backslashreplace"))


def _new_client_id(app: App) -> bytes:
    while True:
        client_id = os.urandom(CLIENT_ID_SIZE)
        if app.db.client_by_id(client_id) is None:
            return client_id


def _registration_address(app: App, client: ClientRow) -> str | None:
    """The address a keyless registration belongs to, or None once it has lapsed.

    Until its 826, a registration is the address's that made it: nothing
    from elsewhere may move its binding, replace it or attach a key to it.
    After the key window it has lapsed: it holds its name no longer, does not
    count toward ``max_clients``, and the next 825 or 827 for the name
    registers it afresh.
    """
    binding = app.db.binding(client.id)
    if binding is None or app.wall_clock() - binding.issued_at > app.limits.key_window:
        return None
    return binding.address


def _can_register(app: App, peer: Peer, replacing: bool) -> str | None:
    """Why a new registration is refused (HOSTILE.md B5), or None."""
    keyless_since = app.wall_clock() - app.limits.key_window
    if not replacing and app.db.count_live_clients(keyless_since) >= app.limits.max_clients:
        return "client limit reached"
    if not app.registrations.allow(peer.address):
        return "registration rate limit for this address"
    return None


def _register_name(app: App, peer: Peer, name: str, replace: ClientRow | None) -> bytes:
    """Insert a keyless client bound to the peer's address; return its id.

    Raises:
        sqlite3.IntegrityError: the name was taken meanwhile.
    """
    client_id = _new_client_id(app)
    now = app.wall_clock()
    with app.db.transaction():
        if replace is not None:
            app.db.delete_client(replace.id)
        app.db.insert_client(client_id, name, now)
        bind(app.db, client_id, peer.address, now)
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
    return None


def register(app: App, peer: Peer, event: Register) -> Outcome:
    """825: a new name gets a fresh id; a keyless name of this address is registered anew."""
    existing = app.db.client_by_name(event.name)
    refusal = _why_name_is_held(app, peer, existing) or _can_register(
        app, peer, replacing=existing is not None
    )
    if refusal:
        return Outcome(RegistrationFailed(), client=event.name, detail=refusal, refused=True)
    try:
        client_id = _register_name(app, peer, event.name, existing)
    except sqlite3.IntegrityError:
        return Outcome(RegistrationFailed(), client=event.name, detail="name taken", refused=True)
    app.live_registrations.hold(client_id, peer)
    detail = "keyless registration replaced" if existing else ""
    return Outcome(
        Registered(client_id=client_id),
        client=client_label(event.name, client_id),
        detail=detail,
    )


def send_public_key(app: App, peer: Peer, event: SendPublicKey) -> Outcome:
    """826: store the key once and answer with a fresh AES key under it."""
    client = app.db.client_by_id(event.client_id)
    if client is None or client.name != event.name:
        raise _refuse("826 for an unknown client id, or another client's name")
    if client.public_key is not None:
        raise _refuse("the client already has a public key; it is never replaced")
    now = app.wall_clock()
    check_registration(app.db, client, peer.address, now, app.limits.key_window)
    try:
        public_key = crypto.import_public_key(event.public_key)
    except CryptoError as exc:
        raise _refuse(f"unusable public key: {exc}") from None
    aes_key = crypto.new_aes_key()
    sealed = crypto.encrypt_aes_key(public_key, aes_key)
    with app.db.transaction():
        app.db.set_keys(client.id, event.public_key, aes_key, now)
        bind(app.db, client.id, peer.address, now)
    crashpoints.reached("key.committed")
    app.live_registrations.release(client.id)
    return Outcome(
        PublicKeyReceived(client_id=client.id, encrypted_aes_key=sealed),
        client=client_label(client.name, client.id),
    )


def _register_by_reconnect(app: App, peer: Peer, name: str, replace: ClientRow | None) -> Outcome:
    """Variant 9: 827 for an unknown (or lapsed keyless) name registers it; 1606 carries the id."""
    refusal = _can_register(app, peer, replacing=replace is not None)
    if refusal:
        raise _refuse(refusal)
    try:
        client_id = _register_name(app, peer, name, replace)
    except sqlite3.IntegrityError:
        raise _refuse("name registered meanwhile") from None
    return Outcome(
        ReconnectRefused(client_id=client_id),
        client=client_label(name, client_id),
        detail="unknown name: registered afresh, no key yet",
    )


def reconnect(app: App, peer: Peer, event: Reconnect) -> Outcome:
    """827: a fresh AES key, or 1606 with the id variant 9 calls for."""
    client = app.db.client_by_name(event.name)
    now = app.wall_clock()
    if client is None:
        return _register_by_reconnect(app, peer, event.name, None)
    keyless_address = _registration_address(app, client) if client.public_key is None else None
    if client.public_key is None and keyless_address is None:
        return _register_by_reconnect(app, peer, event.name, client)
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
        with app.db.transaction():
            bind(app.db, client.id, peer.address, now)
            app.db.note_seen(client.id, now)
        return Outcome(ReconnectRefused(client_id=client.id), client=label, detail="no public key yet")
    try:
        public_key = crypto.import_public_key(client.public_key)
    except CryptoError:
        return Outcome(
            ReconnectRefused(client_id=client.id),
            client=label,
            detail="stored key unusable",
            refused=True,
        )
    aes_key = crypto.new_aes_key()
    sealed = crypto.encrypt_aes_key(public_key, aes_key)
    app.uploads.discard_client(client.id, "the client got a new AES key")
    with app.db.transaction():
        app.db.set_aes_key(client.id, aes_key, now)
        bind(app.db, client.id, peer.address, now)
    crashpoints.reached("key.committed")
    app.budget.forget_key(client.id)
    return Outcome(Reconnected(client_id=client.id, encrypted_aes_key=sealed), client=label)


def _keyed_client(app: App, peer: Peer, client_id: bytes) -> ClientRow:
    """The client whose key this request uses, if the binding and the budget allow it."""
    client = app.db.client_by_id(client_id)
    if client is None:
        raise _refuse("unknown client id")
    now = app.wall_clock()
    check_key_use(app.db, client, peer.address, now, app.limits.key_window)
    if app.budget.key_dead(client.id, client.aes_key):
        raise _refuse("key refused after failed decryptions; reconnect (827) for a fresh key")
    app.db.note_seen(client.id, now)
    return client


def _completed_upload(app: App, peer: Peer, event) -> tuple[ClientRow, Upload]:
    """The upload a 900/901/902 speaks of: completed under the client's current key.

    Raises:
        RemoteProtocolError: 1607; nothing is changed.
    """
    client = _keyed_client(app, peer, event.client_id)
    upload = app.uploads.completed(client.id, event.file_name.text)
    if upload is None or upload.aes_key != client.aes_key:
        raise _refuse(
            f"no upload of {printable(event.file_name.text)} was completed under the current key"
        )
    return client, upload


def _verdict_outcome(client: ClientRow, upload: Upload, detail: str) -> Outcome:
    return Outcome(
        Acknowledged(client_id=client.id),
        client=client_label(client.name, client.id),
        detail=f"{printable(upload.file_name)} {detail}",
    )


def _install_pending(app: App, upload: Upload) -> None:
    """900 for a pending version: rename it onto the stored file, then mark it verified.

    In this order a crash leaves either the previous file with its row, or the
    new file with the previous row's flag (HOSTILE.md G3): never a Verified
    flag set on content the client did not confirm.
    """
    temp = upload.temp
    try:
        temp.install(upload.stored_name)
    finally:
        if temp.installed:  # even if only the folder sync failed: a retry of 900 records it
            app.uploads.installed(upload)
    path_name = app.store.path_name(upload.client_id, upload.stored_name)
    with app.db.transaction():
        app.db.upsert_file(upload.client_id, upload.file_name, path_name)
        app.db.set_verified(upload.client_id, upload.file_name, True)


def crc_ok(app: App, peer: Peer, event: CrcOk) -> Outcome:
    """900: the upload is verified: install a pending version, or set the flag (idempotent)."""
    client, upload = _completed_upload(app, peer, event)
    if upload.dropped:
        raise _refuse("nothing to verify: this upload was given up (901/902)")
    crashpoints.reached("verify.before_commit")
    if upload.pending:
        _install_pending(app, upload)
        detail = "verified; replaces the stored version"
    else:
        with app.db.transaction():
            app.db.set_verified(client.id, upload.file_name, True)
        detail = "verified"
    crashpoints.reached("verify.committed")
    return _verdict_outcome(client, upload, detail)


def crc_retry(app: App, peer: Peer, event: CrcRetry) -> Outcome:
    """901: the file will come again; 1604 only if no 828 follows in time."""
    client, upload = _completed_upload(app, peer, event)
    crashpoints.reached("retry.received")
    app.uploads.drop_pending(upload, "the client's cksum differed (901)")
    return Outcome(
        deferred=Acknowledged(client_id=client.id),
        client=client_label(client.name, client.id),
        detail=f"{printable(upload.file_name)} to be sent again",
    )


def crc_abort(app: App, peer: Peer, event: CrcAbort) -> Outcome:
    """902: the client gives up: an installed upload stays unverified (decision 5), a pending one goes."""
    client, upload = _completed_upload(app, peer, event)
    crashpoints.reached("verify.before_commit")
    if upload.pending or upload.dropped:
        app.uploads.drop_pending(upload, "the client gave up (902)")
        detail = "given up; the stored version stays as it was"
    else:
        with app.db.transaction():
            app.db.set_verified(client.id, upload.file_name, False)
        detail = "kept unverified"
    crashpoints.reached("verify.committed")
    return _verdict_outcome(client, upload, detail)


HANDLERS: dict[RequestCode, Callable[[App, Peer, object], Outcome]] = {
    RequestCode.REGISTER: register,
    RequestCode.SEND_PUBLIC_KEY: send_public_key,
    RequestCode.RECONNECT: reconnect,
    RequestCode.CRC_OK: crc_ok,
    RequestCode.CRC_RETRY: crc_retry,
    RequestCode.CRC_ABORT: crc_abort,
}


class FilePacket:
    """828: one packet on one connection, streamed into the client's upload.

    A refusal found at the start or in the middle is kept and raised by
    :meth:`end`, so that 1607 comes once, after the packet's content. The
    upload may be discarded while the packet streams (a new key, its
    deadline): the rest of the packet is then dropped and refused at its end.
    """

    def __init__(
        self,
        app: App,
        peer: Peer,
        channel: object,
        per_request: bool,
        event: FilePacketStarted,
        is_open: Callable[[object], bool],
    ) -> None:
        self._app = app
        self._peer = peer
        self._channel = channel
        self._per_request = per_request
        self._upload: Upload | None = None
        self._error: Exception | None = None
        self._drop = False
        self._is_last = True
        self.client = event.client_id.hex()
        try:
            self._start(event, is_open)
        except (RemoteProtocolError, StorageError, sqlite3.Error) as exc:
            self._error = exc

    def _start(self, event: FilePacketStarted, is_open: Callable[[object], bool]) -> None:
        app = self._app
        client = _keyed_client(app, self._peer, event.client_id)
        self.client = client_label(client.name, client.id)
        upload = app.uploads.get(client.id)
        if upload is not None and upload.held_by_other(self._channel, is_open):
            raise _refuse("another connection is sending this client's file")
        if is_first_packet(event):
            if upload is not None and not upload.continues_on(self._channel):
                raise _refuse("another upload of this client is in progress")
            upload = self._begin(client, event)
        elif upload is None or upload.state is UploadState.COMPLETE:
            raise _refuse("packet of a file that is not being sent")
        else:
            self._is_last = upload.is_last(event.packet_number, event.total_packets)
            if upload.state is UploadState.FAILED:
                self._drop = True
                if self._is_last:
                    app.uploads.discard(upload, "end of a failed attempt")
                return
            self._upload = upload
            try:
                upload.incoming.start_packet(event)
            except RemoteProtocolError as exc:
                self._fail(exc)
                return
        self._upload = upload
        self._is_last = upload.is_last(event.packet_number, event.total_packets)
        app.uploads.packet_started(upload, self._channel)

    def _begin(self, client: ClientRow, event: FilePacketStarted) -> Upload:
        """Check the first packet, the budget and the disk; open the temp file."""
        app = self._app
        total = max(event.packet_number, event.total_packets)
        swapped = event.packet_number > event.total_packets

        def upload(incoming: IncomingFile | None = None, temp: TempFile | None = None) -> Upload:
            return Upload(
                client.id, self._peer.address, client.aes_key, event.file_name.text,
                total, swapped, app.monotonic(), incoming, temp,
            )

        try:
            if app.budget.uploads_blocked(client.id):
                raise _refuse("too many failed decryptions for this client in the last hour")
            incoming = IncomingFile(
                client.aes_key, event, max_content_size=app.limits.max_content_size
            )
            self._check_disk(incoming.max_plain_size)
            temp = app.store.new_temp(client.id)
        except (RemoteProtocolError, StorageError):
            if total > 1:
                # Swallow the rest of this attempt quietly: one 1607 per attempt.
                marker = upload()
                app.uploads.begin(marker)
                app.uploads.packet_done(marker, self._channel, self._per_request)
            raise
        started = upload(incoming, temp)
        app.uploads.begin(started)
        return started

    def _check_disk(self, need: int) -> None:
        """Room for the file's worst case, within this address's share (HOSTILE.md D1).

        The room is rounded down coarsely (:func:`coarse`), so that probing
        sizes tells a client the magnitude of the free space, not its bytes.
        """
        app, limits = self._app, self._app.limits
        usable = app.store.free_space() - limits.min_free_disk
        unreserved = usable - app.uploads.reserved_bytes()
        address_room = (
            int(usable * limits.max_disk_share_per_address)
            - app.uploads.reserved_bytes(self._peer.address)
        )
        if need > coarse(min(unreserved, address_room)):
            raise _refuse("not enough disk space for this file")

    def _fail(self, exc: Exception) -> None:
        """The attempt is over: drop its file, keep the error for the reply."""
        self._error = exc
        upload, self._upload = self._upload, None
        if upload is None:
            return
        if isinstance(exc, DecryptionFailed):
            self._app.budget.record(upload.client_id, upload.aes_key)
        if self._app.uploads.get(upload.client_id) is not upload:
            return  # discarded meanwhile
        if self._is_last:
            self._app.uploads.discard(upload, f"failed: {exc}")
        else:
            self._app.uploads.fail(upload, str(exc))
            self._app.uploads.packet_done(upload, self._channel, self._per_request)

    def _still_receiving(self) -> bool:
        """Whether the upload is still this client's, receiving (not discarded meanwhile)."""
        upload = self._upload
        if upload is None:
            return False
        if upload.state is UploadState.RECEIVING and self._app.uploads.get(upload.client_id) is upload:
            return True
        self._upload = None
        if self._error is None:
            self._error = _refuse("the upload was discarded while its packet was arriving")
        return False

    def feed(self, data: bytes) -> None:
        """A piece of the packet's content."""
        if not self._still_receiving():
            return
        upload = self._upload
        try:
            plain = upload.incoming.receive(data)
            if plain:
                upload.temp.write(plain)
        except (RemoteProtocolError, StorageError) as exc:
            self._fail(exc)
            return
        upload.progressed(len(data), self._app.monotonic())

    def end(self) -> Outcome:
        """The packet's content is complete: 1603 after the last one.

        Raises:
            RemoteProtocolError, StorageError, sqlite3.Error: answer 1607.
        """
        if self._error is None and not self._drop:
            self._still_receiving()
        if self._error is not None:
            raise self._error
        if self._drop:
            return Outcome(client=self.client, detail="packet of a failed attempt dropped", final=self._is_last)
        upload = self._upload
        try:
            tail = upload.incoming.end_packet()
            if tail:
                upload.temp.write(tail)
        except (RemoteProtocolError, StorageError) as exc:
            self._fail(exc)
            raise
        incoming = upload.incoming
        if not incoming.done:
            self._app.uploads.packet_done(upload, self._channel, self._per_request)
            return Outcome(
                client=self.client,
                detail=f"packet {incoming.next_packet - 1}/{incoming.total_packets}",
                final=False,
            )
        try:
            return self._complete(upload)
        except BaseException:
            self._app.uploads.discard(upload, "could not be stored")
            raise

    def _complete(self, upload: Upload) -> Outcome:
        """Sync; a first upload is recorded (Verified false) and installed, a later one waits."""
        app = self._app
        result = upload.incoming.result
        upload.temp.sync()
        previous = app.db.file_row(upload.client_id, upload.file_name)
        owner = None if self._per_request else self._channel
        if previous is None:
            name = unique_stored_name(
                upload.file_name,
                (path.rsplit("/", 1)[-1] for path in app.db.path_names(upload.client_id)),
            )
            path_name = app.store.path_name(upload.client_id, name)
            self._install_first(upload, name, path_name)
            app.uploads.complete(upload, pending=False, stored_name=name, owner=owner)
            stored = f"stored as {path_name}"
        else:
            name = previous.path_name.rsplit("/", 1)[-1]
            crashpoints.reached("upload.pending")
            app.uploads.complete(upload, pending=True, stored_name=name, owner=owner)
            stored = f"kept as a pending version of {previous.path_name} until 900"
        elapsed = app.monotonic() - upload.started
        return Outcome(
            FileReceived(
                client_id=upload.client_id,
                content_size=result.content_size,
                file_name=result.file_name,
                cksum=result.cksum,
            ),
            client=self.client,
            detail=(
                f"file {printable(upload.file_name)} {stored}:"
                f" {result.plain_size} bytes in {elapsed:.3f} s"
            ),
        )

    def _install_first(self, upload: Upload, name: str, path_name: str) -> None:
        """Record the row (Verified false), then rename: a name's first upload.

        HOSTILE.md G1: if the rename or the folder sync fails, the row is
        removed and nothing stays under the final name.
        """
        app = self._app
        with app.db.transaction():
            app.db.upsert_file(upload.client_id, upload.file_name, path_name)
        crashpoints.reached("upload.committed")
        try:
            upload.temp.install(name)
        except StorageError:
            if upload.temp.installed:
                app.store.remove(path_name)
            with app.db.transaction():
                app.db.delete_file(upload.client_id, upload.file_name)
            raise


def coarse(amount: int) -> int:
    """``amount`` rounded down to 1/2**DISK_ROOM_PRECISION_BITS of its magnitude (0 if negative)."""
    if amount <= 0:
        return 0
    step = 1 << max(0, amount.bit_length() - 1 - DISK_ROOM_PRECISION_BITS)
    return amount - amount % step
