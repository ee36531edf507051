"""TimescaleDB: hypertables with compression, retention and compression policies, the hourly rollup.

Functions take a synchronous Connection (Alembic's, or `AsyncConnection.run_sync`). Table names are our
constants; intervals are numbers we computed, never caller input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import Connection, text

from mcp_server.db.series import ROLLUP, SERIES, SYSTEM_EXPRESSIONS, RetentionSetting, SeriesTable

# The rollup's per-hour columns: samples, and <metric>_sum, _count, _min, _max, _avg of each expression.
ROLLUP_METRICS: dict[str, str] = {k: v.format(f="double precision") for k, v in SYSTEM_EXPRESSIONS.items()}


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


def make_hypertable(conn: Connection, table: SeriesTable) -> None:
    """Convert `table` (rows kept) into a hypertable keyed (id, time), compressed segment-by device."""
    t, ts = _q(table.name), _q(table.time_column)
    pkey = conn.scalar(
        text("SELECT conname FROM pg_constraint WHERE contype = 'p' AND conrelid = CAST(:t AS regclass)"),
        {"t": table.name},
    )
    if pkey:
        conn.execute(text(f"ALTER TABLE {t} DROP CONSTRAINT {_q(str(pkey))}"))
    # TimescaleDB requires every unique index, the primary key included, to hold the time column
    conn.execute(text(f"ALTER TABLE {t} ADD PRIMARY KEY (id, {ts})"))
    conn.execute(
        text(
            f"SELECT create_hypertable(CAST(:t AS regclass), by_range(:col, {_interval(table.interval)}), "
            "create_default_indexes => false, migrate_data => true)"
        ),
        {"t": table.name, "col": table.time_column},
    )
    conn.execute(
        text(
            f"ALTER TABLE {t} SET (timescaledb.compress, timescaledb.compress_segmentby = 'device', "
            f"timescaledb.compress_orderby = '{table.time_column} DESC, id DESC')"
        )
    )


def create_rollup(conn: Connection) -> None:
    """The hourly continuous aggregate of system_metrics per device (real-time: recent rows included).

    Must run outside a transaction block (Alembic: `op.get_context().autocommit_block()`).
    """
    columns = ", ".join(
        f"sum({expr}) AS {name}_sum, count({expr}) AS {name}_count, min({expr}) AS {name}_min, "
        f"max({expr}) AS {name}_max, avg({expr}) AS {name}_avg"
        for name, expr in ROLLUP_METRICS.items()
    )
    conn.execute(
        text(
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {_q(ROLLUP)} "
            "WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS "
            "SELECT device, time_bucket(INTERVAL '1 hour', collected_at) AS bucket, count(*) AS samples, "
            f"{columns} FROM system_metrics GROUP BY device, time_bucket(INTERVAL '1 hour', collected_at) "
            "WITH NO DATA"
        )
    )


def drop_rollup(conn: Connection) -> None:
    conn.execute(text(f"DROP MATERIALIZED VIEW IF EXISTS {_q(ROLLUP)} CASCADE"))


def apply_policies(conn: Connection, policies: Policies) -> list[str]:
    """Set (replace) compression and retention policies and the rollup's refresh; returns what was set."""
    done = []
    for table in SERIES:
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
