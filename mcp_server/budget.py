"""Result budget: cut a JSON result to at most N characters by dropping list items, never mid-JSON."""

from __future__ import annotations

import copy
import json
from typing import Any, Literal

MARKER = "result_truncated"
Keep = Literal["first", "newest"]
_Path = tuple[str | int, ...]


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), default=str))


def _containers(value: Any, path: _Path = ()) -> list[tuple[_Path, list[Any] | str]]:
    """Every list and string in a JSON value, with its path."""
    found: list[tuple[_Path, list[Any] | str]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            found.extend(_containers(item, (*path, key)))
    elif isinstance(value, list):
        found.append((path, value))
        for index, item in enumerate(value):
            found.extend(_containers(item, (*path, index)))
    elif isinstance(value, str) and len(value) > 200:
        found.append((path, value))
    return found


def _set(root: Any, path: _Path, value: Any) -> None:
    for key in path[:-1]:
        root = root[key]
    root[path[-1]] = value


def _get(root: Any, path: _Path) -> Any:
    for key in path:
        root = root[key]
    return root


def _label(path: _Path) -> str:
    return ".".join(str(p) for p in path) or "result"


def _mark(result: dict[str, Any], notes: dict[_Path, str], max_chars: int) -> None:
    result[MARKER] = f"{'; '.join(notes.values())} (the whole result exceeded {max_chars} characters)"


def _part(items: list[Any], n: int, keep: Keep) -> list[Any]:
    return items[len(items) - n :] if keep == "newest" and n else items[:n]


def _which(keep: Keep) -> str:
    return "newest " if keep == "newest" else ""


def fit(payload: dict[str, Any], max_chars: int, *, keep: Keep = "first") -> dict[str, Any]:
    """`payload` if it fits, else a copy with the largest lists shortened (and very long strings cut).

    `keep="first"` keeps a list's first items; `keep="newest"` keeps its last ones, for lists ordered oldest
    to newest (log lines, journal entries), so the budget drops old lines, never new. A list whose object has
    a boolean `truncated` field gets it set. The copy carries `result_truncated`, saying what was cut, so an
    agent knows to page or narrow its query.
    """
    if _size(payload) <= max_chars:
        return payload
    result = copy.deepcopy(payload)
    notes: dict[_Path, str] = {}
    original: dict[_Path, int] = {}
    for _ in range(64):
        candidates = [c for c in _containers(result) if c[0] and c[0][0] != MARKER and len(c[1])]
        if not candidates:
            break
        path, biggest = max(candidates, key=lambda c: _size(c[1]))
        total = original.setdefault(path, len(biggest))
        previous = notes.get(path)
        # measure with the longest note this cut could leave, so the final marker cannot push us over
        notes[path] = f"{_label(path)}: kept {_which(keep)}{total} of {total} items"
        _mark(result, notes, max_chars)
        overflow = _size(result) - max_chars
        if overflow <= 0:
            if previous is None:
                del notes[path]
            else:
                notes[path] = previous
            break
        if isinstance(biggest, str):
            chars = max(len(biggest) - overflow - 40, 0)
            _set(result, path, biggest[:chars] + f"…[{len(biggest) - chars} characters cut]")
            notes[path] = f"{_label(path)}: string cut to {chars} characters"
            continue
        parent = _get(result, path[:-1])
        if isinstance(parent, dict) and isinstance(parent.get("truncated"), bool):
            parent["truncated"] = True

        low, high = 0, len(biggest) - 1
        while low < high:  # the most items that still fit
            mid = (low + high + 1) // 2
            _set(result, path, _part(biggest, mid, keep))
            if _size(result) <= max_chars:
                low = mid
            else:
                high = mid - 1
        _set(result, path, _part(biggest, low, keep))
        notes[path] = f"{_label(path)}: kept {_which(keep)}{low} of {total} items"
    _mark(result, notes, max_chars)
    return result
