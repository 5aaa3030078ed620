"""The rollout ledger: rollouts, waves, store runs, observed node state, each store's release, store
locks and an append-only event log, in the state store (``edgefleet.state.db``).

Tables::

    rollouts       id, kind (rollout|rollback|provision), release, status, policy (the whole request,
                   ``edgefleet.rollout.request``), plan notes JSON (skipped/unschedulable stores), operator,
                   created/updated, heartbeat (a running executor touches it), abort_requested, decision
    waves          (rollout, index): name, status, budget, failures
    store_runs     (rollout, store): the planned row (wave, earliest start, from/to release), then status,
                   step, started/ended, reason, detail JSON
    node_state     node: store, observed release, ready, observed_at
    store_release  store: current release, last known good, updated
    store_locks    store: holder (a rollout id), acquired_at
    events         id, ts, rollout, store, node, kind, reason, detail JSON (append-only)

Store locks work like Ironic's node reservation: a conditional ``UPDATE ... WHERE holder IS NULL
OR holder = <me>`` (an ``INSERT`` when the store has no row yet). Whoever gets rowcount 1 holds the
store; anyone else gets ``LockHeld`` naming the holder. The holder is the rollout id, so only the
same rollout (``rollout resume``) takes over a lock its crashed run left behind.

Writes from the executor go through ``Journal``: a group commit. Many concurrent stores queue
their statements; one flusher commits them in a single transaction and wakes every writer. A
writer awaits its commit, so a step recorded "before" is durable before the step is taken.

Nothing secret is ever written here: no password, token, key or URL with a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Engine,
    Executable,
    Integer,
    String,
    Text,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from edgefleet.errors import LockHeld, StateError, UnknownRollout
from edgefleet.state.db import Base, session_scope

__all__ = [
    "EventRow",
    "Journal",
    "Kind",
    "Ledger",
    "NodeStateRow",
    "RolloutRecord",
    "RolloutRow",
    "RolloutStatus",
    "RunStatus",
    "StoreLockRow",
    "StoreReleaseRow",
    "StoreRunRecord",
    "StoreRunRow",
    "WaveRecord",
    "WaveRow",
    "new_rollout_id",
]


class Kind(StrEnum):
    rollout = "rollout"
    rollback = "rollback"
    provision = "provision"


class RolloutStatus(StrEnum):
    planned = "planned"
    """Recorded, not started."""
    running = "running"
    """An executor is working on it (see heartbeat)."""
    paused = "paused"
    """A wave was inconclusive: waiting for a person (``rollout resume --approve|--reject``)."""
    halted = "halted"
    """A wave exceeded its failure budget (or a person rejected): nothing more is started."""
    succeeded = "succeeded"
    """Every store ended on the target (or was already there)."""
    failed = "failed"
    """Some stores failed or were refused, within the budget."""
    aborted = "aborted"
    """A person aborted it."""


FINISHED = frozenset({RolloutStatus.halted, RolloutStatus.succeeded, RolloutStatus.failed, RolloutStatus.aborted})


class RunStatus(StrEnum):
    pending = "pending"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    """Failed its gate and could not be brought back to its previous release."""
    rolled_back = "rolled_back"
    """Failed its gate and was reimaged back to its previous release."""
    skipped = "skipped"
    """Nothing to do (already on the target) or not started (aborted, halted, window never opened)."""
    refused = "refused"
    """Another operation holds the store's lock."""


RUN_DONE = frozenset({RunStatus.succeeded, RunStatus.failed, RunStatus.rolled_back, RunStatus.skipped,
                      RunStatus.refused})


def new_rollout_id(kind: str, now: datetime) -> str:
    return f"{kind[:2]}-{now.astimezone(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def _utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


# -- tables -----------------------------------------------------------------------------------------

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


