"""The storage mode at run time: what migration 0005 set up, its policies, and retention maintenance.

`configure` (after every migration, as the schema owner) brings TimescaleDB policies in line with the
INFRA_RETENTION_* settings, or creates native partitions ahead. `maintain` (run by the polling service)
applies retention where the database does not do it itself: detach-and-drop of native partitions,
batched deletes on SQLite, and cleanup of lease and cache rows in every mode.
"""

from __future__ import annotations

import json
import logging
import weakref
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field
from sqlalchemy import Connection, Delete, delete, select, update
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from mcp_server.db import partitions, timescale
from mcp_server.db.engine import Database
from mcp_server.db.series import ROLLUP, Mode
from mcp_server.db.tables import Base, PollLease, StorageLayout
from mcp_server.errors import StorageError
from mcp_server.series import TABLES
from mcp_server.settings import Settings

log = logging.getLogger(__name__)

LEASE_RETENTION = timedelta(days=2)
DELETE_BATCH = 5000
# The mode never changes while a database is open (only migration 0005 sets it).
_LAYOUTS: weakref.WeakKeyDictionary[Database, tuple[Mode, str, datetime | None]] = weakref.WeakKeyDictionary()


class StorageInfo(BaseModel):
    """How history is stored and kept."""

    mode: Mode | str = Field(
        description="timescale (hypertables, compression, hourly rollup), partitioned (native PostgreSQL "
        "range partitions) or plain (SQLite)."
    )
    detail: str = Field(description="What the database offered when the mode was chosen.")
    configured_at: datetime | None
    retention_days: dict[str, float] = Field(description="Days kept per family of tables (0 = forever).")
    compression_after_days: float | None = Field(description="TimescaleDB only: chunks compressed after.")


def policies(settings: Settings) -> timescale.Policies:
    return timescale.Policies(
        retention_days={
            "retention_metrics_days": settings.retention_metrics_days,
            "retention_audit_days": settings.retention_audit_days,
            "retention_performance_days": settings.retention_performance_days,
            "retention_config_changes_days": settings.retention_config_changes_days,
        },
        compress_after_days=settings.compression_after_days,
        rollup_retention_days=settings.retention_rollup_days,
    )


async def layout(db: Database) -> tuple[Mode, str, datetime | None]:
    """(mode, detail, when chosen) as recorded by migration 0005; cached on the Database."""
    cached = _LAYOUTS.get(db)
    if cached is not None:
        return cached
    async with db.read_session() as session:
        row = await session.scalar(select(StorageLayout).where(StorageLayout.id == 1))
    if row is None:
        found: tuple[Mode, str, datetime | None] = ("plain", "no storage layout recorded", None)
    else:
        mode: Mode = row.mode if row.mode in ("timescale", "partitioned") else "plain"  # type: ignore[assignment]
        found = (mode, row.detail, row.configured_at)
    _LAYOUTS[db] = found
    return found


async def info(db: Database, settings: Settings) -> StorageInfo:
    mode, detail, at = await layout(db)
    p = policies(settings)
    return StorageInfo(
        mode=mode,
        detail=detail,
        configured_at=at,
        retention_days={
            **{k.removeprefix("retention_").removesuffix("_days"): v for k, v in p.retention_days.items()},
            **({"rollup": p.rollup_retention_days} if mode == "timescale" else {}),
        },
        compression_after_days=p.compress_after_days if mode == "timescale" else None,
    )


@dataclass
class ConfigureReport:
    mode: Mode
    detail: str
    actions: list[str] = field(default_factory=list)
    error: str | None = None  # partition maintenance failed (reported, the schema itself is fine)

    def summary(self) -> str:
        head = f"time-series storage: {self.mode} ({self.detail})"
        tail = [f"  partition maintenance FAILED: {self.error}"] if self.error else []
        return "\n".join([head, *(f"  {a}" for a in self.actions), *tail])


