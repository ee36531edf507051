"""TimescaleDB: the retention and compression policies of the hypertables, and the hourly rollup's refresh.

The hypertables and the rollup themselves are created by the migrations (0005, 0006), each with its own SQL.

Functions take a synchronous Connection (Alembic's, or `AsyncConnection.run_sync`). Table names are our
constants; intervals are numbers we computed, never caller input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field
from sqlalchemy import Connection, bindparam, text

from mcp_server.db.series import ROLLUP, RetentionSetting, SeriesTable, as_utc
from mcp_server.series import TABLES

# History answers buckets this recent from the raw table rather than the rollup: rows that arrive late there
# (a writer backlog, a spool replayed after an outage) count at once, not after the rollup's next refresh.
RECENT_RAW = timedelta(days=2)
# The rollup is refreshed from this far inside the raw retention: where raw chunks are gone a refresh
# would empty it.
RETENTION_MARGIN = timedelta(hours=12)
# The policies this code creates; bumping it makes `configure` apply them again on existing databases.
POLICY_VERSION = 2
POLICY_PROCS = ("policy_compression", "policy_retention", "policy_refresh_continuous_aggregate")
RunJobs = Literal["failing", "always", "never"]
# Scheduler runs that must fail in a row (since the last success) before a policy is reported as failing.
FAILING_AFTER = 2


@dataclass(frozen=True)
class Policies:
    """Retention per table family (days; 0 keeps everything), compression age and the rollup's retention."""

    retention_days: Mapping[RetentionSetting, float] = field(
        default_factory=lambda: {
            "retention_metrics_days": 30.0,
            "retention_audit_days": 365.0,
            "retention_performance_days": 30.0,
            "retention_config_changes_days": 365.0,
        }
    )
    compress_after_days: float = 7.0
    rollup_retention_days: float = 365.0

    def retention(self, table: SeriesTable) -> timedelta | None:
        days = self.retention_days.get(table.retention, 0.0)
        return timedelta(days=days) if days > 0 else None

    @property
    def refresh_start(self) -> timedelta | None:
        """How far back each refresh of the rollup reaches: wherever raw rows still exist, so a late row is
        folded in at the next refresh however old it is (a refresh recomputes only invalidated hours).
        None: from the beginning (raw metrics are kept forever)."""
        days = self.retention_days.get("retention_metrics_days", 0.0)
        if days <= 0:
            return None
        return max(timedelta(days=days) - RETENTION_MARGIN, timedelta(hours=3))

    @property
    def recent_raw(self) -> timedelta:
        """How recent a bucket must be to be answered from raw rows (never past the raw retention)."""
        start = self.refresh_start
        return RECENT_RAW if start is None else min(RECENT_RAW, start)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _interval(value: timedelta) -> str:
    return f"INTERVAL '{int(value.total_seconds())} seconds'"