class WaveRow(Base):
    __tablename__ = "waves"

    rollout: Mapped[str] = mapped_column(String(64), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    budget: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    failures: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    reason: Mapped[str] = mapped_column(Text, nullable=False, default="")


class StoreRunRow(Base):
    __tablename__ = "store_runs"

    rollout: Mapped[str] = mapped_column(String(64), primary_key=True)
    store: Mapped[str] = mapped_column(String(128), primary_key=True)
    wave: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=RunStatus.pending.value)
    from_release: Mapped[str | None] = mapped_column(String(63), nullable=True)
    to_release: Mapped[str] = mapped_column(String(63), nullable=False)
    step: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    reason: Mapped[str] = mapped_column(Text, nullable=False, default="")
    detail: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
    earliest_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


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


# -- records ------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RolloutRecord:
    id: str
    kind: Kind
    release: str
    status: RolloutStatus
    reason: str
    policy: dict[str, Any]
    """The request as saved (``RolloutRequest.from_saved`` reads it)."""
    operator: str
    created_at: datetime
    updated_at: datetime
    heartbeat_at: datetime | None
    abort_requested: bool
    decision: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind.value, "release": self.release, "status": self.status.value,
                "reason": self.reason, "operator": self.operator, "created_at": self.created_at.isoformat(),
                "updated_at": self.updated_at.isoformat(), "abort_requested": self.abort_requested,
                "decision": self.decision, "policy": self.policy}


@dataclass(frozen=True, slots=True)
class WaveRecord:
    index: int
    name: str
    status: str
    budget: int
    failures: int
    reason: str


@dataclass(frozen=True, slots=True)
class StoreRunRecord:
    store: str
    wave: int
    status: RunStatus
    from_release: str | None
    to_release: str
    step: str
    started_at: datetime | None
    ended_at: datetime | None
    reason: str
    detail: dict[str, Any]
    earliest_start: datetime | None = None
    """When the planner said the store may start at the earliest (None: not planned in time)."""

    def to_json(self) -> dict[str, Any]:
        return {"store": self.store, "wave": self.wave, "status": self.status.value,
                "from_release": self.from_release, "to_release": self.to_release, "step": self.step,
                "started_at": self.started_at.isoformat() if self.started_at else None,
                "ended_at": self.ended_at.isoformat() if self.ended_at else None, "reason": self.reason,
                "earliest_start": self.earliest_start.isoformat() if self.earliest_start else None}


def _rollout(r: RolloutRow) -> RolloutRecord:
    created, updated = _utc(r.created_at), _utc(r.updated_at)
    assert created is not None and updated is not None
    return RolloutRecord(r.id, Kind(r.kind), r.release, RolloutStatus(r.status), r.reason, json.loads(r.policy),
                         r.operator, created, updated, _utc(r.heartbeat_at),
                         bool(r.abort_requested), r.decision)


def _run(r: StoreRunRow) -> StoreRunRecord:
    return StoreRunRecord(r.store, r.wave, RunStatus(r.status), r.from_release, r.to_release, r.step,
                          _utc(r.started_at), _utc(r.ended_at), r.reason, json.loads(r.detail or "{}"),
                          _utc(r.earliest_start))


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True, default=str)


# -- the ledger -------------------------------------------------------------------------------------

