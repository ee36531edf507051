"""Helpers the container parsers share: docker's human units, label strings and times."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

# possessive: the spaces around the unit cannot trade characters (quadratic on a run of spaces)
_SIZE = re.compile(r"^\s*+([0-9]++(?:\.[0-9]++)?(?:e[+-]?[0-9]++)?)\s*+([A-Za-z]*+)\s*+$")
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
