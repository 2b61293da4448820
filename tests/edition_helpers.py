"""Helpers of the tests that speak every edition (through ``ClientConnection``)."""

from __future__ import annotations

import os
import sqlite3

from helpers import ANY_ID, Identity, RawClient, private_key, unique_name
from protocol import ClientConnection, PublicKeyReceived, Register, Registered, SendFilePacket, SendPublicKey, crypto
from protocol.editions import EDITION_2024A
from protocol.events import UnknownResponse


def register(client: RawClient, name_text: str):
    """Register in the client's edition; the answer (Registered, or a refusal).

    A first 1025 that registers is answered with the 2100 header alone, its
    id held a moment (docs/EDITIONS.md): a 2023C client waits for the id, a
    2024A client reads the header alone and registers again.
    """
    if client.edition is not EDITION_2024A:
        return client.request(Register(client_id=ANY_ID, name=name_text))
    client.conn = ClientConnection(EDITION_2024A, header_only_unknown=True)
    answer = client.request(Register(client_id=ANY_ID, name=name_text))
    if isinstance(answer, UnknownResponse):
        assert (answer.code, answer.payload_size) == (2100, 16), answer
        answer = client.request(Register(client_id=ANY_ID, name=name_text))
    client.conn = ClientConnection(EDITION_2024A)
    return answer


def keyed(client: RawClient, name_text: str | None = None, key=None) -> Identity:
    """Register and send a public key in the client's edition."""
    name_text = name_text or unique_name(client.edition.name)
    registered = register(client, name_text)
    assert isinstance(registered, Registered), registered
    key = key or private_key()
    public = crypto.export_public_key(key)
    answer = client.request(SendPublicKey(client_id=registered.client_id, name=name_text, public_key=public))
    assert isinstance(answer, PublicKeyReceived), answer
    size = client.edition.aes_key_size
    aes_key = crypto.decrypt_aes_key(key, answer.encrypted_aes_key, size)
    return Identity(name_text, registered.client_id, key, aes_key)


def send_file(client: RawClient, who: Identity, file_name: str, data: bytes):
    """The file in the edition's form: one request, or 828-style packets of 4,000 bytes."""
    packet_size = None if client.edition.whole_file else 4000
    ciphertext = crypto.encrypt(who.aes_key, data)
    chunks = [ciphertext] if packet_size is None else [
        ciphertext[i : i + packet_size] for i in range(0, len(ciphertext), packet_size)
    ]
    for number, chunk in enumerate(chunks, start=1):
        client.send(SendFilePacket(who.client_id, len(ciphertext), len(data), number, len(chunks),
                                   file_name, content=chunk))
    return client.receive()


def stored(server, who: Identity, file_name: str) -> bytes:
    """A stored file's content: in the server's data folder, or read through its ``--blobs``."""
    if server.blobs:
        return read_stored(server, who.client_id, file_name)
    return (server.data_dir / "received_files" / who.client_id.hex() / file_name).read_bytes()


def read_stored(server, client_id: bytes, file_name: str) -> bytes:
    """A file as the server's stores hold it: its row's blob, read as ``admin verify`` reads it
    (the store's credentials are the server's environment's)."""
    from unittest import mock

    from server.storage.factory import StoreUrls, open_blob_reader, open_inventory

    urls = StoreUrls.given(server.metadata, server.blobs, server.data_dir)
    names = (file_name, file_name.encode())
    with mock.patch.dict(os.environ, server.env):
        inventory = open_inventory(urls.metadata)
        try:
            (row,) = [f for f in inventory.files(client_id) if f.file_name in names]
        finally:
            inventory.close()
        with open_blob_reader(urls.blobs).open(row.path_name) as file:
            return file.read()


def verified(server, who: Identity, file_name: str) -> int:
    # PostgreSQL keeps a file name as its bytes (bytea); SQLite as text where it is UTF-8.
    name = file_name.encode() if server.metadata else file_name
    return int(db_rows(server, "SELECT Verified FROM files WHERE ID = ? AND FileName = ?",
                       who.client_id, name)[0][0])


def db_rows(server, sql, *args):
    """Rows of the server's metadata store: SQLite in its data folder, or its --metadata URL."""
    if server.metadata:
        import psycopg

        with psycopg.connect(server.metadata) as db:
            return [tuple(row) for row in db.execute(sql.replace("?", "%s"), args).fetchall()]
    with sqlite3.connect(server.data_dir / "defensive.db") as db:
        return db.execute(sql, args).fetchall()