def apply_policies(conn: Connection, policies: Policies) -> list[str]:
    """Set (replace) compression and retention policies and the rollup's refresh; returns what was set."""
    done = []
    for table in TABLES:
        args = {"t": table.name}
        conn.execute(text("SELECT remove_compression_policy(CAST(:t AS regclass), if_exists => true)"), args)
        conn.execute(text("SELECT remove_retention_policy(CAST(:t AS regclass), if_exists => true)"), args)
        if policies.compress_after_days > 0:
            after = timedelta(days=policies.compress_after_days)
            conn.execute(
                text(
                    "SELECT add_compression_policy(CAST(:t AS regclass), "
                    f"compress_after => {_interval(after)})"
                ),
                args,
            )
            done.append(f"{table.name}: compress after {policies.compress_after_days:g} d")
        keep = policies.retention(table)
        if keep is not None:
            conn.execute(
                text(f"SELECT add_retention_policy(CAST(:t AS regclass), drop_after => {_interval(keep)})"),
                args,
            )
            done.append(f"{table.name}: drop after {keep.days} d")
    rollup = {"t": ROLLUP}
    conn.execute(
        text("SELECT remove_continuous_aggregate_policy(CAST(:t AS regclass), if_not_exists => true)"), rollup
    )
    conn.execute(text("SELECT remove_retention_policy(CAST(:t AS regclass), if_exists => true)"), rollup)
    start = policies.refresh_start
    conn.execute(
        text(
            "SELECT add_continuous_aggregate_policy(CAST(:t AS regclass), "
            f"start_offset => {_interval(start) if start else 'NULL'}, end_offset => INTERVAL '1 hour', "
            "schedule_interval => INTERVAL '30 minutes')"
        ),
        rollup,
    )
    reach = f"the last {start.total_seconds() / 3600:g} h" if start else "all raw rows"
    done.append(f"{ROLLUP}: refreshed every 30 min over {reach}")
    if policies.rollup_retention_days > 0:
        keep = timedelta(days=policies.rollup_retention_days)
        conn.execute(
            text(f"SELECT add_retention_policy(CAST(:t AS regclass), drop_after => {_interval(keep)})"),
            rollup,
        )
        done.append(f"{ROLLUP}: drop after {keep.days} d")
    return done


class JobRun(BaseModel):
    """One run of a policy by the server itself (`CALL run_job`), from its maintenance loop or `migrate`."""

    at: datetime
    ok: bool
    seconds: float
    error: str | None = None


class StorageJob(BaseModel):
    """A TimescaleDB policy job on our tables: what its scheduler recorded, and the server's own last run."""

    job_id: int
    policy: str = Field(
        description="policy_compression, policy_retention or policy_refresh_continuous_aggregate."
    )
    target: str = Field(description="The hypertable, or the hourly rollup view, the policy works on.")
    scheduled: bool = Field(description="False when paused (alter_job ... scheduled => false).")
    schedule_seconds: float
    last_run_at: datetime | None = Field(description="When TimescaleDB's scheduler last started it.")
    last_status: str | None = Field(description="Success or Failed: the outcome of the scheduler's last run.")
    last_success_at: datetime | None
    next_start: datetime | None
    runs: int = Field(description="Runs by the scheduler (runs by `CALL run_job` are not counted there).")
    successes: int
    failures: int
    failures_since_success: int = Field(description="Scheduler runs that failed since its last success.")
    keeps_failing: bool = Field(
        description=f"At least {FAILING_AFTER} scheduler runs failed since a success."
    )
    last_error: str | None = Field(description="The last error TimescaleDB recorded (job_errors).")
    last_error_at: datetime | None
    server_run: JobRun | None = Field(
        default=None, description="This replica's last run of it (CALL run_job from the maintenance loop)."
    )

    def overdue(self, now: datetime) -> bool:
        """Due for longer than its own interval (at least an hour) without the scheduler starting it."""
        grace = max(timedelta(seconds=self.schedule_seconds), timedelta(hours=1))
        return self.next_start is not None and self.next_start < now - grace

    def needs_run(self, now: datetime, mode: RunJobs) -> bool:
        """Whether the server should run it itself: always, never, or when the scheduler's last run failed
        or the scheduler has not started it although it is overdue. A paused job is left alone."""
        if not self.scheduled or mode == "never":
            return False
        return mode == "always" or self.last_status == "Failed" or self.overdue(now)

    def describe(self) -> str:
        when = f"{self.last_run_at:%Y-%m-%d %H:%M} UTC" if self.last_run_at else "never"
        line = (
            f"job {self.job_id} {self.policy} on {self.target}: last scheduler run {when}"
            f"{f' {self.last_status}' if self.last_status else ''} ({self.runs} runs, {self.successes} ok, "
            f"{self.failures} failed)"
        )
        if self.last_error:
            line += f"; last error: {self.last_error}"
        if self.server_run is not None:
            run = self.server_run
            outcome = "ok" if run.ok else f"FAILED: {run.error}"
            line += f"; run by the server {run.at:%Y-%m-%d %H:%M} UTC: {outcome} ({run.seconds:.1f} s)"
        return line


