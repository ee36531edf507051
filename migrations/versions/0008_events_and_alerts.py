"""the event log that GET /api/v1/events streams and resumes from, and the alert rules

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 09:00:00

Plain tables on every backend: the event log is read by id (Last-Event-ID) and its old rows are deleted by
the polling service's maintenance; alert rules are a handful of rows (their URLs are in `secrets`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_TABLE = "event_log"
_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        _TABLE,
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("device", sa.String(length=63), nullable=True),
        sa.Column("data", _JSON, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_event_log_occurred_at", _TABLE, ["occurred_at"])
    op.create_table(
        "alert_rules",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("device", sa.String(length=63), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("min_risk", sa.String(length=8), nullable=True),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "alert_firing",
        sa.Column("rule", sa.String(length=63), nullable=False),
        sa.Column("subject", sa.String(length=512), nullable=False),
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("rule", "subject"),
    )


def downgrade() -> None:
    op.drop_table("alert_firing")
    op.drop_table("alert_rules")
    op.drop_index("ix_event_log_occurred_at", table_name=_TABLE)
    op.drop_table(_TABLE)
