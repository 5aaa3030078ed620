"""Planned rows: each store run records the earliest start the planner gave it (``earliest_start``),
beside its wave and from-release, so the executor reads the plan from the rows instead of a blob.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("store_runs", sa.Column("earliest_start", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("store_runs") as batch:
        batch.drop_column("earliest_start")
