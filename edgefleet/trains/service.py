"""What people do with release trains, as plain functions: start one (or plan it: ``dry_run``),
pause, resume, approve a stage, abort (with a rollback or not), and read a train's status as data.

The CLI (``edgefleet train``) and the flows call these. Starting a train resolves its stages once
(``edgefleet.trains.stages.assign``) and records it (``TrainStore.create``); the controller
(``edgefleet.trains.controller``) does everything after that, tick by tick. A person's pause,
abort and rollback are recorded as requests the next tick carries out, so they work the same
whether the train runs in ``edgefleet train run`` or on Prefect workers.

Release rule: a train takes a ``built``, ``canary`` or ``stable`` release (a stable one is simply
carried stage by stage again; only the canary stage may receive a release that is not stable yet,
which the controller enforces); a ``revoked`` release is refused.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

from edgefleet.errors import InputError, LockHeld, ReleaseInputError, StateError
from edgefleet.inventory.model import Fleet
from edgefleet.releases.catalog import ReleaseCatalog, ReleaseState
from edgefleet.rollout.ledger import Ledger
from edgefleet.schedule.windows import next_allowed_start
from edgefleet.trains.model import (
    ACTIVE,
    StageProgress,
    StageStatus,
    StoreProgress,
    StoreState,
    TrainSpec,
    TrainStatus,
    Wait,
)
from edgefleet.trains.stages import Assignment, PlannedStage, assign, plan_stages
from edgefleet.trains.store import TrainRecord, TrainStore, spec_settings

__all__ = ["Started", "abort", "approve", "node_duration", "pause", "resume", "start", "status"]

_WINDOW_HORIZON = timedelta(days=60)


def node_duration(spec: TrainSpec) -> timedelta:
    """What one node needs of a store's window: the train's engine settings' ``node_duration``."""
    return spec_settings(spec).node_duration


@dataclass(frozen=True)
class Started:
    """A train started (``train`` set) or planned (``dry_run``: nothing written)."""

    spec: TrainSpec
    assignment: Assignment
    plan: tuple[PlannedStage, ...]
    train: TrainRecord | None = None

    def to_json(self) -> dict[str, Any]:
        return {"train": self.train.to_json() if self.train else None, "release": self.spec.release,
                "dry_run": self.train is None, "notes": list(self.assignment.notes),
                "stages": [_planned_json(ps) for ps in self.plan]}


def _planned_json(ps: PlannedStage) -> dict[str, Any]:
    pol = ps.stage.policy
    return {"index": ps.index, "name": ps.stage.name, "selector": ps.stage.selector,
            "policy": {"failure_budget": pol.failure_budget, "soak_s": pol.soak.total_seconds(),
                       "approve": pol.approve, "max_concurrent": pol.max_concurrent,
                       "max_per_region": pol.max_per_region, "max_per_country": pol.max_per_country},
            "unlocks": ps.unlocks.isoformat(), "end": ps.end.isoformat() if ps.end else None,
            "stores": [{"store": p.store, "done": p.done, "start": p.start.isoformat() if p.start else None,
                        "start_local": _local(p.start, p.timezone), "timezone": p.timezone}
                       for p in ps.stores]}


def _local(when: datetime | None, zone: str) -> str | None:
    return when.astimezone(ZoneInfo(zone)).isoformat() if when else None


def _check_release(engine: Engine, release: str) -> None:
    rel = ReleaseCatalog(engine).get(release)
    if rel.state is ReleaseState.revoked:
        raise ReleaseInputError(f"release {release} is revoked ({rel.note or 'no reason recorded'}): no train may "
                                "carry it; build a new release")


def _check_holders(store: TrainStore, stores: Mapping[str, int]) -> None:
    held = {s: h for s in sorted(stores) if (h := store.active_holder(s)) is not None}
    if held:
        first, holder = next(iter(held.items()))
        more = f" (and {len(held) - 1} more stores)" if len(held) > 1 else ""
        raise LockHeld(f"store {first}{more} belongs to train {holder}, which is still active: wait for it to "
                       f"finish, or stop it with `edgefleet train abort {holder}`")


