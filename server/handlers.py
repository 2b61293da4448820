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
from protocol.upload import IncomingFile, is_first_packet

from . import crashpoints
from .app import App, Peer
from .binding import bind, check_key_use, check_registration
from .storage.db import ClientRow, FileRow
from .storage.files import StorageError, stored_name
from .uploads import UploadSession

log = logging.getLogger(__name__)


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


def _can_register(app: App, peer: Peer, replacing: bool) -> str | None:
    """Why a new registration is refused (HOSTILE.md B5), or None."""
    if not replacing and app.db.count_clients() >= app.limits.max_clients:
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
    return client_id


def register(app: App, peer: Peer, event: Register) -> Outcome:
    """825: a new name gets a fresh id; a keyless name is registered anew."""
    existing = app.db.client_by_name(event.name)
    if existing is not None and existing.public_key is not None:
        return Outcome(RegistrationFailed(), client=event.name, detail="name taken", refused=True)
    holder = app.live_registrations.get(existing.id) if existing is not None else None
    if holder is not None and holder is not peer:
        return Outcome(
            RegistrationFailed(),
            client=event.name,
            detail="name being registered by another connection",
            refused=True,
        )
    refusal = _can_register(app, peer, replacing=existing is not None)
    if refusal:
        return Outcome(RegistrationFailed(), client=event.name, detail=refusal, refused=True)
    try:
        client_id = _register_name(app, peer, event.name, existing)
    except sqlite3.IntegrityError:
        return Outcome(RegistrationFailed(), client=event.name, detail="name taken", refused=True)
    if existing is not None:
        app.live_registrations.pop(existing.id, None)
    app.live_registrations[client_id] = peer
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
    app.live_registrations.pop(client.id, None)
    return Outcome(
        PublicKeyReceived(client_id=client.id, encrypted_aes_key=sealed),
        client=client_label(client.name, client.id),
    )


def reconnect(app: App, peer: Peer, event: Reconnect) -> Outcome:
    """827: a fresh AES key, or 1606 with the id variant 9 calls for."""
    client = app.db.client_by_name(event.name)
    now = app.wall_clock()
    if client is None:
        refusal = _can_register(app, peer, replacing=False)
        if refusal:
            raise _refuse(refusal)
        try:
            client_id = _register_name(app, peer, event.name, None)
        except sqlite3.IntegrityError:
            raise _refuse("name registered meanwhile") from None
        return Outcome(
            ReconnectRefused(client_id=client_id),
            client=client_label(event.name, client_id),
            detail="unknown name: registered afresh, no key yet",
        )
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
    return Outcome(Reconnected(client_id=client.id, encrypted_aes_key=sealed), client=label)


def _keyed_client(app: App, peer: Peer, client_id: bytes) -> ClientRow:
    """The client whose key this request uses, if the binding allows it."""
    client = app.db.client_by_id(client_id)
    if client is None:
        raise _refuse("unknown client id")
    now = app.wall_clock()
    check_key_use(app.db, client, peer.address, now, app.limits.key_window)
    app.db.note_seen(client.id, now)
    return client


def _received_file(app: App, peer: Peer, event) -> tuple[ClientRow, FileRow]:
    client = _keyed_client(app, peer, event.client_id)
    row = app.db.file_row(client.id, event.file_name.text)
    if row is None:
        raise _refuse(f"no file {printable(event.file_name.text)} was received")
    return client, row


def _record_verdict(app: App, peer: Peer, event, verified: bool, outcome: str) -> Outcome:
    """900 and 902: store the client's verdict on the file, answer 1604."""
    client, row = _received_file(app, peer, event)
    crashpoints.reached("verify.before_commit")
    with app.db.transaction():
        app.db.set_verified(client.id, row.file_name, verified)
    crashpoints.reached("verify.committed")
    return Outcome(
        Acknowledged(client_id=client.id),
        client=client_label(client.name, client.id),
        detail=f"{printable(row.file_name)} {outcome}",
    )


def crc_ok(app: App, peer: Peer, event: CrcOk) -> Outcome:
    """900: mark the file verified (idempotent)."""
    return _record_verdict(app, peer, event, True, "verified")


def crc_retry(app: App, peer: Peer, event: CrcRetry) -> Outcome:
    """901: the file will come again; 1604 only if no 828 follows in time."""
    client, row = _received_file(app, peer, event)
    crashpoints.reached("retry.received")
    return Outcome(
        deferred=Acknowledged(client_id=client.id),
        client=client_label(client.name, client.id),
        detail=f"{printable(row.file_name)} to be sent again",
    )


