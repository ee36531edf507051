"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-21 23:47:14.592558
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "cache_metadata",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("max_entries", sa.Integer(), nullable=False),
        sa.Column("hits", sa.BigInteger(), nullable=False),
        sa.Column("misses", sa.BigInteger(), nullable=False),
        sa.Column("evictions", sa.BigInteger(), nullable=False),
        sa.Column("expirations", sa.BigInteger(), nullable=False),
        sa.Column("hit_ratio", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "collection_snapshots",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("device", sa.String(length=63), nullable=False),
        sa.Column("command", sa.String(length=128), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("collected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device", "command", "params", name="uq_snapshot_identity"),
    )
    op.create_table(
        "data_collection_audit",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=True),
        sa.Column("client_id", sa.String(length=255), nullable=True),
        sa.Column("client_ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("request_path", sa.String(length=512), nullable=True),
        sa.Column("transport", sa.String(length=16), nullable=True),
        sa.Column("tool", sa.String(length=128), nullable=True),
        sa.Column(
            "arguments",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("device", sa.String(length=63), nullable=True),
        sa.Column("command", sa.String(length=128), nullable=True),
        sa.Column("params", sa.Text(), nullable=True),
        sa.Column("cache_hit", sa.Boolean(), nullable=False),
        sa.Column(
            "ssh_commands",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("error_type", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("data_collection_audit", schema=None) as batch_op:
        batch_op.create_index("ix_audit_device_occurred_at", ["device", "occurred_at"], unique=False)
        batch_op.create_index("ix_audit_occurred_at", ["occurred_at"], unique=False)
        batch_op.create_index("ix_audit_request_id", ["request_id"], unique=False)

    op.create_table(
        "devices",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("hostname", sa.String(length=253), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=255), nullable=True),
        sa.Column("key_path", sa.Text(), nullable=True),
        sa.Column("password_secret", sa.String(length=255), nullable=True),
        sa.Column("jump_host", sa.String(length=63), nullable=True),
        sa.Column(
            "tags",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("host_key", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "secrets",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "service_performance_metrics",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("device", sa.String(length=63), nullable=False),
        sa.Column("command", sa.String(length=128), nullable=False),
        sa.Column("execute_ms", sa.Float(), nullable=False),
        sa.Column("parse_ms", sa.Float(), nullable=False),
        sa.Column("total_ms", sa.Float(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("service_performance_metrics", schema=None) as batch_op:
        batch_op.create_index("ix_perf_device_command", ["device", "command", "recorded_at"], unique=False)

    op.create_table(
        "system_metrics",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("device", sa.String(length=63), nullable=False),
        sa.Column("collected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cpu_percent", sa.Float(), nullable=False),
        sa.Column("load_1", sa.Float(), nullable=False),
        sa.Column("load_5", sa.Float(), nullable=False),
        sa.Column("load_15", sa.Float(), nullable=False),
        sa.Column("memory_total_bytes", sa.BigInteger(), nullable=False),
        sa.Column("memory_used_bytes", sa.BigInteger(), nullable=False),
        sa.Column("memory_available_bytes", sa.BigInteger(), nullable=False),
        sa.Column("swap_total_bytes", sa.BigInteger(), nullable=False),
        sa.Column("swap_used_bytes", sa.BigInteger(), nullable=False),
        sa.Column("uptime_seconds", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("system_metrics", schema=None) as batch_op:
        batch_op.create_index(
            "ix_system_metrics_device_collected_at", ["device", "collected_at"], unique=False
        )


def downgrade() -> None:

    with op.batch_alter_table("system_metrics", schema=None) as batch_op:
        batch_op.drop_index("ix_system_metrics_device_collected_at")

    op.drop_table("system_metrics")
    with op.batch_alter_table("service_performance_metrics", schema=None) as batch_op:
        batch_op.drop_index("ix_perf_device_command")

    op.drop_table("service_performance_metrics")
    op.drop_table("secrets")
    op.drop_table("devices")
    with op.batch_alter_table("data_collection_audit", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_request_id")
        batch_op.drop_index("ix_audit_occurred_at")
        batch_op.drop_index("ix_audit_device_occurred_at")

    op.drop_table("data_collection_audit")
    op.drop_table("collection_snapshots")
    op.drop_table("cache_metadata")
