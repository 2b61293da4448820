"""The resend path through a line that corrupts uploads (docs/PROTOCOL.md, variant 12).

A proxy on 127.0.0.1 flips one content byte of each of the first N uploads
of a file (each upload a different byte; the rest pass untouched) in front of
the real server. The fake clients are written from the wire facts of real
ones, with the requests built by hand: a *cksum* client compares the 1603's
CRC with the POSIX cksum of its file, a *zlib* client with ``zlib.crc32``;
both upload a file up to 4 times, send 901 after attempts 1-3 (and the next
upload at once), 902 after the 4th, 900 when the values match.

A 901 does not say whether the file was corrupted or the client computes the
other CRC: the server tells them apart by the file that comes next (the same
plaintext again, or another one), so a clean upload after corrupted ones is
answered in the flavour the client was last answered in.
"""

from __future__ import annotations

import socket
import threading
import zlib
from collections import Counter

import pytest
from Crypto.Cipher import AES, PKCS1_OAEP
from Crypto.Hash import SHA1
from Crypto.Util.Padding import pad

from edition_helpers import db_rows
from helpers import IO_TIMEOUT, private_key, proxied_connections, unique_name
from protocol import cksum, crypto
from wire_by_hand import name, request, u16, u32

REQUEST_HEADER = 23
RESPONSE_HEADER = 7
#: content_size(4) orig_file_size(4) packet_number(2) total_packets(2) file_name(255)
PACKET_FIELDS = 267
NAME_AT = 12
MAX_ATTEMPTS = 4
BLOCK = 16
DATA = bytes(range(256)) * 32  # 8 KiB


class FlippingProxy:
    """Forwards 127.0.0.1 connections to the server; flips a content byte of the first N uploads of a file."""

    def __init__(self, target: tuple[str, int], corrupt: int) -> None:
        self.target = target
        self.corrupt = corrupt
        self.uploads: Counter[bytes] = Counter()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()[:2]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        for client, server in proxied_connections(self.listener, self.target):
            threading.Thread(target=self._requests, args=(client, server), daemon=True).start()
            threading.Thread(target=self._answers, args=(server, client), daemon=True).start()

    def _requests(self, source: socket.socket, sink: socket.socket) -> None:
        buffer = bytearray()
        while data := source.recv(65536):
            buffer += data
            while len(buffer) >= REQUEST_HEADER:
                size = int.from_bytes(buffer[19:23], "little")
                if len(buffer) < REQUEST_HEADER + size:
                    break
                message = bytearray(buffer[: REQUEST_HEADER + size])
                del buffer[: REQUEST_HEADER + size]
                if int.from_bytes(message[17:19], "little") == 828:
                    self._maybe_flip(message)
                sink.sendall(message)
        sink.shutdown(socket.SHUT_WR)

    def _maybe_flip(self, message: bytearray) -> None:
        at = REQUEST_HEADER + NAME_AT
        file_name = bytes(message[at : at + 255]).split(b"\0")[0]
        self.uploads[file_name] += 1
        attempt = self.uploads[file_name]
        if attempt <= self.corrupt:
            # A different block each time, far from the padded last block.
            message[REQUEST_HEADER + PACKET_FIELDS + BLOCK * (2 + attempt) + 5] ^= 0x5A

    @staticmethod
    def _answers(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        sink.close()


def _read(sock: socket.socket, count: int) -> bytes:
    data = sock.recv(count, socket.MSG_WAITALL)
    assert len(data) == count, f"closed after {len(data)} of {count} bytes"
    return data


def _answer(sock: socket.socket, expected: int) -> bytes:
    head = _read(sock, RESPONSE_HEADER)
    code, size = int.from_bytes(head[1:3], "little"), int.from_bytes(head[3:7], "little")
    assert code == expected, (code, expected)
    return _read(sock, size)


def fake_client(address: tuple[str, int], crc) -> tuple[int, int]:
    """One client's whole run: register, key, the file up to 4 times; (uploads, last verdict code)."""
    text = unique_name("resend").encode()
    key = private_key()
    with socket.create_connection(address, timeout=IO_TIMEOUT) as sock:
        sock.sendall(request(825, name(text)))
        client_id = _answer(sock, 1600)
        sock.sendall(request(826, name(text) + crypto.export_public_key(key), client_id))
        sealed = _answer(sock, 1602)[16:]
        aes_key = PKCS1_OAEP.new(key, hashAlgo=SHA1).decrypt(sealed)
        ciphertext = AES.new(aes_key, AES.MODE_CBC, iv=bytes(BLOCK)).encrypt(pad(DATA, BLOCK))
        fields = u32(len(ciphertext)) + u32(len(DATA)) + u16(1) + u16(1) + name(b"f.bin")
        for attempt in range(1, MAX_ATTEMPTS + 1):
            sock.sendall(request(828, fields + ciphertext, client_id))
            received = _answer(sock, 1603)
            if int.from_bytes(received[-4:], "little") == crc(DATA):
                verdict = 900
            elif attempt < MAX_ATTEMPTS:
                sock.sendall(request(901, name(b"f.bin"), client_id))
                continue  # the file again at once: no answer to the 901
            else:
                verdict = 902
            sock.sendall(request(verdict, name(b"f.bin"), client_id))
            _answer(sock, 1604)
            return attempt, verdict
    raise AssertionError("unreachable: the 4th attempt ends in 900 or 902")


#: How many uploads each client needs after N corrupted ones (None: it gives up
#: with 902): the cksum client is answered its own CRC from the start, the
#: zlib client once the same plaintext came twice.
NEEDED = {
    "cksum": {0: 1, 1: 2, 2: 3, 3: 4, 4: None},
    "zlib": {0: 2, 1: 3, 2: 4, 3: None, 4: None},
}
CRCS = {"cksum": cksum, "zlib": zlib.crc32}


@pytest.mark.parametrize("corrupted", range(MAX_ATTEMPTS + 1))
@pytest.mark.parametrize("computes", ["cksum", "zlib"])
def test_protocol_variant_12_a_clean_upload_after_corrupted_ones_is_verified(server, computes, corrupted):
    proxy = FlippingProxy(server.address, corrupted)
    try:
        uploads, verdict = fake_client(proxy.address, CRCS[computes])
    finally:
        proxy.close()
    needed = NEEDED[computes][corrupted]
    assert proxy.uploads[b"f.bin"] == uploads
    if needed is None:
        assert (uploads, verdict) == (MAX_ATTEMPTS, 902)
    else:
        assert (uploads, verdict) == (needed, 900)
    rows = db_rows(server, "SELECT Verified, Cksum FROM files WHERE FileName = 'f.bin'")
    if needed is None:
        assert [verified for verified, _ in rows] == [0]
    else:
        assert rows == [(1, cksum(DATA))]  # the clean file, verified
