"""Unified diffs between two versions of a file, and whether a change is only comments and whitespace."""

from __future__ import annotations

import difflib
import re

MAX_DIFF_CHARS = 200_000
_COMMENT = {
    "compose": re.compile(r"(^|\s)#.*$"),
    "nginx": re.compile(r"(^|\s)#.*$"),
    "systemd": re.compile(r"^\s*[#;].*$"),
    "file": re.compile(r"^\s*[#;].*$"),
}


def unified_diff(old: str | None, new: str | None, from_label: str, to_label: str) -> str:
    """The unified diff (3 lines of context) from `old` to `new`; None stands for an absent file."""
    lines = difflib.unified_diff(
        (old or "").splitlines(keepends=True),
        (new or "").splitlines(keepends=True),
        fromfile=from_label,
        tofile=to_label,
        n=3,
    )
    text = "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    )
    if len(text) > MAX_DIFF_CHARS:
        cut = text.rfind("\n", 0, MAX_DIFF_CHARS) + 1
        text = text[:cut] + f"…[diff cut: {len(text) - cut} more characters]\n"
    return text


def counts(diff: str) -> tuple[int, int]:
    """(lines added, lines removed) in a unified diff."""
    added = sum(1 for line in diff.split("\n") if line.startswith("+") and not line.startswith("+++"))
    removed = sum(1 for line in diff.split("\n") if line.startswith("-") and not line.startswith("---"))
    return added, removed


def _significant(kind: str, text: str) -> list[str]:
    comment = _COMMENT.get(kind, _COMMENT["file"])
    kept = []
    for line in text.split("\n"):
        stripped = comment.sub("", line) if "#" in line or ";" in line else line
        squeezed = " ".join(stripped.split())
        if squeezed:
            kept.append(squeezed)
    return kept


def cosmetic(kind: str, old: str, new: str) -> bool:
    """True when the two texts differ only in comments, blank lines and spacing."""
    return _significant(kind, old) == _significant(kind, new)
