"""Admin tools (scope infra:admin): the audit log and run_command."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastmcp import FastMCP
from fastmcp.dependencies import Depends
from pydantic import BaseModel, Field

from mcp_server.collection import Collected
from mcp_server.commands.admin import CommandOutput
from mcp_server.db.queries import audit_rows
from mcp_server.db.tables import DataCollectionAudit
from mcp_server.errors import InvalidParameter
from mcp_server.server import AppState
from mcp_server.settings import Settings
from mcp_server.tools import ADMIN_TAGS, READ_ONLY, DeviceArg, app_state, changes, expected_errors


class AuditEntry(BaseModel):
    """One audited event: a tool call, a resource read or a data collection."""

    id: int
    occurred_at: datetime
    kind: str = Field(
        description="tool, resource or collection (collections link to their call by request_id)."
    )
    request_id: str | None
    subject: str | None = Field(description="Token subject, or local:<user> over stdio.")
    client_id: str | None
    client_ip: str | None
    user_agent: str | None
    request_path: str | None
    transport: str | None
    tool: str | None = Field(description="Tool name or resource URI.")
    arguments: dict[str, Any] | None = Field(description="Call arguments with secret values replaced by ***.")
    device: str | None
    command: str | None
    cache_hit: bool
    ssh_commands: list[str]
    duration_ms: float
    outcome: Literal["ok", "error", "denied"] | str
    error_type: str | None
    error_message: str | None


class AuditPage(BaseModel):
    entries: list[AuditEntry] = Field(description="Newest first.")
    total: int = Field(description="Entries matching the filters in all.")
    truncated: bool = Field(description="True when more entries match than this page holds (raise offset).")


def _entry(row: DataCollectionAudit) -> AuditEntry:
    return AuditEntry.model_validate(row, from_attributes=True)


async def audit_page(state: AppState, *, limit: int, offset: int, **filters: Any) -> AuditPage:
    await state.writer.flush()  # a page includes everything audited up to this call
    async with state.db.read_session() as session:
        rows, total = await audit_rows(session, limit=limit, offset=offset, **filters)
    return AuditPage(entries=[_entry(r) for r in rows], total=total, truncated=offset + len(rows) < total)


def allowed_program(settings: Settings, program: str) -> bool:
    """argv[0] equals an allowlist entry: a bare name matches a bare name, a path matches that exact path."""
    entries = {e.strip() for e in settings.run_command_allowlist.split(",") if e.strip()}
    return program in entries


def register(mcp: FastMCP) -> None:
    @mcp.tool(annotations=changes(destructive=True, idempotent=False), tags=ADMIN_TAGS)
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
        state: AppState = Depends(app_state),
    ) -> Collected[CommandOutput]:
        """Run one allowlisted program on a device (admin; off unless INFRA_ALLOW_RUN_COMMAND=true). Audited."""
        settings = state.settings
        if not settings.allow_run_command:
            raise InvalidParameter(
                "run_command is disabled on this server (INFRA_ALLOW_RUN_COMMAND=true enables it)."
            )
        if not allowed_program(settings, argv[0]):
            allowed = settings.run_command_allowlist or "nothing (INFRA_RUN_COMMAND_ALLOWLIST is empty)"
            raise InvalidParameter(f"{argv[0]!r} is not in INFRA_RUN_COMMAND_ALLOWLIST; allowed: {allowed}.")
        return await state.service.collect(device, "run_command", {"argv": argv}, force_refresh=True)

    @mcp.tool(annotations=READ_ONLY | {"openWorldHint": False}, tags=ADMIN_TAGS)
    async def query_audit_log(
        since: Annotated[datetime | None, Field(description="ISO 8601 time; entries at or after it.")] = None,
        until: Annotated[datetime | None, Field(description="ISO 8601 time; entries before it.")] = None,
        subject: str | None = None,
        device: str | None = None,
        tool: Annotated[str | None, Field(description="Tool name or resource URI.")] = None,
        outcome: Literal["ok", "error", "denied"] | None = None,
        kind: Literal["tool", "resource", "collection"] | None = None,
        request_id: str | None = None,
        limit: Annotated[int, Field(ge=1, le=500)] = 50,
        offset: Annotated[int, Field(ge=0)] = 0,
        state: AppState = Depends(app_state),
    ) -> AuditPage:
        """Search the audit log: who called what, from where, with what result (newest first, paginated)."""
        return await audit_page(
            state,
            limit=limit,
            offset=offset,
            since=_utc(since),
            until=_utc(until),
            subject=subject,
            device=device,
            tool=tool,
            outcome=outcome,
            kind=kind,
            request_id=request_id,
        )


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
