"""protocol.crypto: key formats, RSA-OAEP, AES-256-CBC (docs/PROTOCOL.md "Cryptography").

Compatibility is checked against PyCryptodome used directly (Crypto.Util.Padding
and AES.new / PKCS1_OAEP with SHA-1 spelled out) and one FIPS-197 vector.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from Crypto.Cipher import AES, PKCS1_OAEP
from Crypto.Hash import SHA1
from Crypto.PublicKey import RSA
from Crypto.Util.asn1 import DerSequence
from Crypto.Util.number import getPrime, inverse
from Crypto.Util.Padding import pad, unpad

from protocol import CryptoError, LocalProtocolError
from protocol import crypto

ZERO_IV = bytes(16)
FIPS_KEY = bytes(range(32))


@pytest.fixture(scope="module")
def key() -> RSA.RsaKey:
    return crypto.generate_private_key()


@pytest.fixture(scope="module")
def other_key() -> RSA.RsaKey:
    return crypto.generate_private_key()


def small_key(bits: int = 512, e: int = 17) -> RSA.RsaKey:
    """An RSA key PyCryptodome will not generate (it refuses under 1024 bits)."""
    while True:
        p, q = getPrime(bits // 2), getPrime(bits // 2)
        phi = (p - 1) * (q - 1)
        if (p * q).bit_length() == bits and math.gcd(e, phi) == 1:
            return RSA.construct((p * q, e, inverse(e, phi)))


def pkcs1_public_der(public: RSA.RsaKey) -> bytes:
    """RSAPublicKey (PKCS#1) DER: shorter than the 160-byte SPKI form."""
    return DerSequence([public.n, public.e]).encode()


def pycryptodome_encrypt(aes_key: bytes, plaintext: bytes) -> bytes:
    return AES.new(aes_key, AES.MODE_CBC, iv=ZERO_IV).encrypt(pad(plaintext, 16))


def pycryptodome_decrypt(aes_key: bytes, ciphertext: bytes) -> bytes:
    return unpad(AES.new(aes_key, AES.MODE_CBC, iv=ZERO_IV).decrypt(ciphertext), 16)


# -- RSA keys ----------------------------------------------------------------


def test_generated_key_is_rsa_1024_e17(key):
    assert key.size_in_bits() == 1024
    assert key.e == 17
    assert key.has_private()


def test_public_key_export_is_exactly_160_bytes_of_der(key):
    exported = crypto.export_public_key(key)
    assert len(exported) == 160
    # Exactly 160 bytes of DER, no padding needed: SEQUENCE of 0x9D bytes.
    assert exported[:3] == bytes.fromhex("30819d")
    assert exported == key.public_key().export_key(format="DER")
    assert crypto.import_public_key(exported) == key.public_key()


def test_public_key_with_e65537_does_not_fit():
    big_e = RSA.generate(1024, e=65537)
    assert len(big_e.public_key().export_key(format="DER")) == 162
    with pytest.raises(LocalProtocolError):
        crypto.export_public_key(big_e)


def test_private_key_round_trip(key):
    der = crypto.export_private_key(key)
    assert crypto.import_private_key(der) == key
    # PKCS#1 too
    assert crypto.import_private_key(key.export_key(format="DER")) == key


@pytest.mark.parametrize(
    "make",
    [
        lambda k: k.public_key().export_key(format="DER"),
        lambda k: bytes(160),
        lambda k: random.Random(0).randbytes(600),
        lambda k: small_key().export_key(format="DER"),
    ],
    ids=["public", "zeros", "random", "512-bit"],
)
def test_import_private_key_refuses(key, make):
    with pytest.raises(CryptoError):
        crypto.import_private_key(make(key))


def spki_without_null_parameters(spki: bytes) -> bytes:
    """The same SubjectPublicKeyInfo without the AlgorithmIdentifier's NULL.

    160-byte SPKI: 30 81 9d | 30 0d <OID rsaEncryption, 11 bytes> 05 00 | 03 81 8b ...
    Dropping "05 00" gives 30 81 9b | 30 0b <OID> | 03 81 8b ...: 158 bytes.
    """
    assert spki[:5] == bytes.fromhex("30819d300d") and spki[16:18] == b"\x05\x00"
    return bytes.fromhex("30819b300b") + spki[5:16] + spki[18:]


def test_import_public_key_tolerates_zero_padding(key):
    pkcs1 = pkcs1_public_der(key.public_key())
    spki = spki_without_null_parameters(key.public_key().export_key(format="DER"))
    assert (len(pkcs1), len(spki)) == (138, 158)
    for short in (pkcs1, spki):
        padded = short + bytes(160 - len(short))
        assert crypto.import_public_key(padded) == key.public_key()


def test_import_public_key_accepts_e3_and_e65537_short_forms():
    for e in (3, 65537):
        k = RSA.generate(1024, e=e)
        short = pkcs1_public_der(k.public_key())
        assert crypto.import_public_key(short.ljust(160, b"\0")).e == e


def with_exponent(spki_e17: bytes, exponent: int) -> bytes:
    """The 160-byte SPKI of an e=17 key with its one-byte exponent replaced."""
    assert spki_e17[-3:] == bytes.fromhex("020111")
    return spki_e17[:-1] + bytes([exponent])


BAD_PUBLIC_KEYS = [
    "zeros",
    "random-0",
    "random-1",
    "random-der-header",
    "der-then-garbage",
    "der-then-trailing-ff",
    "e65537-truncated",
    "512-bit-padded",
    "e1",
    "e2",
    "e16",
    "e65536-pkcs1",
    "private-pkcs8",
    "private-pkcs1",
    "too-short",
    "empty",
    "indefinite-length",
]


@pytest.fixture(scope="module")
def bad_public_keys(key) -> dict[str, bytes]:
    spki = key.public_key().export_key(format="DER")
    short = pkcs1_public_der(key.public_key())
    big_e = RSA.generate(1024, e=65537).public_key()
    small = small_key().public_key()
    assert small.size_in_bits() == 512
    even = RSA.construct((key.n, 65536))
    keys = {
        "zeros": bytes(160),
        "random-0": random.Random(0).randbytes(160),
        "random-1": random.Random(1).randbytes(160),
        "random-der-header": bytes.fromhex("30819d") + random.Random(2).randbytes(157),
        "der-then-garbage": short + b"\x01" + bytes(160 - len(short) - 1),
        "der-then-trailing-ff": short + bytes(160 - len(short) - 1) + b"\xff",
        "e65537-truncated": big_e.export_key(format="DER")[:160],
        "512-bit-padded": small.export_key(format="DER").ljust(160, b"\0"),
        "e1": with_exponent(spki, 1),
        "e2": with_exponent(spki, 2),
        "e16": with_exponent(spki, 16),
        "e65536-pkcs1": pkcs1_public_der(even).ljust(160, b"\0"),
        "private-pkcs8": crypto.export_private_key(key),
        "private-pkcs1": key.export_key(format="DER"),
        "too-short": bytes.fromhex("3081"),
        "empty": b"",
        "indefinite-length": bytes.fromhex("3080") + bytes(158),
    }
    assert sorted(keys) == sorted(BAD_PUBLIC_KEYS)
    return keys


@pytest.mark.parametrize("name", BAD_PUBLIC_KEYS)
@pytest.mark.parametrize("read", [crypto.import_public_key, crypto.read_public_key])
def test_import_public_key_refuses(bad_public_keys, name, read):
    with pytest.raises(CryptoError):
        read(bad_public_keys[name])


def test_read_public_key_gives_the_numbers_pycryptodome_reads(key):
    spki = key.public_key().export_key(format="DER")
    numbers = crypto.read_public_key(pkcs1_public_der(key.public_key()).ljust(160, b"\0"))
    assert numbers == crypto.read_public_key(spki) == crypto.RsaPublicNumbers(key.n, key.e)


@pytest.mark.parametrize("why, n, e", [
    ("even modulus", 2**1023 + 2, 17),
    ("modulus sharing a factor with e", 17 * (2**1019 + 1), 17),
    ("exponent not below the modulus", 2**1024 - 1, 2**1024 - 1),
])
def test_read_public_key_checks_the_numbers_as_rsa_construct_does(why, n, e):
    assert n.bit_length() == 1024, why
    der = DerSequence([n, e]).encode()
    with pytest.raises(CryptoError):
        crypto.read_public_key(der)
    with pytest.raises(ValueError):
        RSA.construct((n, e))  # PyCryptodome refuses them too


def test_sanity_of_the_bad_key_builders(key):
    # The bad keys are bad for the stated reason, not by accident: the same
    # constructions with good parameters import.
    spki = key.public_key().export_key(format="DER")
    assert crypto.import_public_key(with_exponent(spki, 17)) == key.public_key()
    assert crypto.import_public_key(with_exponent(spki, 3)).e == 3
    assert RSA.import_key(with_exponent(spki, 2)).e == 2  # PyCryptodome takes it
    # a private key refused although PyCryptodome would read it
    assert RSA.import_key(crypto.export_private_key(key)).has_private()


# -- RSA-OAEP ----------------------------------------------------------------


def test_oaep_round_trip(key):
    aes_key = crypto.new_aes_key()
    assert len(aes_key) == 32
    encrypted = crypto.encrypt_aes_key(key.public_key(), aes_key)
    assert len(encrypted) == 128
    assert crypto.decrypt_aes_key(key, encrypted) == aes_key


def test_oaep_is_sha1_mgf1_sha1_both_ways(key):
    # What Crypto++'s RSAES_OAEP_SHA_Encryptor and PyCryptodome default to.
    aes_key = crypto.new_aes_key()
    theirs = PKCS1_OAEP.new(key.public_key(), hashAlgo=SHA1).encrypt(aes_key)
    assert crypto.decrypt_aes_key(key, theirs) == aes_key
    ours = crypto.encrypt_aes_key(key.public_key(), aes_key)
    assert PKCS1_OAEP.new(key, hashAlgo=SHA1).decrypt(ours) == aes_key


_OAEP_KEY = crypto.generate_private_key()


@settings(max_examples=60, deadline=None)
@given(message=st.binary(max_size=86), as_numbers=st.booleans())
def test_our_oaep_decrypts_with_pycryptodome(message, as_numbers):
    """Any message that fits (up to 128 - 2*20 - 2 bytes), from the numbers or a key."""
    public = _OAEP_KEY.public_key()
    sealing = crypto.RsaPublicNumbers(public.n, public.e) if as_numbers else public
    sealed = crypto.encrypt_aes_key(sealing, message)
    assert len(sealed) == 128
    assert PKCS1_OAEP.new(_OAEP_KEY, hashAlgo=SHA1).decrypt(sealed) == message


def test_oaep_seals_the_same_key_differently_each_time(key):
    aes_key = crypto.new_aes_key()
    assert len({crypto.encrypt_aes_key(key.public_key(), aes_key) for _ in range(5)}) == 5


def test_oaep_refuses_a_message_too_long_for_the_key(key):
    crypto.encrypt_aes_key(key.public_key(), bytes(86))
    with pytest.raises(LocalProtocolError):
        crypto.encrypt_aes_key(key.public_key(), bytes(87))


def test_fresh_aes_keys_differ():
    assert len({crypto.new_aes_key() for _ in range(20)}) == 20


def test_decrypt_aes_key_failures(key, other_key):
    aes_key = crypto.new_aes_key()
    encrypted = crypto.encrypt_aes_key(key.public_key(), aes_key)
    with pytest.raises(CryptoError) as wrong_key:
        crypto.decrypt_aes_key(other_key, encrypted)
    with pytest.raises(CryptoError) as garbage:
        crypto.decrypt_aes_key(key, random.Random(3).randbytes(128))
    short_key = PKCS1_OAEP.new(key.public_key()).encrypt(bytes(16))
    with pytest.raises(CryptoError) as wrong_size:
        crypto.decrypt_aes_key(key, short_key)
    with pytest.raises(CryptoError) as truncated:
        crypto.decrypt_aes_key(key, encrypted[:-1])
    messages = {str(e.value) for e in (wrong_key, garbage, wrong_size, truncated)}
    assert messages == {str(decryption_failure())}


def decryption_failure() -> CryptoError:
    with pytest.raises(CryptoError) as info:
        crypto.decrypt(FIPS_KEY, b"")
    return info.value


# -- AES-256-CBC -------------------------------------------------------------


def test_fips_197_known_answer():
    # FIPS-197 C.3 (AES-256): with a zero IV the first CBC block is plain AES.
    plaintext = bytes.fromhex("00112233445566778899aabbccddeeff")
    ciphertext = crypto.encrypt(FIPS_KEY, plaintext)
    assert ciphertext[:16] == bytes.fromhex("8ea2b7ca516745bfeafc49904b496089")
    assert len(ciphertext) == 32  # a whole padding block follows
    assert crypto.decrypt(FIPS_KEY, ciphertext) == plaintext


SIZES = [0, 1, 15, 16, 17, 31, 32, 1000, 1024, 4000, 8192, 65_537]


@pytest.mark.parametrize("size", SIZES)
def test_aes_matches_pycryptodome(size):
    rng = random.Random(size)
    aes_key = rng.randbytes(32)
    plaintext = rng.randbytes(size)
    expected = pycryptodome_encrypt(aes_key, plaintext)
    assert crypto.encrypt(aes_key, plaintext) == expected
    assert len(expected) == crypto.padded_size(size) == (size // 16 + 1) * 16
    assert crypto.decrypt(aes_key, expected) == plaintext
    assert pycryptodome_decrypt(aes_key, crypto.encrypt(aes_key, plaintext)) == plaintext


@pytest.mark.parametrize("seed", range(12))
def test_aes_streaming_random_chunks(seed):
    rng = random.Random(seed)
    aes_key = rng.randbytes(32)
    plaintext = rng.randbytes(rng.choice([0, 1, 16, rng.randint(0, 20_000)]))
    expected = pycryptodome_encrypt(aes_key, plaintext)

    encryptor = crypto.CbcEncryptor(aes_key)
    pieces = []
    for chunk in chunked(plaintext, rng):
        pieces.append(encryptor.update(chunk))
    pieces.append(encryptor.finalize())
    assert b"".join(pieces) == expected

    decryptor = crypto.CbcDecryptor(aes_key)
    out = []
    for chunk in chunked(expected, rng):
        out.append(bytes(decryptor.update(chunk)))  # a view, valid until the next call
        # the last block is held back: no padding byte leaks out early
        assert sum(map(len, out)) <= len(expected) - 16
    out.append(decryptor.finalize())
    assert b"".join(out) == plaintext


@settings(max_examples=300, deadline=None)
@given(
    key_size=st.sampled_from([16, 32]),
    plaintext=st.binary(max_size=4096),
    cuts=st.lists(st.integers(min_value=0, max_value=4200), max_size=12),
    trailing=st.binary(max_size=40),
    data=st.data(),
)
def test_ecb_and_xor_equal_cbc_decryption(key_size, plaintext, cuts, trailing, data):
    # Any chunking (chunks empty, shorter than a block, not multiples of 16),
    # any key size, and ciphertext that is valid, tampered at the end or not
    # whole blocks: the result is PyCryptodome's CBC decryption and unpad, or
    # the one decryption failure where unpad refuses.
    aes_key = data.draw(st.binary(min_size=key_size, max_size=key_size))
    ciphertext = pycryptodome_encrypt(aes_key, plaintext)
    if data.draw(st.booleans()):
        ciphertext = ciphertext[: data.draw(st.integers(0, len(ciphertext)))] + trailing
    try:
        expected = pycryptodome_decrypt(aes_key, ciphertext)
    except ValueError:
        expected = None
    decryptor = crypto.CbcDecryptor(aes_key)
    into = data.draw(st.booleans())  # update_into, each chunk after the last in one buffer
    out, position = bytearray(), 0

    def decrypt(chunk) -> None:
        nonlocal out
        if not into:
            out += decryptor.update(chunk)
            return
        filled = len(out)
        out += bytes(crypto.CbcDecryptor.most_output(len(chunk)))
        del out[filled + decryptor.update_into(chunk, memoryview(out)[filled:]) :]

    for cut in sorted(cuts):
        cut = min(cut, len(ciphertext))
        decrypt(ciphertext[position:cut])
        position = max(position, cut)
    decrypt(memoryview(ciphertext)[position:])
    try:
        out += decryptor.finalize()
    except CryptoError:
        assert expected is None
    else:
        assert bytes(out) == expected


def chunked(data: bytes, rng: random.Random) -> list[bytes]:
    chunks, position = [], 0
    while position < len(data):
        step = rng.choice([0, 1, 15, 16, 17, rng.randint(0, 5000)])
        chunks.append(data[position : position + step])
        position += step
    return chunks


@pytest.mark.parametrize("size", [0, 1, 100, 1024])
def test_wrong_aes_key(size):
    # A wrong key gives a random last block: its padding is almost always
    # wrong, and then decrypt raises. When it happens to look valid, the
    # result is what PyCryptodome's unpad gives, never the plaintext.
    rng = random.Random(size)
    plaintext = rng.randbytes(size)
    ciphertext = crypto.encrypt(rng.randbytes(32), plaintext)
    raised = 0
    for _ in range(64):
        wrong = rng.randbytes(32)
        try:
            theirs = pycryptodome_decrypt(wrong, ciphertext)
        except ValueError:
            theirs = None
        try:
            ours = crypto.decrypt(wrong, ciphertext)
        except CryptoError as exc:
            assert str(exc) == str(decryption_failure())
            assert theirs is None
            raised += 1
        else:
            assert ours == theirs != plaintext
    assert raised >= 56


BAD_PADDINGS = {
    "zero": bytes(15) + b"\x00",
    "17": bytes(15) + b"\x11",
    "ff": bytes(15) + b"\xff",
    "inconsistent": bytes(13) + b"\x03\x02\x03",
    "two-claimed-one-given": bytes(14) + b"\x01\x02",
    "sixteen-with-one-wrong": b"\x10" * 15 + b"\x0f",
}


@pytest.mark.parametrize("last_block", BAD_PADDINGS.values(), ids=BAD_PADDINGS.keys())
@pytest.mark.parametrize("prefix_blocks", [0, 2])
def test_corrupted_padding_is_refused(last_block, prefix_blocks):
    aes_key = random.Random(7).randbytes(32)
    raw = random.Random(8).randbytes(16 * prefix_blocks) + last_block
    ciphertext = AES.new(aes_key, AES.MODE_CBC, iv=ZERO_IV).encrypt(raw)
    with pytest.raises(ValueError):
        pycryptodome_decrypt(aes_key, ciphertext)
    with pytest.raises(CryptoError) as info:
        crypto.decrypt(aes_key, ciphertext)
    assert str(info.value) == str(decryption_failure())


def test_tampered_last_block_is_refused():
    aes_key = random.Random(9).randbytes(32)
    ciphertext = bytearray(crypto.encrypt(aes_key, b"x" * 20))  # pad = 12 x 0x0c
    ciphertext[-17] ^= 0x0C ^ 0x0D  # last plaintext byte becomes 0x0d
    with pytest.raises(CryptoError):
        crypto.decrypt(aes_key, bytes(ciphertext))


@pytest.mark.parametrize("size", [0, 1, 15, 17, 31, 33, 1039])
def test_ciphertext_not_whole_blocks_is_refused(size):
    aes_key = random.Random(size).randbytes(32)
    with pytest.raises(CryptoError) as info:
        crypto.decrypt(aes_key, bytes(size))
    assert str(info.value) == str(decryption_failure())
    decryptor = crypto.CbcDecryptor(aes_key)
    decryptor.update(bytes(size))
    with pytest.raises(CryptoError):
        decryptor.finalize()


def test_every_decryption_failure_has_the_same_message(key, other_key):
    aes_key = random.Random(10).randbytes(32)
    good = crypto.encrypt(aes_key, b"hello")
    failing = [
        lambda: crypto.decrypt(aes_key, b""),
        lambda: crypto.decrypt(aes_key, good[:-1]),
        lambda: crypto.decrypt(aes_key, good + b"x"),
        lambda: crypto.decrypt(
            aes_key, AES.new(aes_key, AES.MODE_CBC, iv=ZERO_IV).encrypt(bytes(16))
        ),
        lambda: crypto.decrypt_aes_key(
            other_key, crypto.encrypt_aes_key(key.public_key(), aes_key)
        ),
        lambda: crypto.decrypt_aes_key(key, bytes(128)),
    ]
    messages = set()
    for fail in failing:
        with pytest.raises(CryptoError) as info:
            fail()
        messages.add(str(info.value))
    assert len(messages) == 1


@pytest.mark.parametrize("size", [0, 15, 24, 31, 33])
def test_aes_key_must_be_16_or_32_bytes(size):
    # AES-256 (v3, 2024A) or AES-128 (the 2022 and 2023 editions); never AES-192.
    with pytest.raises(LocalProtocolError):
        crypto.encrypt(bytes(size), b"x")
    with pytest.raises(LocalProtocolError):
        crypto.CbcDecryptor(bytes(size))


def test_crypto_error_is_a_protocol_error():
    from protocol import ProtocolError

    assert issubclass(CryptoError, ProtocolError)


@pytest.mark.parametrize("exponent", [3, 17, 0x7F])
def test_import_public_key_reads_our_own_layout_as_pycryptodome_does(key, exponent):
    spki = with_exponent(key.public_key().export_key(format="DER"), exponent)
    assert len(spki) == 160
    assert crypto.import_public_key(spki) == RSA.import_key(spki)


def test_import_public_key_refuses_a_negative_one_byte_exponent(key):
    # 0x81 as a one-byte DER INTEGER is -127: not an exponent, whatever the layout
    with pytest.raises(CryptoError):
        crypto.import_public_key(with_exponent(key.public_key().export_key(format="DER"), 0x81))


def test_import_public_key_reads_a_short_modulus_by_the_der(key):
    # A modulus whose top bit is clear would be encoded without its 0 byte:
    # our layout's bytes with a clear top bit are not a 1024-bit key.
    spki = bytearray(key.public_key().export_key(format="DER"))
    spki[29] &= 0x7F
    with pytest.raises(CryptoError):
        crypto.import_public_key(bytes(spki))
