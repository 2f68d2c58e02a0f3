"""Credentials never reach a message: URLs are redacted before they are shown."""

from __future__ import annotations

import pytest

from fastapi_channels.redact import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@host:6379/3", "redis://:***@host:6379/3"),
        ("redis://alice:s3cret@host/0", "redis://alice:***@host/0"),
        ("rediss://tok3n@host:6380", "rediss://***@host:6380"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("unix:///run/redis.sock?db=2&password=s3cret", "unix:///run/redis.sock?db=2&password=***"),
        ("redis://:p%40ss@host/0", "redis://:***@host/0"),
        ("redis://:a@b@host/0", "redis://:***@host/0"),
    ],
)
def test_passwords_and_tokens_are_hidden(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_an_unparseable_url_is_hidden_whole() -> None:
    assert redact_url("redis://[::1:6379") == "***"
