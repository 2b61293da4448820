"""Fuzz the server's connection handling: request streams into the real Channel and Session.

Run it from the repository root, for as long as you like (not in CI; one core):

    pip install atheris
    python tests/fuzz/fuzz_server.py -max_total_time=1800 -print_final_stats=1 fuzz-corpus/server/

All arguments are libFuzzer's; ``fuzz-corpus/server/`` (git-ignored) is created
and seeded with the valid sessions below if it does not exist. A finding is
written as ``crash-<sha1>`` (git-ignored; ``-artifact_prefix=/tmp/`` puts it
elsewhere) and replays with ``python tests/fuzz/fuzz_server.py crash-<sha1>``.
Without atheris the same target runs under hypothesis:

    python tests/fuzz/fuzz_server.py --hypothesis --max-examples 20000

What one input does. The real server objects (App, Channel, Session, the handlers,
uploads, SQLite and the file store) run in-process on a fresh copy of a data
folder on tmpfs that holds one client with a key (:data:`KNOWN_ID`). Sockets
and the selector are fakes, so an input is played deterministically and fast:
each record of the input is a piece of a stream on one of four connection
slots, fed to that slot's Channel in chunks cut at pseudo-random points, with
the loop's work (reads, writes, partial writes, a peer that stops reading,
timers on a fake clock, the turns and the end of each round through a fake
loop port, tests/fuzz/harness.py ``FakePort``) done as ``server/loop.py``
would. It drives the
Channel rather than the Session alone because half of what it checks is the
transport's (partial writes, a peer that stops reading, readiness spins);
the session's rules are unit-tested directly in tests/server/test_session.py.
Two encodings:

- *structured* (first byte even): a seed session (:func:`seed_sessions`: valid
  sessions built with ``protocol.ClientConnection``, incl. variants 1 and 4 to
  10) and up to eight corruptions, each picking a message, a field of it
  (header, name, sizes, packet numbers, content, key) and a new value, or
  truncating, inserting, dropping or duplicating a message, or changing how a
  record is played (slot, EOF, new connection, clock);
- *raw* (first byte odd): records of any bytes, each ``flags(1) length(2)
  body``.

The first bytes also choose the server's limits (defaults or tight ones),
the chunking and how much each fake send accepts. After the input: EOF on
every connection, the clock runs past every deadline, and the properties are
checked:

- nothing escapes the per-connection boundary: no log record with a
  traceback, none at ERROR or above (a server fault on a healthy tmpfs is a
  bug), no log message that fails to format, no exception out of a channel
  or a timer;
- every byte the server sent parses as well-formed responses (exact sizes,
  variant 11) and nothing is left half-sent; a connection never spins on
  readiness, and every connection ends closed;
- no upload, temp file (``.tmp-*``) or live registration is left; nothing
  is written outside ``received_files/<client-id-hex>/``, and there only
  regular files, each with a ``files`` row and each row with its file;
- the last 1603 for a file is true: the stored file's cksum and size;
- the database passes ``PRAGMA integrity_check``;
- the server still serves a normal session (827, an upload, 900).

For a deterministic stream the harness makes two things fixed that are random
in the server: the AES key it issues (:data:`AES_KEY`) and the id of a new
registration (:func:`_predictable_id`).

tests/fuzz/test_fuzz_server_quick.py runs a few hundred inputs in CI.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import logging
import os
import random
import shutil
import sqlite3
import struct
import sys
import tempfile
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from harness import FakePort, run_atheris

try:
    import atheris
except ImportError:  # the hypothesis fallback below
    atheris = None

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


def _import_code():
    # Coverage instrumentation only for a real atheris run, not under pytest.
    if atheris is not None and __name__ == "__main__" and "--hypothesis" not in sys.argv:
        with atheris.instrument_imports(include=["protocol", "server"]):
            import protocol
            import server.app
            import server.channel
            import server.handlers
    else:
        import protocol
        import server.app
        import server.channel
        import server.handlers
    return protocol, server


protocol, server = _import_code()

from Crypto.PublicKey import RSA  # noqa: E402

from protocol import crypto  # noqa: E402
from protocol.names import NameField  # noqa: E402
from server.app import App  # noqa: E402
from server.channel import Channel  # noqa: E402
from protocol.editions import EDITION_2022, EDITION_2023A, EDITION_2023C, EDITION_2024A, EDITIONS, V3, Edition  # noqa: E402
from protocol.wire import RESPONSE_HEADER_SIZE  # noqa: E402
from server.limits import Limits  # noqa: E402
from server.loop import serve  # noqa: E402
from server.peer import Peer  # noqa: E402
from server.session import Session  # noqa: E402
from server.storage.folder import RECEIVED_DIR, TEMP_PREFIX, FolderBlobs  # noqa: E402
from server.storage.names import stored_name  # noqa: E402
from server.storage.sqlite import DB_NAME, SqliteMetadata  # noqa: E402

# -- fixed facts of the harness ---------------------------------------------------

KNOWN_NAME = "fuzzer"
KNOWN_ID = bytes(range(0xA0, 0xB0))
#: The AES key the server issues during fuzzing (it is random in production).
AES_KEY = bytes(range(32))
WALL_BASE = 1_700_000_000.0
ADDRESS = "127.0.0.1"
#: Slot 3 comes from elsewhere: the key binding refuses it (HOSTILE C6).
STRANGER = "127.0.0.7"
SLOTS = 4
RECV_BUFFER_SIZE = 1024 * 1024
REQUEST_HEADER = struct.Struct("<16sBHI")
FILE_FIELDS = struct.Struct("<IIHH")
NAME_SIZE = 255
KEY_SIZE = 160
#: Seconds the clock moves for a record's "short" and "long" advance.
SHORT_ADVANCE = 1.5
#: Rounds of fake-selector work per byte fed before a connection counts as spinning.
MAX_ROUNDS = 2000

#: The limit profiles an input may choose.
LIMITS = (
    Limits(),
    Limits(max_errors=2, max_skip_payload=16, max_outgoing=64, max_content_size=100_000,
           retry_ack_delay=0.5),
    Limits(max_outgoing=1, max_errors=50, max_content_size=20_000),
    Limits(max_content_size=5000, message_deadline=5, idle_timeout=10, min_content_rate=1,
           max_clients=3, registrations_per_minute=2),
)


class Finding(AssertionError):
    """A property of the server does not hold."""


def _deterministic_key(seed: bytes):
    """An RSA-1024 key (160-byte DER) from a seed: the same in every run."""
    counter = [0]

    def randfunc(count: int) -> bytes:
        out = b""
        while len(out) < count:
            counter[0] += 1
            out += hashlib.sha256(seed + counter[0].to_bytes(8, "little")).digest()
        return out[:count]

    return RSA.generate(1024, randfunc=randfunc, e=crypto.PUBLIC_EXPONENT)


KNOWN_KEY = crypto.export_public_key(_deterministic_key(b"fuzz known client"))
OTHER_KEY = crypto.export_public_key(_deterministic_key(b"fuzz new client"))


def predictable_id(number: int) -> bytes:
    """The id of the number-th registration the harness makes (from 0)."""
    return hashlib.sha256(b"fuzz id %d" % number).digest()[:16]


#: The App of the input playing now (the harness sets it): the ids it holds are skipped.
_playing: list[App] = []


def _predictable_id() -> bytes:
    """The next predictable id the playing input's store does not hold yet."""
    app = _playing[-1]
    number = 0
    while app.metadata.client_by_id(predictable_id(number)) is not None:
        number += 1
    return predictable_id(number)


