"""Read queries over the tables (plain async functions)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

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
