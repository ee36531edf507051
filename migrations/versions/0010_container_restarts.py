"""container restart history, and the window of a container_restarts alert rule

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 23:55:00

The container_restart_counts series table, stored the way migration 0005 recorded in `storage_layout` (a
plain table on SQLite, range-partitioned by day with a DEFAULT partition on PostgreSQL, a hypertable in
one-day chunks on TimescaleDB), and alert_rules.window_minutes: the M of "restarted N times in M minutes".
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_TABLE = "container_restart_counts"
_INDEX = "ix_container_restart_counts_device_container"


def upgrade() -> None:
    bind = op.get_bind()
    mode = bind.scalar(sa.text("SELECT mode FROM storage_layout WHERE id = 1"))
    # partitions and hypertables need the time column in every unique index, the primary key included
    key = ("id",) if mode not in ("partitioned", "timescale") else ("id", "collected_at")
    op.create_table(
        _TABLE,
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("device", sa.String(length=63), nullable=False),
        sa.Column("collected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("container", sa.String(length=255), nullable=False),
        sa.Column("container_id", sa.String(length=64), nullable=False),
        sa.Column("restart_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(*key),
        postgresql_partition_by="RANGE (collected_at)" if mode == "partitioned" else None,
    )
    op.create_index(_INDEX, _TABLE, ["device", "container", "collected_at"])
    if mode == "partitioned":
        bind.execute(sa.text(f"CREATE TABLE {_TABLE}_default PARTITION OF {_TABLE} DEFAULT"))
    elif mode == "timescale":
        bind.execute(
            sa.text(
                f"SELECT create_hypertable('{_TABLE}', by_range('collected_at', INTERVAL '86400 seconds'), "
                "create_default_indexes => false)"
            )
        )
        bind.execute(
            sa.text(
                f"ALTER TABLE {_TABLE} SET (timescaledb.compress, timescaledb.compress_segmentby = 'device', "
                "timescaledb.compress_orderby = 'collected_at DESC, id DESC')"
            )
        )
        # the policies last applied do not cover the new table: the next configure applies them all again
        bind.execute(sa.text("UPDATE storage_layout SET policies = '' WHERE id = 1"))
    with op.batch_alter_table("alert_rules") as batch:
        batch.add_column(sa.Column("window_minutes", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("alert_rules") as batch:
        batch.drop_column("window_minutes")
    op.drop_index(_INDEX, table_name=_TABLE)
    op.drop_table(_TABLE)  # its partitions, or its chunks and policy jobs, go with it
