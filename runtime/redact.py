"""Secrets out of what is shown: URLs with their credentials replaced, session ids as tags.

``redact_url`` is for everything that leaves a process as text (logs, metric labels,
JSON, gRPC replies meant for display): the userinfo of a URL becomes ``***`` and
so do the values of query parameters whose names say they are secret (password,
passwd, pass, pwd, token, key, secret, auth, credential, signature...). It never
raises: text that is not a URL comes back unchanged except for what looks like
``user:password@``.

``session_tag`` turns a session id (a credential: whoever knows it controls the
session) into a short keyed hash for display: 8 hex characters of HMAC-SHA256 with
a key drawn once per process, so tags are stable within a process and say nothing
about the id.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from urllib.parse import SplitResult, urlsplit, urlunsplit

__all__ = ["MASK", "redact_text", "redact_url", "session_tag", "strip_userinfo"]

MASK = "***"
_SECRET_NAME = re.compile(r"pass|pwd|token|key|secret|auth|credential|signature|sig$", re.IGNORECASE)
# scheme://userinfo@ anywhere in a text (logs with a URL inside a sentence).
_USERINFO_IN_TEXT = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@\s?#]*)@")
_TAG_KEY = secrets.token_bytes(32)


def _netloc_without_userinfo(parts: SplitResult) -> str:
    return parts.netloc.rpartition("@")[2]


def _redact_query(query: str) -> str:
    if not query:
        return query
    fields = []
    for field in query.split("&"):
        name, sep, _value = field.partition("=")
        fields.append(f"{name}={MASK}" if sep and _SECRET_NAME.search(name) else field)
    return "&".join(fields)


def redact_url(url: str) -> str:
    """``url`` with its userinfo and secret-looking query values replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:          # e.g. an invalid IPv6 literal: fall back to text rules
        return redact_text(url)
    if not parts.scheme and not parts.netloc:
        return redact_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{_netloc_without_userinfo(parts)}"
    return urlunsplit((parts.scheme, netloc, parts.path, _redact_query(parts.query), parts.fragment))


def redact_text(text: str) -> str:
    """Every ``scheme://user:password@`` inside free text, with its userinfo replaced."""
    return _USERINFO_IN_TEXT.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)


def strip_userinfo(url: str) -> str:
    """``url`` without any userinfo (what goes on a request line); unchanged when it has none."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    return urlunsplit((parts.scheme, _netloc_without_userinfo(parts), parts.path, parts.query, parts.fragment))


def session_tag(session_id: str) -> str:
    """A short display tag for ``session_id`` (empty for an empty id)."""
    if not session_id:
        return ""
    return hmac.new(_TAG_KEY, session_id.encode("utf-8", "replace"), hashlib.sha256).hexdigest()[:8]
