"""Release trains in the state store: the train, its stages and the stage and state of each of its
stores (``TrainStore``), beside the rollout ledger, whose events it shares.

Tables (declared here on ``edgefleet.state.db.Base``; revision ``0003``)::

    trains        id, release, status, reason, spec (TrainSpec as JSON), operator, created/updated,
                  pause/abort/rollback requested, approvals (JSON list of approved stage indexes),
                  heartbeat (a tick touches it)
    train_stages  (train, index): name, status, finished_at, soak_until, approved, reason
    train_stores  (train, store): stage, state, rollout (the latest child operation), updated

A train's child operations are ordinary rollouts in the ledger with ``rollouts.train`` set; its
events are ledger events whose ``rollout`` is the train id.

A store belongs to at most one active train (``ACTIVE``): ``create`` refuses a store another active
train holds, naming it. The check and the insert run under one write lock (SQLite's ``BEGIN
IMMEDIATE``, a PostgreSQL advisory lock), so two trains started at once cannot both take a store.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Boolean, Connection, DateTime, Engine, Integer, String, Text, insert, select, text, update
from sqlalchemy.orm import Mapped, mapped_column

from edgefleet.errors import LockHeld, StateError, UnknownTrain
from edgefleet.rollout.journal import dumps, event_values
from edgefleet.rollout.ledger import EventRow, new_rollout_id
from edgefleet.rollout.settings import EngineSettings
from edgefleet.state.db import Base, session_scope
from edgefleet.trains.model import (
    ACTIVE,
    SetStage,
    StagePolicy,
    StageProgress,
    StageSpec,
    StageStatus,
    StoreProgress,
    StoreState,
    TrainSpec,
    TrainStatus,
)

__all__ = ["TrainRecord", "TrainRow", "TrainStageRow", "TrainStore", "TrainStoreRow", "parse_spec", "spec_json"]

_ADVISORY_KEY = 0x6564677472616E  # "edgtran": PostgreSQL advisory lock id of train creation


class TrainRow(Base):
    __tablename__ = "trains"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    release: Mapped[str] = mapped_column(String(63), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, index=True)
    reason: Mapped[str] = mapped_column(Text, nullable=False, default="")
    spec: Mapped[str] = mapped_column(Text, nullable=False)
    operator: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    pause_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    abort_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    rollback_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    approvals: Mapped[str] = mapped_column(Text, nullable=False, default="[]")
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class TrainStageRow(Base):
    __tablename__ = "train_stages"

    train: Mapped[str] = mapped_column(String(64), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    status: Mapped[str] = mapped_column(String(24), nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    soak_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    approved: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False, default="")


class TrainStoreRow(Base):
    __tablename__ = "train_stores"

    train: Mapped[str] = mapped_column(String(64), primary_key=True)
    store: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)
    stage: Mapped[int] = mapped_column(Integer, nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    rollout: Mapped[str | None] = mapped_column(String(64), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


# -- the spec as JSON ---------------------------------------------------------------------------------

def spec_json(spec: TrainSpec) -> dict[str, Any]:
    """``spec`` as JSON (soaks in seconds); ``parse_spec`` reads it back."""
    return {"release": spec.release, "manual_promote": spec.manual_promote, "limit": spec.limit,
            "settings": dict(spec.settings),
            "stages": [{"name": st.name, "selector": st.selector,
                        "policy": {"failure_budget": st.policy.failure_budget,
                                   "soak_s": st.policy.soak.total_seconds(), "approve": st.policy.approve,
                                   "max_concurrent": st.policy.max_concurrent,
                                   "max_per_region": st.policy.max_per_region,
                                   "max_per_country": st.policy.max_per_country}}
                       for st in spec.stages]}


def spec_settings(spec: TrainSpec) -> EngineSettings:
    """The engine settings the train's children run with (the defaults when none were given)."""
    return EngineSettings.from_json(dict(spec.settings)) if spec.settings else EngineSettings()


