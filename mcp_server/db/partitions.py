"""Native PostgreSQL range partitioning of the time-series tables (the mode without TimescaleDB).

Each table is partitioned by its time column into epoch-aligned ranges (`SeriesTable.interval`), named
`<table>_pYYYYMMDD` after their lower bound, plus a DEFAULT partition that catches rows outside every
range so an insert never fails. Maintenance creates partitions ahead and drops (detach, then drop) those
wholly older than the retention; rows that landed in the DEFAULT partition move into a range partition
when it is created. All functions take a synchronous Connection inside a transaction (Alembic's, or
`AsyncConnection.run_sync`); table names are our constants, never caller input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, text

from mcp_server.db.series import SeriesTable, floor_time

# Rows older than this in the DEFAULT partition stay there (until retention deletes them) rather than
# get partitions: a bogus timestamp must not create thousands of tables.
BACKFILL_LIMIT = timedelta(days=400)
_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")


@dataclass(frozen=True)
class Partition:
    name: str
    start: datetime
    end: datetime


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def partition_name(table: SeriesTable, start: datetime) -> str:
    return f"{table.name}_p{start.astimezone(UTC):%Y%m%d}"


def default_partition(table: SeriesTable) -> str:
    return f"{table.name}_default"


def is_partitioned(conn: Connection, table: str) -> bool:
    return bool(
        conn.scalar(
            text(
                "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
                "WHERE c.relname = :t AND c.relnamespace = current_schema()::regnamespace)"
            ),
            {"t": table},
        )
    )


def partitions(conn: Connection, table: SeriesTable) -> list[Partition]:
    """The range partitions of `table` with their bounds, oldest first (the DEFAULT partition excluded)."""
    conn.execute(text("SET LOCAL TimeZone = 'UTC'"))  # bounds print as '... +00'
    rows = conn.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
            "WHERE p.relname = :t AND p.relnamespace = current_schema()::regnamespace"
        ),
        {"t": table.name},
    ).all()
    found = []
    for name, bound in rows:
        match = _BOUND.search(str(bound))
        if match:
            found.append(Partition(str(name), _timestamp(match.group(1)), _timestamp(match.group(2))))
    return sorted(found, key=lambda p: p.start)


def _timestamp(value: str) -> datetime:
    # '2026-12-01 00:00:00+00' (UTC session): Python wants the offset as +00:00
    return datetime.fromisoformat(value + ":00" if re.search(r"[+-]\d\d$", value) else value)


def _create(conn: Connection, table: SeriesTable, start: datetime, *, move: bool = True) -> str:
    """Create the partition starting at `start`, first moving its rows out of the DEFAULT partition."""
    end = start + table.interval
    name = partition_name(table, start)
    bounds = {"lo": start, "hi": end}
    ts, default = _q(table.time_column), _q(default_partition(table))
    stray = move and conn.scalar(
        text(f"SELECT EXISTS (SELECT 1 FROM {default} WHERE {ts} >= :lo AND {ts} < :hi)"), bounds
    )
    if stray:
        # PostgreSQL refuses a new range while the DEFAULT partition holds rows inside it
        conn.execute(text(f"CREATE TEMP TABLE infra_moved (LIKE {_q(table.name)})"))
        conn.execute(
            text(
                f"WITH moved AS (DELETE FROM {default} WHERE {ts} >= :lo AND {ts} < :hi RETURNING *) "
                "INSERT INTO infra_moved SELECT * FROM moved"
            ),
            bounds,
        )
    conn.execute(
        text(
            f"CREATE TABLE IF NOT EXISTS {_q(name)} PARTITION OF {_q(table.name)} "
            f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
        )
    )
    if stray:
        conn.execute(text(f"INSERT INTO {_q(table.name)} SELECT * FROM infra_moved"))
        conn.execute(text("DROP TABLE infra_moved"))
    return name


def ensure_partitions(conn: Connection, table: SeriesTable, now: datetime) -> list[str]:
    """Create the missing partitions up to `table.ahead` past `now`, from the current interval or from
    the oldest row in the DEFAULT partition (a backfill, a replayed spool), whichever is older; those
    rows move into their partitions, so retention can later drop them with it. Returns the names."""
    existing = {p.start for p in partitions(conn, table)}
    ts = _q(table.time_column)
    stray = conn.scalar(
        text(f"SELECT min({ts}) FROM {_q(default_partition(table))} WHERE {ts} >= :floor AND {ts} < :now"),
        {"floor": now - BACKFILL_LIMIT, "now": now},
    )
    first = min(now, stray) if stray is not None else now
    created = []
    start = floor_time(first, table.interval)
    while start < now + table.ahead:
        if start not in existing:
            created.append(_create(conn, table, start))
        start += table.interval
    return created


def drop_expired(conn: Connection, table: SeriesTable, cutoff: datetime) -> list[str]:
    """Detach and drop every partition wholly older than `cutoff`; delete such rows from DEFAULT too."""
    dropped = []
    for part in partitions(conn, table):
        if part.end <= cutoff:
            conn.execute(text(f"ALTER TABLE {_q(table.name)} DETACH PARTITION {_q(part.name)}"))
            conn.execute(text(f"DROP TABLE {_q(part.name)}"))
            dropped.append(part.name)
    conn.execute(
        text(f"DELETE FROM {_q(default_partition(table))} WHERE {_q(table.time_column)} < :cutoff"),
        {"cutoff": cutoff},
    )
    return dropped
