"""configuration monitoring: watch targets, file versions, change events

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 14:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "config_watch_targets",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("device", sa.String(length=63), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("is_directory", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("baseline_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device", "path", name="uq_watch_target"),
    )
    op.create_table(
        "configuration_snapshots",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("device", sa.String(length=63), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("collected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("content", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_config_snapshots_device_path",
        "configuration_snapshots",
        ["device", "path", "id"],
    )
    op.create_table(
        "configuration_change_events",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("device", sa.String(length=63), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("change_type", sa.String(length=16), nullable=False),
        sa.Column("risk", sa.String(length=8), nullable=False),
        sa.Column("reasons", _JSON, nullable=False),
        sa.Column("affected_services", _JSON, nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("diff", sa.Text(), nullable=False),
        sa.Column("from_snapshot_id", sa.BigInteger(), nullable=True),
        sa.Column("to_snapshot_id", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_config_changes_detected_at", "configuration_change_events", ["detected_at"])
    op.create_index(
        "ix_config_changes_device_detected_at", "configuration_change_events", ["device", "detected_at"]
    )
    op.create_index(
        "ix_config_changes_device_path", "configuration_change_events", ["device", "path", "detected_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_config_changes_device_path", table_name="configuration_change_events")
    op.drop_index("ix_config_changes_device_detected_at", table_name="configuration_change_events")
    op.drop_index("ix_config_changes_detected_at", table_name="configuration_change_events")
    op.drop_table("configuration_change_events")
    op.drop_index("ix_config_snapshots_device_path", table_name="configuration_snapshots")
    op.drop_table("configuration_snapshots")
    op.drop_table("config_watch_targets")
