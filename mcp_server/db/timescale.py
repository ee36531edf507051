"""TimescaleDB: the retention and compression policies of the hypertables, and the hourly rollup's refresh.

The hypertables and the rollup themselves are created by the migrations (0005, 0006), each with its own SQL.

Functions take a synchronous Connection (Alembic's, or `AsyncConnection.run_sync`). Table names are our
constants; intervals are numbers we computed, never caller input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import Connection, text

from mcp_server.db.series import ROLLUP, RetentionSetting, SeriesTable
from mcp_server.series import TABLES


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
    # Refresh only where raw rows still exist: refreshing a range whose raw chunks retention dropped
    # would empty the rollup there.
    metrics = timedelta(days=policies.retention_days.get("retention_metrics_days", 0.0))
    start = timedelta(days=2) if not metrics else min(timedelta(days=2), metrics - timedelta(hours=12))
    start = max(start, timedelta(hours=3))
    conn.execute(
        text(
            "SELECT add_continuous_aggregate_policy(CAST(:t AS regclass), "
            f"start_offset => {_interval(start)}, end_offset => INTERVAL '1 hour', "
            "schedule_interval => INTERVAL '30 minutes')"
        ),
        rollup,
    )
    done.append(f"{ROLLUP}: refreshed every 30 min over the last {start.total_seconds() / 3600:g} h")
    if policies.rollup_retention_days > 0:
        keep = timedelta(days=policies.rollup_retention_days)
        conn.execute(
            text(f"SELECT add_retention_policy(CAST(:t AS regclass), drop_after => {_interval(keep)})"),
            rollup,
        )
        done.append(f"{ROLLUP}: drop after {keep.days} d")
    return done


def jobs(conn: Connection) -> list[tuple[str, str, dict[str, object]]]:
    """(procedure, table or view, config) of every policy job on our tables and the rollup."""
    rows = conn.execute(
        text(
            "SELECT proc_name, hypertable_name, config FROM timescaledb_information.jobs "
            "WHERE hypertable_name IS NOT NULL ORDER BY job_id"
        )
    ).all()
    return [(str(proc), str(table), dict(config or {})) for proc, table, config in rows]
