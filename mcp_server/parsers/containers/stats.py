"""`docker stats --no-stream --format '{{json .}}'` -> ContainerStatsList, human units turned into bytes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from mcp_server.parsers.containers.common import json_lines, percent_value, size_pair
from mcp_server.parsers.system import parse_errors_as


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
