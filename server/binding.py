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
from .storage import Binding, ClientRow, MetadataStore


def bind(db: MetadataStore, client_id: bytes, address: str, now: float) -> None:
    """Bind a registration or a freshly issued key to an address from now."""
    db.set_binding(client_id, address, now)


def _check(binding: Binding | None, address: str, since: float, now: float, window: float) -> None:
    if binding is None or binding.address != address:
        raise Refusal("key is bound to another address")
    if now - since > window:
        raise Refusal("key binding expired; reconnect (827) for a fresh key")


def check_registration(
    db: MetadataStore, client: ClientRow, address: str, now: float, window: float
) -> None:
    """826 may come only from the address that registered, within the window.

    Raises:
        Refusal: 1607.
    """
    binding = db.binding(client.id)
    _check(binding, address, binding.issued_at if binding else now, now, window)


def check_key_use(
    db: MetadataStore, client: ClientRow, address: str, now: float, window: float
) -> bytes:
    """828 and 900–902 may use the key only from its address, within the window.

    Records the use on success, and returns the key.

    Raises:
        Refusal: 1607, before anything is decrypted.
    """
    if client.aes_key is None:
        raise Refusal("client has no AES key")
    binding = db.binding(client.id)
    _check(binding, address, binding.last_used if binding else now, now, window)
    db.note_key_used(client.id, now)
    return client.aes_key