def job_states(conn: Connection) -> list[StorageJob]:
    """Every policy job on our hypertables and the rollup, with the scheduler's statistics and last error."""
    rows = conn.execute(
        text(
            "SELECT j.job_id, j.proc_name AS policy, coalesce(ca.view_name, j.hypertable_name) AS target, "
            "j.scheduled, extract(epoch FROM j.schedule_interval) AS every, s.last_run_started_at AS last_run, "
            "s.last_run_status AS status, s.last_successful_finish AS success, "
            "coalesce(s.next_start, j.next_start) AS next_start, coalesce(s.total_runs, 0) AS runs, "
            "coalesce(s.total_successes, 0) AS successes, coalesce(s.total_failures, 0) AS failures "
            "FROM timescaledb_information.jobs j "
            "LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id "
            "LEFT JOIN timescaledb_information.continuous_aggregates ca "
            "ON ca.materialization_hypertable_schema = j.hypertable_schema "
            "AND ca.materialization_hypertable_name = j.hypertable_name "
            "WHERE j.proc_name IN :procs AND coalesce(ca.view_name, j.hypertable_name) IN :names "
            "ORDER BY j.job_id"
        ).bindparams(bindparam("procs", expanding=True), bindparam("names", expanding=True)),
        {"procs": list(POLICY_PROCS), "names": [t.name for t in TABLES] + [ROLLUP]},
    ).all()
    errors: dict[int, tuple[int, datetime | None, str | None]] = {}
    if conn.scalar(text("SELECT to_regclass('timescaledb_information.job_errors')")) is not None:
        # visible to the jobs' owner and the database owner; a least-privilege role sees none
        for job_id, since_success, at, message in conn.execute(
            text(
                "SELECT e.job_id, count(*) FILTER (WHERE e.start_time > "
                "coalesce(s.last_successful_finish, '-infinity')), max(e.finish_time), "
                "(array_agg(e.err_message ORDER BY e.start_time DESC))[1] "
                "FROM timescaledb_information.job_errors e "
                "LEFT JOIN timescaledb_information.job_stats s ON s.job_id = e.job_id GROUP BY e.job_id"
            )
        ).all():
            errors[int(job_id)] = (int(since_success), at, message)
    jobs = []
    for r in rows:
        since_success, error_at, error = errors.get(int(r.job_id), (0, None, None))
        if r.status == "Failed" and not since_success:
            # no error rows to count (not visible to this role): every failure if it never succeeded
            since_success = int(r.failures) if _utc(r.success) is None else 1
        jobs.append(
            StorageJob(
                job_id=int(r.job_id),
                policy=str(r.policy),
                target=str(r.target),
                scheduled=bool(r.scheduled),
                schedule_seconds=float(r.every or 0),
                last_run_at=_utc(r.last_run),
                last_status=r.status,
                last_success_at=_utc(r.success),
                next_start=_utc(r.next_start),
                runs=int(r.runs),
                successes=int(r.successes),
                failures=int(r.failures),
                failures_since_success=since_success,
                keeps_failing=since_success >= FAILING_AFTER,
                last_error=error,
                last_error_at=_utc(error_at),
            )
        )
    return jobs


def _utc(value: datetime | None) -> datetime | None:
    # job_stats says -infinity for "never"; Python has no such datetime (asyncpg hands back its minimum)
    if value is None or value.year <= 1 or value.year >= 9999:
        return None
    return as_utc(value)


def run_job(conn: Connection, job_id: int) -> None:
    """Run a policy job now, in this session; `conn` must be in autocommit (the policies commit as they go)."""
    conn.execute(text(f"CALL run_job({int(job_id)})"))
