"""Container log lines and the state a start/stop/restart left behind."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from mcp_server.parsers.containers.common import docker_time
from mcp_server.parsers.containers.params import ContainerActionParams, ContainerLogsParams
from mcp_server.parsers.system import parse_errors_as

LINE_MAX_CHARS = 2000
Action = Literal["start", "stop", "restart"]


class LogLine(BaseModel):
    timestamp: datetime | None = Field(description="When docker received the line (only with timestamps).")
    text: str = Field(description="The line; lines longer than 2000 characters are cut.")


class ContainerLogs(BaseModel):
    container: str
    lines: list[LogLine] = Field(description="Oldest first; the newest line is last.")
    total: int = Field(description="Lines docker returned for this query (before any budget cut).")
    truncated: bool = Field(
        description="True when the oldest lines were dropped to keep the result within the output budget."
    )
    tail_reached: bool = Field(
        description="True when `tail` lines came back, so older matching lines probably exist."
    )


def _line(raw: str, timestamps: bool) -> LogLine:
    text = raw[:LINE_MAX_CHARS].removesuffix("\ufffd")  # a multibyte character split by the byte cut
    if timestamps:
        stamp, sep, rest = text.partition(" ")
        try:
            return LogLine(timestamp=docker_time(stamp), text=rest if sep else "")
        except ValueError:
            pass
    return LogLine(timestamp=None, text=text)


@parse_errors_as("container_logs")
def parse_container_logs(stdout: str, params: ContainerLogsParams) -> ContainerLogs:
    """Log lines as the script prints them (stdout and stderr of the container merged)."""
    raw = stdout.split("\n")
    if raw and raw[-1] == "":
        raw.pop()
    lines = [_line(line, params.timestamps) for line in raw[-params.tail :]]
    return ContainerLogs(
        container=params.container,
        lines=lines,
        total=len(lines),
        truncated=False,
        tail_reached=len(lines) >= params.tail,
    )


def fit_newest(logs: ContainerLogs, budget_chars: int) -> ContainerLogs:
    """Keep the newest lines whose text fits in `budget_chars` (the budget cuts old lines, never new ones)."""
    used, keep = 0, 0
    for line in reversed(logs.lines):
        used += len(line.text) + 60  # JSON framing and a timestamp per line
        if used > budget_chars:
            break
        keep += 1
    if keep == len(logs.lines):
        return logs
    return logs.model_copy(update={"lines": logs.lines[len(logs.lines) - keep :], "truncated": True})


class ContainerActionResult(BaseModel):
    container: str
    action: Action
    status: str = Field(description="State after the action: running, exited, ...")
    running: bool
    exit_code: int = Field(description="Exit code of the last run (after a stop: 0, or 137/143 when killed).")
    started_at: datetime | None
    finished_at: datetime | None


def action_parser(action: Action) -> Callable[[str, ContainerActionParams], ContainerActionResult]:
    """A parser for `docker inspect --format '{{json .State}}'` printed after `action` succeeded."""

    @parse_errors_as(f"container_{action}")
    def parse(stdout: str, params: ContainerActionParams) -> ContainerActionResult:
        state = json.loads(stdout)
        if not isinstance(state, dict):
            raise ValueError("expected the container's State object")
        return ContainerActionResult(
            container=params.container,
            action=action,
            status=str(state["Status"]),
            running=bool(state.get("Running")),
            exit_code=int(state.get("ExitCode") or 0),
            started_at=docker_time(state.get("StartedAt")),
            finished_at=docker_time(state.get("FinishedAt")),
        )

    return parse
