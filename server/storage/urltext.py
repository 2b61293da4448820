"""A store URL as messages and logs may show it: without a password or a secret.

A URL reaches a message whatever it holds (a refusal quotes it): what would
give access is hidden there, in the user part (``user:***@``) and in the
value of any option named like a secret (``password``, ``sslpassword``,
``aws_secret_access_key``, ``token``, ...), even where the URL does not parse.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlsplit

#: The query option that carries a password (libpq's name).
PASSWORD_OPTION = "password"
_HIDDEN = "***"
#: Option names whose value is hidden (matched in the decoded, lower-cased name).
_SECRET_OPTION = re.compile(r"password|secret|token|credential|key")
#: Where a URL that does not parse may hold a password: ``//user:PASSWORD@`` (the
#: user part ends at its last ``@``), and the options' values.
_USER_PASSWORD = re.compile(r"(//[^/?#:@]*:)[^/?#]*@")
_OPTION = re.compile(r"([?&;])([^=&#;]*)=([^&#;]*)")


def has_password(text: str) -> bool:
    """Whether the URL carries a password, in its user part or as an option."""
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        return _USER_PASSWORD.search(text) is not None
    options = {name for name, _ in parse_qsl(parts.query, keep_blank_values=True)}
    return password is not None or PASSWORD_OPTION in options


def _is_secret(name: str) -> bool:
    return _SECRET_OPTION.search(unquote(name).lower()) is not None


def without_password(text: str) -> str:
    """The URL with any password, and any option's value named like a secret, as ``***``."""
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:  # not a URL urllib reads: hide by the text's shape
        return _without_secrets_unparsed(text)
    netloc = parts.netloc
    if password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:{_HIDDEN}@{host}"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if not any(_is_secret(name) for name, _ in pairs) and password is None:
        return text
    query = "&".join(
        f"{name}={_HIDDEN if _is_secret(name) else value}" for name, value in pairs
    )
    return parts._replace(netloc=netloc, query=query).geturl()


def _without_secrets_unparsed(text: str) -> str:
    shown = _USER_PASSWORD.sub(rf"\1{_HIDDEN}@", text)
    return _OPTION.sub(
        lambda found: found.group(0) if not _is_secret(found.group(2))
        else f"{found.group(1)}{found.group(2)}={_HIDDEN}",
        shown,
    )
