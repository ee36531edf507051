"""Redaction of secret-looking values before they leave the server or reach the audit log."""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***"
# Names that hold secrets; `key_path` and friends name a file, not a secret, and stay visible.
_SECRET_NAME = re.compile(
    r"pass(word|wd|phrase)?|secret|token|api[_-]?key|private[_-]?key|credential|^key$", re.I
)
_NOT_SECRET = re.compile(r"(_path|_file|_id|_name)$", re.I)
_BEARER = re.compile(r"\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}", re.I)
_URL_PASSWORD = re.compile(r"(\w+://[^/\s:@]+:)[^@\s/]+(@)")


def secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name)) and not _NOT_SECRET.search(name)


def redact_text(text: str) -> str:
    """Bearer tokens and passwords inside URLs, masked."""
    return _URL_PASSWORD.sub(rf"\1{REDACTED}\2", _BEARER.sub(rf"\1{REDACTED}", text))


def redact(value: Any, name: str = "") -> Any:
    """A copy of `value` with secret-named entries and secret-looking strings masked."""
    if isinstance(value, dict):
        return {
            k: REDACTED if secret_name(str(k)) and v not in (None, "") else redact(v, str(k))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(item, name) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value
