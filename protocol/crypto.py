"""The protocol's cryptography on PyCryptodome.

RSA-1024 with the Crypto++ default exponent 17, so that the public key is
exactly 160 bytes of X.509 DER; RSA-OAEP (SHA-1) for the AES key; AES-256-CBC
with a zero IV and PKCS#7 padding for the file, streamed chunk by chunk.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from Crypto.Cipher import AES, PKCS1_OAEP
from Crypto.PublicKey import RSA
from Crypto.Random import get_random_bytes
from Crypto.Util.asn1 import DerBitString, DerNull, DerObjectId, DerSequence
from Crypto.Util.strxor import strxor

from .buffer import BytesLike
from .codes import AES_BLOCK_SIZE, AES_KEY_SIZE, AES_KEY_SIZES, PUBLIC_KEY_SIZE, RSA_KEY_BITS
from .errors import CryptoError, LocalProtocolError

#: Crypto++'s default public exponent; with it the DER key is 160 bytes.
PUBLIC_EXPONENT = 17
ZERO_IV = bytes(AES_BLOCK_SIZE)
#: The one message of every decryption failure (docs/HOSTILE.md D3).
_DECRYPTION_FAILED = "decryption failed"


def generate_private_key() -> RSA.RsaKey:
    """A new RSA-1024 key pair whose public key exports to 160 bytes."""
    return RSA.generate(RSA_KEY_BITS, e=PUBLIC_EXPONENT)


def export_public_key(key: RSA.RsaKey) -> bytes:
    """The public key as X.509 SubjectPublicKeyInfo DER, zero-padded to 160.

    Raises:
        LocalProtocolError: the key does not fit the 160-byte field.
    """
    der = key.public_key().export_key(format="DER")
    if len(der) > PUBLIC_KEY_SIZE:
        raise LocalProtocolError(
            f"public key is {len(der)} bytes of DER; the protocol carries {PUBLIC_KEY_SIZE}"
        )
    return der.ljust(PUBLIC_KEY_SIZE, b"\0")


def export_private_key(key: RSA.RsaKey) -> bytes:
    """The private key as PKCS#8 DER (what ``me.info`` and ``priv.key`` hold)."""
    return key.export_key(format="DER", pkcs=8)


def import_private_key(der: bytes) -> RSA.RsaKey:
    """Read a private key (PKCS#1 or PKCS#8 DER).

    Raises:
        CryptoError: not an RSA-1024 private key.
    """
    try:
        key = RSA.import_key(der)
    except (ValueError, IndexError, TypeError) as exc:
        raise CryptoError("not an RSA private key") from exc
    if not key.has_private() or key.size_in_bits() != RSA_KEY_BITS:
        raise CryptoError(f"not an RSA-{RSA_KEY_BITS} private key")
    return key


