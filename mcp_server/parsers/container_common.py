"""Helpers the container parsers share: docker's human units, label strings, times and secret redaction."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

REDACTED = "***"

# Names that mark an environment variable, label or option as holding a secret (matched anywhere, any case).
_SECRET_NAME = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|KEY|CREDENTIAL", re.I)
_SECRET_VALUE = (
    re.compile(r"\bbearer\s+\S", re.I),
    re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.I),  # scheme://user:password@host
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\."),  # a JWT
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
)
_TEXT_RULES = (
    (re.compile(r"(://[^/\s:@]+:)[^/\s@]+@"), r"\1***@"),
    (re.compile(r"(\bbearer\s+)[^\s\"',]+", re.I), r"\1***"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_.-]+"), REDACTED),
    (
        re.compile(
            r"([A-Za-z0-9_.-]*(?:password|passwd|token|secret|key|credential)[A-Za-z0-9_.-]*)(=)([^\s,\"']+)",
            re.I,
        ),
        r"\1\2***",
    ),
)


def secret_name(name: str) -> bool:
    """Whether a variable, label or option name says its value is a secret."""
    return bool(_SECRET_NAME.search(name))


def secret_value(value: str) -> bool:
    """Whether a value looks like a credential whatever its name (bearer token, URL password, JWT, key)."""
    return any(pattern.search(value) for pattern in _SECRET_VALUE)


def redact_pair(name: str, value: str) -> str:
    """The value to show for NAME=VALUE: REDACTED when either side says it is a secret."""
    return REDACTED if secret_name(name) or secret_value(value) else value


def redact_text(text: str) -> str:
    """Free text (a command line) with embedded credentials replaced by REDACTED."""
    for pattern, replacement in _TEXT_RULES:
        text = pattern.sub(replacement, text)
    return text


def redact_args(args: list[str]) -> list[str]:
    """An argv with secrets hidden: `--password=x`, `--token x`, `KEY=x`, URLs with passwords."""
    shown: list[str] = []
    for index, arg in enumerate(args):
        previous = args[index - 1] if index else ""
        if (
            previous.startswith("-")
            and "=" not in previous
            and secret_name(previous)
            and not arg.startswith("-")
        ):
            shown.append(REDACTED)
        else:
            shown.append(redact_text(arg))
    return shown


_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "pb": 1000**5,
    "eb": 1000**6,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "pib": 1024**5,
    "eib": 1024**6,
}


def size_bytes(text: str) -> int | None:
    """docker's human size ("1.5MiB", "1.2kB", "0B", "12.3 MB") in bytes; None for "--" or "N/A"."""
    if text.strip() in {"--", "N/A", ""}:
        return None
    match = _SIZE.match(text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r}")
    return round(float(match.group(1)) * _UNITS[match.group(2).lower()])


def size_pair(text: str) -> tuple[int | None, int | None]:
    """ "a / b" sizes (memory use / limit, received / sent, read / written) in bytes."""
    left, sep, right = text.partition("/")
    if not sep:
        raise ValueError(f"not a size pair: {text!r}")
    return size_bytes(left), size_bytes(right)


def percent_value(text: str) -> float | None:
    """ "12.34%" as 12.34; None for "--"."""
    value = text.strip()
    if value in {"--", "N/A", ""}:
        return None
    return float(value.removesuffix("%"))


def labels_from_string(text: str) -> dict[str, str]:
    """docker ps's "k=v,k2=v2" Labels string as a dict.

    Values may themselves hold commas ("description=Run it, fast"); a piece without "=" belongs to the
    value before it.
    """
    labels: dict[str, str] = {}
    last: str | None = None
    for piece in text.split(",") if text else []:
        key, sep, value = piece.partition("=")
        if sep and key.strip() and " " not in key.strip():
            last = key.strip()
            labels[last] = value
        elif last is not None:
            labels[last] += "," + piece
    return labels


def redact_labels(labels: dict[str, str]) -> dict[str, str]:
    return {key: redact_pair(key, value) for key, value in labels.items()}


_RFC3339 = re.compile(
    r"^([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]+))?(Z|[+-][0-9]{2}:[0-9]{2})?$"
)


def docker_time(text: str | None) -> datetime | None:
    """An RFC 3339 time from the API ("2019-03-07T03:59:12.405871518Z"); None for the zero time."""
    if not text or text.startswith("0001-01-01"):
        return None
    match = _RFC3339.match(text)
    if not match:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    fraction = (match.group(2) or "")[:6].ljust(6, "0")
    zone = match.group(3) or "Z"  # health-check times may lack a zone; the daemon writes UTC
    return datetime.fromisoformat(f"{match.group(1)}.{fraction}{'+00:00' if zone == 'Z' else zone}")


def ps_time(text: str) -> datetime:
    """docker ps's CreatedAt ("2026-11-22 00:09:49 +0000 UTC"); the zone name after the offset is ignored."""
    date, clock, offset = text.split()[:3]
    return datetime.strptime(f"{date} {clock} {offset}", "%Y-%m-%d %H:%M:%S %z")


def json_lines(stdout: str) -> Iterator[dict[str, Any]]:
    """Objects from output that is one JSON object per line, or (older tools) one JSON array."""
    text = stdout.strip()
    if text.startswith("["):
        items = json.loads(text)
        if not isinstance(items, list):
            raise ValueError("expected a JSON array")
        for item in items:
            if not isinstance(item, dict):
                raise ValueError("expected JSON objects")
            yield item
        return
    for line in text.splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        if not isinstance(item, dict):
            raise ValueError(f"expected a JSON object per line: {line[:80]!r}")
        yield item


def cut(text: str, limit: int) -> str:
    """text, or its first limit-1 characters and an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
