"""The ledger's tables in the state store (``edgefleet.state.db``); ``edgefleet.rollout.ledger``
describes them and reads them. Statuses are stored as the string values of the enums in
``edgefleet.rollout.states``; the columns are those every earlier edgefleet wrote."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from edgefleet.rollout.states import RunState, WaveState
from edgefleet.state.db import Base

__all__ = ["EventRow", "NodeStateRow", "RolloutRow", "StoreLockRow", "StoreReleaseRow", "StoreRunRow", "WaveRow"]


class RolloutRow(Base):
    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    release: Mapped[str] = mapped_column(String(63), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False, default="")
    policy: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
    # Read on demand only (``Ledger.plan_notes``): a rollout's record is read often.
    plan: Mapped[str] = mapped_column(Text, nullable=False, default="{}", deferred=True)
    operator: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    abort_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    decision: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    # The release train this rollout is a child of (``edgefleet.trains``); None for a rollout of its own.
    train: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)


class WaveRow(Base):
    __tablename__ = "waves"

    rollout: Mapped[str] = mapped_column(String(64), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=WaveState.pending.value)
    budget: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    failures: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    reason: Mapped[str] = mapped_column(Text, nullable=False, default="")


class StoreRunRow(Base):
    __tablename__ = "store_runs"
    earliest_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    rollout: Mapped[str] = mapped_column(String(64), primary_key=True)
    store: Mapped[str] = mapped_column(String(128), primary_key=True)
    wave: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=RunState.pending.value)
    from_release: Mapped[str | None] = mapped_column(String(63), nullable=True)
    to_release: Mapped[str] = mapped_column(String(63), nullable=False)
    step: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    reason: Mapped[str] = mapped_column(Text, nullable=False, default="")
    detail: Mapped[str] = mapped_column(Text, nullable=False, default="{}")


class NodeStateRow(Base):
    __tablename__ = "node_state"

    node: Mapped[str] = mapped_column(String(128), primary_key=True)
    store: Mapped[str] = mapped_column(String(128), nullable=False, index=True)
    release: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)
    ready: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    observed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class StoreReleaseRow(Base):
    __tablename__ = "store_release"

    store: Mapped[str] = mapped_column(String(128), primary_key=True)
    current: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)
    last_known_good: Mapped[str | None] = mapped_column(String(63), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class StoreLockRow(Base):
    __tablename__ = "store_locks"

    store: Mapped[str] = mapped_column(String(128), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(64), nullable=True)
    acquired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class EventRow(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    rollout: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    store: Mapped[str | None] = mapped_column(String(128), nullable=True)
    node: Mapped[str | None] = mapped_column(String(128), nullable=True)
    kind: Mapped[str] = mapped_column(String(64), nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False, default="")
    detail: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
