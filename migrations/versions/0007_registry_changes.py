"""registry changes: what every running server must apply (devices, watch targets, config versions)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 22:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registry_changes",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("device", sa.String(length=63), nullable=False),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("snapshot_id", sa.BigInteger(), nullable=True),
        sa.Column("event_id", sa.BigInteger(), nullable=True),
        sa.Column("origin", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,  # ids never go back, even once every row was deleted
    )
    op.create_index("ix_registry_changes_changed_at", "registry_changes", ["changed_at"])


def downgrade() -> None:
    op.drop_index("ix_registry_changes_changed_at", table_name="registry_changes")
    op.drop_table("registry_changes")
