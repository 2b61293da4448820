"""Key binding: who may use a client's keys besides whoever knows its id.

Keys outlive connections (docs/PROTOCOL.md, variant 7), and a client id travels in
clear in every header, so the id alone must not be enough to act as a client.

The rule (docs/KEY_BINDING.md has the reasoning):

* 825 (and an 827 that registers a name, variant 9) binds the new client to
  the IP address that sent it. 826 is accepted only from that address, and
  only within the key window: a stranger who sees the id cannot attach a key
  of his own to a fresh registration.
* 1602 and 1605 bind the client's (new) AES key to the IP address that
  received it. 828 and 900–902 are accepted only from that address and only
  while the key was issued or last used within the key window (default one
  hour). Otherwise: 1607, before any decryption.
* The binding is stored in ``key_bindings`` and survives restarts; its
  LastUsed is refreshed by every accepted use.
* Nothing is written for a client on behalf of an address it is not bound
  to: not its edition, its CRC flavour or its last-seen time either. The
  session checks the binding once per request that names a client, before
  anything else (Rule 7 of server/session.py, :func:`why_not_bound`); only
  827, and a 2022 client's 826 with its stored key, are handled from
  elsewhere, by their own rules.

What it protects: a stranger elsewhere who learned a client id (from a
capture, a log, a shared me.info) cannot upload, overwrite, verify or abort
that client's files, and cannot probe its key with chosen ciphertexts; a key
left unused for the window is dead.

What it cannot protect: peers sharing the address (NAT, the same host), an
on-path attacker who can spoof or hijack the address, and anyone who knows
both name and id, who can send 827 and get a key bound to himself: he cannot
read that key (it is sealed with the client's public key), so his uploads fail
to decrypt, but he rotates the client's key (a denial of service) — the
protocol has no proof of key possession before the first upload.
"""

from __future__ import annotations

from .errors import Refusal
from .storage import ClientRow, MetadataStore


def bind(db: MetadataStore, client_id: bytes, address: str, now: float) -> None:
    """Bind a registration or a freshly issued key to an address from now."""
    db.set_binding(client_id, address, now)


def why_not_bound(
    db: MetadataStore, client: ClientRow, address: str, now: float, window: float
) -> str | None:
    """Why a request from this address may not act for the client, or None if it may.

    A keyed client is bound to the address that received its key, for the
    window since the key's last use; a keyless one to the address that
    registered it, for the window since then. Rule 7 of server/session.py
    asks this once per request that names a client, before anything is
    written for it.
    """
    binding = db.binding(client.id)
    if binding is None or binding.address != address:
        return "key is bound to another address"
    since = binding.last_used if client.aes_key is not None else binding.issued_at
    if now - since > window:
        return "key binding expired; reconnect (827) for a fresh key"
    return None


def use_key(db: MetadataStore, client: ClientRow, now: float) -> bytes:
    """The key of a client whose binding admitted the request; records the use.

    Raises:
        Refusal: 1607, the client has no key yet.
    """
    if client.aes_key is None:
        raise Refusal("client has no AES key")
    db.note_key_used(client.id, now)
    return client.aes_key
