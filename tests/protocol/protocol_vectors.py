"""Byte vectors written by hand from docs/PROTOCOL.md's tables.

Nothing here is produced by the code under test: every header is spelled out
in hex (little-endian, field by field, as the "Framing" tables say) and every
payload is an explicit concatenation of the fields of the "Requests" and
"Responses" tables. Codes in hex: 825 = 0x0339, 826 = 0x033A, 827 = 0x033B,
828 = 0x033C, 900 = 0x0384, 901 = 0x0385, 902 = 0x0386, 1600 = 0x0640 ...
1607 = 0x0647. Sizes: 255 = 0xFF, 415 = 0x19F, 267 = 0x10B, 279 = 0x117,
144 = 0x90, 16 = 0x10.
"""

from __future__ import annotations

CLIENT_ID = bytes.fromhex("0102030405060708090a0b0c0d0e0f10")
OTHER_CLIENT_ID = bytes.fromhex("f0e0d0c0b0a090807060504030201000")

#: "alice", its NUL terminator, zero fill to 255 bytes.
NAME_ALICE = b"alice" + b"\x00" * 250
#: "report.txt", its NUL terminator, zero fill to 255 bytes.
FILE_NAME_REPORT = b"report.txt" + b"\x00" * 245
#: Variant 1: NULs first, then the text, no terminator.
NAME_ALICE_LEFT = b"\x00" * 250 + b"alice"
FILE_NAME_REPORT_LEFT = b"\x00" * 245 + b"report.txt"
#: Variant 1: garbage after the first NUL.
NAME_ALICE_GARBAGE = b"alice" + b"\x00" + b"garbage!" + b"\x00" * 241
FILE_NAME_REPORT_GARBAGE = b"report.txt" + b"\x00" + b"\xff" * 244
#: Variant 1, both at once: leading NULs, text, NUL, garbage.
FILE_NAME_REPORT_BOTH = b"\x00\x00\x00" + b"report.txt" + b"\x00" + b"junk" + b"\x00" * 237

#: Any 160 bytes: the decoder does not look inside the key.
PUBLIC_KEY = bytes(range(160))
#: Any 128 bytes stand for the RSA-OAEP ciphertext of the AES key.
ENCRYPTED_AES_KEY = bytes(range(128, 256))
#: This 828's content: 48 bytes of a 96-byte ciphertext.
CONTENT = bytes(range(0x40, 0x70))


def request_header(client_id: bytes, version_code_size_hex: str) -> bytes:
    """client_id(16) then the hex of version(1) code(2) payload_size(4)."""
    return client_id + bytes.fromhex(version_code_size_hex)


# -- requests: client_id(16) version(1) code(2) payload_size(4) payload ------

REGISTER = request_header(CLIENT_ID, "03" "3903" "ff000000") + NAME_ALICE
SEND_PUBLIC_KEY = (
    request_header(CLIENT_ID, "03" "3a03" "9f010000") + NAME_ALICE + PUBLIC_KEY
)
RECONNECT = request_header(CLIENT_ID, "03" "3b03" "ff000000") + NAME_ALICE
#: 828, payload 267 + 48 = 315 = 0x13B: content_size 96, orig_file_size 90,
#: packet 1 of 2, the file name, 48 content bytes.
SEND_FILE = (
    request_header(CLIENT_ID, "03" "3c03" "3b010000")
    + bytes.fromhex("60000000" "5a000000" "0100" "0200")
    + FILE_NAME_REPORT
    + CONTENT
)
#: 828 with every multi-byte field distinct per byte (endianness) and no content.
SEND_FILE_EMPTY = (
    request_header(CLIENT_ID, "03" "3c03" "0b010000")
    + bytes.fromhex("78563412" "70563412" "0201" "0403")
    + FILE_NAME_REPORT
)
CRC_OK = request_header(CLIENT_ID, "03" "8403" "ff000000") + FILE_NAME_REPORT
CRC_RETRY = request_header(CLIENT_ID, "03" "8503" "ff000000") + FILE_NAME_REPORT
CRC_ABORT = request_header(CLIENT_ID, "03" "8603" "ff000000") + FILE_NAME_REPORT

# -- responses: version(1) code(2) payload_size(4) payload -------------------

REGISTERED = bytes.fromhex("03" "4006" "10000000") + CLIENT_ID
REGISTRATION_FAILED = bytes.fromhex("03" "4106" "00000000")
PUBLIC_KEY_RECEIVED = bytes.fromhex("03" "4206" "90000000") + CLIENT_ID + ENCRYPTED_AES_KEY
#: 1603: client_id, content_size 96, the file name field, cksum 0x12345678.
FILE_RECEIVED = (
    bytes.fromhex("03" "4306" "17010000")
    + CLIENT_ID
    + bytes.fromhex("60000000")
    + FILE_NAME_REPORT
    + bytes.fromhex("78563412")
)
ACKNOWLEDGED = bytes.fromhex("03" "4406" "10000000") + CLIENT_ID
RECONNECTED = bytes.fromhex("03" "4506" "90000000") + CLIENT_ID + ENCRYPTED_AES_KEY
RECONNECT_REFUSED = bytes.fromhex("03" "4606" "10000000") + CLIENT_ID
GENERAL_ERROR = bytes.fromhex("03" "4706" "00000000")

