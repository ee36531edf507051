"""Running containers: `docker stats` samples, log lines, and the state a start/stop/restart left behind."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from mcp_server.parsers.common import parse_errors_as
from mcp_server.parsers.containers_common import docker_time, json_lines, percent_value, size_pair
from mcp_server.redact import redact_key_blocks

if TYPE_CHECKING:
    from mcp_server.commands.containers import ContainerActionParams, ContainerLogsParams

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
    # a TTY container ends lines with \r; the byte cut may split a multibyte character
    text = raw.removesuffix("\r")[:LINE_MAX_CHARS].removesuffix("\ufffd")
    if timestamps:
        stamp, sep, rest = text.partition(" ")
        try:
            return LogLine(timestamp=docker_time(stamp), text=rest if sep else "")
        except ValueError:
            pass
    return LogLine(timestamp=None, text=text)


@parse_errors_as("container_logs")
def parse_container_logs(stdout: str, params: ContainerLogsParams) -> ContainerLogs:
    """Log lines as the script prints them (stdout and stderr of the container merged). A private key printed
    over several lines is masked before they are split (each line is redacted on its own later)."""
    raw = redact_key_blocks(stdout).split("\n")
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


class ContainerStats(BaseModel):
    id: str = Field(description="Container id (as docker stats printed it, usually the short id).")
    name: str
    cpu_percent: float | None = Field(
        description="CPU use as a share of ONE core (200 = two cores busy); null when docker had no sample."
    )
    memory_used_bytes: int | None = Field(description="Memory in use, page cache excluded.")
    memory_limit_bytes: int | None = Field(description="Memory limit (the host's RAM when unlimited).")
    memory_percent: float | None = Field(description="memory_used_bytes / memory_limit_bytes * 100.")
    net_rx_bytes: int | None = Field(description="Bytes received over its network interfaces since start.")
    net_tx_bytes: int | None = Field(description="Bytes sent over its network interfaces since start.")
    block_read_bytes: int | None = Field(description="Bytes read from block devices since start.")
    block_write_bytes: int | None = Field(description="Bytes written to block devices since start.")
    pids: int | None = Field(description="Processes and threads in the container.")


class ContainerStatsList(BaseModel):
    containers: list[ContainerStats] = Field(description="Running containers, highest CPU first.")
    total: int
    truncated: bool = Field(description="True when more containers exist beyond this page.")


def _name(item: dict[str, Any]) -> str:
    # `Container` is what was asked for: the name when names were passed (podman's API drops the first
    # character of `Name`), the short id when stats ran without arguments.
    asked, name, short_id = str(item.get("Container") or ""), str(item.get("Name") or ""), str(item["ID"])
    if asked and not short_id.startswith(asked) and not asked.startswith(short_id):
        return asked
    return name.removeprefix("/") or asked


def _stats(item: dict[str, Any]) -> ContainerStats:
    used, limit = size_pair(str(item["MemUsage"]))
    rx, tx = size_pair(str(item["NetIO"]))
    read, write = size_pair(str(item["BlockIO"]))
    pids = str(item.get("PIDs") or "").strip()
    return ContainerStats(
        id=str(item["ID"]),
        name=_name(item),
        cpu_percent=percent_value(str(item["CPUPerc"])),
        memory_used_bytes=used,
        memory_limit_bytes=limit,
        memory_percent=percent_value(str(item.get("MemPerc") or "--")),
        net_rx_bytes=rx,
        net_tx_bytes=tx,
        block_read_bytes=read,
        block_write_bytes=write,
        pids=int(pids) if pids.isdigit() else None,
    )


@parse_errors_as("container_stats")
def parse_container_stats(stdout: str, params: BaseModel) -> ContainerStatsList:
    """One JSON object per running container; no output means nothing is running."""
    stats = sorted(
        (_stats(item) for item in json_lines(stdout)), key=lambda s: (-(s.cpu_percent or 0), s.name)
    )
    return ContainerStatsList(containers=stats, total=len(stats), truncated=False)
