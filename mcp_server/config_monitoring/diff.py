"""Unified diffs between two versions of a file, and whether a change is only comments and whitespace."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator

MAX_DIFF_CHARS = 200_000
MAX_MATCHED_LINES = 2_000
_COMMENT = {
    "compose": re.compile(r"(^|\s)#.*$"),
    "nginx": re.compile(r"(^|\s)#.*$"),
    "systemd": re.compile(r"^\s*[#;].*$"),
    "file": re.compile(r"^\s*[#;].*$"),
}


def _opcodes(a: list[str], b: list[str]) -> list[tuple[str, int, int, int, int]]:
    """SequenceMatcher's opcodes from a to b, matched only between the common head and tail; a middle longer
    than MAX_MATCHED_LINES is one replacement (SequenceMatcher is quadratic or worse on repetitive lines)."""
    head, shortest = 0, min(len(a), len(b))
    while head < shortest and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < shortest - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    a_end, b_end = len(a) - tail, len(b) - tail
    if (a_end - head) + (b_end - head) > MAX_MATCHED_LINES:
        middle = [("replace", head, a_end, head, b_end)]
    else:
        matcher = difflib.SequenceMatcher(None, a[head:a_end], b[head:b_end])
        middle = [
            (tag, i1 + head, i2 + head, j1 + head, j2 + head) for tag, i1, i2, j1, j2 in matcher.get_opcodes()
        ]
    return [op for op in middle if op[0] != "equal" and (op[1] < op[2] or op[3] < op[4])]


def _range(start: int, length: int) -> str:
    """A hunk header's range, as unified_diff writes it (an empty range names the line before it)."""
    if length == 1:
        return str(start + 1)
    return f"{start + 1 if length else start},{length}"


def _hunks(a: list[str], b: list[str], context: int) -> Iterator[str]:
    changes = _opcodes(a, b)
    while changes:
        # a hunk takes every change whose gap to the one before is at most twice the context
        size = 1
        while size < len(changes) and changes[size][1] - changes[size - 1][2] <= 2 * context:
            size += 1
        group, changes = changes[:size], changes[size:]
        a_start, b_start = max(group[0][1] - context, 0), group[0][3] - min(group[0][1], context)
        a_end = min(group[-1][2] + context, len(a))
        b_end = group[-1][4] + (a_end - group[-1][2])
        yield f"@@ -{_range(a_start, a_end - a_start)} +{_range(b_start, b_end - b_start)} @@\n"
        at = a_start
        for _, i1, i2, j1, j2 in group:
            yield from (" " + line for line in a[at:i1])
            yield from ("-" + line for line in a[i1:i2])
            yield from ("+" + line for line in b[j1:j2])
            at = i2
        yield from (" " + line for line in a[at:a_end])


def unified_diff(old: str | None, new: str | None, from_label: str, to_label: str) -> str:
    """The unified diff (3 lines of context) from `old` to `new`; None stands for an absent file."""
    a, b = (old or "").splitlines(keepends=True), (new or "").splitlines(keepends=True)
    hunks = list(_hunks(a, b, 3))
    lines = [f"--- {from_label}\n", f"+++ {to_label}\n", *hunks] if hunks else []
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
