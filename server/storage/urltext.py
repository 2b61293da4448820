"""A store URL as messages and logs may show it: without a password."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

#: The query option that carries a password (libpq's name).
PASSWORD_OPTION = "password"
_HIDDEN = "***"


def has_password(text: str) -> bool:
    """Whether the URL carries a password, in its user part or as an option."""
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        return False
    options = {name for name, _ in parse_qsl(parts.query, keep_blank_values=True)}
    return password is not None or PASSWORD_OPTION in options


def without_password(text: str) -> str:
    """The URL with any password replaced by ``***``."""
    if not has_password(text):
        return text
    parts = urlsplit(text)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:{_HIDDEN}@{host}"
    query = "&".join(
        f"{name}={_HIDDEN if name == PASSWORD_OPTION else value}"
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return parts._replace(netloc=netloc, query=query).geturl()
