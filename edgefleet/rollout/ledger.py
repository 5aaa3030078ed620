"""The rollout ledger: rollouts, waves, store runs, observed node state, each store's release, store
locks and an append-only event log, in the state store (``edgefleet.state.db``).

Tables (``edgefleet.rollout.tables``)::

    rollouts       id, kind (rollout|rollback|provision), release, status, policy (the whole request,
                   ``edgefleet.rollout.request``), plan notes JSON (skipped/unschedulable stores), operator,
                   created/updated, heartbeat (a running executor touches it), abort_requested, decision,
                   train (the release train of a child rollout, ``edgefleet.trains``)
    waves          (rollout, index): name, status, budget, failures
    store_runs     (rollout, store): the planned row (wave, earliest start, from/to release), then status,
                   step, started/ended, reason, detail JSON
    node_state     node: store, observed release, ready, observed_at
    store_release  store: current release, last known good, updated
    store_locks    store: holder (a rollout id), acquired_at
    events         id, ts, rollout, store, node, kind, reason, detail JSON (append-only)

Statuses are the enums of ``edgefleet.rollout.states`` (``Kind``, ``RolloutStatus`` and
``RunStatus`` are their names here); a status moves only through ``advance`` (or the
executor's ``journal.stmt_advance``), which refuses a move the state table does not allow.

Store locks work like Ironic's node reservation: a conditional ``UPDATE ... WHERE holder IS NULL
OR holder = <me>`` (an ``INSERT`` when the store has no row yet). Whoever gets rowcount 1 holds the
store; anyone else gets ``LockHeld`` naming the holder (``StoreSplit`` when the holder left the
store split: the message names the command that continues its repair). The holder is the rollout
id, so only the same rollout (``rollout resume``) takes over a lock its crashed run left behind.
``reserve`` holds a store for a block and releases it on every way out of it, except when the
run ended ``split``: then the lock stays until a person continues the repair.

Writes from the executor go through ``Journal`` (``edgefleet.rollout.journal``): a group commit.

Nothing secret is ever written here: no password, token, key or URL with a token.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, Executable, and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from edgefleet.errors import LockHeld, StateError, StoreSplit, UnknownRollout
from edgefleet.rollout.journal import (
    Journal,
    RunCursor,
    dumps,
    event_values,
    stmt_advance,
    stmt_event,
    stmt_node,
    stmt_run,
    stmt_store_release,
    stmt_wave,
)
from edgefleet.rollout.states import (
    FINISHED,
    RUN_DONE,
    RUN_FINAL,
    Machine,
    RolloutEvent,
    RunEvent,
    WaveState,
    next_state,
)
from edgefleet.rollout.states import Operation as Kind
from edgefleet.rollout.states import RolloutState as RolloutStatus
from edgefleet.rollout.states import RunState as RunStatus
from edgefleet.rollout.tables import (
    EventRow,
    NodeStateRow,
    RolloutRow,
    StoreLockRow,
    StoreReleaseRow,
    StoreRunRow,
    WaveRow,
)
from edgefleet.state.db import session_scope

__all__ = [
    "FINISHED",
    "RUN_DONE",
    "RUN_FINAL",
    "EventRow",
    "Journal",
    "Kind",
    "Ledger",
    "NodeStateRow",
    "RolloutRecord",
    "RolloutRow",
    "RolloutStatus",
    "RunCursor",
    "RunStatus",
    "StoreLockRow",
    "StoreReleaseRow",
    "StoreRunRecord",
    "StoreRunRow",
    "WaveRecord",
    "WaveRow",
    "event_values",
    "new_rollout_id",
    "repair_command",
    "stmt_advance",
    "stmt_event",
    "stmt_node",
    "stmt_run",
    "stmt_store_release",
    "stmt_wave",
]


def new_rollout_id(kind: str, now: datetime) -> str:
    return f"{kind[:2]}-{now.astimezone(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def repair_command(rollout_id: str) -> str:
    """The command a person runs to continue the repair of a store that rollout left split."""
    return f"edgefleet rollout resume {rollout_id}"


def _utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


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
    train: str | None = None
    """The release train this rollout is a child of (None: a rollout of its own)."""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind.value, "release": self.release, "status": self.status.value,
                "reason": self.reason, "operator": self.operator, "created_at": self.created_at.isoformat(),
                "updated_at": self.updated_at.isoformat(), "abort_requested": self.abort_requested,
                "decision": self.decision, "policy": self.policy, "train": self.train}


@dataclass(frozen=True, slots=True)
class WaveRecord:
    index: int
    name: str
    status: WaveState
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
                         bool(r.abort_requested), r.decision, r.train)


def _run(r: StoreRunRow) -> StoreRunRecord:
    return StoreRunRecord(r.store, r.wave, RunStatus(r.status), r.from_release, r.to_release, r.step,
                          _utc(r.started_at), _utc(r.ended_at), r.reason, json.loads(r.detail or "{}"),
                          _utc(r.earliest_start))


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
                       starts: Mapping[str, datetime] | None = None, train: str | None = None) -> RolloutRecord:
        """Record a planned rollout with its waves ``(index, name, budget)`` and planned store runs
        ``(store, wave, from_release, to_release)`` with each store's earliest start (``starts``), in
        one transaction. ``plan``: notes kept beside the rows (skipped, unschedulable stores);
        ``train``: the release train it is a child of."""
        starts = starts or {}
        with session_scope(self.engine) as s:
            s.add(RolloutRow(id=rollout_id, kind=kind.value, release=release, status=RolloutStatus.planned.value,
                             reason="", policy=dumps(policy), plan=dumps(plan), operator=operator,
                             created_at=now, updated_at=now, abort_requested=False, decision="", train=train))
            s.flush()
            if waves:
                s.execute(insert(WaveRow), [{"rollout": rollout_id, "index": i, "name": n, "budget": b,
                                             "status": WaveState.pending.value, "failures": 0, "reason": ""}
                                            for i, n, b in waves])
            if runs:
                s.execute(insert(StoreRunRow), [{"rollout": rollout_id, "store": st, "wave": w, "from_release": fr,
                                                 "to_release": to, "status": RunStatus.pending.value, "step": "",
                                                 "reason": "", "detail": "{}", "earliest_start": starts.get(st)}
                                                for st, w, fr, to in runs])
            s.add(EventRow(ts=now, rollout=rollout_id, kind="rollout_planned", reason=f"{kind.value} of {release}",
                           detail=dumps({"stores": len(runs), "waves": len(waves), "operator": operator})))
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

    def train_rollouts(self, train: str) -> list[RolloutRecord]:
        """The child operations of release train ``train``, oldest first."""
        with session_scope(self.engine) as s:
            rows = s.scalars(select(RolloutRow).where(RolloutRow.train == train)
                             .order_by(RolloutRow.created_at, RolloutRow.id))
            return [_rollout(r) for r in rows]

    def train_runs(self, train: str) -> dict[str, dict[str, StoreRunRecord]]:
        """The store runs of release train ``train``'s child operations: rollout -> store -> run."""
        out: dict[str, dict[str, StoreRunRecord]] = {}
        with session_scope(self.engine) as s:
            rows = s.scalars(select(StoreRunRow).join(RolloutRow, RolloutRow.id == StoreRunRow.rollout)
                             .where(RolloutRow.train == train))
            for r in rows:
                out.setdefault(r.rollout, {})[r.store] = _run(r)
        return out

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
                      .values(policy=dumps(request), updated_at=now))
            s.add(EventRow(ts=now, rollout=rollout_id, kind="request_changed",
                           reason=", ".join(f"{k}={v}" for k, v in sorted(changed.items())), detail=dumps(changed)))

    def set_rollout(self, rollout_id: str, now: datetime, **values: Any) -> None:
        with session_scope(self.engine) as s:
            s.execute(update(RolloutRow).where(RolloutRow.id == rollout_id).values(updated_at=now, **values))

    def waves(self, rollout_id: str) -> list[WaveRecord]:
        with session_scope(self.engine) as s:
            rows = s.scalars(select(WaveRow).where(WaveRow.rollout == rollout_id).order_by(WaveRow.index))
            return [WaveRecord(r.index, r.name, WaveState(r.status), r.budget, r.failures, r.reason) for r in rows]

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
        if self.split_runs(who, store=store):
            raise StoreSplit(f"store {store} is split across releases by operation {who}, which keeps its lock "
                             "until a person acts: fix what the store's record names, then continue the repair "
                             f"with `{repair_command(who)}`")
        raise LockHeld(f"store {store} is locked by operation {who} (since {since.isoformat() if since else '?'}); "
                       f"wait for it to finish, or `edgefleet rollout resume {who}` / `edgefleet rollout abort {who}`")

    def release_lock(self, store: str, holder: str) -> bool:
        """Release ``store`` if ``holder`` holds it; returns whether it did."""
        with session_scope(self.engine) as s:
            res = s.execute(update(StoreLockRow).where(StoreLockRow.store == store, StoreLockRow.holder == holder)
                            .values(holder=None, acquired_at=None))
            return bool(res.rowcount == 1)  # type: ignore[attr-defined]

    @contextlib.asynccontextmanager
    async def reserve(self, store: str, holder: str, *, now: datetime,
                      run: StoreRunRecord | None = None) -> AsyncIterator[RunCursor]:
        """Hold ``store`` for operation ``holder`` and give its store run (``run`` when the caller
        has it, else read) for the block; the lock is released on every way out of the block
        (return, exception, cancellation), except when the run ended ``split``: the store then
        stays locked until a person continues its repair. ``LockHeld`` (``StoreSplit``) at entry
        when another operation holds it."""
        if run is None:
            run = next((r for r in self.runs(holder) if r.store == store), None)
            if run is None:
                raise StateError(f"operation {holder} has no run for store {store}")
        self.acquire_lock(store, holder, now)
        cursor = RunCursor(holder, store, run.status)
        try:
            yield cursor
        finally:
            if cursor.state is not RunStatus.split_:
                self.release_lock(store, holder)

    def advance(self, run: StoreRunRecord | RunCursor, event: RunEvent, *, rollout: str | None = None,
                **values: Any) -> RunStatus:
        """Move a store run by ``event`` (IllegalTransition when the state table does not allow it),
        writing ``values`` (reason, step, ended_at, ...) with it; returns the new state. ``rollout``
        is needed with a ``StoreRunRecord`` (which does not carry it)."""
        if isinstance(run, StoreRunRecord):
            if rollout is None:
                raise StateError(f"advancing the run of store {run.store} needs its rollout id")
            run = RunCursor(rollout, run.store, run.status)
        self.write(stmt_advance(run, event, **values))
        return run.state

    def advance_rollout(self, rec: RolloutRecord, event: RolloutEvent, now: datetime, **values: Any) -> RolloutStatus:
        """Move a rollout by ``event`` (IllegalTransition when the state table does not allow it)."""
        to = RolloutStatus(next_state(Machine.rollout, rec.status, event))
        self.set_rollout(rec.id, now, status=to.value, **values)
        return to

    def split_runs(self, rollout_id: str | None = None, *,
                   store: str | None = None) -> list[tuple[str, StoreRunRecord]]:
        """(rollout, run) of store runs left ``split`` (of one rollout / one store when given)."""
        with session_scope(self.engine) as s:
            q = select(StoreRunRow).where(StoreRunRow.status == RunStatus.split_.value)
            if rollout_id is not None:
                q = q.where(StoreRunRow.rollout == rollout_id)
            if store is not None:
                q = q.where(StoreRunRow.store == store)
            return [(r.rollout, _run(r)) for r in s.scalars(q.order_by(StoreRunRow.rollout, StoreRunRow.store))]

    def lock_holder(self, store: str) -> str | None:
        with session_scope(self.engine) as s:
            row = s.get(StoreLockRow, store)
            return row.holder if row is not None else None

    def lock_holders(self, stores: Iterable[str]) -> dict[str, str]:
        """store -> holder, for those of ``stores`` someone holds."""
        wanted = list(stores)
        out: dict[str, str] = {}
        with session_scope(self.engine) as s:
            for i in range(0, len(wanted), 500):  # bounded IN lists
                for store, holder in s.execute(select(StoreLockRow.store, StoreLockRow.holder)
                                               .where(StoreLockRow.store.in_(wanted[i:i + 500]))):
                    if holder is not None:
                        out[store] = holder
        return out

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
               limit: int | None = 10_000, stores: Collection[str] | None = None,
               newest_first: bool = False) -> list[dict[str, Any]]:
        """Events in the order written (with ``newest_first``: newest time first, so ``limit``
        keeps the newest), of ``rollout``, ``store`` (or any of ``stores``) and ``kind`` when
        given; ``limit`` None: all of them."""
        with session_scope(self.engine) as s:
            q = select(EventRow).order_by(*((EventRow.ts.desc(), EventRow.id.desc()) if newest_first
                                            else (EventRow.id,)))
            conds = []
            if rollout is not None:
                conds.append(EventRow.rollout == rollout)
            if store is not None:
                conds.append(EventRow.store == store)
            if stores is not None:
                conds.append(EventRow.store.in_(list(stores)))
            if kind is not None:
                conds.append(EventRow.kind == kind)
            if conds:
                q = q.where(and_(*conds))
            return [{"id": e.id, "ts": (_utc(e.ts) or e.ts).isoformat(), "rollout": e.rollout, "store": e.store,
                     "node": e.node, "kind": e.kind, "reason": e.reason, "detail": json.loads(e.detail or "{}")}
                    for e in s.scalars(q.limit(limit))]

    def count_events(self, rollout: str | None = None, *, stores: Collection[str] | None = None) -> int:
        """How many events the ledger holds (of ``rollout``, of ``stores`` when given); the report
        says when it cuts."""
        with session_scope(self.engine) as s:
            q = select(func.count()).select_from(EventRow)
            if rollout is not None:
                q = q.where(EventRow.rollout == rollout)
            if stores is not None:
                q = q.where(EventRow.store.in_(list(stores)))
            return int(s.scalar(q) or 0)

    def event(self, now: datetime, kind: str, *, rollout: str | None = None, store: str | None = None,
              node: str | None = None, reason: str = "", detail: Mapping[str, Any] | None = None) -> None:
        with session_scope(self.engine) as s:
            s.execute(insert(EventRow).values(**event_values(now, kind, rollout=rollout, store=store, node=node,
                                                             reason=reason, detail=detail)))