def start(fleet: Fleet, engine: Engine, spec: TrainSpec, now: datetime, *, dry_run: bool = False,
          operator: str = "") -> Started:
    """Resolve the stages of ``spec`` over ``fleet`` and record the train (``dry_run``: only plan it).

    Refused, with nothing written: an unknown or revoked release (exit 2), a stage selector the
    inventory does not know (exit 2), a store that belongs to another active train (LockHeld naming
    it)."""
    _check_release(engine, spec.release)
    current = {s: cur for s, (cur, _lkg) in Ledger(engine).store_releases().items()}
    assignment = assign(fleet, spec.stages, limit=spec.limit, current=current, release=spec.release)
    spec = replace(spec, stages=assignment.stages)
    trains = TrainStore(engine)
    plan = plan_stages(fleet, assignment, now, node_duration=node_duration(spec))
    if dry_run:  # the plan says what starting would refuse (create checks again, atomically)
        _check_holders(trains, assignment.stores)
        return Started(spec, assignment, plan)
    rec = trains.create(spec, assignment.stores, assignment.stage_names, now, operator=operator,
                        done=assignment.done)
    for note in assignment.notes:
        trains.event(now, "train_note", rec.id, reason=note)
    return Started(spec, assignment, plan, rec)


def _active(trains: TrainStore, train_id: str, doing: str) -> TrainRecord:
    rec = trains.get(train_id)
    if rec.status not in ACTIVE:
        raise StateError(f"train {train_id} is {rec.status.value}: there is nothing to {doing}")
    return rec


def pause(engine: Engine, train_id: str, now: datetime, *, operator: str = "") -> TrainRecord:
    """Ask the train to dispatch no more stores (children already working finish their store)."""
    trains = TrainStore(engine)
    rec = _active(trains, train_id, "pause")
    if rec.status is TrainStatus.rolling_back:
        raise StateError(f"train {train_id} is rolling back: it cannot be paused (its stores are going back to "
                         "their last known-good release)")
    if rec.status is TrainStatus.halted:
        raise StateError(f"train {train_id} is halted ({rec.reason}): it starts nothing more already")
    trains.request(train_id, now=now, pause=True)
    trains.event(now, "train_pause_requested", train_id, reason=f"by {operator or 'a person'}")
    return trains.get(train_id)


def resume(engine: Engine, train_id: str, now: datetime, *, operator: str = "") -> TrainRecord:
    """Lift a person's pause: the train dispatches again from its next tick."""
    trains = TrainStore(engine)
    rec = _active(trains, train_id, "resume")
    if rec.status is TrainStatus.halted:
        raise StateError(f"train {train_id} is halted ({rec.reason}): a failed stage does not resume; roll its "
                         f"stores back with `edgefleet train abort {train_id} --rollback`")
    if rec.status is not TrainStatus.paused and not rec.pause_requested:
        raise StateError(f"train {train_id} is {rec.status.value}, not paused: there is nothing to resume")
    waiting = [st.name for st in trains.stages(train_id) if st.status is StageStatus.awaiting_approval]
    if waiting and not rec.pause_requested:
        raise StateError(f"train {train_id} waits for a person to approve stage {waiting[0]}: "
                         f"`edgefleet train approve {train_id}` lets it go on")
    trains.request(train_id, now=now, pause=False)
    if rec.status is TrainStatus.paused and not waiting:  # else it stays paused until the approval
        trains.set_status(train_id, TrainStatus.running, f"resumed by {operator or 'a person'}", now)
    trains.event(now, "train_resumed", train_id, reason=f"by {operator or 'a person'}")
    return trains.get(train_id)


def _stage_index(trains: TrainStore, train_id: str, stage: str | None) -> int:
    stages = trains.stages(train_id)
    if stage is None:
        waiting = [s for s in stages if s.status is StageStatus.awaiting_approval]
        if not waiting:
            shown = ", ".join(f"{s.name} {s.status.value}" for s in stages)
            raise StateError(f"train {train_id} has no stage awaiting approval ({shown})")
        return waiting[0].index
    for s in stages:
        if stage in (s.name, str(s.index)):
            if s.status is not StageStatus.awaiting_approval:
                raise StateError(f"stage {s.name} of train {train_id} is {s.status.value}, not awaiting approval: "
                                 "there is nothing to approve yet")
            return s.index
    names = [s.name for s in stages]
    close = difflib.get_close_matches(stage, names, n=2)
    raise InputError(f"--stage {stage!r}: train {train_id} has no such stage (its stages: {', '.join(names)})"
                     + (f"; did you mean {' or '.join(close)}?" if close else ""))


def approve(engine: Engine, train_id: str, now: datetime, *, stage: str | None = None, operator: str = ""
            ) -> TrainRecord:
    """Approve a stage awaiting a person (``stage``: its name or index; default: the one waiting)."""
    trains = TrainStore(engine)
    _active(trains, train_id, "approve")
    index = _stage_index(trains, train_id, stage)
    trains.approve(train_id, index, now)
    trains.event(now, "train_stage_approved", train_id, reason=f"by {operator or 'a person'}", stage=index)
    return trains.get(train_id)


