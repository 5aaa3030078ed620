"""Release trains: the tables ``trains``, ``train_stages`` and ``train_stores``
(``edgefleet.trains.store``), and ``rollouts.train``, the train a child rollout belongs to.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("rollouts", sa.Column("train", sa.String(length=64), nullable=True))
    op.create_index("ix_rollouts_train", "rollouts", ["train"], unique=False)
    op.create_table(
        "trains",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("release", sa.String(length=63), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("operator", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pause_requested", sa.Boolean(), nullable=False),
        sa.Column("abort_requested", sa.Boolean(), nullable=False),
        sa.Column("rollback_requested", sa.Boolean(), nullable=False),
        sa.Column("approvals", sa.Text(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_trains_status", "trains", ["status"], unique=False)
    op.create_table(
        "train_stages",
        sa.Column("train", sa.String(length=64), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("soak_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("approved", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("train", "index"),
    )
    op.create_table(
        "train_stores",
        sa.Column("train", sa.String(length=64), nullable=False),
        sa.Column("store", sa.String(length=128), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("rollout", sa.String(length=64), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("train", "store"),
    )
    op.create_index("ix_train_stores_store", "train_stores", ["store"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_train_stores_store", table_name="train_stores")
    op.drop_table("train_stores")
    op.drop_table("train_stages")
    op.drop_index("ix_trains_status", table_name="trains")
    op.drop_table("trains")
    with op.batch_alter_table("rollouts") as batch:
        batch.drop_index("ix_rollouts_train")
        batch.drop_column("train")
