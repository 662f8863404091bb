"""Credentials in text: a bearer token checked before it is sent, anything that can be a credential
masked before an error text is shown or logged (``agent/kube/client.py``, ``agent/report/report.py``)."""


from __future__ import annotations

from typing import Any, Optional, Pattern

MAX_TOKEN = 16 << 10  # bytes; an EKS token is ~1.5 KiB, a service-account JWT a few KiB
_TOKEN_LIKE: Optional[Pattern[str]] = None


def checked_token(token: str, what: str, error: Any) -> str:
    """A bearer token as kubectl would send it: one trailing newline dropped; refused (with a
    message that never holds the value) when it still has control characters or is absurdly long."""
    if token.endswith("\n"):
        token = token[:-1]
    if len(token) > MAX_TOKEN:
        raise error(f"{what}: is {len(token)} characters long, more than {MAX_TOKEN}; refusing to send it "
                    "(the value is not shown)")
    for i, ch in enumerate(token):
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise error(f"{what}: contains the control character U+{ord(ch):04X} at position {i + 1}; "
                        "refusing to send it (the value is not shown)")
        if ord(ch) > 0x7E:
            raise error(f"{what}: contains a non-ASCII character at position {i + 1}; refusing to send it "
                        "(the value is not shown)")
    if not token.strip():
        raise error(f"{what}: is empty")
    return token


def redact(text: str) -> str:
    """An error text with anything that can be a credential masked: ``Bearer <x>``, a JWT or EKS
    token, and any long run of token characters."""
    import re

    global _TOKEN_LIKE
    if _TOKEN_LIKE is None:
        _TOKEN_LIKE = re.compile(r"(?i)(bearer|basic)\s+\S+|k8s-aws-v1\.\S+|[A-Za-z0-9+/=_.\-]{32,}")
    return str(_TOKEN_LIKE.sub("<redacted>", text))
