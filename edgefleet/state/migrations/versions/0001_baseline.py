"""Baseline: the schema every state store had before migrations existed (release catalog and
rollout ledger as ``create_all`` made them). A store with these tables and no ``alembic_version``
is stamped at this revision, then upgraded.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "releases",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("artifact_path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("talos_version", sa.String(length=40), nullable=False),
        sa.Column("kubernetes_version", sa.String(length=40), nullable=False),
        sa.Column("installer_image", sa.Text(), nullable=False),
        sa.Column("extensions", sa.Text(), nullable=False),
        sa.Column("kernel_args", sa.Text(), nullable=False),
        sa.Column("upstream_sha256", sa.String(length=64), nullable=False),
        sa.Column("template_hash", sa.String(length=64), nullable=False),
        sa.Column("build_seconds", sa.Double(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("release", sa.String(length=63), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("policy", sa.Text(), nullable=False),
        sa.Column("plan", sa.Text(), nullable=False),
        sa.Column("operator", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("abort_requested", sa.Boolean(), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "waves",
        sa.Column("rollout", sa.String(length=64), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("budget", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("rollout", "index"),
    )
    op.create_table(
        "store_runs",
        sa.Column("rollout", sa.String(length=64), nullable=False),
        sa.Column("store", sa.String(length=128), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("from_release", sa.String(length=63), nullable=True),
        sa.Column("to_release", sa.String(length=63), nullable=False),
        sa.Column("step", sa.String(length=128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("rollout", "store"),
    )
    op.create_table(
        "node_state",
        sa.Column("node", sa.String(length=128), nullable=False),
        sa.Column("store", sa.String(length=128), nullable=False),
        sa.Column("release", sa.String(length=63), nullable=True),
        sa.Column("ready", sa.Boolean(), nullable=False),
        sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("node"),
    )
    op.create_index("ix_node_state_release", "node_state", ["release"], unique=False)
    op.create_index("ix_node_state_store", "node_state", ["store"], unique=False)
    op.create_table(
        "store_release",
        sa.Column("store", sa.String(length=128), nullable=False),
        sa.Column("current", sa.String(length=63), nullable=True),
        sa.Column("last_known_good", sa.String(length=63), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("store"),
    )
    op.create_index("ix_store_release_current", "store_release", ["current"], unique=False)
    op.create_table(
        "store_locks",
        sa.Column("store", sa.String(length=128), nullable=False),
        sa.Column("holder", sa.String(length=64), nullable=True),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("store"),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rollout", sa.String(length=64), nullable=True),
        sa.Column("store", sa.String(length=128), nullable=True),
        sa.Column("node", sa.String(length=128), nullable=True),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_events_rollout", "events", ["rollout"], unique=False)


def downgrade() -> None:
    for index, table in (("ix_events_rollout", "events"), ("ix_store_release_current", "store_release"),
                         ("ix_node_state_store", "node_state"), ("ix_node_state_release", "node_state")):
        op.drop_index(index, table_name=table)
    for table in ("events", "store_locks", "store_release", "node_state", "store_runs", "waves", "rollouts",
                  "releases"):
        op.drop_table(table)
