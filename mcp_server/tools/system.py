"""System tools: metrics, processes and the fleet overview."""

from __future__ import annotations

from typing import Annotated, Literal

from fastmcp.dependencies import Depends
from fastmcp.tools import tool
from pydantic import Field

from mcp_server import ui
from mcp_server.collection import Collected
from mcp_server.parsers.system import SystemMetrics, TopProcesses
from mcp_server.progress import OnStep
from mcp_server.reports import FleetOverview, fleet_overview
from mcp_server.state import AppState, current_state
from mcp_server.tools import READ_ONLY, DeviceArg, ForceRefresh, expected_errors
from mcp_server.tools.notify import step_reporter
from mcp_server.triage import CHECKS, Check, ProblemReport
from mcp_server.triage import find_problems as triage

TOOLSET = "system"


@tool(annotations=READ_ONLY)
@expected_errors()
async def get_system_metrics(
    device: DeviceArg,
    force_refresh: ForceRefresh = False,
    interval: Annotated[
        float, Field(ge=0.1, le=5.0, description="Seconds CPU use is measured over (longer = steadier).")
    ] = 0.5,
    state: AppState = Depends(current_state),
) -> Collected[SystemMetrics]:
    """CPU utilisation (measured now), load averages, memory and swap in bytes, and uptime of one device."""
    return await state.service.collect(
        device, "system_metrics", {"interval": interval}, force_refresh=force_refresh
    )


@tool(annotations=READ_ONLY)
@expected_errors()
async def list_processes(
    device: DeviceArg,
    sort_by: Annotated[
        Literal["cpu", "memory"], Field(description="Highest CPU use now, or highest memory.")
    ] = "cpu",
    limit: Annotated[int, Field(ge=1, le=200, description="How many processes to return.")] = 15,
    force_refresh: ForceRefresh = False,
    state: AppState = Depends(current_state),
) -> Collected[TopProcesses]:
    """Top processes of one device by current CPU use (measured over an interval) or by memory."""
    return await state.service.collect(
        device, "top_processes", {"sort_by": sort_by, "limit": limit}, force_refresh=force_refresh
    )


@tool(annotations=READ_ONLY, meta=ui.linked("fleet"))
@expected_errors()
async def get_fleet_overview(
    tags: Annotated[list[str] | None, Field(description="Only devices carrying all these tags.")] = None,
    force_refresh: ForceRefresh = False,
    state: AppState = Depends(current_state),
    on_device: OnStep = Depends(step_reporter),
) -> FleetOverview:
    """Headline health of every device at once: CPU, memory, load, fullest disk, 24 h CPU/memory trend
    where history exists, why a device failed. Reports progress per device."""
    names = [d.name for d in state.devices.list(tags or ())]
    return await fleet_overview(
        state.service, names, force_refresh=force_refresh, db=state.db, on_device=on_device
    )


@tool(annotations=READ_ONLY)
@expected_errors()
async def find_problems(
    tags: Annotated[list[str] | None, Field(description="Only devices carrying all these tags.")] = None,
    checks: Annotated[
        list[Check] | None,
        Field(description=f"Only these checks (default: all of {', '.join(CHECKS)}); reachability always."),
    ] = None,
    disk_threshold: Annotated[
        float, Field(ge=1, le=100, description="Report filesystems (space or inodes) at least this % full.")
    ] = 90.0,
    limit: Annotated[int, Field(ge=1, le=200, description="Most problems to return (worst first).")] = 50,
    force_refresh: ForceRefresh = False,
    state: AppState = Depends(current_state),
    on_device: OnStep = Depends(step_reporter),
) -> ProblemReport:
    """What needs a human across every device, worst first: unreachable or failing devices, full disks,
    failing drives, failed services, containers restarting, unhealthy or failed, high-risk configuration
    changes in 24 h, pending security updates (where checked). Each problem names the tool call that shows
    more."""
    await state.refresh_health()
    names = [d.name for d in state.devices.list(tags or ())]
    return await triage(
        state.service,
        state.config,
        state.db,
        names,
        {name: state.health.get(name) for name in names},
        checks=checks or CHECKS,
        disk_threshold=disk_threshold,
        limit=limit,
        force=force_refresh,
        on_device=on_device,
    )


TOOLS = (
    get_system_metrics,
    list_processes,
    get_fleet_overview,
    find_problems,
)
