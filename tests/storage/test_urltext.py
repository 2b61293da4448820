"""A store URL in a message never shows a password or a secret
(server/storage/urltext.py, StoreUrl's text form), whether or not it parses."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.errors import BadStoreUrl
from server.storage.factory import blobs_url, metadata_url
from server.storage.urltext import without_password

SECRET = "s3cret"


@pytest.mark.parametrize("text", [
    f"postgresql://cipherdrop:{SECRET}@db.example/cipherdrop",
    f"postgresql://db.example/cipherdrop?password={SECRET}",
    f"postgresql://db.example/cipherdrop?sslmode=require&sslpassword={SECRET}",
    f"postgresql://cipherdrop:{SECRET}@[::1/cipherdrop",  # urllib cannot read it
    f"postgresql://cipherdrop:{SECRET}@[::1/cipherdrop?password={SECRET}",
    f"s3://key:{SECRET}@files-bucket/p",
    f"s3://files-bucket/p?aws_secret_access_key={SECRET}",
    f"s3://files-bucket/p?session%5Ftoken={SECRET}",
])
def test_a_url_as_shown_holds_no_secret_but_the_rest(text):
    shown = without_password(text)
    assert SECRET not in shown
    assert shown.split(":", 1)[0] == text.split(":", 1)[0]


def test_a_url_without_a_secret_is_shown_as_written():
    text = "postgresql://cipherdrop@db.example:5432/cipherdrop?sslmode=require"
    assert without_password(text) == text


@pytest.mark.parametrize("text, option", [
    (f"postgresql://cipherdrop:{SECRET}@[::1/cipherdrop", metadata_url),
    (f"s3://key:{SECRET}@files-bucket/p", blobs_url),
    (f"s3://files-bucket/p?aws_secret_access_key={SECRET}", blobs_url),
    (f"file:///srv/drop?password={SECRET}", blobs_url),
    (f"sqlite:///srv/drop.db?password={SECRET}", metadata_url),
])
def test_a_refused_url_is_quoted_without_its_secret(text, option):
    with pytest.raises(BadStoreUrl) as refused:
        option(text, Path("."))
    assert SECRET not in str(refused.value)
