"""The storage mode at run time: what migration 0005 set up, its policies, and retention maintenance.

`configure` (after every migration, as the schema owner) brings TimescaleDB policies in line with the
INFRA_RETENTION_* settings, or creates native partitions ahead. `maintain` (run by the polling service)
applies retention where the database does not do it itself: detach-and-drop of native partitions,
batched deletes on SQLite, and cleanup of lease and cache rows in every mode. On TimescaleDB it runs the
policy jobs whose scheduler runs fail or do not happen (`CALL run_job`, INFRA_TIMESCALE_RUN_JOBS): on
PostgreSQL 15.20 with TimescaleDB 2.26-2.28 every background run ends with `cannot drop portal "" while it
is being set up`, while the same job run in a client session works. `jobs` reports the jobs' state.
"""

from __future__ import annotations

import json
import logging
import time
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
    jobs_summary: str = Field(
        description="One line on the database's own storage jobs: 'storage jobs: none (native "
        "partitions)', or how many TimescaleDB policies there are and how many keep failing."
    )
    jobs: list[timescale.StorageJob] = Field(
        description="TimescaleDB's policy jobs (compression, retention, the rollup's refresh): the "
        "scheduler's last run, successes, failures and last error, and this replica's own run of each; "
        "empty in the other modes."
    )
    warnings: list[str] = Field(description="Policies that keep failing or are overdue, and what runs them.")


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


async def info(db: Database, settings: Settings, last: MaintenanceReport | None = None) -> StorageInfo:
    """The mode, retention and storage jobs; `last` is this replica's latest maintenance run."""
    mode, detail, at = await layout(db)
    p = policies(settings)
    state = await jobs(db, settings, last.jobs_run if last else {})
    return StorageInfo(
        mode=mode,
        detail=detail,
        configured_at=at,
        retention_days={
            **{k.removeprefix("retention_").removesuffix("_days"): v for k, v in p.retention_days.items()},
            **({"rollup": p.rollup_retention_days} if mode == "timescale" else {}),
        },
        compression_after_days=p.compress_after_days if mode == "timescale" else None,
        jobs_summary=state.summary,
        jobs=state.jobs,
        warnings=state.warnings,
    )


@dataclass
class JobsReport:
    """The storage jobs of the database, one summary line and the warnings about them."""

    summary: str
    jobs: list[timescale.StorageJob] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [
            self.summary,
            *(f"  {j.describe()}" for j in self.jobs),
            *(f"  WARNING: {w}" for w in self.warnings),
        ]


NO_JOBS = {
    "plain": "storage jobs: none (SQLite: the polling service deletes expired rows)",
    "partitioned": "storage jobs: none (native partitions)",
}


async def jobs(
    db: Database, settings: Settings, runs: dict[int, timescale.JobRun] | None = None
) -> JobsReport:
    """The TimescaleDB policy jobs with the scheduler's record and `runs` (the server's own); warnings for
    those that keep failing or are overdue. Never raises: a failure to read them is the summary."""
    mode, _, _ = await layout(db)
    if mode != "timescale":
        return JobsReport(NO_JOBS[mode])
    try:
        async with db.engine.connect() as conn:
            found = await conn.run_sync(timescale.job_states)
    except DBAPIError as exc:
        return JobsReport(f"storage jobs: unknown (reading timescaledb_information failed: {_error(exc)})")
    mine = runs or {}
    for job in found:
        job.server_run = mine.get(job.job_id)
    failing = sum(j.keeps_failing for j in found)
    summary = f"storage jobs: {len(found)} TimescaleDB policies, " + (
        f"{failing} keep failing" if failing else "none failing"
    )
    return JobsReport(summary, found, job_warnings(found, settings, datetime.now(UTC)))


def job_warnings(found: list[timescale.StorageJob], settings: Settings, now: datetime) -> list[str]:
    """A line for each policy that keeps failing or is overdue: what happened and what runs it instead."""
    warnings = []
    for job in found:
        if job.keeps_failing:
            error = job.last_error or "no error recorded"
            problem = f"the scheduler's last {job.failures_since_success} runs failed ({error})"
        elif job.scheduled and job.overdue(now):
            problem = (
                "overdue: TimescaleDB's scheduler has not started it (timescaledb.max_background_workers?)"
            )
        else:
            continue
        warnings.append(
            f"{job.policy} on {job.target} (job {job.job_id}): {problem}; {_remedy(job, settings)}"
        )
    return warnings


