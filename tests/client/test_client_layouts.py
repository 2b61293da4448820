"""The client's layout options reproduce each variant of docs/PROTOCOL.md on purpose.

Our own server serves every variant, so an upload in each layout must arrive
whole and verified; a fake server checks the bytes of each layout.
"""

from __future__ import annotations

import pytest

from client.__main__ import ExitCode
from client_fakes import Keys, handshake_register, make_file, run_against
from protocol import Acknowledged, CrcOk, FileReceived, cksum, crypto

from test_client_e2e import address, new_user, run, stored

LAYOUTS = {
    "swapped": ("--field-order", "swapped"),
    "per-packet": ("--encrypt", "per-packet"),
    "swapped+per-packet": ("--field-order", "swapped", "--encrypt", "per-packet"),
    "padded": ("--pad-last-packet",),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_layout_is_served_whole_by_our_server(server, tmp_path, layout):
    home = new_user(tmp_path, address(server), f"layout-{layout}", size=100_000)
    result = run(home, "--packet-size", "1024", *LAYOUTS[layout])
    assert result.returncode == ExitCode.OK, result.stderr
    assert stored(server, home, "notes.txt") == (home / "notes.txt").read_bytes()


def test_the_bytes_of_swapped_per_packet_and_padded_packets(work, run_client):
    data = make_file(work, size=2500)
    keys = Keys()
    seen = {}

    def script(server):
        peer = server.accept()
        handshake_register(peer, keys)
        packets = [peer.next_request() for _ in range(3)]
        seen["packets"] = packets
        plain = b"".join(crypto.decrypt(keys.aes_key, p.content) for p in packets)
        peer.reply(FileReceived(keys.client_id, sum(len(p.content) for p in packets),
                                packets[0].fields.file_name, cksum(plain)))
        peer.expect(CrcOk)
        peer.reply(Acknowledged(client_id=keys.client_id))

    result = run_against(script, work, data, run_client, "--packet-size", "1024",
                         "--field-order", "swapped", "--encrypt", "per-packet")
    assert result.code == ExitCode.OK, result.err
    fields = [p.fields for p in seen["packets"]]
    # variant 5: total first; variant 6: content_size is each packet's own ciphertext
    assert [(f.packet_number, f.total_packets) for f in fields] == [(3, 1), (3, 2), (3, 3)]
    assert [f.content_size for f in fields] == [1040, 1040, 464]
    assert all(f.orig_file_size == 2500 for f in fields)


def test_the_last_packet_padded_with_zeros(work, run_client):
    data = make_file(work, size=2500)  # 2512 bytes of ciphertext: 1024 + 1024 + 464
    keys = Keys()
    seen = {}

    def script(server):
        peer = server.accept()
        handshake_register(peer, keys)
        packets = [peer.next_request() for _ in range(3)]
        seen["packets"] = packets
        ciphertext = b"".join(p.content for p in packets)[:2512]
        peer.reply(FileReceived(keys.client_id, 2512, packets[0].fields.file_name,
                                cksum(crypto.decrypt(keys.aes_key, ciphertext))))
        peer.expect(CrcOk)
        peer.reply(Acknowledged(client_id=keys.client_id))

    result = run_against(script, work, data, run_client, "--packet-size", "1024", "--pad-last-packet")
    assert result.code == ExitCode.OK, result.err
    last = seen["packets"][-1]
    assert len(last.content) == 1024 and last.content[464:] == bytes(560)
    assert all(p.fields.content_size == 2512 for p in seen["packets"])