def _der_length(data: bytes) -> int:
    """Length of the DER element at the start of data, header included."""
    if len(data) < 2:
        raise CryptoError("public key too short")
    first = data[1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    if not 1 <= count <= 2 or len(data) < 2 + count:
        raise CryptoError("public key has a bad DER length")
    return 2 + count + int.from_bytes(data[2 : 2 + count], "big")


#: The algorithms of an RSA SubjectPublicKeyInfo (rsaEncryption, RSASSA-PSS),
#: the two PyCryptodome's own import takes.
_RSA_ALGORITHMS = (RSA.oid, "1.2.840.113549.1.1.10")
#: RSAPublicKey (PKCS#1) and SubjectPublicKeyInfo are both SEQUENCEs of two.
_PAIR = 2
#: An AlgorithmIdentifier: its OID, and parameters that may be left out.
_ALGORITHM_ELEMENTS = (1, 2)
#: The DER every client of ours sends (``export_public_key``): an RSA-1024
#: SubjectPublicKeyInfo with a one-byte exponent is these bytes, the 128 bytes
#: of n, ``_SPKI_1024_BEFORE_E``, and e. Read by position, without a DER parser.
_SPKI_1024_BEFORE_N = bytes.fromhex(
    "30819d"  # SEQUENCE, 157 bytes
    "300d06092a864886f70d0101010500"  # AlgorithmIdentifier: rsaEncryption, NULL
    "03818b00"  # BIT STRING, 139 bytes, no unused bits
    "30818702818100"  # SEQUENCE, 135 bytes; INTEGER n, 129 bytes: 0, then 128
)
_SPKI_1024_BEFORE_E = bytes.fromhex("0201")  # INTEGER e, one byte
_SPKI_1024_N = slice(len(_SPKI_1024_BEFORE_N), len(_SPKI_1024_BEFORE_N) + RSA_KEY_BITS // 8)
_SPKI_1024_E = _SPKI_1024_N.stop + len(_SPKI_1024_BEFORE_E)
#: A one-byte DER INTEGER at or above this is negative.
_DER_SIGN_BIT = 0x80


def _rsa_public_numbers(der: bytes) -> tuple[int, int]:
    """(n, e) of a PKCS#1 RSAPublicKey or an RSA SubjectPublicKeyInfo: each byte read once.

    Raises:
        ValueError, IndexError, TypeError: anything else (PyCryptodome's parse errors).
        CryptoError: a private key.
    """
    if (
        len(der) == PUBLIC_KEY_SIZE
        and der.startswith(_SPKI_1024_BEFORE_N)
        and der[_SPKI_1024_N.stop : _SPKI_1024_E] == _SPKI_1024_BEFORE_E
        and der[_SPKI_1024_E] < _DER_SIGN_BIT
    ):
        return int.from_bytes(der[_SPKI_1024_N], "big"), der[_SPKI_1024_E]
    outer = DerSequence().decode(der)
    if len(outer) == _PAIR and outer.hasOnlyInts():
        return int(outer[0]), int(outer[1])
    if outer.hasInts():  # RSAPrivateKey: nine INTEGERs; PKCS#8: a version first
        raise CryptoError("a private key was sent as a public key")
    if len(outer) != _PAIR:
        raise ValueError("not a SubjectPublicKeyInfo")
    algorithm = DerSequence().decode(outer[0], nr_elements=_ALGORITHM_ELEMENTS)
    if DerObjectId().decode(algorithm[0]).value not in _RSA_ALGORITHMS:
        raise ValueError("not an RSA key")
    if len(algorithm) == _PAIR:
        DerNull().decode(algorithm[1])
    inner = DerSequence().decode(
        DerBitString().decode(outer[1]).value, nr_elements=_PAIR, only_ints_expected=True
    )
    return int(inner[0]), int(inner[1])


@dataclass(frozen=True)
class RsaPublicNumbers:
    """A received RSA public key as the server uses it: its modulus and exponent."""

    n: int
    e: int


def read_public_key(data: BytesLike) -> RsaPublicNumbers:
    """Read a received public key: DER by its own length, trailing zeros ignored.

    The DER is parsed once (PKCS#1 RSAPublicKey or SubjectPublicKeyInfo, the
    forms a 160-byte field can hold), and the numbers get the checks
    PyCryptodome's ``RSA.construct`` makes of a public key, without building
    one: all the server does with the key is :func:`encrypt_aes_key`.

    Raises:
        CryptoError: not an RSA-1024 public key with an odd exponent above 1,
            or followed by anything but zero padding.
    """
    data = bytes(data)
    length = _der_length(data)
    if length > len(data) or any(data[length:]):
        raise CryptoError("public key is not DER followed by zero padding")
    try:
        n, e = _rsa_public_numbers(data[:length])
    except (ValueError, IndexError, TypeError) as exc:
        raise CryptoError("not an RSA public key") from exc
    if n.bit_length() != RSA_KEY_BITS:
        raise CryptoError(f"RSA key of {n.bit_length()} bits, not {RSA_KEY_BITS}")
    if e < 3 or e % 2 == 0 or e >= n:
        raise CryptoError(f"unsafe RSA public exponent {e}")
    if n % 2 == 0 or math.gcd(n, e) != 1:
        raise CryptoError("not an RSA public key")
    return RsaPublicNumbers(n, e)


def import_public_key(data: BytesLike) -> RSA.RsaKey:
    """:func:`read_public_key` as a PyCryptodome key (for a client, or a test).

    Raises:
        CryptoError: as :func:`read_public_key`.
    """
    numbers = read_public_key(data)
    try:
        return RSA.construct((numbers.n, numbers.e))
    except ValueError as exc:
        raise CryptoError("not an RSA public key") from exc


def new_aes_key(size: int = AES_KEY_SIZE) -> bytes:
    """A fresh random AES key: AES-256 (v3), or AES-128 for ``size`` 16."""
    _check_key_size(size)
    return get_random_bytes(size)


#: RSA-OAEP as Crypto++'s RSAES_OAEP_SHA_Encryptor does it (RFC 8017, 7.1.1):
#: SHA-1 for the label's hash and for MGF1, and an empty label.
_OAEP_HASH = hashlib.sha1
_OAEP_HASH_SIZE = _OAEP_HASH().digest_size
_OAEP_EMPTY_LABEL_HASH = _OAEP_HASH(b"").digest()
_OAEP_SEPARATOR = b"\x01"
_MGF1_COUNTER_SIZE = 4


def encrypt_aes_key(public_key: RsaPublicNumbers | RSA.RsaKey, aes_key: bytes) -> bytes:
    """The AES key under RSA-OAEP (SHA-1): 128 bytes for a 1024-bit key.

    RFC 8017's EME-OAEP encoding over hashlib, then ``m^e mod n``: the
    encoding of PyCryptodome's ``PKCS1_OAEP`` (tests decrypt ours with theirs),
    at a third of its cost; with it, a tenth of a server's CPU per session.
    """
    n, e = int(public_key.n), int(public_key.e)
    size = (n.bit_length() + 7) // 8
    padding = size - len(aes_key) - 2 * _OAEP_HASH_SIZE - 2
    if padding < 0:
        raise LocalProtocolError(f"a {len(aes_key)}-byte message is too long for RSA-OAEP")
    block = _OAEP_EMPTY_LABEL_HASH + bytes(padding) + _OAEP_SEPARATOR + aes_key
    seed = get_random_bytes(_OAEP_HASH_SIZE)
    masked_block = strxor(block, _mgf1(seed, len(block)))
    masked_seed = strxor(seed, _mgf1(masked_block, _OAEP_HASH_SIZE))
    encoded = int.from_bytes(b"\0" + masked_seed + masked_block, "big")
    return pow(encoded, e, n).to_bytes(size, "big")


def _mgf1(seed: bytes, length: int) -> bytes:
    """MGF1 with SHA-1 (RFC 8017, B.2.1): ``length`` bytes of mask from ``seed``."""
    count = -(-length // _OAEP_HASH_SIZE)
    mask = b"".join(
        _OAEP_HASH(seed + counter.to_bytes(_MGF1_COUNTER_SIZE, "big")).digest()
        for counter in range(count)
    )
    return mask[:length]


def decrypt_aes_key(private_key: RSA.RsaKey, encrypted: bytes, size: int = AES_KEY_SIZE) -> bytes:
    """The AES key from its RSA-OAEP ciphertext.

    Raises:
        CryptoError: the ciphertext does not decrypt to a key of ``size`` bytes.
    """
    try:
        aes_key = PKCS1_OAEP.new(private_key).decrypt(encrypted)
    except (ValueError, TypeError) as exc:
        raise CryptoError(_DECRYPTION_FAILED) from exc
    if len(aes_key) != size:
        raise CryptoError(_DECRYPTION_FAILED)
    return aes_key


def _check_key_size(size: int) -> None:
    if size not in AES_KEY_SIZES:
        raise LocalProtocolError(f"AES key must be {' or '.join(map(str, AES_KEY_SIZES))} bytes")


def _cbc(aes_key: bytes):
    _check_key_size(len(aes_key))
    return AES.new(aes_key, AES.MODE_CBC, iv=ZERO_IV)


def padded_size(plain_size: int) -> int:
    """Ciphertext size of plain_size bytes under PKCS#7: always a block more."""
    return (plain_size // AES_BLOCK_SIZE + 1) * AES_BLOCK_SIZE


class CbcEncryptor:
    """AES-256-CBC, zero IV, PKCS#7: plaintext chunks in, ciphertext out."""

    def __init__(self, aes_key: bytes) -> None:
        self._cipher = _cbc(aes_key)
        self._pending = b""

    def update(self, plaintext: bytes) -> bytes:
        """Encrypt what whole blocks there are; keep the rest for later."""
        data = self._pending + plaintext if self._pending else plaintext
        whole = len(data) - len(data) % AES_BLOCK_SIZE
        self._pending = bytes(data[whole:])
        return self._cipher.encrypt(data[:whole]) if whole else b""

    def update_into(self, plaintext: BytesLike, output: bytearray | memoryview) -> int:
        """Like :meth:`update`, but into ``output``; return the bytes written.

        ``output`` must hold the input plus 15 bytes. With block-aligned chunks
        (the client's packets) nothing is copied or allocated.
        """
        data = self._pending + bytes(plaintext) if self._pending else plaintext
        whole = len(data) - len(data) % AES_BLOCK_SIZE
        with memoryview(data) as view:
            self._pending = bytes(view[whole:])
            if whole:
                self._cipher.encrypt(view[:whole], output=memoryview(output)[:whole])
        return whole

    def finalize(self) -> bytes:
        """Pad and encrypt the last block; the encryptor is then spent."""
        pad = AES_BLOCK_SIZE - len(self._pending)
        last = self._cipher.encrypt(self._pending + bytes([pad]) * pad)
        self._pending = b""
        return last


class CbcDecryptor:
    """AES-CBC, zero IV, PKCS#7: ciphertext chunks in, plaintext out.

    CBC decryption is ``P[i] = D(C[i]) xor C[i-1]`` (``C[-1]`` the IV): each
    block depends on ciphertext only, so a whole chunk is decrypted by one
    ECB call and one xor against the same ciphertext shifted by a block. On
    AES-NI that runs several times faster than PyCryptodome's serial CBC
    decryption; ``tests/protocol/test_protocol_crypto.py`` proves the two
    equal over random chunkings.

    The last plaintext block is held back until ``finalize``, which checks
    the padding, so no padding byte ever reaches the caller.
    """

    def __init__(self, aes_key: bytes) -> None:
        _check_key_size(len(aes_key))
        self._ecb = AES.new(aes_key, AES.MODE_ECB)
        self._previous = 0  # the ciphertext block before the next one (the IV)
        self._partial = b""  # ciphertext short of a whole block
        self._held = b""  # the last plaintext block, not given out yet
        self._out = bytearray()  # reused from chunk to chunk

    @staticmethod
    def most_output(size: int) -> int:
        """Bytes :meth:`update_into` may write for ``size`` bytes of ciphertext (what it
        emits and the block it holds back)."""
        return size + 2 * AES_BLOCK_SIZE

    @staticmethod
    def most_input(room: int) -> int:
        """Bytes of ciphertext whose :meth:`update_into` surely fits in ``room`` bytes of
        output (the inverse of :meth:`most_output`; 0 if none)."""
        return max(0, room - CbcDecryptor.most_output(0))

    def update(self, ciphertext: BytesLike) -> memoryview:
        """Decrypt what whole blocks there are; give out all but the last.

        The result is a view of the decryptor's own buffer, valid until the
        next call: write it out or copy it before then.
        """
        size = self.most_output(len(ciphertext))
        if len(self._out) < size:
            self._out = bytearray(size)
        out = memoryview(self._out)
        return out[: self.update_into(ciphertext, out)]

    def update_into(self, ciphertext: BytesLike, out: memoryview) -> int:
        """Decrypt what whole blocks there are into ``out`` (at least
        :meth:`most_output` bytes); return how many of its first bytes are plaintext
        given out (all but the last block; what follows them is scratch).
        """
        with memoryview(ciphertext) as view:
            partial, held = self._partial, self._held
            whole = len(partial) + len(view)
            whole -= whole % AES_BLOCK_SIZE
            if not whole:
                self._partial = partial + bytes(view)
                return 0
            size = len(held) + whole
            out = out[:size]
            out[: len(held)] = held
            done = len(held)
            if partial:  # the block begun by the previous chunk
                take = AES_BLOCK_SIZE - len(partial)
                head = partial + bytes(view[:take])
                self._decrypt_blocks(head, out[done : done + AES_BLOCK_SIZE])
                done += AES_BLOCK_SIZE
                view = view[take:]
            body = size - done
            if body:
                self._decrypt_blocks(view[:body], out[done:])
            self._partial = bytes(view[body:])
            emit = size - AES_BLOCK_SIZE
            self._held = bytes(out[emit:])
            return emit

    def _decrypt_blocks(self, cipher: BytesLike, out: memoryview) -> None:
        """Whole blocks into ``out``: one ECB pass, then the CBC xor."""
        self._ecb.decrypt(cipher, output=out)
        first = int.from_bytes(out[:AES_BLOCK_SIZE], "big") ^ self._previous
        out[:AES_BLOCK_SIZE] = first.to_bytes(AES_BLOCK_SIZE, "big")
        if len(out) > AES_BLOCK_SIZE:
            rest = out[AES_BLOCK_SIZE:]
            strxor(rest, memoryview(cipher)[:-AES_BLOCK_SIZE], output=rest)
        self._previous = int.from_bytes(cipher[-AES_BLOCK_SIZE:], "big")

    def finalize(self) -> bytes:
        """Strip the padding of the last block.

        Raises:
            CryptoError: the stream was not a whole number of blocks, or its
                padding is wrong (one message for both).
        """
        last, self._held = self._held, b""
        if self._partial or not last:
            raise CryptoError(_DECRYPTION_FAILED)
        pad = last[-1]
        if not 1 <= pad <= AES_BLOCK_SIZE or last[-pad:] != bytes([pad]) * pad:
            raise CryptoError(_DECRYPTION_FAILED)
        return last[:-pad]


def encrypt(aes_key: bytes, plaintext: bytes) -> bytes:
    """One-shot AES-256-CBC encryption with zero IV and PKCS#7."""
    encryptor = CbcEncryptor(aes_key)
    return encryptor.update(plaintext) + encryptor.finalize()


def decrypt(aes_key: bytes, ciphertext: bytes) -> bytes:
    """One-shot decryption.

    Raises:
        CryptoError: bad length or padding.
    """
    decryptor = CbcDecryptor(aes_key)
    return bytes(decryptor.update(ciphertext)) + decryptor.finalize()
