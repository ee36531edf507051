"""A configuration change assessed: its diff, risk, reasons and summary. Small texts are assessed in place;
large ones in a worker process with a deadline, and a change too costly to assess is still recorded."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

from mcp_server.config_monitoring.diff import counts, unified_diff
from mcp_server.config_monitoring.risk import Assessment, classify, summary
from mcp_server.workers import WorkerPool, WorkLimitExceeded

ChangeType = Literal["created", "modified", "deleted"]
# Both texts together within this many characters and lines: assessed on the event loop (a few ms at worst:
# the diff's matching is quadratic only in the lines between the first and last change).
INLINE_CHARS = 65_536
INLINE_LINES = 1_000


@dataclass(frozen=True)
class Change:
    """What is recorded about one change."""

    risk: str
    reasons: list[str] = field(default_factory=list)
    affected_services: list[str] = field(default_factory=list)
    summary: str = ""
    diff: str = ""


def assess(
    kind: str,
    path: str,
    change_type: ChangeType,
    old: str | None,
    new: str | None,
    binary: bool = False,
    hidden_change: bool = False,
) -> Change:
    """The change from `old` to `new` (redacted texts; None: absent), diffed and rated. Pure."""
    if binary:
        assessment = Assessment()
        assessment.raise_to("medium", "binary content changed")
    else:
        assessment = classify(kind, path, change_type, old, new, hidden_change=hidden_change)
    diff = unified_diff(old, new, f"a{path}", f"b{path}")
    added, removed = counts(diff)
    return Change(
        assessment.risk,
        assessment.reasons,
        assessment.affected_services,
        summary(change_type, path, assessment, added, removed),
        diff,
    )


def _size(text: str | None) -> str:
    if text is None:
        return "absent"
    data = text.encode("utf-8", "surrogatepass")
    return (
        f"{len(data):,} bytes, {text.count(chr(10)):,} lines, sha256 {hashlib.sha256(data).hexdigest()[:16]}"
    )


def unassessed(path: str, change_type: ChangeType, old: str | None, new: str | None, reason: str) -> Change:
    """A change too costly to diff and rate: what is known of both versions, rated high until reviewed."""
    assessment = Assessment()
    assessment.raise_to("high", f"the change could not be diffed or assessed ({reason}); review it by hand")
    diff = f"changed, too large to diff: a{path} ({_size(old)}) -> b{path} ({_size(new)})\n"
    return Change(assessment.risk, assessment.reasons, [], summary(change_type, path, assessment, 0, 0), diff)


def _small(old: str | None, new: str | None) -> bool:
    a, b = old or "", new or ""
    return len(a) + len(b) <= INLINE_CHARS and a.count("\n") + b.count("\n") <= INLINE_LINES


async def assess_change(
    workers: WorkerPool,
    deadline: float,
    kind: str,
    path: str,
    change_type: ChangeType,
    old: str | None,
    new: str | None,
    *,
    binary: bool = False,
    hidden_change: bool = False,
) -> Change:
    """`assess`, in place for small texts and in a worker for large ones; past the worker's deadline or
    memory, `unassessed`."""
    if _small(old, new):
        return assess(kind, path, change_type, old, new, binary=binary, hidden_change=hidden_change)
    try:
        return await workers.call(
            assess,
            kind,
            path,
            change_type,
            old,
            new,
            binary,
            hidden_change,
            deadline=deadline,
            what=f"Assessing the change to {path}",
        )
    except WorkLimitExceeded as exc:
        return unassessed(path, change_type, old, new, exc.reason)
