"""The client's typed errors: each kind of failure has its own class.

``client.__main__`` maps each class to an exit code; everything below
``ClientError`` is an expected failure with a message fit for a person, never
a traceback.
"""

from __future__ import annotations

from pathlib import Path


class ClientError(Exception):
    """Base class of every failure the client reports on purpose."""


class ConfigError(ClientError):
    """A configuration file or a file to send is missing, unreadable or wrong.

    ``path`` names the file and ``line`` (1-based) the line when there is one,
    so that the message points at what to fix.
    """

    def __init__(self, path: Path | str, message: str, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        self.reason = message
        where = self.path.name if line is None else f"{self.path.name} line {line}"
        super().__init__(f"{where}: {message}")


class FileReadError(ConfigError):
    """A file to send could not be read to the end, or changed while read."""


class NetworkError(ClientError):
    """The server cannot be reached, closed the connection or stopped answering.

    ``step`` names what the client was doing, once the flow knows it;
    ``closed`` says the server closed or reset the connection, ``timed_out``
    that it did not answer in time (the symptoms the client's fallbacks read),
    ``too_slow`` that it read a send slower than ``--min-rate`` (a failure the
    retries of a step or file cover, client/upload.py).
    """

    def __init__(
        self,
        message: str,
        step: str | None = None,
        *,
        closed: bool = False,
        timed_out: bool = False,
        too_slow: bool = False,
    ) -> None:
        super().__init__(message)
        self.step = step
        self.closed = closed
        self.timed_out = timed_out
        self.too_slow = too_slow


class NotAServer(ClientError):
    """The address answers in another protocol (client/foreign.py): no retry can help."""


class MalformedReply(ClientError):
    """The server sent bytes that break docs/PROTOCOL.md; the stream is unusable."""


class UnexpectedReply(ClientError):
    """A well-formed reply that is not an answer to the request (1607 included).

    ``packet`` is the file packet after which it came, when it came early.
    """

    def __init__(self, message: str, packet: int | None = None) -> None:
        super().__init__(message)
        self.packet = packet


#: The reason the upload flow gives for a bare 1607 (docs/PROTOCOL.md: no payload).
BARE_GENERAL_ERROR = "the server answered 1607 (general error)"
#: Added to a final bare 1607: the reply carries no reason, the server's log does.
NO_REASON_HINT = (
    "the server gave no reason (1607 carries none: a full disk or one of its limits,"
    " for instance); its log says why"
)


class ServerError(ClientError):
    """A step still failed after every retry: fatal, names the step and why.

    A bare 1607 carries no reason, so the message says where to look.
    """

    def __init__(self, step: str, reason: str, attempts: int) -> None:
        self.step = step
        self.reason = reason
        self.attempts = attempts
        message = f"{step} failed after {attempts} attempts: {reason}"
        if reason == BARE_GENERAL_ERROR:
            message += f"; {NO_REASON_HINT}"
        super().__init__(message)


class RegistrationRefused(ClientError):
    """The server answered 1601: the name belongs to another client."""


class DuplicateNames(ConfigError):
    """Two files of one run would be stored under one name: nothing is sent."""


class NotLoggedIn(RuntimeError):
    """A step that needs the identity or the AES key ran before ``Client.log_in``.

    A bug in the caller, not a failure of the run: deliberately no ClientError,
    so that it ends in a traceback rather than in a message and an exit code.
    """