@contextlib.contextmanager
def _deterministic_server():
    """While an input plays: a fixed AES key, predictable ids, the log watched.

    Undone afterwards, so that importing this module (pytest does) changes
    nothing for other tests.
    """
    saved_id, saved_key = server.handlers._new_client_id, crypto.new_aes_key
    server.handlers._new_client_id = _predictable_id
    crypto.new_aes_key = lambda size=len(AES_KEY): AES_KEY[:size]
    loggers = [logging.getLogger(name) for name in ("server", "protocol")]
    saved_logging = [(lg.level, lg.propagate) for lg in loggers]
    for logger in loggers:
        logger.addHandler(_WATCH)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        yield
    finally:
        server.handlers._new_client_id, crypto.new_aes_key = saved_id, saved_key
        for logger, (level, propagate) in zip(loggers, saved_logging):
            logger.removeHandler(_WATCH)
            logger.setLevel(level)
            logger.propagate = propagate


# -- responses ------------------------------------------------------------------------


#: The 2100 header that answers a first 1025, whose id may be withheld.
HELD_ID_HEADER = (2100, 16)


def _editions_answering(code: int, size: int) -> list[Edition]:
    return [e for e in EDITIONS if (m := e.response(code)) and m.payload_size == size]


def _is_answer_header(head: bytes) -> bool:
    code, size = int.from_bytes(head[1:3], "little"), int.from_bytes(head[3:7], "little")
    return head[0] == protocol.VERSION and bool(_editions_answering(code, size))


class AnyEditionParser:
    """The server's answers, each of which must be well formed in some edition.

    A connection's edition can change under it (a 1025 series client turns
    out to be 2023C), so each answer is checked on its own: its code and
    size must be one edition's, and its payload must parse in it. The 2100
    that answers a first 1025 may come as its header alone (its id withheld
    from a 2024A client, docs/EDITIONS.md): it is, when an answer's header
    or the end of the stream follows it at once.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._eof = False

    def receive_data(self, data: bytes) -> None:
        if data:
            self._buffer += data
        else:
            self._eof = True

    def next_event(self):
        head = RESPONSE_HEADER_SIZE
        if len(self._buffer) < head:
            return self._waiting()
        code = int.from_bytes(self._buffer[1:3], "little")
        size = int.from_bytes(self._buffer[3:head], "little")
        editions = _editions_answering(code, size)
        if not editions:
            raise protocol.RemoteProtocolError(f"answer {code} of {size} bytes is no edition's")
        if (code, size) == HELD_ID_HEADER:
            after = bytes(self._buffer[head : 2 * head])
            if len(after) < head and not self._eof:
                return protocol.NEED_DATA
            if not after or (len(after) == head and _is_answer_header(after)):
                del self._buffer[:head]
                return self.next_event()
        if len(self._buffer) < head + size:
            return self._waiting()
        answer = bytes(self._buffer[: head + size])
        del self._buffer[: head + size]
        parser = protocol.ClientConnection(editions[0])
        parser.receive_data(answer)
        return parser.next_event()

    def _waiting(self):
        if not self._eof:
            return protocol.NEED_DATA
        if self._buffer:
            raise protocol.RemoteProtocolError("connection closed in the middle of an answer")
        return protocol.ConnectionClosed()


# -- inputs -------------------------------------------------------------------------


@dataclass
class Record:
    """A piece of one connection's stream and how it is played."""

    body: bytes
    slot: int = 0
    reopen: bool = False  # EOF on the slot's connection, then a new one
    eof: bool = False  # EOF after the body
    advance: int = 0  # clock before the body: 0, short (variant 8), timeouts, key window
    stall: bool = False  # the peer does not read during this record

    def flags(self) -> int:
        return (
            self.slot
            | self.reopen << 2
            | self.eof << 3
            | (self.advance & 3) << 4
            | self.stall << 6
        )

    @classmethod
    def from_flags(cls, flags: int, body: bytes) -> Record:
        return cls(
            body=body,
            slot=flags & 3,
            reopen=bool(flags & 4),
            eof=bool(flags & 8),
            advance=(flags >> 4) & 3,
            stall=bool(flags & 64),
        )


@dataclass(frozen=True)
class Control:
    """How an input is played, besides its records."""

    structured: bool = True
    limits: int = 0
    chunk_seed: int = 0
    max_chunk: int = 65536
    send_cap: int = 0  # 0: a send takes everything


CONTROL_SIZE = 5


