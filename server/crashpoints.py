"""Test-only crash points: kill this process at a named point of the server.

Only tests use this (tests/crash/, tests/hostile/). A test starts
``python -m server`` with

    CIPHERDROP_CRASH_AT=<point>[:<count>]

and the server kills itself with SIGKILL (no cleanup, as ``kill -9`` or the
OOM killer would; the kernel's page cache survives, so this checks the order
of the steps, not the fsyncs) the ``count``-th time (default: the first) it
reaches ``reached("<point>")``; the test then restarts it on the same folder
and checks what start-up repair left (docs/HOSTILE.md G3). :func:`from_environment`
reads the variable once, at start-up (``server/__main__.py``); nothing else
arms a point, so an in-process server or a server started without the
variable never crashes here, and an unarmed ``reached`` is one comparison.

The points, in the order an upload meets them (:data:`POINTS`):

* ``write.begun``: a packet began an upload's blob (under its key), nothing
  written yet;
* ``write.appended``: one chunk of plaintext handed to the blob's writer
  (a local folder's is held in memory until a worker writes it);
* ``write.sealed``: the blob is sealed (durable under its key, closed);
* ``upload.committed``: a name's first upload: its row (Verified=0, pointing
  at the upload's key) is durable, the blob not published yet;
* ``upload.pending``: a later upload of a stored name is kept as a pending
  version (its blob, sealed at the round's end, the row's pending pointer),
  1603 not queued yet;
* ``upload.confirmed``: a 900's pointer swap (Verified=1) is durable, the
  pending version not published yet (start-up repair publishes it);
* ``publish.placed``: the blob is what its path name reads, not yet durably,
  at a first upload or at the 900 of a pending version;
* ``publish.durable``: the publish is durable; 1603 (or the 900's answer) not
  queued yet;
* ``verify.before_commit`` / ``verify.committed``: 900 (and 902) around what
  they change (a pending version's pointer swap, the Verified commit), before 1604
  is queued;
* ``retry.received``: a 901 was accepted (its 1604 is deferred, variant 8);
* ``key.committed``: 826/827 committed a fresh AES key, reply not queued;
* ``response.queued``: a response is in the outgoing buffer, not sent (a
  first upload's 1603, and what follows it on its connection, only once the
  file took its name at the round's end);
* ``response.sent``: some outgoing bytes went to the socket;
* ``remove.begun`` / ``remove.forgotten`` (``admin delete-client``): the
  client's blobs are taken out of the store / its rows are deleted too, the
  blobs not yet.
"""

from __future__ import annotations

import os
import signal

ENVIRONMENT_VARIABLE = "CIPHERDROP_CRASH_AT"
POINTS = frozenset(
    {
        "write.begun",
        "write.appended",
        "write.sealed",
        "upload.committed",
        "upload.pending",
        "upload.confirmed",
        "publish.placed",
        "publish.durable",
        "verify.before_commit",
        "verify.committed",
        "retry.received",
        "key.committed",
        "response.queued",
        "response.sent",
        "remove.begun",
        "remove.forgotten",
    }
)
# Windows has no SIGKILL; os.kill with any other signal is TerminateProcess there.
_KILL = getattr(signal, "SIGKILL", signal.SIGTERM)

_point: str | None = None
_remaining = 0


def configure(spec: str | None) -> str | None:
    """Arm ``<point>[:<count>]`` (None or "" disarms); return the armed point.

    Raises:
        ValueError: an unknown point or a count that is not a positive integer.
    """
    global _point, _remaining
    if not spec:
        _point, _remaining = None, 0
        return None
    name, _, count = spec.partition(":")
    if name not in POINTS:
        raise ValueError(f"unknown crash point {name!r}; known: {', '.join(sorted(POINTS))}")
    if count and not (count.isdigit() and int(count) >= 1):
        raise ValueError(f"crash point count must be a positive integer, got {count!r}")
    _point, _remaining = name, int(count) if count else 1
    return name


def from_environment() -> str | None:
    """Arm the point named by ``CIPHERDROP_CRASH_AT``, if set (start-up only).

    Raises:
        ValueError: the variable names no known point (see :func:`configure`).
    """
    return configure(os.environ.get(ENVIRONMENT_VARIABLE))


def reached(name: str) -> None:
    """The server is at point ``name``: SIGKILL itself if that is the armed one."""
    global _remaining
    if name != _point:
        return
    _remaining -= 1
    if _remaining <= 0:
        os.kill(os.getpid(), _KILL)
