"""How time-partitioned tables are stored: the mode the database supports, the width of their partitions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

Mode = Literal["timescale", "partitioned", "plain"]
RetentionSetting = Literal[
    "retention_metrics_days",
    "retention_audit_days",
    "retention_performance_days",
    "retention_config_changes_days",
]


@dataclass(frozen=True)
class SeriesTable:
    """A table with one row per event or sample, partitioned (or chunked) by its time column."""

    name: str
    time_column: str
    interval: timedelta  # chunk (TimescaleDB) or partition (native) width
    retention: RetentionSetting  # the Settings field holding its retention in days (0 keeps everything)

    @property
    def interval_seconds(self) -> int:
        return int(self.interval.total_seconds())

    @property
    def ahead(self) -> timedelta:
        """How far into the future native partitions are created."""
        return max(self.interval * 3, timedelta(days=7))


# Tables of events (audit rows, timings, configuration changes) stored and kept like the time series; the
# series themselves declare their tables in mcp_server/series/, whose TABLES lists all of them.
EVENT_TABLES: tuple[SeriesTable, ...] = (
    SeriesTable("data_collection_audit", "occurred_at", timedelta(days=7), "retention_audit_days"),
    SeriesTable(
        "service_performance_metrics", "recorded_at", timedelta(days=1), "retention_performance_days"
    ),
    SeriesTable(
        "configuration_change_events", "detected_at", timedelta(days=30), "retention_config_changes_days"
    ),
)

# The hourly rollup of system_metrics (a TimescaleDB continuous aggregate, created by migration 0005 with a
# column set per metric the system series marks `rollup`).
ROLLUP = "system_metrics_hourly"


def choose_mode(conn: Connection) -> tuple[Mode, str]:
    """The storage mode the live database supports, and a line saying why.

    PostgreSQL with the timescaledb extension (installed in this database, or available and preloaded so
    it can be created now) gives "timescale"; other PostgreSQL gives "partitioned"; SQLite gives "plain".
    """
    if conn.dialect.name != "postgresql":
        return "plain", "SQLite: plain tables, retention by delete"
    server = conn.scalar(text("SHOW server_version"))
    version = conn.scalar(text("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"))
    if version:
        return "timescale", f"PostgreSQL {server} with TimescaleDB {version}"
    available = conn.scalar(
        text("SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'")
    )
    # shared_preload_libraries is hidden from a role without superuser or pg_read_all_settings; the GUC the
    # TimescaleDB loader defines when preloaded is visible to every role (NULL when it is not loaded)
    preloaded = conn.scalar(text("SELECT current_setting('timescaledb.disable_load', true)")) is not None
    reason = "the timescaledb extension is not available on this server"
    if available and not preloaded:
        # creating it without the library preloaded kills the session (FATAL), so never try
        reason = "timescaledb is installed but not in shared_preload_libraries"
    elif available:
        savepoint = conn.begin_nested()
        try:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS timescaledb"))
        except DBAPIError as exc:  # permission denied: a plain role may not create extensions
            savepoint.rollback()
            reason = f"CREATE EXTENSION timescaledb failed ({type(exc).__name__}); ask the owner to run it"
        else:
            savepoint.commit()
            version = conn.scalar(text("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"))
            return "timescale", f"PostgreSQL {server} with TimescaleDB {version} (extension created)"
    return "partitioned", f"PostgreSQL {server}: native range partitions ({reason})"


def floor_time(value: datetime, width: timedelta) -> datetime:
    """The start of the epoch-aligned interval of `width` holding `value` (UTC)."""
    seconds = int(width.total_seconds())
    epoch = int(value.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, UTC)


def as_utc(value: datetime) -> datetime:
    """A stored time as an aware UTC datetime (SQLite hands back naive UTC values)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