def parse_spec(data: Mapping[str, Any]) -> TrainSpec:
    """The ``TrainSpec`` that ``spec_json`` wrote; StateError when a key is missing or unknown."""
    try:
        stages = tuple(StageSpec(name=st["name"], selector=st["selector"],
                                 policy=StagePolicy(failure_budget=st["policy"]["failure_budget"],
                                                    soak=timedelta(seconds=st["policy"]["soak_s"]),
                                                    approve=st["policy"]["approve"],
                                                    max_concurrent=st["policy"]["max_concurrent"],
                                                    max_per_region=st["policy"]["max_per_region"],
                                                    max_per_country=st["policy"]["max_per_country"]))
                       for st in data["stages"])
        return TrainSpec(release=data["release"], stages=stages, manual_promote=data["manual_promote"],
                         limit=data["limit"], settings=dict(data.get("settings") or {}))
    except (KeyError, TypeError) as e:
        raise StateError(f"the recorded train spec is invalid ({e!r}): it was written by another edgefleet "
                         "version; use that version") from None


# -- records ------------------------------------------------------------------------------------------

def _utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class TrainRecord:
    id: str
    release: str
    status: TrainStatus
    reason: str
    spec: TrainSpec
    operator: str
    created_at: datetime
    updated_at: datetime
    pause_requested: bool
    abort_requested: bool
    rollback_requested: bool
    approvals: tuple[int, ...]
    """Indexes of the stages a person approved (``train approve``)."""
    heartbeat_at: datetime | None = None
    """When a tick last worked on the train."""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "release": self.release, "status": self.status.value, "reason": self.reason,
                "spec": spec_json(self.spec), "operator": self.operator, "created_at": self.created_at.isoformat(),
                "updated_at": self.updated_at.isoformat(), "pause_requested": self.pause_requested,
                "abort_requested": self.abort_requested, "rollback_requested": self.rollback_requested,
                "approvals": list(self.approvals),
                "heartbeat_at": self.heartbeat_at.isoformat() if self.heartbeat_at else None}


def _record(r: TrainRow) -> TrainRecord:
    created, updated = _utc(r.created_at), _utc(r.updated_at)
    assert created is not None and updated is not None
    return TrainRecord(r.id, r.release, TrainStatus(r.status), r.reason, parse_spec(json.loads(r.spec)), r.operator,
                       created, updated, bool(r.pause_requested), bool(r.abort_requested),
                       bool(r.rollback_requested), tuple(json.loads(r.approvals or "[]")), _utc(r.heartbeat_at))


def _write_lock(conn: Connection) -> None:
    """Serialize train creation: the holder check and the insert see one state of the tables."""
    backend = conn.engine.dialect.name
    if backend == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif backend == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_KEY})


_ACTIVE = [s.value for s in ACTIVE]


# -- the store ----------------------------------------------------------------------------------------

