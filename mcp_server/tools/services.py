"""Service tools: systemd units, one unit's status, restarting a unit, and the journal."""

from __future__ import annotations

from typing import Annotated

from fastmcp.dependencies import Depends
from fastmcp.tools import tool
from pydantic import Field

from mcp_server.collection import Collected, page_of
from mcp_server.commands.base import GrepText, Limit, Offset
from mcp_server.commands.services import TimeSpec, UnitGlob, UnitName
from mcp_server.parsers.services import (
    JournalLogs,
    RestartResult,
    ServiceStatus,
    UnitList,
    UnitState,
    select_units,
)
from mcp_server.state import AppState, current_state
from mcp_server.tools import (
    KEEP_NEWEST,
    READ_ONLY,
    WRITE_TAGS,
    DeviceArg,
    ForceRefresh,
    changes,
    expected_errors,
)

Unit = Annotated[UnitName, Field(description="A systemd unit with its suffix, e.g. 'nginx.service'.")]

TOOLSET = "services"


@tool(annotations=READ_ONLY)
@expected_errors()
async def list_services(
    device: DeviceArg,
    state: Annotated[
        UnitState, Field(description="Only units in this active state: active, failed, inactive or all.")
    ] = "all",
    pattern: Annotated[
        UnitGlob | None, Field(description="Only units whose name matches, e.g. '*.timer'.")
    ] = None,
    limit: Limit = 50,
    offset: Offset = 0,
    force_refresh: ForceRefresh = False,
    app: AppState = Depends(current_state),
) -> Collected[UnitList]:
    """systemd units on a device (services, timers, mounts, sockets...) with load, active and sub state;
    failed units first. Needs systemd on the device."""
    result = await app.service.collect(device, "services", force_refresh=force_refresh)
    selected = select_units(result.data.units, state, pattern)
    return page_of(result, "units", selected, limit, offset)


@tool(annotations=READ_ONLY, tags={KEEP_NEWEST})
@expected_errors()
async def get_service_status(
    device: DeviceArg,
    unit: Unit,
    lines: Annotated[int, Field(ge=0, le=200, description="Recent journal entries to include.")] = 20,
    force_refresh: ForceRefresh = False,
    state: AppState = Depends(current_state),
) -> Collected[ServiceStatus]:
    """One systemd unit: active and sub state, since when, main PID, memory, tasks, restarts, whether it is
    enabled, the last run's result, and its most recent journal entries."""
    return await state.service.collect(
        device, "service_status", {"unit": unit, "lines": lines}, force_refresh=force_refresh
    )


@tool(annotations=changes(destructive=True, idempotent=False), tags=WRITE_TAGS)
@expected_errors()
async def restart_service(
    device: DeviceArg, unit: Unit, state: AppState = Depends(current_state)
) -> Collected[RestartResult]:
    """Restart a systemd unit (`systemctl restart`); service reads afterwards are fresh. Needs root on the
    device: log in as root or set use_sudo with a sudoers rule for systemctl."""
    return await state.service.collect(device, "restart_service", {"unit": unit})


@tool(annotations=READ_ONLY, tags={KEEP_NEWEST})
@expected_errors()
async def get_journal_logs(
    device: DeviceArg,
    unit: Annotated[
        UnitName | None, Field(description="Only this unit's entries, e.g. 'nginx.service'.")
    ] = None,
    since: Annotated[
        TimeSpec | None,
        Field(
            description="Only entries at or after this time: '2024-05-01 13:00', '-2h', '3 days ago', 'today' (device local time)."
        ),
    ] = None,
    until: Annotated[
        TimeSpec | None, Field(description="Only entries at or before this time (same forms as since).")
    ] = None,
    priority: Annotated[
        str | int | None,
        Field(
            description="Only this priority and more severe: emerg, alert, crit, err, warning, notice, "
            "info, debug (or 0..7)."
        ),
    ] = None,
    grep: Annotated[
        GrepText | None,
        Field(
            description="Only entries whose message contains this text (no wildcards; case-insensitive "
            "unless it holds an upper-case letter), among the newest 10,000 entries."
        ),
    ] = None,
    lines: Annotated[int, Field(ge=1, le=2000, description="Newest matching entries to return.")] = 100,
    force_refresh: ForceRefresh = False,
    state: AppState = Depends(current_state),
) -> Collected[JournalLogs]:
    """The newest systemd journal entries of a device, filtered by unit, time, priority and text; messages
    cut at 2000 characters. Without root or the systemd-journal group the SSH user sees only its own
    entries (set use_sudo on the device for the whole journal)."""
    params = {
        "unit": unit,
        "since": since,
        "until": until,
        "priority": priority,
        "grep": grep,
        "lines": lines,
    }
    return await state.service.collect(device, "journal_logs", params, force_refresh=force_refresh)


TOOLS = (
    list_services,
    get_service_status,
    restart_service,
    get_journal_logs,
)