def crc_abort(app: App, peer: Peer, event: CrcAbort) -> Outcome:
    """902: the client gives up; the file stays, not verified (decision 5)."""
    return _record_verdict(app, peer, event, False, "kept unverified")


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
    :meth:`end`, so that 1607 comes once, after the packet's content.
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
        self._channel = channel
        self._per_request = per_request
        self._session: UploadSession | None = None
        self._error: Exception | None = None
        self._drop = False
        self._is_last = True
        self._event = event
        self.client = event.client_id.hex()
        try:
            self._start(peer, event, is_open)
        except (RemoteProtocolError, StorageError, sqlite3.Error) as exc:
            self._error = exc

    def _start(self, peer: Peer, event: FilePacketStarted, is_open) -> None:
        app = self._app
        client = _keyed_client(app, peer, event.client_id)
        self.client = client_label(client.name, client.id)
        session = app.uploads.get(client.id)
        if session is not None and session.held_by_other(self._channel, is_open):
            raise _refuse("another connection is sending this client's file")
        if is_first_packet(event):
            if session is not None:
                app.uploads.discard(session, "replaced by a new upload")
            try:
                session = self._new_session(client, event)
            except (RemoteProtocolError, StorageError):
                if max(event.packet_number, event.total_packets) > 1:
                    # Swallow the rest of this attempt quietly: one 1607 per attempt.
                    marker = UploadSession.failed_attempt(client.id, event, app.monotonic())
                    app.uploads.start(marker)
                    app.uploads.packet_done(marker, self._channel, self._per_request)
                raise
            app.uploads.start(session)
        elif session is None:
            raise _refuse("packet of a file that is not being sent")
        else:
            self._is_last = session.is_last(event)
            if session.failed:
                self._drop = True
                if self._is_last:
                    app.uploads.discard(session, "end of a failed attempt")
                return
            try:
                session.incoming.start_packet(event)
            except RemoteProtocolError as exc:
                self._session = session
                self._fail(exc)
                return
        self._is_last = session.incoming.total_packets == session.incoming.next_packet
        self._session = session
        app.uploads.packet_started(session, self._channel)

    def _new_session(self, client: ClientRow, event: FilePacketStarted) -> UploadSession:
        """Check the first packet and the disk; open the temp file."""
        app = self._app
        incoming = IncomingFile(
            client.aes_key, event, max_content_size=app.limits.max_content_size
        )
        need = incoming.max_plain_size
        if app.store.free_space() - app.uploads.reserved_bytes() - need < app.limits.min_free_disk:
            raise _refuse("not enough disk space for this file")
        temp = app.store.new_temp(client.id)
        return UploadSession(client.id, event, app.monotonic(), incoming, temp)

    def _fail(self, exc: Exception) -> None:
        """The attempt is over: drop its file, keep the error for the reply."""
        self._error = exc
        session, self._session = self._session, None
        if session is None:
            return
        if self._is_last:
            self._app.uploads.discard(session, f"failed: {exc}")
        else:
            self._app.uploads.fail(session, str(exc))
            self._app.uploads.packet_done(session, self._channel, self._per_request)

    def feed(self, data: bytes) -> None:
        """A piece of the packet's content."""
        if self._session is None:
            return
        try:
            plain = self._session.incoming.receive(data)
            if plain:
                self._session.temp.write(plain)
        except (RemoteProtocolError, StorageError) as exc:
            self._fail(exc)

    def end(self) -> Outcome:
        """The packet's content is complete: 1603 after the last one.

        Raises:
            RemoteProtocolError, StorageError, sqlite3.Error: answer 1607.
        """
        if self._error is not None:
            raise self._error
        if self._drop:
            return Outcome(client=self.client, detail="packet of a failed attempt dropped", final=self._is_last)
        session = self._session
        try:
            tail = session.incoming.end_packet()
            if tail:
                session.temp.write(tail)
        except (RemoteProtocolError, StorageError) as exc:
            self._fail(exc)
            raise
        incoming = session.incoming
        if not incoming.done:
            self._app.uploads.packet_done(session, self._channel, self._per_request)
            return Outcome(
                client=self.client,
                detail=f"packet {incoming.next_packet - 1}/{incoming.total_packets}",
                final=False,
            )
        try:
            return self._complete(session)
        except BaseException:
            self._app.uploads.discard(session, "could not be stored")
            raise

    def _complete(self, session: UploadSession) -> Outcome:
        """Sync, record (Verified false), install, then answer 1603."""
        app = self._app
        result = session.incoming.result
        name = stored_name(session.file_name)
        path_name = app.store.path_name(session.client_id, name)
        session.temp.sync()
        previous = app.db.file_row(session.client_id, session.file_name)
        with app.db.transaction():
            app.db.upsert_file(session.client_id, session.file_name, path_name)
        crashpoints.reached("upload.committed")
        try:
            session.temp.install(name)
        except StorageError:
            self._undo_install(session, previous, path_name)
            raise
        app.uploads.finish(session)
        elapsed = app.monotonic() - session.started
        return Outcome(
            FileReceived(
                client_id=session.client_id,
                content_size=result.content_size,
                file_name=result.file_name,
                cksum=result.cksum,
            ),
            client=self.client,
            detail=(
                f"file {printable(session.file_name)} stored as {path_name}:"
                f" {result.plain_size} bytes in {elapsed:.3f} s"
            ),
        )

    def _undo_install(self, session: UploadSession, previous: FileRow | None, path_name: str) -> None:
        """After a failed install: the previous row (or none), nothing new under a final name.

        HOSTILE.md G1. If the rename failed, the previous file is untouched and
        its row is put back as it was (Verified included). If only the folder
        sync after the rename failed, a new name's file is removed with its
        row; a new version has already replaced the previous file, so its row
        (Verified false) stays true to what is on disk.
        """
        app = self._app
        if session.temp.installed:
            if previous is not None:
                return
            app.store.remove(path_name)
        with app.db.transaction():
            if previous is None:
                app.db.delete_file(session.client_id, session.file_name)
            else:
                app.db.upsert_file(previous.id, previous.file_name, previous.path_name)
                app.db.set_verified(previous.id, previous.file_name, previous.verified)
