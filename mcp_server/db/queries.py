"""Read queries over the tables (plain async functions) and the models they answer with."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from mcp_server.db.series import as_utc
from mcp_server.db.tables import DataCollectionAudit


async def audit_rows(
    session: AsyncSession,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    subject: str | None = None,
    device: str | None = None,
    tool: str | None = None,
    outcome: str | None = None,
    kind: str | None = None,
    request_id: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[DataCollectionAudit], int]:
    """Audit rows matching every given filter, newest first, and how many match in all."""
    conditions = [
        column == value
        for column, value in (
            (DataCollectionAudit.subject, subject),
            (DataCollectionAudit.device, device),
            (DataCollectionAudit.tool, tool),
            (DataCollectionAudit.outcome, outcome),
            (DataCollectionAudit.kind, kind),
            (DataCollectionAudit.request_id, request_id),
        )
        if value is not None
    ]
    if since is not None:
        conditions.append(DataCollectionAudit.occurred_at >= since)
    if until is not None:
        conditions.append(DataCollectionAudit.occurred_at < until)
    total = await session.scalar(select(func.count()).select_from(DataCollectionAudit).where(*conditions))
    rows = await session.scalars(
        select(DataCollectionAudit)
        .where(*conditions)
        .order_by(DataCollectionAudit.occurred_at.desc(), DataCollectionAudit.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return list(rows.all()), int(total or 0)


class AuditEntry(BaseModel):
    """One audited event: a tool call, a resource read or a data collection."""

    id: int
    occurred_at: datetime
    kind: str = Field(
        description="tool, resource or collection (collections link to their call by request_id); session "
        "(an MCP session opened or refused); auth (a refused bearer token: reason in error_message); "
        "subscription (also an event stream opened); alert (an alert delivered or not: rule, attempts); "
        "request (an HTTP request refused while the audit caught up)."
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

    @field_validator("occurred_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return as_utc(value)  # SQLite gives the stored time back without its zone


class AuditPage(BaseModel):
    entries: list[AuditEntry] = Field(description="Newest first.")
    total: int = Field(description="Entries matching the filters in all.")
    truncated: bool = Field(description="True when more entries match than this page holds (raise offset).")
    unshipped_rows: int = Field(
        default=0,
        description="Rows audited (fsynced in the server's journal) but not yet in the database, so not "
        "in this page; 0 when the page is complete up to this moment.",
    )
    oldest_unshipped_seconds: float | None = Field(
        default=None, description="Age of the oldest of those rows: how far behind this page may be."
    )


async def audit_page(session: AsyncSession, *, limit: int, offset: int, **filters: Any) -> AuditPage:
    """One page of audit entries matching `filters` (see audit_rows), newest first."""
    rows, total = await audit_rows(session, limit=limit, offset=offset, **filters)
    return AuditPage(
        entries=[AuditEntry.model_validate(r, from_attributes=True) for r in rows],
        total=total,
        truncated=offset + len(rows) < total,
    )


def cut_commands(page: AuditPage, chars: int) -> AuditPage:
    """The page with each entry's SSH commands cut to `chars` characters (the fixed scripts run to hundreds
    each), saying how long each was."""

    def cut(command: str) -> str:
        if len(command) <= chars:
            return command
        return f"{command[:chars]}… [{len(command)} characters]"

    entries = [e.model_copy(update={"ssh_commands": [cut(c) for c in e.ssh_commands]}) for e in page.entries]
    return page.model_copy(update={"entries": entries})
