"""The padding-guessing attack on a verified file: what it costs with and without the budget.

The attacker knows a client's name and id (they travel in clear). From his own
address he sends 827 (a fresh key he cannot read, bound to him), then 828s of
one random 16-byte block claiming a 15-byte file, until one decrypts: its last
byte must be 0x01, about one try in 256. Then 1603, and his 900 would replace
the victim's verified file (pending versions wait for exactly that 900).

The benchmark runs the attack for ``--seconds`` against two servers side by
side: one with the defaults (the decryption budget: 3 failures per key, 10 per
client and hour), one with the budget lifted (how the server behaved before
it). It prints the guesses that reached the decryptor, their rate, and the
expected time to a success (256 guesses), measured and projected:

    python bench/padding_guess.py --seconds 20
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import HOST, RawClient, print_table, start_server  # noqa: E402

from protocol import (  # noqa: E402
    NEED_DATA,
    ClientConnection,
    FileReceived,
    Reconnect,
    SendFilePacket,
    crypto,
)
from protocol.codes import AES_BLOCK_SIZE  # noqa: E402
from server.limits import Limits  # noqa: E402

DEFAULT_MAX_DECRYPTION_FAILURES_PER_HOUR = Limits().max_decryption_failures_per_hour

ATTACKER = "127.0.0.2"
#: A one-block file of 15 bytes: its padding must be exactly one 0x01 byte.
CLAIMED_SIZE = AES_BLOCK_SIZE - 1
#: Expected guesses until one random block has that padding.
EXPECTED_GUESSES = 256
HOUR = 3600.0
LIFTED = ("--max-decryption-failures-per-key", "1000000000",
          "--max-decryption-failures-per-hour", "1000000000")


def _request(request, timeout: float = 10.0):
    """One request on its own connection from the attacker's address."""
    conn = ClientConnection()
    with socket.create_connection(_request.address, timeout, source_address=(ATTACKER, 0)) as sock:
        sock.sendall(conn.send(request))
        while True:
            event = conn.next_event()
            if event is not NEED_DATA:
                return event
            conn.receive_data(sock.recv(65536))


def attack(server, client_id: bytes, name: str, seconds: float) -> dict:
    """Guess for ``seconds``; count what the server did with each guess."""
    _request.address = server.address
    sent = successes = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        _request(Reconnect(client_id=client_id, name=name))
        for _ in range(4):  # a few guesses per key: more than the budget's 3
            guess = SendFilePacket(
                client_id=client_id, content_size=AES_BLOCK_SIZE, orig_file_size=CLAIMED_SIZE,
                packet_number=1, total_packets=1, file_name="victim.bin",
                content=os.urandom(AES_BLOCK_SIZE),
            )
            sent += 1
            if isinstance(_request(guess), FileReceived):
                successes += 1
    elapsed = time.monotonic() - started
    log = server.log_path.read_text()
    refusals = [line for line in log.splitlines() if "-> 1607 refused" in line]
    decrypted = sum(line.endswith(": decryption failed") for line in refusals) + successes
    return {"sent": sent, "decrypted": decrypted, "successes": successes, "elapsed": elapsed}


def run(flags: tuple[str, ...], seconds: float, root: Path, label: str) -> dict:
    with start_server(root / label, *flags) as server:
        client = RawClient(server.address)
        name = f"victim-{label}"
        client_id, _ = client.register(name, crypto.generate_private_key())
        client.close()
        return attack(server, client_id, name, seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="attack time per server")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        for label, flags in (("budget", ()), ("no-budget", LIFTED)):
            result = run(flags, args.seconds, root, label)
            rate = result["decrypted"] / result["elapsed"]
            if label == "budget":
                # past the window's first minutes the hourly budget is all an attacker gets
                expected = EXPECTED_GUESSES / DEFAULT_MAX_DECRYPTION_FAILURES_PER_HOUR * HOUR
            else:
                expected = EXPECTED_GUESSES / rate
            rows.append([
                label, result["sent"], result["decrypted"], result["successes"],
                f"{rate:.1f}/s", _duration(expected),
            ])
    print_table(
        f"padding guesses from {ATTACKER} for {args.seconds:.0f} s per server (HOST {HOST})",
        ["server", "guesses sent", "reached decryption", "valid padding", "decryption rate",
         "expected time to a valid padding"],
        rows,
    )
    return 0


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * HOUR:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / HOUR:.1f} h"


if __name__ == "__main__":
    sys.exit(main())