def abort(engine: Engine, train_id: str, now: datetime, *, rollback: bool = False, operator: str = ""
          ) -> TrainRecord:
    """Stop the train for good: no store is dispatched any more. ``rollback``: first bring the stores
    it touched back to their last known-good release (through their windows, gates and caps) and
    revoke the release."""
    trains = TrainStore(engine)
    rec = _active(trains, train_id, "abort")
    if rec.status is TrainStatus.rolling_back and not rollback:
        raise StateError(f"train {train_id} is already rolling back; it ends aborted when its stores are back")
    trains.request(train_id, now=now, abort=True, rollback=rollback or None)
    trains.event(now, "train_abort_requested", train_id, reason=f"by {operator or 'a person'}", rollback=rollback)
    return trains.get(train_id)


# -- status --------------------------------------------------------------------------------------------


def _waiting(engine: Engine, fleet: Fleet, rec: TrainRecord, now: datetime) -> list[Wait]:
    """What the train waits for now, in the controller's own words (its pure decision)."""
    from edgefleet.trains.controller import snapshot
    from edgefleet.trains.decide import decide

    return list(decide(snapshot(engine, fleet, rec.id), fleet, now, node_duration=node_duration(rec.spec)).waiting)


def _next_window(fleet: Fleet, store_id: str, now: datetime, per_node: timedelta) -> dict[str, Any]:
    store = fleet.stores.get(store_id)
    if store is None:
        return {"utc": None, "local": None, "note": "not in the inventory any more"}
    start = next_allowed_start(store, fleet.freezes, now, per_node * len(store.nodes), horizon=_WINDOW_HORIZON)
    if start is None:
        return {"utc": None, "local": None, "note": f"no window free of freezes within {_WINDOW_HORIZON.days} days"}
    return {"utc": start.isoformat(), "local": _local(start, store.timezone), "timezone": store.timezone}


def _store_window(fleet: Fleet, stage: StageProgress, sp: StoreProgress, now: datetime, per_node: timedelta
                  ) -> dict[str, Any] | None:
    """A pending store's next window: from now when its stage runs; after its stage unlocks otherwise."""
    if sp.state is not StoreState.pending:
        return None
    if stage.status is not StageStatus.running:
        return {"utc": None, "local": None, "note": f"when stage {stage.name} runs (it is {stage.status.value})"}
    return _next_window(fleet, sp.store, now, per_node)


def status(engine: Engine, fleet: Fleet, train_id: str, now: datetime) -> dict[str, Any]:
    """A train as data: its record, stages (status, soak, finished), stores (stage, state, child
    operation, next window in UTC and local time for those not done), counts, and what it waits for."""
    trains = TrainStore(engine)
    rec = trains.get(train_id)
    stages = trains.stages(train_id)
    stores = trains.stores(train_id)
    per_node = node_duration(rec.spec)
    reasons = trains.stage_reasons(train_id)
    counts: dict[str, int] = {}
    for sp in stores.values():
        counts[sp.state.value] = counts.get(sp.state.value, 0) + 1
    stage_rows = []
    for st in stages:
        mine = [sp for sp in stores.values() if sp.stage == st.index]
        stage_rows.append({
            "index": st.index, "name": st.name, "status": st.status.value, "reason": reasons.get(st.index, ""),
            "finished_at": st.finished_at.isoformat() if st.finished_at else None,
            "soak_until": st.soak_until.isoformat() if st.soak_until else None, "approved": st.approved,
            "stores": len(mine), "done": sum(1 for sp in mine if sp.state is StoreState.succeeded),
            "failed": sum(1 for sp in mine if sp.state in (StoreState.failed, StoreState.rolled_back))})
    store_rows = [{"store": sp.store, "stage": sp.stage, "stage_name": stages[sp.stage].name, "state": sp.state.value,
                   "rollout": sp.rollout, "next_window": _store_window(fleet, stages[sp.stage], sp, now, per_node)}
                  for sp in sorted(stores.values(), key=lambda p: (p.stage, p.store))]
    waiting = _waiting(engine, fleet, rec, now) if rec.status in ACTIVE else []
    return {"train": rec.to_json(), "now": now.isoformat(), "stages": stage_rows, "stores": store_rows,
            "counts": counts,
            "waiting": [{"reason": w.reason, "until": w.until.isoformat() if w.until else None} for w in waiting]}
