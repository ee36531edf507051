"""time-series storage: hypertables or native partitions, metric series, poll leases, device health

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 09:00:00

One code path (`mcp_server.db.series.choose_mode`) picks the storage mode from the live database and
records it in `storage_layout`: "timescale" (hypertables, compression, hourly continuous aggregate),
"partitioned" (native range partitions on PostgreSQL without TimescaleDB) or "plain" (SQLite).
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from mcp_server.db import partitions, timescale
from mcp_server.db.series import SERIES, choose_mode

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)
_NEW_SERIES = ("container_stats", "disk_metrics", "network_metrics")


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
        for table in SERIES:
            partitions.partition(bind, table, now)
    elif mode == "timescale":
        for table in SERIES:
            timescale.make_hypertable(bind, table)
        # a continuous aggregate cannot be created inside a transaction block
        with op.get_context().autocommit_block():
            timescale.create_rollup(bind)
            timescale.apply_policies(bind, timescale.Policies())


def downgrade() -> None:
    bind = op.get_bind()
    mode = bind.scalar(sa.text("SELECT mode FROM storage_layout WHERE id = 1"))
    if mode == "timescale":
        with op.get_context().autocommit_block():
            timescale.drop_rollup(bind)
    if mode in ("timescale", "partitioned"):
        for table in SERIES:
            if table.name not in _NEW_SERIES:
                partitions.unpartition(bind, table)
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
