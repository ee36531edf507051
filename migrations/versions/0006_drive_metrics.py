"""drive temperature history: the drive_metrics series table

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-18 09:00:00

One table, stored the way migration 0005 recorded in `storage_layout`: a plain table (SQLite), a table
range-partitioned by day with a DEFAULT partition (PostgreSQL; maintenance creates the day partitions
ahead), or a hypertable in one-day chunks compressed segment-by device (TimescaleDB).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_TABLE = "drive_metrics"
_INDEX = "ix_drive_metrics_device_drive"


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
        sa.Column("drive", sa.String(length=128), nullable=False),
        sa.Column("temperature_c", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint(*key),
        postgresql_partition_by="RANGE (collected_at)" if mode == "partitioned" else None,
    )
    op.create_index(_INDEX, _TABLE, ["device", "drive", "collected_at"])
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


def downgrade() -> None:
    op.drop_index(_INDEX, table_name=_TABLE)
    op.drop_table(_TABLE)  # its partitions, or its chunks and policy jobs, go with it