class Ledger:
    """Queries and single writes on the ledger tables of ``engine``."""

    def __init__(self, engine: Engine):
        self.engine = engine

    # rollouts

    def create_rollout(self, *, rollout_id: str, kind: Kind, release: str, now: datetime,
                       policy: Mapping[str, Any], plan: Mapping[str, Any], operator: str,
                       waves: Sequence[tuple[int, str, int]],
                       runs: Sequence[tuple[str, int, str | None, str]],
                       starts: Mapping[str, datetime] | None = None) -> RolloutRecord:
        """Record a planned rollout with its waves ``(index, name, budget)`` and planned store runs
        ``(store, wave, from_release, to_release)`` with each store's earliest start (``starts``), in
        one transaction. ``plan``: notes kept beside the rows (skipped, unschedulable stores)."""
        starts = starts or {}
        with session_scope(self.engine) as s:
            s.add(RolloutRow(id=rollout_id, kind=kind.value, release=release, status=RolloutStatus.planned.value,
                             reason="", policy=_dumps(policy), plan=_dumps(plan), operator=operator,
                             created_at=now, updated_at=now, abort_requested=False, decision=""))
            s.flush()
            if waves:
                s.execute(insert(WaveRow), [{"rollout": rollout_id, "index": i, "name": n, "budget": b,
                                             "status": "pending", "failures": 0, "reason": ""}
                                            for i, n, b in waves])
            if runs:
                s.execute(insert(StoreRunRow), [{"rollout": rollout_id, "store": st, "wave": w, "from_release": fr,
                                                 "to_release": to, "status": RunStatus.pending.value, "step": "",
                                                 "reason": "", "detail": "{}", "earliest_start": starts.get(st)}
                                                for st, w, fr, to in runs])
            s.add(EventRow(ts=now, rollout=rollout_id, kind="rollout_planned", reason=f"{kind.value} of {release}",
                           detail=_dumps({"stores": len(runs), "waves": len(waves), "operator": operator})))
        return self.rollout(rollout_id)

    def find_rollout(self, rollout_id: str) -> RolloutRecord | None:
        with session_scope(self.engine) as s:
            row = s.get(RolloutRow, rollout_id)
            return _rollout(row) if row is not None else None

    def rollout(self, rollout_id: str) -> RolloutRecord:
        rec = self.find_rollout(rollout_id)
        if rec is None:
            recent = ", ".join(r.id for r in self.rollouts(limit=5)) or "none yet"
            raise UnknownRollout(f"no rollout {rollout_id!r} in the ledger (recent: {recent}; "
                                 "`edgefleet rollout status` shows the latest)")
        return rec

    def rollouts(self, limit: int = 20) -> list[RolloutRecord]:
        """The most recent rollouts, newest first."""
        with session_scope(self.engine) as s:
            rows = s.scalars(select(RolloutRow).order_by(RolloutRow.created_at.desc()).limit(limit))
            return [_rollout(r) for r in rows]

    def plan_notes(self, rollout_id: str) -> dict[str, Any]:
        """What the plan said beside its rows (skipped and unschedulable stores)."""
        with session_scope(self.engine) as s:
            text = s.scalar(select(RolloutRow.plan).where(RolloutRow.id == rollout_id))
            return dict(json.loads(text)) if text else {}

    def save_request(self, rollout_id: str, now: datetime, request: Mapping[str, Any],
                     changed: Mapping[str, Any]) -> None:
        """Replace the saved request (a resume that overrides settings), recording what changed."""
        with session_scope(self.engine) as s:
            s.execute(update(RolloutRow).where(RolloutRow.id == rollout_id)
                      .values(policy=_dumps(request), updated_at=now))
            s.add(EventRow(ts=now, rollout=rollout_id, kind="request_changed",
                           reason=", ".join(f"{k}={v}" for k, v in sorted(changed.items())), detail=_dumps(changed)))

    def set_rollout(self, rollout_id: str, now: datetime, **values: Any) -> None:
        with session_scope(self.engine) as s:
            s.execute(update(RolloutRow).where(RolloutRow.id == rollout_id).values(updated_at=now, **values))

    def waves(self, rollout_id: str) -> list[WaveRecord]:
        with session_scope(self.engine) as s:
            rows = s.scalars(select(WaveRow).where(WaveRow.rollout == rollout_id).order_by(WaveRow.index))
            return [WaveRecord(r.index, r.name, r.status, r.budget, r.failures, r.reason) for r in rows]

    def runs(self, rollout_id: str) -> list[StoreRunRecord]:
        with session_scope(self.engine) as s:
            rows = s.scalars(select(StoreRunRow).where(StoreRunRow.rollout == rollout_id)
                             .order_by(StoreRunRow.wave, StoreRunRow.store))
            return [_run(r) for r in rows]

    # stores

    def store_releases(self, stores: Iterable[str] | None = None) -> dict[str, tuple[str | None, str | None]]:
        """store -> (current release, last known good)."""
        with session_scope(self.engine) as s:
            q = select(StoreReleaseRow)
            if stores is not None:
                q = q.where(StoreReleaseRow.store.in_(list(stores)))
            return {r.store: (r.current, r.last_known_good) for r in s.scalars(q)}

    def stores_on(self, release: str) -> list[str]:
        """Stores wholly or partly on ``release``: the recorded current release, or any node observed on it."""
        with session_scope(self.engine) as s:
            a = set(s.scalars(select(StoreReleaseRow.store).where(StoreReleaseRow.current == release)))
            b = set(s.scalars(select(NodeStateRow.store).where(NodeStateRow.release == release)))
            return sorted(a | b)

    def seen_store(self, store: str) -> bool:
        """Whether the ledger has ever recorded anything about ``store`` (a release, a run, a node)."""
        with session_scope(self.engine) as s:
            return any(s.scalars(q.limit(1)).first() is not None for q in (
                select(StoreReleaseRow.store).where(StoreReleaseRow.store == store),
                select(StoreRunRow.store).where(StoreRunRow.store == store),
                select(NodeStateRow.node).where(NodeStateRow.store == store)))

    def node_states(self, store: str | None = None) -> dict[str, tuple[str, str | None, bool]]:
        """node -> (store, release, ready) as last observed."""
        with session_scope(self.engine) as s:
            q = select(NodeStateRow)
            if store is not None:
                q = q.where(NodeStateRow.store == store)
            return {r.node: (r.store, r.release, r.ready) for r in s.scalars(q)}

    # locks

    def acquire_lock(self, store: str, holder: str, now: datetime) -> None:
        """Hold ``store`` for ``holder`` (idempotent for the same holder); LockHeld otherwise."""
        with session_scope(self.engine) as s:
            res = s.execute(update(StoreLockRow)
                            .where(StoreLockRow.store == store,
                                   or_(StoreLockRow.holder.is_(None), StoreLockRow.holder == holder))
                            .values(holder=holder, acquired_at=now))
            if res.rowcount == 1:  # type: ignore[attr-defined]
                return
        try:
            with session_scope(self.engine) as s:
                s.execute(insert(StoreLockRow).values(store=store, holder=holder, acquired_at=now))
            return
        except IntegrityError:
            pass  # the row exists: someone holds it (or took it between our two statements)
        with session_scope(self.engine) as s:
            row = s.get(StoreLockRow, store)
            who, since = (row.holder, _utc(row.acquired_at)) if row is not None else (None, None)
        if who is None or who == holder:  # released meanwhile: try once more
            return self.acquire_lock(store, holder, now)
        raise LockHeld(f"store {store} is locked by operation {who} (since {since.isoformat() if since else '?'}); "
                       f"wait for it to finish, or `edgefleet rollout resume {who}` / `edgefleet rollout abort {who}`")

    def release_lock(self, store: str, holder: str) -> bool:
        """Release ``store`` if ``holder`` holds it; returns whether it did."""
        with session_scope(self.engine) as s:
            res = s.execute(update(StoreLockRow).where(StoreLockRow.store == store, StoreLockRow.holder == holder)
                            .values(holder=None, acquired_at=None))
            return bool(res.rowcount == 1)  # type: ignore[attr-defined]

    def lock_holder(self, store: str) -> str | None:
        with session_scope(self.engine) as s:
            row = s.get(StoreLockRow, store)
            return row.holder if row is not None else None

    def locks_held_by(self, holder: str) -> list[str]:
        with session_scope(self.engine) as s:
            return list(s.scalars(select(StoreLockRow.store).where(StoreLockRow.holder == holder)))

    def write(self, *stmts: Executable) -> None:
        """Run statements (``stmt_*``) in one transaction."""
        with self.engine.begin() as conn:
            for st in stmts:
                conn.execute(st)

    # events

    def events(self, rollout: str | None = None, *, store: str | None = None, kind: str | None = None,
               limit: int = 10_000) -> list[dict[str, Any]]:
        with session_scope(self.engine) as s:
            q = select(EventRow).order_by(EventRow.id)
            conds = []
            if rollout is not None:
                conds.append(EventRow.rollout == rollout)
            if store is not None:
                conds.append(EventRow.store == store)
            if kind is not None:
                conds.append(EventRow.kind == kind)
            if conds:
                q = q.where(and_(*conds))
            return [{"id": e.id, "ts": (_utc(e.ts) or e.ts).isoformat(), "rollout": e.rollout, "store": e.store,
                     "node": e.node, "kind": e.kind, "reason": e.reason, "detail": json.loads(e.detail or "{}")}
                    for e in s.scalars(q.limit(limit))]

    def count_events(self, rollout: str | None = None) -> int:
        """How many events the ledger holds (of ``rollout`` when given); the report says when it cuts."""
        with session_scope(self.engine) as s:
            q = select(func.count()).select_from(EventRow)
            if rollout is not None:
                q = q.where(EventRow.rollout == rollout)
            return int(s.scalar(q) or 0)

    def event(self, now: datetime, kind: str, *, rollout: str | None = None, store: str | None = None,
              node: str | None = None, reason: str = "", detail: Mapping[str, Any] | None = None) -> None:
        with session_scope(self.engine) as s:
            s.execute(insert(EventRow).values(**event_values(now, kind, rollout=rollout, store=store, node=node,
                                                             reason=reason, detail=detail)))


