"""Reading and writing watch targets, file versions and change events (plain async functions over the db)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, update

from mcp_server.db.changes import announce
from mcp_server.db.engine import Database
from mcp_server.db.tables import ConfigurationChangeEvent, ConfigurationSnapshot, ConfigWatchTarget


@dataclass(frozen=True)
class Latest:
    """The newest stored version of one path."""

    snapshot_id: int
    content_hash: str | None


async def targets(db: Database) -> list[ConfigWatchTarget]:
    async with db.read_session() as session:
        query = select(ConfigWatchTarget).order_by(ConfigWatchTarget.device, ConfigWatchTarget.path)
        return list((await session.scalars(query)).all())


async def add_target(db: Database, row: ConfigWatchTarget) -> ConfigWatchTarget:
    """Insert the target, or return the one already stored for its device and path."""
    async with db.session() as session, session.begin():
        existing = await session.scalar(
            select(ConfigWatchTarget).where(
                ConfigWatchTarget.device == row.device, ConfigWatchTarget.path == row.path
            )
        )
        if existing is not None:
            return existing
        session.add(row)
        await announce(session, db, "watch", row.device, path=row.path)
    return row


async def set_baseline(db: Database, target_id: int, at: datetime) -> None:
    async with db.session() as session, session.begin():
        await session.execute(
            update(ConfigWatchTarget).where(ConfigWatchTarget.id == target_id).values(baseline_at=at)
        )
        device = await session.scalar(
            select(ConfigWatchTarget.device).where(ConfigWatchTarget.id == target_id)
        )
        if device is not None:
            await announce(session, db, "watch", device)


async def remove_target(db: Database, device: str, path: str) -> bool:
    async with db.session() as session, session.begin():
        result = await session.execute(
            delete(ConfigWatchTarget).where(
                ConfigWatchTarget.device == device, ConfigWatchTarget.path == path
            )
        )
        removed = bool(getattr(result, "rowcount", 0))
        if removed:
            await announce(session, db, "watch", device, path=path)
    return removed


async def latest(db: Database) -> dict[tuple[str, str], Latest]:
    """The newest version of every path ever recorded."""
    newest = (
        select(func.max(ConfigurationSnapshot.id))
        .group_by(ConfigurationSnapshot.device, ConfigurationSnapshot.path)
        .scalar_subquery()
    )
    query = select(
        ConfigurationSnapshot.device,
        ConfigurationSnapshot.path,
        ConfigurationSnapshot.id,
        ConfigurationSnapshot.content_hash,
    ).where(ConfigurationSnapshot.id.in_(newest))
    async with db.read_session() as session:
        rows = (await session.execute(query)).all()
    return {(r.device, r.path): Latest(r.id, r.content_hash) for r in rows}


async def snapshot(db: Database, snapshot_id: int) -> ConfigurationSnapshot | None:
    async with db.read_session() as session:
        return await session.get(ConfigurationSnapshot, snapshot_id)


async def record(
    db: Database, version: ConfigurationSnapshot, event: ConfigurationChangeEvent | None
) -> tuple[int, int | None]:
    """Store a version and (unless it is a baseline) its change event in one transaction; their ids."""
    async with db.session() as session, session.begin():
        session.add(version)
        await session.flush()
        if event is not None:
            event.to_snapshot_id = version.id
            session.add(event)
            await session.flush()
        await announce(
            session,
            db,
            "config",
            version.device,
            path=version.path,
            snapshot_id=version.id,
            event_id=event.id if event is not None else None,
        )
    return version.id, event.id if event is not None else None


async def versions(
    db: Database, device: str, path: str, limit: int, offset: int
) -> tuple[list[ConfigurationSnapshot], int]:
    """A path's versions, newest first, and how many there are."""
    where = (ConfigurationSnapshot.device == device, ConfigurationSnapshot.path == path)
    async with db.read_session() as session:
        total = await session.scalar(select(func.count()).select_from(ConfigurationSnapshot).where(*where))
        rows = await session.scalars(
            select(ConfigurationSnapshot)
            .where(*where)
            .order_by(ConfigurationSnapshot.id.desc())
            .limit(limit)
            .offset(offset)
        )
        return list(rows.all()), int(total or 0)


async def event_for(db: Database, to_snapshot_id: int) -> ConfigurationChangeEvent | None:
    async with db.read_session() as session:
        return await session.scalar(
            select(ConfigurationChangeEvent).where(ConfigurationChangeEvent.to_snapshot_id == to_snapshot_id)
        )


async def events_for(db: Database, snapshot_ids: list[int]) -> dict[int, ConfigurationChangeEvent]:
    if not snapshot_ids:
        return {}
    async with db.read_session() as session:
        rows = await session.scalars(
            select(ConfigurationChangeEvent).where(ConfigurationChangeEvent.to_snapshot_id.in_(snapshot_ids))
        )
        return {e.to_snapshot_id: e for e in rows.all() if e.to_snapshot_id is not None}


async def changes(
    db: Database,
    *,
    device: str | None,
    path: str | None,
    since: datetime | None,
    risks: list[str] | None,
    limit: int,
    offset: int,
) -> tuple[list[ConfigurationChangeEvent], int]:
    """Change events matching the filters, newest first, and how many match."""
    where = []
    if device is not None:
        where.append(ConfigurationChangeEvent.device == device)
    if path is not None:
        where.append(ConfigurationChangeEvent.path == path)
    if since is not None:
        where.append(ConfigurationChangeEvent.detected_at >= since)
    if risks is not None:
        where.append(ConfigurationChangeEvent.risk.in_(risks))
    async with db.read_session() as session:
        total = await session.scalar(select(func.count()).select_from(ConfigurationChangeEvent).where(*where))
        rows = await session.scalars(
            select(ConfigurationChangeEvent)
            .where(*where)
            .order_by(ConfigurationChangeEvent.detected_at.desc(), ConfigurationChangeEvent.id.desc())
            .limit(limit)
            .offset(offset)
        )
        return list(rows.all()), int(total or 0)


async def targets_of(db: Database, device: str) -> list[ConfigWatchTarget]:
    async with db.read_session() as session:
        query = select(ConfigWatchTarget).where(ConfigWatchTarget.device == device)
        return list((await session.scalars(query)).all())


async def version_hash(db: Database, snapshot_id: int) -> str | None:
    async with db.read_session() as session:
        query = select(ConfigurationSnapshot.content_hash).where(ConfigurationSnapshot.id == snapshot_id)
        return await session.scalar(query)


async def event(db: Database, event_id: int) -> ConfigurationChangeEvent | None:
    async with db.read_session() as session:
        query = select(ConfigurationChangeEvent).where(ConfigurationChangeEvent.id == event_id)
        return await session.scalar(query)
