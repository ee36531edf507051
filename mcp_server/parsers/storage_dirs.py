"""Parser for directory_usage: `du -x` of one directory, biggest entries first, with how the walk ended."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from mcp_server.parsers.common import parse_errors_as

if TYPE_CHECKING:
    from mcp_server.commands.storage import DirectoryUsageParams

# GNU timeout exits 124 when it stopped the command; busybox's reports the signal (TERM, or KILL with -k)
TIMED_OUT = frozenset({124, 137, 143})
_STATUS = re.compile(r"^@@status (\d+)$")
_RECORD = re.compile(r"^(\d+)\t(.*)$", re.DOTALL)


class DirectoryEntry(BaseModel):
    path: str = Field(description="A file or directory under the path asked about.")
    bytes: int = Field(description="Disk space it uses (with everything below it), on this filesystem only.")


class DirectoryUsage(BaseModel):
    path: str = Field(description="The directory measured.")
    state: Literal["ok", "missing", "not_directory"] = Field(
        description="missing: no such path on the device; not_directory: it is a file."
    )
    total_bytes: int | None = Field(
        description="Disk space used under the path (this filesystem only, as du -x); null when the walk "
        "timed out before reaching the top."
    )
    entries: list[DirectoryEntry] = Field(
        description="The biggest files and directories down to `depth` levels, biggest first."
    )
    complete: bool = Field(description="False when the walk timed out: sizes are of the part walked.")
    unreadable: bool = Field(
        description="True when some directories could not be read (permissions): their sizes are missing."
    )


def _records(body: str, separator: str) -> list[tuple[int, str]]:
    records: list[tuple[int, str]] = []
    for raw in body.split(separator):
        match = _RECORD.match(raw)
        if match:  # anything else is the remains of a name holding a newline (busybox has no -0)
            records.append((int(match.group(1)), match.group(2)))
    return records


@parse_errors_as("directory_usage")
def parse_directory_usage(stdout: str, params: DirectoryUsageParams) -> DirectoryUsage:
    """The script's output: a `@@du-gnu` (NUL-separated records) or `@@du-posix` (lines, KiB) header, the
    walk's `@@status`, the top records as `size<TAB>path`, then `@@end`; or `@@missing`/`@@not-directory`."""
    head, _, rest = stdout.partition("\n")
    if head in ("@@missing", "@@not-directory"):
        if rest.strip() != "@@end":
            raise ValueError("output is incomplete (no @@end marker)")
        state: Literal["missing", "not_directory"] = "missing" if head == "@@missing" else "not_directory"
        return DirectoryUsage(
            path=params.path, state=state, total_bytes=None, entries=[], complete=True, unreadable=False
        )
    if head not in ("@@du-gnu", "@@du-posix"):
        raise ValueError(f"unexpected first line {head[:80]!r}")
    status_line, _, body = rest.partition("\n")
    status = _STATUS.match(status_line)
    if status is None:
        raise ValueError(f"expected the walk's status, got {status_line[:80]!r}")
    if not body.endswith("@@end\n") and body != "@@end\n":
        raise ValueError("output is incomplete (no @@end marker)")
    body = body.removesuffix("@@end\n").removesuffix("\n")
    gnu = head == "@@du-gnu"
    unit = 1 if gnu else 1024
    records = _records(body, "\0" if gnu else "\n")
    code = int(status.group(1))
    if code not in (0, 1, *TIMED_OUT):
        raise ValueError(f"du exited with status {code}")
    top = params.path.rstrip("/") or "/"
    total = next((size * unit for size, path in records if (path.rstrip("/") or "/") == top), None)
    entries = [
        DirectoryEntry(path=path, bytes=size * unit)
        for size, path in records
        if (path.rstrip("/") or "/") != top
    ]
    entries.sort(key=lambda e: (-e.bytes, e.path))
    return DirectoryUsage(
        path=params.path,
        state="ok",
        total_bytes=total,
        entries=entries[: params.top],
        complete=code not in TIMED_OUT,
        unreadable=code == 1,
    )