# -- statements the executor queues on the journal -------------------------------------------------

def event_values(now: datetime, kind: str, *, rollout: str | None, store: str | None = None, node: str | None = None,
                 reason: str = "", detail: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"ts": now, "rollout": rollout, "store": store, "node": node, "kind": kind, "reason": reason[:4000],
            "detail": _dumps(dict(detail or {}))}


def stmt_event(now: datetime, kind: str, **kw: Any) -> Executable:
    return insert(EventRow).values(**event_values(now, kind, **kw))


def stmt_run(rollout: str, store: str, **values: Any) -> Executable:
    if "detail" in values and not isinstance(values["detail"], str):
        values["detail"] = _dumps(values["detail"])
    if "status" in values:
        values["status"] = RunStatus(values["status"]).value
    return update(StoreRunRow).where(StoreRunRow.rollout == rollout, StoreRunRow.store == store).values(**values)


def stmt_node(node: str, store: str, release: str | None, ready: bool, now: datetime) -> list[Executable]:
    return [delete(NodeStateRow).where(NodeStateRow.node == node),
            insert(NodeStateRow).values(node=node, store=store, release=release, ready=ready, observed_at=now)]


def stmt_store_release(store: str, current: str | None, last_known_good: str | None,
                       now: datetime) -> list[Executable]:
    return [delete(StoreReleaseRow).where(StoreReleaseRow.store == store),
            insert(StoreReleaseRow).values(store=store, current=current, last_known_good=last_known_good,
                                           updated_at=now)]


