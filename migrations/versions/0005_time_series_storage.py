"""time-series storage: hypertables or native partitions, metric series, poll leases, device health

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 09:00:00

`mcp_server.db.series.choose_mode` picks the storage mode from the live database (what the server offers,
not what this revision creates: the one live call here) and records it in `storage_layout`: "timescale"
(hypertables, compression, hourly continuous aggregate), "partitioned" (native range partitions on
PostgreSQL without TimescaleDB) or "plain" (SQLite).

Everything this revision creates is written out below as it was on the day (STYLE.md §8): the tables it
partitions, their widths, the partition and hypertable SQL, the rollup's columns. Retention and compression
policies are not schema: `infrastructor migrate` and every start apply them from the settings afterwards.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

from mcp_server.db.series import choose_mode

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)
_DAY = 86_400
# (table, time column, partition or chunk width in seconds): the tables this revision partitions
_TABLES = (
    ("data_collection_audit", "occurred_at", 7 * _DAY),
    ("system_metrics", "collected_at", _DAY),
    ("container_stats", "collected_at", _DAY),
    ("disk_metrics", "collected_at", _DAY),
    ("network_metrics", "collected_at", _DAY),
    ("service_performance_metrics", "recorded_at", _DAY),
    ("configuration_change_events", "detected_at", 30 * _DAY),
)
_NEW_SERIES = ("container_stats", "disk_metrics", "network_metrics")
_ROLLUP = "system_metrics_hourly"
# the rollup's per-hour columns: <name>_sum, _count, _min, _max, _avg of each expression over system_metrics
_ROLLUP_COLUMNS = {
    "cpu_percent": "cpu_percent",
    "memory_percent": "CAST(memory_used_bytes AS double precision) * 100.0 "
    "/ NULLIF(CAST(memory_total_bytes AS double precision), 0)",
    "memory_used_bytes": "CAST(memory_used_bytes AS double precision)",
    "load_1": "load_1",
    "load_5": "load_5",
    "load_15": "load_15",
}


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _partition_name(table: str, start: datetime) -> str:
    return f"{table}_p{start:%Y%m%d}"


def _index_definitions(conn: sa.Connection, table: str) -> list[str]:
    """The CREATE INDEX statement of every index of `table` except its primary key."""
    rows = conn.execute(
        sa.text(
            "SELECT pg_get_indexdef(i.oid) FROM pg_index x "
            "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid "
            "WHERE t.relname = :t AND t.relnamespace = current_schema()::regnamespace AND NOT x.indisprimary "
            "ORDER BY i.relname"
        ),
        {"t": table},
    ).all()
    # a partitioned parent's index reads "ON ONLY t"; recreated on a plain table it must not say ONLY
    return [str(ddl).replace(" ON ONLY ", " ON ") for (ddl,) in rows]


def _rebuild(conn: sa.Connection, table: str, ts: str, width: int, *, partitioned: bool) -> None:
    """Recreate `table` (plain, partitioned or a hypertable) as plain or range-partitioned by `ts`, keeping
    rows and ids; partitioned, with a DEFAULT partition and a range per `width` seconds holding rows, from
    the current one to at least 7 days ahead. The old table is only renamed, copied from and dropped (a
    compressed hypertable allows little more); its indexes are recreated once their names are free again."""
    old, pkey = f"{table}__old", f"{table}_pkey"
    sequence = conn.scalar(sa.text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": table})
    indexes = _index_definitions(conn, table)
    conn.execute(sa.text(f"ALTER TABLE {_q(table)} RENAME TO {_q(old)}"))
    tail = f" PARTITION BY RANGE ({_q(ts)})" if partitioned else ""
    conn.execute(sa.text(f"CREATE TABLE {_q(table)} (LIKE {_q(old)} INCLUDING DEFAULTS){tail}"))
    key = f"id, {_q(ts)}" if partitioned else "id"
    conn.execute(sa.text(f"ALTER TABLE {_q(table)} ADD CONSTRAINT {_q(pkey + '_new')} PRIMARY KEY ({key})"))
    if partitioned:
        conn.execute(sa.text(f"CREATE TABLE {_q(table + '_default')} PARTITION OF {_q(table)} DEFAULT"))
        held = conn.scalars(
            sa.text(
                f"SELECT DISTINCT floor(extract(epoch FROM {_q(ts)}) / {width})::bigint * {width} FROM {_q(old)}"
            )
        ).all()
        now = int(datetime.now(UTC).timestamp())
        ahead = max(3 * width, 7 * _DAY)
        starts = {int(s) for s in held} | set(range(now - now % width, now + ahead, width))
        for start in sorted(starts):
            lo = datetime.fromtimestamp(start, UTC)
            hi = lo + timedelta(seconds=width)
            conn.execute(
                sa.text(
                    f"CREATE TABLE {_q(_partition_name(table, lo))} PARTITION OF {_q(table)} "
                    f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
                )
            )
    conn.execute(sa.text(f"INSERT INTO {_q(table)} SELECT * FROM {_q(old)}"))
    if sequence:
        # the sequence belongs to the old table's column: dropping that table would take it along
        conn.execute(sa.text(f"ALTER SEQUENCE {sequence} OWNED BY {_q(table)}.id"))
    conn.execute(sa.text(f"DROP TABLE {_q(old)} CASCADE"))
    conn.execute(sa.text(f"ALTER TABLE {_q(table)} RENAME CONSTRAINT {_q(pkey + '_new')} TO {_q(pkey)}"))
    for ddl in indexes:
        conn.execute(sa.text(ddl))


def _make_hypertable(conn: sa.Connection, table: str, ts: str, width: int) -> None:
    """Convert `table` (rows kept) into a hypertable keyed (id, ts), compressed segment-by device."""
    pkey = conn.scalar(
        sa.text("SELECT conname FROM pg_constraint WHERE contype = 'p' AND conrelid = CAST(:t AS regclass)"),
        {"t": table},
    )
    if pkey:
        conn.execute(sa.text(f"ALTER TABLE {_q(table)} DROP CONSTRAINT {_q(str(pkey))}"))
    # TimescaleDB requires every unique index, the primary key included, to hold the time column
    conn.execute(sa.text(f"ALTER TABLE {_q(table)} ADD PRIMARY KEY (id, {_q(ts)})"))
    conn.execute(
        sa.text(
            f"SELECT create_hypertable(CAST(:t AS regclass), by_range(:col, INTERVAL '{width} seconds'), "
            "create_default_indexes => false, migrate_data => true)"
        ),
        {"t": table, "col": ts},
    )
    conn.execute(
        sa.text(
            f"ALTER TABLE {_q(table)} SET (timescaledb.compress, timescaledb.compress_segmentby = 'device', "
            f"timescaledb.compress_orderby = '{ts} DESC, id DESC')"
        )
    )


def _create_rollup(conn: sa.Connection) -> None:
    """The hourly continuous aggregate of system_metrics per device (real-time: recent rows included)."""
    columns = ", ".join(
        f"sum({expr}) AS {name}_sum, count({expr}) AS {name}_count, min({expr}) AS {name}_min, "
        f"max({expr}) AS {name}_max, avg({expr}) AS {name}_avg"
        for name, expr in _ROLLUP_COLUMNS.items()
    )
    conn.execute(
        sa.text(
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {_q(_ROLLUP)} "
            "WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS "
            "SELECT device, time_bucket(INTERVAL '1 hour', collected_at) AS bucket, count(*) AS samples, "
            f"{columns} FROM system_metrics GROUP BY device, time_bucket(INTERVAL '1 hour', collected_at) "
            "WITH NO DATA"
        )
    )


def _series_table(name: str, *columns: sa.Column[object]) -> None:
    op.create_table(
        name,
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("device", sa.String(length=63), nullable=False),
        sa.Column("collected_at", _TS, nullable=False),
        *columns,
        sa.PrimaryKeyConstraint("id"),
    )


def upgrade() -> None:
    _series_table(
        "container_stats",
        sa.Column("container", sa.String(length=255), nullable=False),
        sa.Column("container_id", sa.String(length=64), nullable=False),
        sa.Column("cpu_percent", sa.Float(), nullable=True),
        sa.Column("memory_used_bytes", sa.BigInteger(), nullable=True),
        sa.Column("memory_limit_bytes", sa.BigInteger(), nullable=True),
        sa.Column("net_rx_bytes", sa.BigInteger(), nullable=True),
        sa.Column("net_tx_bytes", sa.BigInteger(), nullable=True),
        sa.Column("block_read_bytes", sa.BigInteger(), nullable=True),
        sa.Column("block_write_bytes", sa.BigInteger(), nullable=True),
        sa.Column("pids", sa.Integer(), nullable=True),
    )
    op.create_index(
        "ix_container_stats_device_container", "container_stats", ["device", "container", "collected_at"]
    )
    _series_table(
        "disk_metrics",
        sa.Column("mount", sa.Text(), nullable=False),
        sa.Column("fstype", sa.String(length=64), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("used_bytes", sa.BigInteger(), nullable=False),
        sa.Column("used_percent", sa.Float(), nullable=False),
        sa.Column("inodes_used_percent", sa.Float(), nullable=True),
    )
    op.create_index("ix_disk_metrics_device_mount", "disk_metrics", ["device", "mount", "collected_at"])
    _series_table(
        "network_metrics",
        sa.Column("interface", sa.String(length=64), nullable=False),
        *(
            sa.Column(f"{direction}_{name}", sa.BigInteger(), nullable=True)
            for name in ("bytes", "errors", "dropped")
            for direction in ("rx", "tx")
        ),
    )
    op.create_index(
        "ix_network_metrics_device_interface", "network_metrics", ["device", "interface", "collected_at"]
    )
    op.create_table(
        "storage_layout",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("policies", sa.Text(), server_default="", nullable=False),
        sa.Column("configured_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "poll_leases",
        sa.Column("device", sa.String(length=63), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("slot", sa.BigInteger(), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("claimed_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("completed_at", _TS, nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("device", "category", "slot"),
    )
    op.create_index("ix_poll_leases_claimed_at", "poll_leases", ["claimed_at"])
    op.create_table(
        "device_health",
        sa.Column("device", sa.String(length=63), nullable=False),
        sa.Column("breaker", sa.String(length=16), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("opened_at", _TS, nullable=True),
        sa.Column("retry_at", _TS, nullable=True),
        sa.Column("last_success_at", _TS, nullable=True),
        sa.Column("last_failure_at", _TS, nullable=True),
        sa.Column("last_error_type", sa.String(length=64), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("device"),
    )
    with op.batch_alter_table("service_performance_metrics") as batch:
        batch.add_column(sa.Column("kind", sa.String(length=16), server_default="collection", nullable=False))
        batch.alter_column("device", existing_type=sa.String(length=63), nullable=True)
        batch.alter_column("command", existing_type=sa.String(length=128), nullable=True)
        batch.add_column(sa.Column("replica", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("period_seconds", sa.Float(), nullable=True))
        batch.add_column(sa.Column("collections", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("failures", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("p50_ms", sa.Float(), nullable=True))
        batch.add_column(sa.Column("p95_ms", sa.Float(), nullable=True))
        batch.add_column(sa.Column("cache_hit_ratio", sa.Float(), nullable=True))
        batch.add_column(sa.Column("ssh_connections_open", sa.Integer(), nullable=True))
        batch.create_index("ix_perf_kind_replica", ["kind", "replica", "recorded_at"])
    with op.batch_alter_table("cache_metadata") as batch:
        batch.add_column(sa.Column("replica", sa.String(length=128), nullable=True))

    bind = op.get_bind()
    mode, detail = choose_mode(bind)
    now = datetime.now(UTC)
    bind.execute(
        sa.text("INSERT INTO storage_layout (id, mode, detail, configured_at) VALUES (1, :m, :d, :at)"),
        {"m": mode, "d": detail, "at": now},
    )
    if mode == "partitioned":
        for table, ts, width in _TABLES:
            _rebuild(bind, table, ts, width, partitioned=True)
    elif mode == "timescale":
        for table, ts, width in _TABLES:
            _make_hypertable(bind, table, ts, width)
        # a continuous aggregate cannot be created inside a transaction block
        with op.get_context().autocommit_block():
            _create_rollup(bind)


def downgrade() -> None:
    bind = op.get_bind()
    mode = bind.scalar(sa.text("SELECT mode FROM storage_layout WHERE id = 1"))
    if mode == "timescale":
        with op.get_context().autocommit_block():
            bind.execute(sa.text(f"DROP MATERIALIZED VIEW IF EXISTS {_q(_ROLLUP)} CASCADE"))
    if mode in ("timescale", "partitioned"):
        for table, ts, width in _TABLES:
            if table not in _NEW_SERIES:
                _rebuild(bind, table, ts, width, partitioned=False)
    bind.execute(sa.text("DELETE FROM service_performance_metrics WHERE kind <> 'collection'"))
    with op.batch_alter_table("cache_metadata") as batch:
        batch.drop_column("replica")
    with op.batch_alter_table("service_performance_metrics") as batch:
        batch.drop_index("ix_perf_kind_replica")
        for column in (
            "ssh_connections_open",
            "cache_hit_ratio",
            "p95_ms",
            "p50_ms",
            "failures",
            "collections",
            "period_seconds",
            "replica",
            "kind",
        ):
            batch.drop_column(column)
        batch.alter_column("command", existing_type=sa.String(length=128), nullable=False)
        batch.alter_column("device", existing_type=sa.String(length=63), nullable=False)
    op.drop_table("device_health")
    op.drop_index("ix_poll_leases_claimed_at", table_name="poll_leases")
    op.drop_table("poll_leases")
    op.drop_table("storage_layout")
    op.drop_index("ix_network_metrics_device_interface", table_name="network_metrics")
    op.drop_table("network_metrics")
    op.drop_index("ix_disk_metrics_device_mount", table_name="disk_metrics")
    op.drop_table("disk_metrics")
    op.drop_index("ix_container_stats_device_container", table_name="container_stats")
    op.drop_table("container_stats")