class TrainStore:
    """Trains in the state store behind ``engine`` (see ``edgefleet.state.db.open_state``)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def create(self, spec: TrainSpec, assignments: Mapping[str, int], stage_names: Sequence[str], now: datetime, *,
               operator: str = "", done: Collection[str] = ()) -> TrainRecord:
        """Record a train of ``spec``: ``assignments`` gives each store its stage index, ``stage_names``
        the stages in order, ``done`` the stores already on the release (recorded succeeded). The
        first stage runs at once, the others are locked. LockHeld naming the holder when a store
        belongs to another active train."""
        bad = sorted(s for s, i in assignments.items() if not 0 <= i < len(stage_names))
        if bad:
            raise StateError(f"stores {', '.join(bad[:5])} are assigned to no stage of {len(stage_names)}")
        train_id = new_rollout_id("train", now)
        with self.engine.connect() as conn:
            _write_lock(conn)
            held = self._holders(conn, assignments)
            if held:
                store, holder = min(held.items())
                more = f" (and {len(held) - 1} more stores)" if len(held) > 1 else ""
                raise LockHeld(f"store {store}{more} belongs to train {holder}, which is still active: wait for it "
                               f"to finish, or stop it with `edgefleet train abort {holder}`")
            conn.execute(insert(TrainRow).values(
                id=train_id, release=spec.release, status=TrainStatus.running.value, reason="",
                spec=dumps(spec_json(spec)), operator=operator, created_at=now, updated_at=now,
                pause_requested=False, abort_requested=False, rollback_requested=False, approvals="[]"))
            conn.execute(insert(TrainStageRow), [
                {"train": train_id, "index": i, "name": name, "approved": False, "reason": "",
                 "status": (StageStatus.running if i == 0 else StageStatus.locked).value}
                for i, name in enumerate(stage_names)])
            if assignments:
                conn.execute(insert(TrainStoreRow), [
                    {"train": train_id, "store": store, "stage": i, "rollout": None, "updated_at": now,
                     "state": (StoreState.succeeded if store in done else StoreState.pending).value}
                    for store, i in sorted(assignments.items())])
            conn.execute(insert(EventRow).values(**event_values(
                now, "train_started", rollout=train_id, reason=f"train of {spec.release}",
                detail={"stores": len(assignments), "stages": list(stage_names), "done": len(done),
                        "operator": operator})))
            conn.commit()
        return self.get(train_id)

    @staticmethod
    def _holders(conn: Connection, stores: Collection[str]) -> dict[str, str]:
        held: dict[str, str] = {}
        wanted = builtins.list(stores)
        for i in range(0, len(wanted), 500):  # bounded IN lists
            q = (select(TrainStoreRow.store, TrainStoreRow.train)
                 .join(TrainRow, TrainRow.id == TrainStoreRow.train)
                 .where(TrainRow.status.in_(_ACTIVE), TrainStoreRow.store.in_(wanted[i:i + 500])))
            held.update({s: t for s, t in conn.execute(q)})
        return held

    def find(self, train_id: str) -> TrainRecord | None:
        with session_scope(self.engine) as s:
            row = s.get(TrainRow, train_id)
            return _record(row) if row is not None else None

    def get(self, train_id: str) -> TrainRecord:
        rec = self.find(train_id)
        if rec is None:
            recent = ", ".join(r.id for r in self.list(limit=5)) or "none yet"
            raise UnknownTrain(f"no train {train_id!r} in the state store (recent: {recent}; "
                               "`edgefleet train list` shows them)")
        return rec

    def list(self, limit: int = 50) -> builtins.list[TrainRecord]:
        """The most recent trains, newest first."""
        with session_scope(self.engine) as s:
            rows = s.scalars(select(TrainRow).order_by(TrainRow.created_at.desc(), TrainRow.id.desc()).limit(limit))
            return [_record(r) for r in rows]

    def stages(self, train_id: str) -> builtins.list[StageProgress]:
        with session_scope(self.engine) as s:
            rows = s.scalars(select(TrainStageRow).where(TrainStageRow.train == train_id)
                             .order_by(TrainStageRow.index))
            return [StageProgress(r.index, r.name, StageStatus(r.status), _utc(r.finished_at), _utc(r.soak_until),
                                  bool(r.approved)) for r in rows]

    def stage_reasons(self, train_id: str) -> dict[int, str]:
        """Why each stage is in its state (a failed stage's budget, an approval), by index."""
        with session_scope(self.engine) as s:
            return {i: r for i, r in s.execute(select(TrainStageRow.index, TrainStageRow.reason)
                                               .where(TrainStageRow.train == train_id))}

    def stores(self, train_id: str) -> dict[str, StoreProgress]:
        """Each store of the train (``live`` and ``finished_at`` are the controller's to fill in)."""
        with session_scope(self.engine) as s:
            rows = s.scalars(select(TrainStoreRow).where(TrainStoreRow.train == train_id)
                             .order_by(TrainStoreRow.store))
            return {r.store: StoreProgress(r.store, r.stage, StoreState(r.state), r.rollout) for r in rows}

    def active_holder(self, store: str) -> str | None:
        """The active train ``store`` belongs to, if any."""
        with self.engine.connect() as conn:
            return self._holders(conn, [store]).get(store)

    # writes

    def set_status(self, train_id: str, status: TrainStatus, reason: str, now: datetime) -> None:
        self._update(train_id, now, status=status.value, reason=reason)

    def set_stage(self, train_id: str, change: SetStage, now: datetime) -> None:
        values: dict[str, Any] = {"status": change.status.value, "reason": change.reason}
        if change.finished_at is not None:
            values["finished_at"] = change.finished_at
        if change.soak_until is not None:
            values["soak_until"] = change.soak_until
        with session_scope(self.engine) as s:
            res = s.execute(update(TrainStageRow)
                            .where(TrainStageRow.train == train_id, TrainStageRow.index == change.index)
                            .values(**values))
            if res.rowcount != 1:  # type: ignore[attr-defined]
                raise StateError(f"train {train_id} has no stage {change.index}")
            s.execute(update(TrainRow).where(TrainRow.id == train_id).values(updated_at=now))

    def set_stores(self, train_id: str, changes: Mapping[str, tuple[StoreState, str | None]], now: datetime) -> None:
        """Each store's new state and latest child operation, in one transaction."""
        with session_scope(self.engine) as s:
            for store, (state, rollout) in sorted(changes.items()):
                res = s.execute(update(TrainStoreRow)
                                .where(TrainStoreRow.train == train_id, TrainStoreRow.store == store)
                                .values(state=StoreState(state).value, rollout=rollout, updated_at=now))
                if res.rowcount != 1:  # type: ignore[attr-defined]
                    raise StateError(f"store {store} is not part of train {train_id}")
            s.execute(update(TrainRow).where(TrainRow.id == train_id).values(updated_at=now))

    def request(self, train_id: str, *, now: datetime, pause: bool | None = None, abort: bool | None = None,
                rollback: bool | None = None) -> None:
        """Set the requests a person made (None leaves a flag as it is)."""
        values = {k: v for k, v in (("pause_requested", pause), ("abort_requested", abort),
                                    ("rollback_requested", rollback)) if v is not None}
        self._update(train_id, now, **values)

    def approve(self, train_id: str, stage: int, now: datetime) -> None:
        """Record a person's approval of stage ``stage``."""
        with session_scope(self.engine) as s:
            row = s.get(TrainRow, train_id)
            if row is None:
                raise UnknownTrain(f"no train {train_id!r} in the state store")
            approvals = sorted(set(json.loads(row.approvals or "[]")) | {stage})
            res = s.execute(update(TrainStageRow).where(TrainStageRow.train == train_id, TrainStageRow.index == stage)
                            .values(approved=True))
            if res.rowcount != 1:  # type: ignore[attr-defined]
                raise StateError(f"train {train_id} has no stage {stage}")
            row.approvals = json.dumps(approvals)
            row.updated_at = now

    def touch(self, train_id: str, now: datetime) -> None:
        """A tick worked on the train now (its heartbeat)."""
        with session_scope(self.engine) as s:
            s.execute(update(TrainRow).where(TrainRow.id == train_id).values(heartbeat_at=now))

    def event(self, now: datetime, kind: str, train_id: str, store: str | None = None, reason: str = "",
              **detail: Any) -> None:
        """An event of the train in the ledger's event log (its ``rollout`` is the train id)."""
        with session_scope(self.engine) as s:
            s.execute(insert(EventRow).values(**event_values(now, kind, rollout=train_id, store=store,
                                                             reason=reason, detail=detail)))

    def _update(self, train_id: str, now: datetime, **values: Any) -> None:
        with session_scope(self.engine) as s:
            res = s.execute(update(TrainRow).where(TrainRow.id == train_id).values(updated_at=now, **values))
            if res.rowcount != 1:  # type: ignore[attr-defined]
                raise UnknownTrain(f"no train {train_id!r} in the state store")