def _remedy(job: timescale.StorageJob, settings: Settings) -> str:
    run = job.server_run
    if settings.timescale_run_jobs == "never":
        return "with INFRA_TIMESCALE_RUN_JOBS=never nothing else runs it"
    if run is None:
        return (
            f"the server's maintenance loop runs it (CALL run_job, every {settings.maintenance_interval:g} "
            "s) when its database role owns the job; with a least-privilege role run `infrastructor "
            "migrate` as the owner from cron, which runs it"
        )
    if run.ok:
        return f"run by this process (CALL run_job) at {run.at:%Y-%m-%d %H:%M} UTC: ok"
    return (
        f"this process's own run failed too ({run.error}): run `infrastructor migrate` as the database owner "
        "(e.g. daily from cron), which runs it"
    )


async def run_due_jobs(db: Database, settings: Settings, now: datetime) -> dict[int, timescale.JobRun]:
    """Run, in a session of this server, the policy jobs INFRA_TIMESCALE_RUN_JOBS selects; by job id."""
    async with db.engine.connect() as conn:
        due = [
            j
            for j in await conn.run_sync(timescale.job_states)
            if j.needs_run(now, settings.timescale_run_jobs)
        ]
    runs = {}
    for job in due:
        started = time.monotonic()
        try:
            async with db.engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.run_sync(timescale.run_job, job.job_id)
            runs[job.job_id] = timescale.JobRun(at=now, ok=True, seconds=round(time.monotonic() - started, 3))
        except DBAPIError as exc:
            error = _error(exc)
            log.warning("run_job %d (%s on %s) failed: %s", job.job_id, job.policy, job.target, error)
            runs[job.job_id] = timescale.JobRun(
                at=now, ok=False, seconds=round(time.monotonic() - started, 3), error=error
            )
    return runs


def _error(exc: DBAPIError) -> str:
    return f"{type(exc).__name__}: {str(exc.orig) if exc.orig else exc}"[:500]


def _failed(runs: dict[int, timescale.JobRun]) -> str | None:
    return "; ".join(f"job {i}: {r.error}" for i, r in runs.items() if not r.ok)[:500] or None


@dataclass
class ConfigureReport:
    mode: Mode
    detail: str
    actions: list[str] = field(default_factory=list)
    # partition maintenance or a policy run failed (reported, the schema itself is fine)
    error: str | None = None
    jobs: JobsReport | None = None

    def summary(self) -> str:
        head = f"time-series storage: {self.mode} ({self.detail})"
        what = "policy run" if self.mode == "timescale" else "partition maintenance"
        tail = [f"  {what} FAILED: {self.error}"] if self.error else []
        jobs = self.jobs.lines() if self.jobs else []
        return "\n".join([head, *(f"  {a}" for a in self.actions), *tail, *jobs])


async def configure(db: Database, settings: Settings, *, run_jobs: bool = False) -> ConfigureReport:
    """Bring the database's own policies in line with the settings; needs the schema owner's rights.
    With `run_jobs` (`infrastructor migrate`), also run the TimescaleDB policies that need it, as the
    maintenance loop does (a least-privilege server role may not)."""
    mode, detail, _ = await layout(db)
    report = ConfigureReport(mode, detail)
    wanted = policies(settings)
    tables = ", ".join(t.name for t in TABLES)
    try:
        if mode == "timescale":
            version = {"version": timescale.POLICY_VERSION, **asdict(wanted)}
            fingerprint = json.dumps(version, sort_keys=True, default=dict)
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
        runs = await run_due_jobs(db, settings, datetime.now(UTC)) if run_jobs and mode == "timescale" else {}
        report.error = report.error or _failed(runs)
    except SQLAlchemyError as exc:
        raise StorageError(f"Configuring {mode} storage failed: {type(exc).__name__}: {exc}") from exc
    report.jobs = await jobs(db, settings, runs)
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
    jobs_run: dict[int, timescale.JobRun] = field(default_factory=dict)  # TimescaleDB policies, by job id
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
        elif mode == "timescale":
            # TimescaleDB drops and compresses chunks itself, unless its scheduler's runs fail
            report.jobs_run = await run_due_jobs(db, settings, now)
            report.error = _failed(report.jobs_run)
        # leases and cache rows are ours in every mode
        report.rows_deleted["poll_leases"] = await _delete_rows(
            db, delete(PollLease).where(PollLease.claimed_at < now - LEASE_RETENTION)
        )
        if settings.retention_performance_days > 0:
            cutoff = now - timedelta(days=settings.retention_performance_days)
            report.rows_deleted["cache_metadata"] = await _delete_older(
                db, "cache_metadata", "recorded_at", cutoff
            )
        if settings.retention_config_changes_days > 0:  # the event log lives as long as config changes
            cutoff = now - timedelta(days=settings.retention_config_changes_days)
            report.rows_deleted["event_log"] = await _delete_older(db, "event_log", "occurred_at", cutoff)
    except DBAPIError as exc:
        # e.g. a least-privilege role may not create or drop partitions: the schema owner must run
        # `infrastructor migrate` (which also maintains) from cron instead
        report.error = _error(exc)
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