def stmt_wave(rollout: str, index: int, **values: Any) -> Executable:
    return update(WaveRow).where(WaveRow.rollout == rollout, WaveRow.index == index).values(**values)


class Journal:
    """Group commit of ledger writes for many concurrent coroutines (see the module docstring).

    ``await journal.write(stmt, ...)`` returns once the statements are committed. Statements of
    one ``write`` call commit together; a failing batch fails every writer in it with StateError.
    """

    def __init__(self, engine: Engine, *, max_batch: int = 2000):
        self.engine = engine
        self.max_batch = max_batch
        self._pending: list[tuple[tuple[Executable, ...], asyncio.Future[None]]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.commits = 0
        self.statements = 0

    async def __aenter__(self) -> Journal:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._flusher())
        return self

    async def __aexit__(self, *exc: object) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._flush_now()  # whatever is still queued

    async def write(self, *stmts: Executable) -> None:
        if self._task is None or self._wake is None:
            self._commit([(stmts, None)])
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((stmts, fut))
        self._wake.set()
        await asyncio.shield(fut)

    async def _flusher(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(0)  # let the writers of this tick queue up
            self._flush_now()

    def _flush_now(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
            self._commit(batch)

    def _commit(self, batch: Sequence[tuple[Sequence[Executable], asyncio.Future[None] | None]]) -> None:
        try:
            with self.engine.begin() as conn:
                for stmts, _ in batch:
                    for st in stmts:
                        conn.execute(st)
                        self.statements += 1
            self.commits += 1
        except Exception as e:
            err = StateError(f"the ledger refused a write: {e}")
            for _, fut in batch:
                if fut is None:
                    raise err from e
                if not fut.done():
                    fut.set_exception(err)
            return
        for _, fut in batch:
            if fut is not None and not fut.done():
                fut.set_result(None)
