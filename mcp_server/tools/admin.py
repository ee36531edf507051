"""Admin tools: the command catalogue and generic collect, the audit log and run_command (scope infra:admin)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastmcp.dependencies import Depends
from fastmcp.tools import tool
from pydantic import AfterValidator, BaseModel, Field

from mcp_server.collection import Collected, DeviceOutcome
from mcp_server.commands import CommandList
from mcp_server.commands.admin import CommandOutput, check_allowed
from mcp_server.commands.base import Limit, Offset
from mcp_server.db.queries import AuditPage, cut_commands
from mcp_server.progress import OnStep
from mcp_server.state import AppState, current_state
from mcp_server.times import utc
from mcp_server.tools import ADMIN_TAGS, READ_ONLY, DeviceArg, ForceRefresh, changes, expected_errors
from mcp_server.tools.notify import step_reporter

TOOLSET = "admin"
# converted to UTC (UTC when no offset is given) and refused outside the years the server handles
AuditTime = Annotated[datetime, AfterValidator(utc)]
# query_audit_log's default page (20 entries, commands cut to this) is about 8,000 characters
COMMAND_CHARS = 80


@tool(annotations=READ_ONLY | {"openWorldHint": False})
async def list_commands(
    category: Annotated[
        str | None, Field(description="Only this category (system, storage, network).")
    ] = None,
    state: AppState = Depends(current_state),
) -> CommandList:
    """List every registered command with its parameters' JSON schema; run one with `collect`."""
    return state.registry.catalogue(category)


@tool(annotations=READ_ONLY)
@expected_errors()
async def collect(
    device: DeviceArg,
    command: Annotated[str, Field(description="Registry command name (see list_commands).")],
    params: Annotated[
        dict[str, Any] | None, Field(description="Parameters as described by list_commands.")
    ] = None,
    force_refresh: ForceRefresh = False,
    state: AppState = Depends(current_state),
) -> Collected[dict[str, Any]]:
    """Run any registered read command on a device by name and return its parsed result."""
    state.registry.get_read(command)
    return _plain(await state.service.collect(device, command, params, force_refresh=force_refresh))


class CollectedData(Collected[dict[str, Any]]):
    """A collected result whose data is plain JSON, as `collect` returns it."""


class DeviceCollected(DeviceOutcome[dict[str, Any]]):
    result: CollectedData | None = None


class CollectedMany(BaseModel):
    """One command's result from each selected device; a device that failed carries its error instead."""

    command: str
    devices: list[DeviceCollected]
    total: int
    failed: int


@tool(annotations=READ_ONLY)
@expected_errors()
async def collect_many(
    command: str,
    devices: list[str] | None = None,
    tags: Annotated[list[str] | None, Field(description="Devices with all of these tags.")] = None,
    params: dict[str, Any] | None = None,
    force_refresh: ForceRefresh = False,
    state: AppState = Depends(current_state),
    on_device: OnStep = Depends(step_reporter),
) -> CollectedMany:
    """`collect` on many devices at once."""
    state.registry.get_read(command)
    names = state.service.select(devices, tags)
    outcomes = await state.service.collect_many(
        names, command, params, force_refresh=force_refresh, on_device=on_device
    )
    shown = [
        DeviceCollected(
            device=o.device,
            ok=o.ok,
            error_type=o.error_type,
            error=o.error,
            result=None if o.result is None else _plain(o.result),
        )
        for o in outcomes
    ]
    failed = sum(not o.ok for o in shown)
    return CollectedMany(command=command, devices=shown, total=len(shown), failed=failed)


def _plain(result: Collected[Any]) -> CollectedData:
    return CollectedData(**{**dict(result), "data": result.data.model_dump(mode="json")})


@tool(annotations=changes(destructive=True, idempotent=False), tags=ADMIN_TAGS)
@expected_errors()
async def run_command(
    device: DeviceArg,
    argv: Annotated[
        list[str],
        Field(
            min_length=1,
            max_length=64,
            description="Program and arguments as a list (never a shell string).",
        ),
    ],
    state: AppState = Depends(current_state),
) -> Collected[CommandOutput]:
    """Run one allowlisted program on a device (admin; off unless INFRA_ALLOW_RUN_COMMAND=true). Audited."""
    check_allowed(
        argv, enabled=state.settings.allow_run_command, allowlist=state.settings.run_command_allowlist
    )
    return await state.service.collect(device, "run_command", {"argv": argv}, force_refresh=True)


@tool(annotations=READ_ONLY | {"openWorldHint": False}, tags=ADMIN_TAGS)
async def query_audit_log(
    since: Annotated[AuditTime | None, Field(description="ISO 8601 time; entries at or after it.")] = None,
    until: Annotated[AuditTime | None, Field(description="ISO 8601 time; entries before it.")] = None,
    subject: str | None = None,
    device: str | None = None,
    tool: Annotated[str | None, Field(description="Tool name or resource URI.")] = None,
    outcome: Literal["ok", "error", "denied"] | None = None,
    kind: Annotated[
        Literal["tool", "resource", "collection", "session", "auth", "subscription"] | None,
        Field(
            description="session: an MCP session opened or refused; auth: a refused bearer token; "
            "subscription: a resource subscription or listen stream, allowed or refused."
        ),
    ] = None,
    request_id: str | None = None,
    full_commands: Annotated[
        bool,
        Field(description=f"Show each SSH command whole (default: its first {COMMAND_CHARS} characters)."),
    ] = False,
    limit: Limit = 20,
    offset: Offset = 0,
    state: AppState = Depends(current_state),
) -> AuditPage:
    """Search the audit log: who called what, from where, with what result (newest first, paginated)."""
    page = await state.audit_page(
        limit=limit,
        offset=offset,
        since=since,
        until=until,
        subject=subject,
        device=device,
        tool=tool,
        outcome=outcome,
        kind=kind,
        request_id=request_id,
    )
    return page if full_commands else cut_commands(page, COMMAND_CHARS)


TOOLS = (
    list_commands,
    collect,
    collect_many,
    run_command,
    query_audit_log,
)
