"""Redaction of credentials in URLs, before a URL reaches an error, a log line or the stats.

Not for validation: WSConfig checks URLs; this only hides what must never be printed.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["redact_url"]

_HIDDEN = "***"


def redact_url(url: str) -> str:
    """`url` with any password (and a user name that stands alone as a token) replaced by ***.

    ``redis://:secret@host:6379/0`` -> ``redis://:***@host:6379/0``;
    ``redis://user:secret@host`` -> ``redis://user:***@host``;
    ``redis://token@host`` -> ``redis://***@host``. Query parameters named like a secret
    (``password``, ``token``...) are hidden too. Unparseable input is hidden whole.
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
    except ValueError:
        return _HIDDEN
    if "@" in netloc:
        credentials, _, host = netloc.rpartition("@")
        user, sep, _password = credentials.partition(":")
        netloc = f"{user}:{_HIDDEN}@{host}" if sep else f"{_HIDDEN}@{host}"
    shown = f"{parts.scheme}://{netloc}{parts.path}" if "://" in url else urlunsplit(parts._replace(query=""))
    if parts.query:
        shown += "?" + "&".join(_redact_parameter(item) for item in parts.query.split("&"))
    return shown


def _redact_parameter(item: str) -> str:
    name, sep, _value = item.partition("=")
    lowered = name.lower()
    if sep and any(word in lowered for word in ("pass", "token", "secret", "key", "auth")):
        return f"{name}={_HIDDEN}"
    return item
