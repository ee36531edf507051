"""System tools: the command catalogue, generic collect, metrics, disks, network, processes, fleet, cache."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Annotated, Any, Literal

from fastmcp import FastMCP
from fastmcp.dependencies import Depends
from pydantic import BaseModel, Field

from mcp_server.cache import CacheStats
from mcp_server.collection import Collected, DeviceOutcome
from mcp_server.errors import InvalidParameter
from mcp_server.parsers.network import NetworkInterfaces
from mcp_server.parsers.storage import DiskUsage
from mcp_server.parsers.system import SystemMetrics, TopProcesses
from mcp_server.server import AppState
from mcp_server.tools import READ_ONLY, DeviceArg, ForceRefresh, app_state, expected_errors


class CommandInfo(BaseModel):
    name: str
    category: str
    summary: str
    ttl_seconds: float = Field(description="How long a result is served from the cache.")
    timeout_seconds: float
    parameters: dict[str, Any] = Field(description="JSON schema of the command's parameters (for `collect`).")


class CommandList(BaseModel):
    commands: list[CommandInfo]
    total: int


class FleetDevice(BaseModel):
    """One device's headline numbers, or why they are missing."""

    device: str
    ok: bool
    error_type: str | None = None
    error: str | None = None
    cpu_percent: float | None = Field(
        default=None, description="CPU busy percent over the sampling interval."
    )
    cpu_count: int | None = None
    load_1m: float | None = None
    memory_used_percent: float | None = None
    swap_used_percent: float | None = None
    uptime_seconds: float | None = None
    fullest_mount: str | None = Field(default=None, description="Mount point with the highest use_percent.")
    fullest_use_percent: float | None = None
    collected_at: datetime | None = None
    from_cache: bool | None = None


class FleetOverview(BaseModel):
    devices: list[FleetDevice]
    total: int
    ok: int
    failed: int
    duration_ms: float = Field(description="Wall time of the whole fan-out.")


def require_read_only(state: AppState, command: str) -> None:
    """`collect` and resources run read commands only; changes go through their own (scoped) tools."""
    if not state.registry.get(command).read_only:
        raise InvalidParameter(
            f"{command!r} changes things on the device; use its own tool (e.g. restart_container), "
            "which needs the infra:write or infra:admin scope."
        )


def command_catalogue(state: AppState, category: str | None) -> CommandList:
    commands = [
        CommandInfo(
            name=d.name,
            category=d.category,
            summary=d.summary,
            ttl_seconds=d.ttl,
            timeout_seconds=d.timeout,
            parameters=d.parameter_schema(),
        )
        for d in state.registry
        if d.read_only and (category is None or d.category == category)
    ]
    return CommandList(commands=commands, total=len(commands))


def _fleet_device(metrics: DeviceOutcome[Any], disks: DeviceOutcome[Any]) -> FleetDevice:
    if metrics.result is None:
        return FleetDevice(
            device=metrics.device, ok=False, error_type=metrics.error_type, error=metrics.error
        )
    m: SystemMetrics = metrics.result.data
    row = FleetDevice(
        device=metrics.device,
        ok=True,
        cpu_percent=m.cpu.busy_percent,
        cpu_count=m.cpu_count,
        load_1m=m.load.load_1m,
        memory_used_percent=m.memory.used_percent,
        swap_used_percent=m.swap.used_percent,
        uptime_seconds=m.uptime_seconds,
        collected_at=metrics.result.collected_at,
        from_cache=metrics.result.from_cache,
    )
    if disks.result is not None and disks.result.data.filesystems:
        fullest = max(disks.result.data.filesystems, key=lambda f: f.use_percent)
        row.fullest_mount, row.fullest_use_percent = fullest.mount_point, fullest.use_percent
    elif disks.result is None:
        row.error_type, row.error = disks.error_type, disks.error
    return row