def _control(data: bytes) -> Control:
    head = data[:CONTROL_SIZE].ljust(CONTROL_SIZE, b"\0")
    flags = head[0]
    return Control(
        structured=not flags & 1,
        limits=(flags >> 1) & 3,
        chunk_seed=head[1],
        max_chunk=(1 + int.from_bytes(head[2:4], "little")) * 4,
        send_cap=head[4] if flags & 8 else 0,
    )


def _control_bytes(c: Control) -> bytes:
    flags = (0 if c.structured else 1) | c.limits << 1 | (8 if c.send_cap else 0)
    return (
        bytes([flags, c.chunk_seed])
        + (max(1, c.max_chunk // 4) - 1).to_bytes(2, "little")
        + bytes([c.send_cap])
    )


def encode_raw(records: list[Record], control: Control = Control()) -> bytes:
    """A raw input that plays these records."""
    control = dataclasses.replace(control, structured=False)
    out = bytearray(_control_bytes(control))
    for record in records:
        body = record.body[:0xFFFF]
        out += bytes([record.flags()]) + len(body).to_bytes(2, "little") + body
    return bytes(out)


def _decode_raw(data: bytes) -> list[Record]:
    records, position = [], 0
    while position < len(data):
        flags = data[position]
        size = int.from_bytes(data[position + 1 : position + 3], "little")
        body = data[position + 3 : position + 3 + size]
        records.append(Record.from_flags(flags, body))
        position += 3 + size
    return records


# -- structured inputs: a seed session and corruptions --------------------------------


@dataclass
class Message:
    """One request of a seed, cut into fields (byte ranges of ``data``)."""

    data: bytearray
    record: int

    def fields(self) -> list[tuple[int, int]]:
        """(offset, size) of each field: header fields, then the payload's."""
        fields = [(0, 16), (16, 1), (17, 2), (19, 4)]
        if len(self.data) < REQUEST_HEADER.size:
            return fields
        code = int.from_bytes(self.data[17:19], "little")
        at = REQUEST_HEADER.size
        if code in (825, 827, 900, 901, 902):
            fields.append((at, NAME_SIZE))
        elif code == 826:
            fields += [(at, NAME_SIZE), (at + NAME_SIZE, KEY_SIZE)]
        elif code == 828:
            fields += [(at, 4), (at + 4, 4), (at + 8, 2), (at + 10, 2), (at + 12, NAME_SIZE)]
            content = at + FILE_FIELDS.size + NAME_SIZE
            fields.append((content, max(0, len(self.data) - content)))
        return fields


def _split_messages(records: list[Record]) -> list[Message]:
    """Cut seed records into requests by their (valid) headers."""
    messages = []
    for index, record in enumerate(records):
        body, position = record.body, 0
        while position + REQUEST_HEADER.size <= len(body):
            size = REQUEST_HEADER.unpack_from(body, position)[3]
            end = position + REQUEST_HEADER.size + size
            messages.append(Message(bytearray(body[position:end]), index))
            position = end
        if position < len(body):
            messages.append(Message(bytearray(body[position:]), index))
    return messages


INTERESTING = (
    0, 1, 2, 15, 16, 17, 255, 256, 1023, 1024, 4000, 65535, 65536,
    0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF, 267, 268, 414, 415, 416, 254,
)
INTERESTING_NAMES = (
    b"../../etc/passwd", b"..", b".", b"/etc/passwd", b"C:\\Windows\\win.ini",
    b"\\\\host\\share\\x", b"a/b/c.txt", b"CON", b"NUL.txt", b"name.", b"name ",
    b"a:stream", b"\x01\x02ctl", b"caf\xc3\xa9", b"\xff\xfe\xe9", b"%41", b".tmp-0000",
    b"x" * 254, KNOWN_NAME.encode(), b"data.bin", b"hello.txt", b"~", b"\x7f",
)
MAX_CORRUPTIONS = 8
CORRUPTION_SIZE = 6


def _put(message: Message, offset: int, size: int, value: bytes) -> None:
    message.data[offset : offset + size] = value[:size].ljust(size, b"\0")


def _corrupt(messages: list[Message], records: list[Record], spec: bytes) -> None:
    """Apply one corruption: [message, field, op, value(3)]."""
    if not messages:
        return
    index = spec[0] % len(messages)
    message = messages[index]
    op = spec[2] % 12
    value = int.from_bytes(spec[3:6], "little")
    fields = message.fields()
    offset, size = fields[spec[1] % len(fields)]
    if op == 0 and size <= 4:  # a number
        _put(message, offset, size, value.to_bytes(4, "little"))
    elif op in (0, 1):  # an interesting number
        number = INTERESTING[value % len(INTERESTING)] & ((1 << (8 * min(size, 4))) - 1)
        _put(message, offset, min(size, 4), number.to_bytes(4, "little"))
    elif op == 2 and size:  # flip bits of one byte
        at = offset + value % size
        if at < len(message.data):
            message.data[at] ^= (value >> 8) & 0xFF or 1
    elif op == 3:  # fill the field
        _put(message, offset, size, bytes([value & 0xFF]) * size)
    elif op == 4:  # a name from the list, NUL-terminated or, odd value, left-padded
        name = INTERESTING_NAMES[value % len(INTERESTING_NAMES)]
        if size == NAME_SIZE:
            padded = name.rjust(NAME_SIZE, b"\0") if value >> 16 & 1 else name.ljust(NAME_SIZE, b"\0")
            _put(message, offset, size, padded)
    elif op == 5:  # cut the message short
        del message.data[offset + value % (size + 1) :]
    elif op == 6:  # junk inside
        message.data[offset:offset] = random.Random(value).randbytes(1 + value % 32)
    elif op == 7:  # drop the message
        del messages[index]
    elif op == 8:  # send it twice
        messages.insert(index, Message(bytearray(message.data), message.record))
    elif op == 9:  # swap with the next one
        if index + 1 < len(messages):
            messages[index], messages[index + 1] = messages[index + 1], messages[index]
    elif op == 10:  # play its record differently
        record = records[message.record]
        replaced = Record.from_flags(record.flags() ^ (value & 0x7F), record.body)
        records[message.record] = replaced
    else:  # move it to another record (another connection, or later)
        message.record = value % len(records)


def structured_records(seed_index: int, corruptions: bytes) -> list[Record]:
    """A seed session with its corruptions applied."""
    seeds = seed_sessions()
    records = [dataclasses.replace(r) for r in seeds[seed_index % len(seeds)]]
    messages = _split_messages(records)
    for start in range(0, min(len(corruptions), MAX_CORRUPTIONS * CORRUPTION_SIZE), CORRUPTION_SIZE):
        spec = corruptions[start : start + CORRUPTION_SIZE].ljust(CORRUPTION_SIZE, b"\0")
        _corrupt(messages, records, spec)
    bodies: list[bytearray] = [bytearray() for _ in records]
    for message in messages:
        bodies[message.record] += message.data
    return [dataclasses.replace(r, body=bytes(b)) for r, b in zip(records, bodies)]


def encode_structured(seed_index: int, corruptions: bytes = b"", control: Control = Control()) -> bytes:
    """A structured input: control, seed index, corruptions."""
    control = dataclasses.replace(control, structured=True)
    return _control_bytes(control) + bytes([seed_index]) + corruptions


def decode(data: bytes) -> tuple[Control, list[Record]]:
    """What an input plays: its control and its records."""
    control = _control(data)
    rest = data[CONTROL_SIZE:]
    if control.structured:
        seed = rest[0] if rest else 0
        return control, structured_records(seed, rest[1:])
    return control, _decode_raw(rest)


# -- seed sessions ------------------------------------------------------------------


def _send(*requests, edition: Edition = V3) -> bytes:
    client = protocol.ClientConnection(edition)
    return b"".join(client.send(r) for r in requests)


def _packets(client_id: bytes, name, data: bytes, size: int, *, swapped=False,
             per_packet=False, zero_fill=False, edition: Edition = V3) -> list:
    """The 828s of a file encrypted under :data:`AES_KEY` (of the edition's size)."""
    if not isinstance(name, NameField):
        name = NameField.from_text(name)
    key = AES_KEY[: edition.aes_key_size]
    if edition.whole_file:
        size = len(data) + 16  # one request
    if per_packet:
        chunks = [crypto.encrypt(key, data[i : i + size]) for i in range(0, max(1, len(data)), size)]
        sizes = [len(c) for c in chunks]
    else:
        cipher = crypto.encrypt(key, data)
        chunks = [cipher[i : i + size] for i in range(0, len(cipher), size)]
        sizes = [len(cipher)] * len(chunks)
        if zero_fill:
            chunks[-1] = chunks[-1].ljust(size, b"\0")
    total = len(chunks)
    out = []
    for number, (chunk, content_size) in enumerate(zip(chunks, sizes), start=1):
        first, second = (total, number) if swapped else (number, total)
        out.append(protocol.SendFilePacket(
            client_id=client_id, content_size=content_size, orig_file_size=len(data),
            packet_number=first, total_packets=second, file_name=name, content=chunk,
        ))
    return out


def _name_field(raw: bytes) -> NameField:
    return NameField.parse(raw)


_SEEDS: list[list[Record]] = []


def seed_sessions() -> list[list[Record]]:
    """Valid sessions: every request, variants 1 and 4-10, a few refusals."""
    if _SEEDS:
        return _SEEDS
    p = protocol
    k = KNOWN_ID
    rng = random.Random(7)
    data = rng.randbytes(3000)
    small = b"hello, world\n"
    reconnect = p.Reconnect(client_id=k, name=KNOWN_NAME)
    ok = p.CrcOk(client_id=k, file_name="data.bin")
    new_id = predictable_id(0)
    left = _name_field(b"\0\0\0data.bin".ljust(NAME_SIZE, b"\0"))
    garbage = _name_field(b"data.bin\0garbage\x01\x02".ljust(NAME_SIZE, b"\0"))
    first_run = [
        p.Register(client_id=b"a" * 16, name="alice"),
        p.SendPublicKey(client_id=new_id, name="alice", public_key=OTHER_KEY),
        *_packets(new_id, "hello.txt", small, 1024),
        p.CrcOk(client_id=new_id, file_name="hello.txt"),
    ]
    sessions = [
        # 0: first run: 825, 826, one-packet upload, 900
        [Record(_send(*first_run), eof=True)],
        # 1: later run: 827, three packets, 900
        [Record(_send(reconnect, *_packets(k, "data.bin", data, 1024), ok), eof=True)],
        # 2: variant 1: left padding and garbage after the NUL
        [Record(_send(
            reconnect, *_packets(k, left, data, 1024),
            p.CrcOk(client_id=k, file_name=garbage),
        ), eof=True)],
        # 3: variant 4: 4000-byte packets, the last zero-filled
        [Record(_send(reconnect, *_packets(k, "data.bin", data, 4000, zero_fill=True), ok), eof=True)],
        # 4: variant 5: swapped packet fields
        [Record(_send(reconnect, *_packets(k, "data.bin", data, 1024, swapped=True), ok), eof=True)],
        # 5: variant 6: each packet its own CBC stream
        [Record(_send(reconnect, *_packets(k, "data.bin", data, 1024, per_packet=True), ok), eof=True)],
        # 6: variant 7: one connection per request
        [Record(_send(reconnect), eof=True)]
        + [Record(_send(pk), reopen=True, eof=True) for pk in _packets(k, "data.bin", data, 1024)]
        + [Record(_send(p.CrcRetry(client_id=k, file_name="data.bin")), reopen=True, eof=True),
           Record(_send(ok), reopen=True, eof=True)],
        # 7: variant 8: 901 and a late resend (1604 after a second), 901 and a prompt one, 900
        [Record(_send(reconnect, *_packets(k, "data.bin", small, 1024),
                      p.CrcRetry(client_id=k, file_name="data.bin"))),
         Record(_send(*_packets(k, "data.bin", small, 1024),
                      p.CrcRetry(client_id=k, file_name="data.bin"),
                      *_packets(k, "data.bin", small, 1024), ok), advance=1, eof=True)],
        # 8: variant 9: 827 with an unknown name (1606, a new id), then 826 with that id
        [Record(_send(
            p.Reconnect(client_id=b"\0" * 16, name="bob"),
            p.SendPublicKey(client_id=new_id, name="bob", public_key=OTHER_KEY),
            *_packets(new_id, "b.bin", small, 1024),
            p.CrcAbort(client_id=new_id, file_name="b.bin"),
        ), eof=True)],
        # 9: two connections, one client's file from both (D7), one from elsewhere (C6)
        [Record(_send(reconnect, _packets(k, "data.bin", data, 1024)[0])),
         Record(_send(_packets(k, "data.bin", data, 1024)[1]), slot=1),
         Record(_send(*_packets(k, "data.bin", data, 1024)[1:]), slot=0),
         Record(_send(ok), slot=3, eof=True),
         Record(b"", slot=1, eof=True), Record(_send(ok), slot=0, eof=True)],
        # 10: a per-request upload that expires, then its next packet
        [Record(_send(reconnect), eof=True),
         Record(_send(_packets(k, "data.bin", data, 1024)[0]), reopen=True, eof=True),
         Record(_send(_packets(k, "data.bin", data, 1024)[1]), reopen=True, advance=2, eof=True)],
        # 11: refusals on a well-framed stream: taken name, key replacement, bad padding
        [Record(_send(
            p.Register(client_id=k, name=KNOWN_NAME),
            p.SendPublicKey(client_id=k, name=KNOWN_NAME, public_key=OTHER_KEY),
            reconnect,
            *[dataclasses.replace(pk, content=bytes(len(pk.content)))
              for pk in _packets(k, "bad.bin", small, 1024)],
            p.CrcOk(client_id=k, file_name="never.bin"),
        ) + REQUEST_HEADER.pack(k, 3, 829, 4) + b"\0" * 4, eof=True)],
        # 12: variant 10: four uploads, 901, 902
        [Record(_send(
            reconnect,
            *[pk for _ in range(4) for pk in _packets(k, "r.bin", small, 1024)],
            p.CrcRetry(client_id=k, file_name="r.bin"),
            p.CrcAbort(client_id=k, file_name="r.bin"),
        ), eof=True)],
        # 13: a whole file in one packet, streamed through many chunks
        [Record(_send(reconnect, *_packets(k, "one.bin", rng.randbytes(60_000), 1 << 20),
                      p.CrcOk(client_id=k, file_name="one.bin")), eof=True)],
        # 14: the peer stops reading, then a 901 left without an 828
        [Record(_send(reconnect, *_packets(k, "data.bin", small, 1024)), stall=True),
         Record(_send(p.CrcRetry(client_id=k, file_name="data.bin"))),
         Record(_send(p.CrcAbort(client_id=k, file_name="data.bin")), advance=1, eof=True)],
        # 15: variant 9 and B4: a keyless name held by an open connection, 827
        # before 826, a keyless registration replaced once its connection closed
        [Record(_send(p.Register(client_id=b"\0" * 16, name="carol"))),
         Record(_send(p.Register(client_id=b"\0" * 16, name="carol")), slot=1),
         Record(_send(p.Reconnect(client_id=new_id, name="carol")), eof=True),
         Record(_send(p.Register(client_id=b"\0" * 16, name="carol"),
                      p.SendPublicKey(client_id=predictable_id(1), name="carol",
                                      public_key=OTHER_KEY)), slot=1, eof=True)],
        # 16: B5: registrations in a row (limits profile 3 caps clients and rate)
        [Record(_send(*[p.Register(client_id=b"\0" * 16, name=f"user{n}") for n in range(4)],
                      p.Reconnect(client_id=b"\0" * 16, name="user9")), eof=True)],
        # 17: the key window passes (docs/KEY_BINDING.md): refused until a new 827
        [Record(_send(reconnect)),
         Record(_send(*_packets(k, "late.bin", small, 1024)), advance=3),
         Record(_send(reconnect, *_packets(k, "late.bin", small, 1024),
                      p.CrcOk(client_id=k, file_name="late.bin")), eof=True)],
    ]
    # 18-21: a first run in each other edition, on one connection: register,
    # key, a file (whole, or 1028 packets), CRC bad and the resend, CRC ok.
    for edition in (EDITION_2022, EDITION_2023A, EDITION_2023C, EDITION_2024A):
        who = f"ed{edition.name}"
        register = p.Register(client_id=b"\0" * 16, name=who)
        # The first 1025 gets the 2100 header alone (docs/EDITIONS.md): 2024A
        # asks again at once (the second id counts), 2023C waits for the id.
        first = [register, register] if edition is EDITION_2024A else [register]
        client_id = predictable_id(len(first) - 1)
        parts = _packets(client_id, "e.bin", data, 1024, edition=edition)
        rest = _send(
            p.SendPublicKey(client_id=client_id, name=who, public_key=OTHER_KEY),
            *parts,
            p.CrcRetry(client_id=client_id, file_name="e.bin"),
            *parts,
            p.CrcOk(client_id=client_id, file_name="e.bin"),
            edition=edition,
        )
        if edition is EDITION_2023C:
            sessions.append([Record(_send(*first, edition=edition)), Record(rest, advance=1, eof=True)])
        else:
            sessions.append([Record(_send(*first, edition=edition) + rest, eof=True)])
    _SEEDS.extend(sessions)
    return _SEEDS


def seed_inputs() -> list[bytes]:
    """Every seed session, structured and raw, played a few ways."""
    inputs = []
    for index, records in enumerate(seed_sessions()):
        inputs.append(encode_structured(index))
        inputs.append(encode_structured(index, control=Control(chunk_seed=3, max_chunk=40)))
        inputs.append(encode_raw(records, Control(limits=1, send_cap=5, max_chunk=512)))
        inputs.append(encode_raw(records, Control(limits=2, chunk_seed=9, max_chunk=4)))
    return inputs


# -- the fake loop ----------------------------------------------------------------------


class FakeSocket:
    """What a Channel needs of a socket; the peer's side is the harness."""

    _next_fd = 1000

    def __init__(self, send_cap: int) -> None:
        FakeSocket._next_fd += 1
        self.fd = FakeSocket._next_fd
        self.inbox: deque[bytes] = deque()
        self.eof = False
        self.stalled = False
        self.sent = bytearray()
        self.send_cap = send_cap
        self.shut_write = False
        self.closed = False
        self.closed_on_stalled_peer = False

    def fileno(self) -> int:
        return -1 if self.closed else self.fd

    def readable(self) -> bool:
        return bool(self.inbox) or self.eof

    def recv_into(self, buffer, nbytes: int = 0) -> int:
        if self.closed:
            raise OSError(9, "Bad file descriptor")
        if not self.inbox:
            if self.eof:
                return 0
            raise BlockingIOError
        chunk = self.inbox.popleft()
        count = min(len(chunk), nbytes or len(buffer))
        buffer[:count] = chunk[:count]
        if count < len(chunk):
            self.inbox.appendleft(chunk[count:])
        return count

    def send(self, data) -> int:
        if self.closed:
            raise OSError(9, "Bad file descriptor")
        if self.shut_write:
            raise BrokenPipeError(32, "Broken pipe")
        if self.stalled:
            raise BlockingIOError
        count = len(data) if not self.send_cap else min(len(data), self.send_cap)
        self.sent += bytes(data[:count])
        return count

    def shutdown(self, how) -> None:
        if self.closed:
            raise OSError(9, "Bad file descriptor")
        self.shut_write = True

    def close(self) -> None:
        self.closed_on_stalled_peer = self.stalled
        self.closed = True


class FakeSelector:
    """The selector calls a Channel makes."""

    def __init__(self) -> None:
        self.interest: dict[FakeSocket, int] = {}

    def register(self, sock, events, data=None) -> None:
        if sock in self.interest:
            raise KeyError("already registered")
        self.interest[sock] = events

    def modify(self, sock, events, data=None) -> None:
        if sock not in self.interest:
            raise KeyError("not registered")
        self.interest[sock] = events

    def unregister(self, sock) -> None:
        del self.interest[sock]


class LogWatch(logging.Handler):
    """Every record of the server's loggers: a traceback or an error is a finding."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.findings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception as exc:  # the server logged something unprintable
            self.findings.append(f"log message does not format: {exc!r} {record.msg!r}")
            return
        if record.exc_info or record.levelno >= logging.ERROR:
            import traceback

            trace = "".join(traceback.format_exception(*record.exc_info)) if record.exc_info else ""
            self.findings.append(f"{record.levelname} {record.name}: {message}\n{trace}")


_WATCH = LogWatch()


@dataclass
class Connection:
    sock: FakeSocket
    channel: Channel
    peer: Peer
    parser: AnyEditionParser = field(default_factory=lambda: AnyEditionParser())
    parsed: int = 0
    responses: list = field(default_factory=list)
    finished: bool = False


class Harness:
    """One input's server: fresh data folder, database, app and fake loop."""

    def __init__(self, workdir: Path, template: Path, control: Control) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "data"
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir()
        shutil.copyfile(template, self.data_dir / DB_NAME)
        self.control = control
        self.now = 0.0
        limits = LIMITS[control.limits]
        self.db = SqliteMetadata.open(self.data_dir / DB_NAME)
        self.app = App.build(self.db, FolderBlobs(self.data_dir), limits, clock=lambda: self.now)
        self.app.wall_clock = lambda: WALL_BASE + self.now
        _playing[:] = [self.app]
        self.selector = FakeSelector()
        self.port = FakePort(self.app, serve)
        self.slots: dict[int, Connection] = {}
        self.every: list[Connection] = []
        self.ports = iter(range(40000, 60000))
        self.claims: dict[tuple[bytes, bytes], list[protocol.FileReceived]] = {}
        _WATCH.findings.clear()

    # -- playing ---------------------------------------------------------------

    def open(self, slot: int) -> Connection:
        sock = FakeSocket(self.control.send_cap)
        peer = Peer(STRANGER if slot == 3 else ADDRESS, next(self.ports))
        channel = Channel(
            sock,
            Session(self.app, peer),
            self.selector,
            _RECV_BUFFER,
            self.app.timers,
            port=self.port,
        )
        connection = Connection(sock, channel, peer)
        self.every.append(connection)
        return connection

    def play(self, records: list[Record], max_chunk: int | None = None) -> None:
        max_chunk = max_chunk or self.control.max_chunk
        for number, record in enumerate(records):
            if record.advance:
                self.advance(self._wait(record.advance))
            connection = self.slots.get(record.slot)
            if connection is not None and (
                record.reopen or connection.sock.eof or connection.channel.closed
            ):
                self.end(connection)
                connection = None
            if connection is None:
                connection = self.slots[record.slot] = self.open(record.slot)
            connection.sock.stalled = record.stall
            rng = random.Random(self.control.chunk_seed * 1000 + number)
            position = 0
            while position < len(record.body):
                size = rng.randint(1, max_chunk)
                connection.sock.inbox.append(record.body[position : position + size])
                position += size
                self.pump(connection)
            if record.eof:
                connection.sock.eof = True
            self.pump(connection)
            self._check_logs()

    def end(self, connection: Connection) -> None:
        """The peer reads everything and closes."""
        connection.sock.stalled = False
        connection.sock.eof = True
        self.pump(connection)

    def pump(self, connection: Connection) -> None:
        """Loop rounds for one connection's readiness events until it has nothing to do."""
        sock, channel = connection.sock, connection.channel
        for _ in range(MAX_ROUNDS + sum(map(len, sock.inbox))):
            if channel.closed:
                break
            resumed = self.port.resume_backlog()  # had their turn this round
            acted = bool(resumed)
            events = self.selector.interest.get(sock, 0)
            if events & 2 and not sock.stalled and not channel.closed:  # EVENT_WRITE
                serve(channel, channel.on_writable)
                acted = True
            if (
                events & 1 and not channel.closed and channel not in resumed and sock.readable()
            ):  # EVENT_READ
                serve(channel, channel.on_readable)
                acted = True
            self.run_timers()
            acted = self.port.end_round() or acted
            if not acted:
                break
        else:
            raise Finding(f"connection spins: interest {events}, eof {sock.eof}")
        self._parse(connection)

    def run_timers(self) -> None:
        for timer in self.app.timers.due():
            timer.callback()  # loop.py guards this; an exception here is a finding

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.run_timers()
        for connection in self.every:
            if not connection.channel.closed:
                self.pump(connection)

    def _long_wait(self) -> float:
        limits = self.app.limits
        return max(limits.idle_timeout, limits.message_deadline) + 1

    def _wait(self, advance: int) -> float:
        """A record's clock step: variant 8's second, the timeouts, the key window."""
        if advance == 1:
            return SHORT_ADVANCE
        if advance == 2:
            return self._long_wait()
        return self.app.limits.key_window + 1

    # -- checking --------------------------------------------------------------

    def _check_logs(self) -> None:
        if _WATCH.findings:
            raise Finding("\n".join(_WATCH.findings))

    def _parse(self, connection: Connection) -> None:
        if connection.finished:
            return
        new = connection.sock.sent[connection.parsed :]
        connection.parsed = len(connection.sock.sent)
        if new:
            connection.parser.receive_data(bytes(new))
        while True:
            try:
                event = connection.parser.next_event()
            except protocol.RemoteProtocolError as exc:
                raise Finding(f"malformed response stream: {exc}") from None
            if event is protocol.NEED_DATA:
                return
            if isinstance(event, protocol.ConnectionClosed):
                raise Finding("the response parser saw EOF before the harness sent it")
            connection.responses.append(event)
            if isinstance(event, protocol.FileReceived):
                self.claims.setdefault((event.client_id, event.file_name.text), []).append(event)

    def finish(self) -> None:
        """EOF everywhere, every deadline passes, then the properties."""
        for connection in self.every:
            if not connection.channel.closed:
                self.end(connection)
        self.advance(3.0)  # lingering closes end
        self.advance(self._long_wait() + 3.0)  # expiry of per-request uploads
        for connection in self.every:
            if not connection.channel.closed:
                raise Finding(f"connection still open after EOF and every deadline: {connection.peer}")
            connection.finished = True
            connection.parser.receive_data(b"")
            try:
                event = connection.parser.next_event()
            except protocol.RemoteProtocolError as exc:
                if connection.sock.closed_on_stalled_peer:
                    continue  # a peer that does not read is cut off (HOSTILE F2)
                raise Finding(f"response cut short: {exc}") from None
            if not isinstance(event, protocol.ConnectionClosed):
                raise Finding(f"unparsed response: {event!r}")
        self.slots.clear()
        self._check_logs()
        if len(self.app.uploads):
            raise Finding("an upload outlived every connection and deadline")
        if self.app.live_registrations:
            raise Finding("a registration stayed live after its connection closed")
        if not self.app.uploads.port.settle():  # an abort's removal is the worker's
            raise Finding("the blob port's worker never finished what was queued")
        self.check_disk()
        self.check_claims()
        self.probe()
        self.check_disk()
        self._check_logs()

    def check_disk(self) -> None:
        """Nothing outside received_files/, no temp file, rows and files agree."""
        if sorted(os.listdir(self.workdir)) != ["data"]:
            raise Finding(f"written next to the data folder: {os.listdir(self.workdir)}")
        extra = set(os.listdir(self.data_dir)) - {
            DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", RECEIVED_DIR,
        }
        if extra:
            raise Finding(f"written in the data folder: {sorted(extra)}")
        check = sqlite3.connect(self.data_dir / DB_NAME)
        try:
            result = check.execute("PRAGMA integrity_check").fetchall()
        finally:
            check.close()
        if result != [("ok",)]:
            raise Finding(f"integrity_check: {result}")
        rows = {row.path_name: row for row in self.db.file_rows()}
        found = set()
        root = self.data_dir / RECEIVED_DIR
        for entry in os.scandir(root):
            if not entry.is_dir(follow_symlinks=False) or len(entry.name) != 32:
                raise Finding(f"unexpected entry in {RECEIVED_DIR}/: {entry.name!r}")
            for item in os.scandir(entry.path):
                if item.name.startswith(TEMP_PREFIX):
                    raise Finding(f"temp file left: {item.name}")
                if not item.is_file(follow_symlinks=False):
                    raise Finding(f"not a regular file: {entry.name}/{item.name!r}")
                found.add(f"{RECEIVED_DIR}/{entry.name}/{item.name}")
        if found != set(rows):
            raise Finding(f"files and rows disagree: files {sorted(found - set(rows))},"
                          f" rows {sorted(set(rows) - found)}")
        for path_name, row in rows.items():
            expected = f"{RECEIVED_DIR}/{row.id.hex()}/{stored_name(row.file_name)}"
            if path_name != expected:
                raise Finding(f"row {row.file_name!r} stored as {path_name}, not {expected}")

    def check_claims(self) -> None:
        """The stored file is one a 1603 described (the installed upload, or a
        pending version confirmed later; a pending version discarded unconfirmed
        had its 1603 too), in either CRC flavour, with a true content_size."""
        for (client_id, name), claims in self.claims.items():
            row = self.db.file_row(client_id, name)
            if row is None:
                raise Finding(f"1603 for {name!r} but no row")
            plain = (self.data_dir / row.path_name).read_bytes()
            sums = (protocol.cksum(plain), zlib.crc32(plain))
            true = [claim for claim in claims if claim.cksum in sums]
            if not true:
                raise Finding(f"1603 for {name!r}: cksums {[c.cksum for c in claims]}, stored file differs")
            for claim in true:
                if claim.content_size <= len(plain) or claim.content_size % 16:
                    raise Finding(f"1603 for {name!r}: content_size {claim.content_size} for {len(plain)} bytes")

    def probe(self) -> None:
        """A normal session still works: 827, an upload, 900."""
        self.claims.clear()
        data = b"probe " * 300
        records = [Record(_send(
            protocol.Reconnect(client_id=KNOWN_ID, name=KNOWN_NAME),
            *_packets(KNOWN_ID, "probe.bin", data, 1024),
            protocol.CrcOk(client_id=KNOWN_ID, file_name="probe.bin"),
        ), slot=2, reopen=True, eof=True)]
        before = len(self.every)
        self.play(records, max_chunk=RECV_BUFFER_SIZE)
        connection = self.every[before]
        kinds = [type(event).__name__ for event in connection.responses]
        if kinds != ["Reconnected", "FileReceived", "Acknowledged"]:
            raise Finding(f"a normal session after the input got {kinds}")
        # The CRC flavour rule: the answer carries the CRC the client confirmed last.
        flavour = self.db.client_by_id(KNOWN_ID).crc
        expected = protocol.cksum(data) if flavour == "cksum" else zlib.crc32(data)
        if connection.responses[1].cksum != expected:
            raise Finding(f"a normal session after the input got a wrong CRC ({flavour} expected)")
        self.end(connection)
        if not connection.channel.closed:
            self.advance(3.0)
        self.check_claims()

    def close(self) -> None:
        for connection in self.every:
            if not connection.channel.closed:
                connection.channel.close("harness done")
        self.app.uploads.close()
        self.db.close()


_RECV_BUFFER = memoryview(bytearray(RECV_BUFFER_SIZE))


# -- the workspace --------------------------------------------------------------------------


class Workspace:
    """A tmpfs folder with the template database; one per process."""

    PREFIX = "cipherdrop-fuzz-"

    def __init__(self) -> None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        base = base or tempfile.gettempdir()
        self._remove_stale(Path(base))
        self.root = Path(tempfile.mkdtemp(prefix=f"{self.PREFIX}{os.getpid()}-", dir=base))
        self.template = self.root / "template.db"
        self.workdir = self.root / "work"
        self.workdir.mkdir()
        db = SqliteMetadata.open(self.template)
        db.insert_client(KNOWN_ID, KNOWN_NAME, WALL_BASE, "v3")
        db.set_keys(KNOWN_ID, KNOWN_KEY, AES_KEY, WALL_BASE)
        db.set_binding(KNOWN_ID, ADDRESS, WALL_BASE)
        db.close()

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    @classmethod
    def _remove_stale(cls, base: Path) -> None:
        """Workspaces of runs that ended without cleaning up (libFuzzer exits with _exit)."""
        for path in base.glob(f"{cls.PREFIX}*-*"):
            pid = path.name[len(cls.PREFIX):].split("-", 1)[0]
            if not pid.isdigit():
                continue
            try:
                os.kill(int(pid), 0)  # a probe: is the process still there?
            except ProcessLookupError:
                shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass


_workspace: Workspace | None = None


def workspace() -> Workspace:
    global _workspace
    if _workspace is None:
        _workspace = Workspace()
        atexit.register(_workspace.remove)
    return _workspace


@dataclass
class Stats:
    """What one input did (the quick pytest checks the target reaches things)."""

    responses: dict = field(default_factory=dict)
    connections: int = 0


def run_input(data: bytes) -> Stats:
    """The fuzz target: play one input, check every property.

    Raises:
        Finding: a property does not hold.
        Exception: anything the server let escape a channel or a timer.
    """
    control, records = decode(data)
    space = workspace()
    stats = Stats()
    with _deterministic_server():
        harness = Harness(space.workdir, space.template, control)
        try:
            harness.play(records)
            harness.finish()
        finally:
            harness.close()
    for connection in harness.every:
        for event in connection.responses:
            name = type(event).__name__
            stats.responses[name] = stats.responses.get(name, 0) + 1
    stats.connections = len(harness.every)
    return stats


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    run_input(data)


# -- entry points ---------------------------------------------------------------------------


def main_atheris(argv: list[str]) -> None:
    run_atheris(argv, seed_inputs, TestOneInput)


def inputs_strategy():
    """Hypothesis: structured inputs and byte-mutated seeds."""
    from hypothesis import strategies as st

    controls = st.builds(
        Control,
        limits=st.integers(0, len(LIMITS) - 1),
        chunk_seed=st.integers(0, 255),
        max_chunk=st.sampled_from([4, 40, 512, 4096, 65536]),
        send_cap=st.sampled_from([0, 0, 1, 7, 100]),
    )
    structured = st.builds(
        lambda seed, corruptions, control: encode_structured(seed, b"".join(corruptions), control),
        st.integers(0, len(seed_sessions()) - 1),
        st.lists(st.binary(min_size=CORRUPTION_SIZE, max_size=CORRUPTION_SIZE), max_size=4),
        controls,
    )

    def mutate(seed: bytes, edits: list[tuple[int, int]]) -> bytes:
        out = bytearray(seed)
        for position, value in edits:
            out[CONTROL_SIZE + position % max(1, len(out) - CONTROL_SIZE)] = value
        return bytes(out)

    raw = st.builds(
        mutate,
        st.sampled_from([s for s in seed_inputs() if s[0] & 1]),
        st.lists(st.tuples(st.integers(0, 100_000), st.integers(0, 255)), max_size=4),
    )
    return st.one_of(structured, structured, raw, st.binary(max_size=600))


def main_hypothesis(argv: list[str]) -> None:
    import argparse
    import time

    from hypothesis import HealthCheck, Phase, given, settings

    parser = argparse.ArgumentParser(description="fuzz the server with hypothesis")
    parser.add_argument("--hypothesis", action="store_true")
    parser.add_argument("--max-examples", type=int, default=20_000)
    parser.add_argument("inputs", nargs="*", type=Path, help="replay these inputs only")
    args = parser.parse_args(argv[1:])
    if args.inputs:
        for path in args.inputs:
            print(path, run_input(path.read_bytes()))
        return
    count = 0

    @settings(
        max_examples=args.max_examples,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(inputs_strategy())
    def fuzz(data: bytes) -> None:
        nonlocal count
        count += 1
        run_input(data)

    started = time.monotonic()
    for data in seed_inputs():
        run_input(data)
    fuzz()
    minutes = (time.monotonic() - started) / 60
    print(f"hypothesis: {count} inputs in {minutes:.1f} min, no finding")


if __name__ == "__main__":
    if atheris is not None and "--hypothesis" not in sys.argv:
        main_atheris(sys.argv)
    else:
        main_hypothesis(sys.argv)
