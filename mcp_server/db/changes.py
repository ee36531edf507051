"""The change feed's rows: `registry_changes`, written in the transaction of the change it announces.

On PostgreSQL the same transaction sends NOTIFY on CHANNEL (delivered when it commits), so listening servers
wake at once; on SQLite they notice the commit through `PRAGMA data_version`. Either way a server reads the
rows after the last one it applied, so nothing is lost while it was not listening (a reconnect catches up).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from mcp_server.db.engine import Database
from mcp_server.db.tables import RegistryChange

CHANNEL = "infra_changes"
KEEP = timedelta(hours=1)  # a server that was away longer reloads everything instead (see ChangeFeed)
Kind = Literal["device", "watch", "config"]


@dataclass(frozen=True)
class Change:
    id: int
    kind: str  # a Kind
    device: str
    path: str | None
    snapshot_id: int | None
    event_id: int | None
    origin: str


async def announce(
    session: AsyncSession,
    db: Database,
    kind: Kind,
    device: str,
    *,
    path: str | None = None,
    snapshot_id: int | None = None,
    event_id: int | None = None,
) -> None:
    """Add the change row to `session`'s transaction (and NOTIFY on PostgreSQL); drop rows older than KEEP."""
    now = datetime.now(UTC)
    session.add(
        RegistryChange(
            changed_at=now,
            kind=kind,
            device=device,
            path=path,
            snapshot_id=snapshot_id,
            event_id=event_id,
            origin=db.origin,
        )
    )
    await session.execute(delete(RegistryChange).where(RegistryChange.changed_at < now - KEEP))
    if db.dialect == "postgresql":
        await session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


async def latest_id(conn: AsyncConnection | AsyncSession) -> int:
    return int(await conn.scalar(select(func.coalesce(func.max(RegistryChange.id), 0))) or 0)


async def oldest_id(conn: AsyncConnection | AsyncSession) -> int | None:
    value = await conn.scalar(select(func.min(RegistryChange.id)))
    return int(value) if value is not None else None


async def after(conn: AsyncConnection | AsyncSession, last: int, limit: int = 1000) -> list[Change]:
    """The changes after id `last`, oldest first (at most `limit`)."""
    c = RegistryChange
    columns = (c.id, c.kind, c.device, c.path, c.snapshot_id, c.event_id, c.origin)
    query = select(*columns).where(c.id > last).order_by(c.id).limit(limit)
    return [Change(*row) for row in (await conn.execute(query)).all()]