async def configure(db: Database, settings: Settings) -> ConfigureReport:
    """Bring the database's own policies in line with the settings; needs the schema owner's rights."""
    mode, detail, _ = await layout(db)
    report = ConfigureReport(mode, detail)
    wanted = policies(settings)
    tables = ", ".join(t.name for t in TABLES)
    try:
        if mode == "timescale":
            fingerprint = json.dumps(asdict(wanted), sort_keys=True, default=dict)
            async with db.engine.begin() as conn:
                applied = await conn.scalar(select(StorageLayout.policies).where(StorageLayout.id == 1))
                if applied != fingerprint:
                    # job scheduling statements are plain function calls: one ordinary transaction suffices
                    await conn.run_sync(timescale.apply_policies, wanted)
                    await conn.execute(
                        update(StorageLayout).where(StorageLayout.id == 1).values(policies=fingerprint)
                    )
            compress = (
                f"compressed (segment by device) after {wanted.compress_after_days:g} d"
                if wanted.compress_after_days > 0
                else "never compressed"
            )
            rollup = wanted.rollup_retention_days
            report.actions = [
                f"hypertables: {tables}; {compress}",
                f"retention policies ({'unchanged' if applied == fingerprint else 'applied'}): "
                + _retention_line(wanted),
                f"continuous aggregate {ROLLUP}: per device per hour, refreshed every 30 min, "
                + (f"kept {rollup:g} d" if rollup > 0 else "kept forever"),
            ]
        elif mode == "partitioned":
            # a least-privilege application role cannot create or drop partitions: the owner's run
            # (`infrastructor migrate`, e.g. from cron) does this pass too
            done = await maintain(db, settings)
            report.actions = [
                f"partitioned tables: {tables}; {len(done.partitions_created)} partition(s) created ahead, "
                f"{len(done.partitions_dropped)} expired one(s) dropped",
                "retention (detach and drop, run by the polling service): " + _retention_line(wanted),
            ]
            report.error = done.error
        else:
            report.actions = ["retention (deletes, run by the polling service): " + _retention_line(wanted)]
    except SQLAlchemyError as exc:
        raise StorageError(f"Configuring {mode} storage failed: {type(exc).__name__}: {exc}") from exc
    return report


def _retention_line(p: timescale.Policies) -> str:
    return ", ".join(
        f"{k.removeprefix('retention_').removesuffix('_days').replace('_', ' ')} "
        + (f"{v:g} d" if v > 0 else "forever")
        for k, v in p.retention_days.items()
    )


def _ensure_all(conn: Connection, now: datetime) -> list[str]:
    return [name for table in TABLES for name in partitions.ensure_partitions(conn, table, now)]


@dataclass
class MaintenanceReport:
    mode: Mode
    partitions_created: list[str] = field(default_factory=list)
    partitions_dropped: list[str] = field(default_factory=list)
    rows_deleted: dict[str, int] = field(default_factory=dict)
    error: str | None = None


async def maintain(db: Database, settings: Settings, now: datetime | None = None) -> MaintenanceReport:
    """One retention pass for the current mode; a failure is reported in the result, never raised."""
    now = now or datetime.now(UTC)
    mode, _, _ = await layout(db)
    report = MaintenanceReport(mode)
    p = policies(settings)
    try:
        if mode == "partitioned":
            async with db.engine.begin() as conn:
                report.partitions_created = await conn.run_sync(_ensure_all, now)
            for table in TABLES:
                keep = p.retention(table)
                if keep is not None:
                    async with db.engine.begin() as conn:
                        dropped = await conn.run_sync(partitions.drop_expired, table, now - keep)
                    report.partitions_dropped.extend(dropped)
        elif mode == "plain":
            for table in TABLES:
                keep = p.retention(table)
                if keep is not None:
                    report.rows_deleted[table.name] = await _delete_older(
                        db, table.name, table.time_column, now - keep
                    )
        # TimescaleDB drops and compresses chunks itself (its policies); leases and cache rows are ours
        report.rows_deleted["poll_leases"] = await _delete_rows(
            db, delete(PollLease).where(PollLease.claimed_at < now - LEASE_RETENTION)
        )
        if settings.retention_performance_days > 0:
            cutoff = now - timedelta(days=settings.retention_performance_days)
            report.rows_deleted["cache_metadata"] = await _delete_older(
                db, "cache_metadata", "recorded_at", cutoff
            )
    except DBAPIError as exc:
        # e.g. a least-privilege role may not create or drop partitions: the schema owner must run
        # `infrastructor migrate` (which also maintains) from cron instead
        report.error = f"{type(exc).__name__}: {str(exc.orig) if exc.orig else exc}"[:500]
        log.warning("storage maintenance (%s) failed: %s", mode, report.error)
    return report


async def _delete_rows(db: Database, statement: Delete) -> int:
    async with db.session() as session, session.begin():
        result = await session.execute(statement)
    return int(getattr(result, "rowcount", 0) or 0)


async def _delete_older(db: Database, table: str, column: str, cutoff: datetime) -> int:
    """Delete rows older than `cutoff` in batches, so a writer never waits long on SQLite's one lock."""
    t = Base.metadata.tables[table]
    batch = select(t.c.id).where(t.c[column] < cutoff).limit(DELETE_BATCH)
    statement = delete(t).where(t.c.id.in_(batch))
    total = 0
    while True:
        deleted = await _delete_rows(db, statement)
        total += deleted
        if deleted < DELETE_BATCH:
            return total
