"""journal marks: how far each journal segment has been written to the database

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 23:00:00

The audit journal (mcp_server/journal.py) replaces the spool: every row is journaled before it is shipped, and
each shipping transaction advances its segment's mark here. Rows left by the spool (shipped_bytes NULL) mean
the whole file was replayed.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("spool_segments", sa.Column("shipped_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("spool_segments", "shipped_bytes")
