"""Unified diffs between two versions of a file, and whether a change is only comments and whitespace."""

from __future__ import annotations

import difflib
import re

MAX_DIFF_CHARS = 200_000
Opcode = tuple[str, int, int, int, int]
_COMMENT = {
    "compose": re.compile(r"(^|\s)#.*$"),
    "nginx": re.compile(r"(^|\s)#.*$"),
    "systemd": re.compile(r"^\s*[#;].*$"),
    "file": re.compile(r"^\s*[#;].*$"),
}


def unified_diff(old: str | None, new: str | None, from_label: str, to_label: str) -> str:
    """The unified diff (3 lines of context) from `old` to `new`; None stands for an absent file.

    The same text as difflib.unified_diff, but the lines both versions share at the start and the end are
    set aside first, so one edit in a long file costs time linear in its length; only what lies between the
    first and last changed lines is matched (quadratic at worst: callers give large texts to a worker).
    """
    a = (old or "").splitlines(keepends=True)
    b = (new or "").splitlines(keepends=True)
    out: list[str] = []
    for group in _grouped(_opcodes(a, b), 3):
        if not out:
            out += [f"--- {from_label}\n", f"+++ {to_label}\n"]
        first, last = group[0], group[-1]
        out.append(f"@@ -{_range(first[1], last[2])} +{_range(first[3], last[4])} @@\n")
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                out += (" " + line for line in a[i1:i2])
                continue
            out += ("-" + line for line in a[i1:i2])
            out += ("+" + line for line in b[j1:j2])
    text = "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in out)
    if len(text) > MAX_DIFF_CHARS:
        cut = text.rfind("\n", 0, MAX_DIFF_CHARS) + 1
        text = text[:cut] + f"…[diff cut: {len(text) - cut} more characters]\n"
    return text


def _opcodes(a: list[str], b: list[str]) -> list[Opcode]:
    """difflib opcodes from a to b, matching only between the common head and tail."""
    head = 0
    while head < len(a) and head < len(b) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < len(a) - head and tail < len(b) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    middle = difflib.SequenceMatcher(None, a[head : len(a) - tail], b[head : len(b) - tail])
    ops: list[Opcode] = [("equal", 0, head, 0, head)] if head else []
    ops += [
        (tag, i1 + head, i2 + head, j1 + head, j2 + head)
        for tag, i1, i2, j1, j2 in middle.get_opcodes()
        if i1 != i2 or j1 != j2
    ]
    if tail:
        ops.append(("equal", len(a) - tail, len(a), len(b) - tail, len(b)))
    return ops or [("equal", 0, 0, 0, 0)]


def _grouped(codes: list[Opcode], n: int) -> list[list[Opcode]]:
    """The opcodes in hunks with up to `n` lines of context (difflib's get_grouped_opcodes)."""
    if codes[0][0] == "equal":
        tag, i1, i2, j1, j2 = codes[0]
        codes[0] = tag, max(i1, i2 - n), i2, max(j1, j2 - n), j2
    if codes[-1][0] == "equal":
        tag, i1, i2, j1, j2 = codes[-1]
        codes[-1] = tag, i1, min(i2, i1 + n), j1, min(j2, j1 + n)
    groups: list[list[Opcode]] = []
    group: list[Opcode] = []
    for tag, i1, i2, j1, j2 in codes:
        # a long stretch of equal lines ends a hunk: keep n lines of it on each side
        if tag == "equal" and i2 - i1 > 2 * n:
            group.append((tag, i1, min(i2, i1 + n), j1, min(j2, j1 + n)))
            groups.append(group)
            group = []
            i1, j1 = max(i1, i2 - n), max(j1, j2 - n)
        group.append((tag, i1, i2, j1, j2))
    if group and not (len(group) == 1 and group[0][0] == "equal"):
        groups.append(group)
    return groups


def _range(start: int, stop: int) -> str:
    """A unified diff hunk range, as difflib writes it."""
    length = stop - start
    beginning = start + 1 if length else start
    return f"{beginning}" if length == 1 else f"{beginning},{length}"


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