def register(mcp: FastMCP) -> None:
    @mcp.tool(annotations=READ_ONLY | {"openWorldHint": False})
    async def list_commands(
        category: Annotated[
            str | None, Field(description="Only this category (system, storage, network).")
        ] = None,
        state: AppState = Depends(app_state),
    ) -> CommandList:
        """List every registered command with its parameters' JSON schema; run one with `collect`."""
        return command_catalogue(state, category)

    @mcp.tool(annotations=READ_ONLY)
    @expected_errors()
    async def collect(
        device: DeviceArg,
        command: Annotated[str, Field(description="Registry command name (see list_commands).")],
        params: Annotated[
            dict[str, Any] | None, Field(description="Parameters as described by list_commands.")
        ] = None,
        force_refresh: ForceRefresh = False,
        state: AppState = Depends(app_state),
    ) -> Collected[dict[str, Any]]:
        """Run any registered read command on a device by name and return its parsed result."""
        require_read_only(state, command)
        result = await state.service.collect(device, command, params, force_refresh=force_refresh)
        return Collected[dict[str, Any]](**{**dict(result), "data": result.data.model_dump(mode="json")})

    @mcp.tool(annotations=READ_ONLY)
    @expected_errors()
    async def get_system_metrics(
        device: DeviceArg,
        force_refresh: ForceRefresh = False,
        interval: Annotated[
            float, Field(ge=0.1, le=5.0, description="Seconds CPU use is measured over (longer = steadier).")
        ] = 0.5,
        state: AppState = Depends(app_state),
    ) -> Collected[SystemMetrics]:
        """CPU utilisation (measured now), load averages, memory and swap in bytes, and uptime of one device."""
        return await state.service.collect(
            device, "system_metrics", {"interval": interval}, force_refresh=force_refresh
        )

    @mcp.tool(annotations=READ_ONLY)
    @expected_errors()
    async def get_disk_usage(
        device: DeviceArg,
        force_refresh: ForceRefresh = False,
        include_pseudo: Annotated[
            bool, Field(description="Also list tmpfs, overlay and other virtual filesystems.")
        ] = False,
        state: AppState = Depends(app_state),
    ) -> Collected[DiskUsage]:
        """Space and inode use per mounted filesystem of one device."""
        return await state.service.collect(
            device, "disk_usage", {"include_pseudo": include_pseudo}, force_refresh=force_refresh
        )

    @mcp.tool(annotations=READ_ONLY)
    @expected_errors()
    async def get_network_interfaces(
        device: DeviceArg, force_refresh: ForceRefresh = False, state: AppState = Depends(app_state)
    ) -> Collected[NetworkInterfaces]:
        """Network interfaces of one device: state, MTU, addresses, and rx/tx byte, error and drop counters."""
        return await state.service.collect(device, "network_interfaces", force_refresh=force_refresh)

    @mcp.tool(annotations=READ_ONLY)
    @expected_errors()
    async def list_processes(
        device: DeviceArg,
        sort_by: Annotated[
            Literal["cpu", "memory"], Field(description="Highest CPU use now, or highest memory.")
        ] = "cpu",
        limit: Annotated[int, Field(ge=1, le=200, description="How many processes to return.")] = 15,
        force_refresh: ForceRefresh = False,
        state: AppState = Depends(app_state),
    ) -> Collected[TopProcesses]:
        """Top processes of one device by current CPU use (measured over an interval) or by memory."""
        return await state.service.collect(
            device, "top_processes", {"sort_by": sort_by, "limit": limit}, force_refresh=force_refresh
        )

    @mcp.tool(annotations=READ_ONLY)
    @expected_errors()
    async def get_fleet_overview(
        tags: Annotated[list[str] | None, Field(description="Only devices carrying all these tags.")] = None,
        force_refresh: ForceRefresh = False,
        state: AppState = Depends(app_state),
    ) -> FleetOverview:
        """Headline health of every device at once (CPU, memory, load, fullest disk); failures are listed per device."""
        started = time.perf_counter()
        names = [d.name for d in state.devices.list(tags or ())]
        metrics, disks = await asyncio.gather(
            state.service.collect_many(names, "system_metrics", force_refresh=force_refresh),
            state.service.collect_many(names, "disk_usage", force_refresh=force_refresh),
        )
        rows = [_fleet_device(m, d) for m, d in zip(metrics, disks, strict=True)]
        ok = sum(r.ok for r in rows)
        return FleetOverview(
            devices=rows,
            total=len(rows),
            ok=ok,
            failed=len(rows) - ok,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )

    @mcp.tool(annotations=READ_ONLY | {"openWorldHint": False})
    async def get_cache_stats(state: AppState = Depends(app_state)) -> CacheStats:
        """Cache counters: entries, hits, misses, evictions, expirations, single-flight joins, hit ratio."""
        return state.cache.stats()
