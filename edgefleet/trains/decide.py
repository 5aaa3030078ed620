"""The train controller's decision: what a release train does now, given everything it knows.

Pure: ``decide(snapshot, fleet, now, *, node_duration)`` reads a ``TrainSnapshot`` (the train, its
stages and stores, the ledger's locks and releases), the inventory and the fleet time ``now``, and
returns a ``Decision``: the actions to take now (``Dispatch``, ``Resume``, ``SetStage``,
``Promote``, ``Finish``) and what the train waits for (``Wait``, said for people). The adapter
(``edgefleet.trains.controller``) applies them; the next tick decides again from what happened.

Rules, in order:

1. A finished train (succeeded, aborted) does nothing. A dispatched store whose child operation is
   not ``live`` (its runner died) is resumed, whatever the train's status: a child in flight
   finishes, and holds its store until it does.
2. Requests: an abort with rollback turns the train ``rolling_back``, an abort without one ends it
   ``aborted``; a pause turns a running train ``paused``. A release revoked under a running train
   halts it.
3. Stages, in order; only the first stage not passed may run. A locked stage unlocks (``running``)
   when every earlier stage passed and the train runs. A running stage whose failures (stores
   ``failed`` or ``rolled_back``) exceed its budget (``rollout.plan.budget_allowed`` over the
   stage's stores) fails and halts the train: nothing of a later stage is ever dispatched. Once
   every store of the stage is done within the budget, the stage soaks until the last store's
   finish plus its soak (a stage where no store needed work soaks nothing). When the soak is over
   it passes, unless it needs a person (``approve``, or the canary stage of a ``manual_promote``
   train): then it awaits approval and the train pauses until ``train approve``. The first stage
   passing promotes the release to ``stable`` with the evidence (its stores, failures, budget,
   finish and soak). The first dispatch of a ``built`` release promotes it to ``canary``. The
   last stage passing ends the train ``succeeded``. A paused train's stages still record their
   stores' outcomes (and fail), but nothing passes or unlocks until it runs again.
4. A store of the running stage is due now when it is pending, not on the release yet, not held by
   another operation, outside every freeze, and it fits in what is left of its maintenance
   window: ``next_allowed_start(store, fleet.freezes, now, nodes * node_duration) == now``; and
   the stage's caps (global, per region, per country, counted over the stage's stores in flight)
   allow it. Due stores are dispatched as one child per region.
5. Rolling back: every store of the train still on the release (and not in flight) goes back to
   its last known-good release, under the same windows, freezes, locks and caps (the caps of its
   own stage), one rollback child per stage and region; a store whose rollback failed is not
   tried again. When none is left in flight or to do, the train ends ``aborted``.

Stores that left the inventory count as done (nothing is sent to them); a store already on the
release counts as succeeded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from edgefleet.inventory.model import Fleet, Store
from edgefleet.rollout.plan import budget_allowed
from edgefleet.schedule.windows import freeze_at, next_allowed_start
from edgefleet.trains.model import (
    Action,
    Decision,
    Dispatch,
    Finish,
    Promote,
    Resume,
    SetStage,
    StagePolicy,
    StageProgress,
    StageStatus,
    StoreProgress,
    StoreState,
    TrainSnapshot,
    TrainStatus,
    Wait,
)

__all__ = ["WAIT_DETAIL", "decide", "stage_failures"]

WAIT_DETAIL = 20
"""At most this many stores are named one by one in a decision's waits (the rest are counted)."""

_DONE = frozenset({StoreState.succeeded, StoreState.failed, StoreState.rolled_back, StoreState.returned})
_FAILED = frozenset({StoreState.failed, StoreState.rolled_back})


def _utc_text(t: datetime) -> str:
    return f"{t.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def _local_text(t: datetime, store: Store) -> str:
    return f"{t.astimezone(ZoneInfo(store.timezone)):%Y-%m-%d %H:%M} {store.timezone}"


@dataclass
class _Draft:
    snap: TrainSnapshot
    fleet: Fleet
    now: datetime
    node_duration: timedelta
    actions: list[Action] = field(default_factory=list)
    waits: list[Wait] = field(default_factory=list)
    status: TrainStatus = TrainStatus.running
    release_state: str = ""

    def finish(self, status: TrainStatus, reason: str) -> None:
        if status is not self.status:
            self.actions.append(Finish(status, reason))
            self.status = status

    def policy(self, stage: int) -> StagePolicy:
        return self.snap.spec.stages[stage].policy

    def members(self, stage: int) -> list[StoreProgress]:
        return [p for _, p in sorted(self.snap.stores.items()) if p.stage == stage]

    def store_done(self, p: StoreProgress) -> bool:
        return (p.state in _DONE or p.store not in self.fleet.stores
                or (p.state is StoreState.pending and self.snap.current.get(p.store) == self.snap.spec.release))


def stage_failures(members: Iterable[StoreProgress]) -> int:
    """The stores of a stage that count against its failure budget (failed or rolled back)."""
    return sum(1 for p in members if p.state in _FAILED)


def decide(snapshot: TrainSnapshot, fleet: Fleet, now: datetime, *, node_duration: timedelta) -> Decision:
    """What the train does now (see the module docstring)."""
    d = _Draft(snapshot, fleet, now, node_duration, status=snapshot.status, release_state=snapshot.release_state)
    if snapshot.status in (TrainStatus.succeeded, TrainStatus.aborted):
        return Decision(())
    _resume_dead(d)
    if snapshot.abort_requested and snapshot.status is not TrainStatus.rolling_back:
        if snapshot.rollback_requested:
            d.finish(TrainStatus.rolling_back, "a person asked for the train's stores to go back to their last "
                                               f"known-good release; {snapshot.spec.release} is revoked")
        else:
            d.finish(TrainStatus.aborted, "aborted by a person")
            return Decision(tuple(d.actions))
    if d.status is TrainStatus.rolling_back:
        _roll_back(d)
        return Decision(tuple(d.actions), tuple(d.waits))
    if d.status is TrainStatus.running and snapshot.pause_requested:
        d.finish(TrainStatus.paused, "paused by a person (`edgefleet train resume` continues it)")
    if d.status is TrainStatus.running and d.release_state == "revoked":
        d.finish(TrainStatus.halted, f"release {snapshot.spec.release} was revoked while the train ran")
    stage = _advance_stages(d)
    if stage is not None and d.status is TrainStatus.running:
        _dispatch(d, stage, rollback=False)
    if d.status is TrainStatus.halted:
        d.waits.append(Wait(f"halted: nothing more is started; `edgefleet train abort {snapshot.id} --rollback` "
                            "returns its stores"))
    return Decision(tuple(d.actions), tuple(d.waits))


def _resume_dead(d: _Draft) -> None:
    seen: set[str] = set()
    for sid, p in sorted(d.snap.stores.items()):
        if p.state is StoreState.dispatched and p.rollout and not p.live and p.rollout not in seen:
            seen.add(p.rollout)
            store = d.fleet.stores.get(sid)
            d.actions.append(Resume(p.rollout, store.region if store else ""))


def _needs_person(d: _Draft, index: int) -> bool:
    return d.policy(index).approve or (index == 0 and d.snap.spec.manual_promote)


def _advance_stages(d: _Draft) -> int | None:
    """Move the stages as far as they go now; the index of the stage whose stores may be
    dispatched (None: none may)."""
    failed = [st.name for st in d.snap.stages if st.status is StageStatus.failed]
    if failed:
        if d.status in (TrainStatus.running, TrainStatus.paused):
            d.finish(TrainStatus.halted, f"stage {failed[0]} failed")
        return None
    for st in d.snap.stages:
        status, soak_until = st.status, st.soak_until
        if status is StageStatus.passed:
            continue
        if status is StageStatus.locked:
            if d.status is not TrainStatus.running:
                d.waits.append(Wait(f"stage {st.name} unlocks when the train runs again (it is {d.status.value})"))
                return None
            d.actions.append(SetStage(st.index, StageStatus.running, "every earlier stage passed"))
            status = StageStatus.running
        if status is StageStatus.running:
            members = d.members(st.index)
            failures, budget = stage_failures(members), budget_allowed(d.policy(st.index).failure_budget, len(members))
            if failures > budget:
                why = (f"{failures} of its {len(members)} stores failed or were rolled back, over its budget of "
                       f"{budget}: " + ", ".join(p.store for p in members if p.state in _FAILED)[:400])
                d.actions.append(SetStage(st.index, StageStatus.failed, why))
                d.finish(TrainStatus.halted, f"stage {st.name} failed: {why}")
                return None
            if not all(d.store_done(p) for p in members):
                if d.status is TrainStatus.running and d.release_state == "built":
                    d.actions.append(Promote("canary", {"train": d.snap.id, "stage": st.name}))
                    d.release_state = "canary"
                return st.index if d.status is TrainStatus.running else None
            soak_until = _soak(d, st, members, failures, budget)
            status = StageStatus.soaking
        if status is StageStatus.soaking:
            assert soak_until is not None
            if d.now < soak_until:
                following = d.snap.stages[st.index + 1].name if st.index + 1 < len(d.snap.stages) else None
                what = f"stage {following} unlocks" if following else "the train finishes"
                d.waits.append(Wait(f"{what} after the soak of stage {st.name} at {_utc_text(soak_until)}",
                                    until=soak_until))
                return None
            if _needs_person(d, st.index) and not st.approved:
                d.actions.append(SetStage(st.index, StageStatus.awaiting_approval, "gate and soak passed"))
                status = StageStatus.awaiting_approval
        if status is StageStatus.awaiting_approval and not _approved(d, st):
            return None
        if d.status is not TrainStatus.running:
            d.waits.append(Wait(f"stage {st.name} passes when the train runs again (it is {d.status.value})"))
            return None
        _pass(d, st)
    if d.snap.stages:
        d.finish(TrainStatus.succeeded, f"every stage passed; {d.snap.spec.release} is on the train's stores")
    return None


def _soak(d: _Draft, st: StageProgress, members: Sequence[StoreProgress], failures: int, budget: int) -> datetime:
    """The stage is done within its budget: it soaks from its last store's finish (no soak when
    none of its stores needed work). Returns the end of the soak."""
    finishes = [p.finished_at for p in members if p.finished_at is not None]
    finished = max(finishes) if finishes else d.now
    soak_until = finished + d.policy(st.index).soak if finishes else d.now
    d.actions.append(SetStage(st.index, StageStatus.soaking, f"{failures} failures within its budget of {budget}",
                              finished_at=finished, soak_until=soak_until))
    return soak_until


def _approved(d: _Draft, st: StageProgress) -> bool:
    """A stage awaiting a person: approved now (a train paused only for it runs again), or the
    train pauses until it is."""
    command = f"`edgefleet train approve {d.snap.id}`"
    if not st.approved:
        d.finish(TrainStatus.paused, f"stage {st.name} awaits approval: {command}")
        d.waits.append(Wait(f"stage {st.name} awaits approval: {command}"))
        return False
    if d.status is TrainStatus.paused and not d.snap.pause_requested:
        d.finish(TrainStatus.running, f"stage {st.name} approved")
    return True


def _pass(d: _Draft, st: StageProgress) -> None:
    d.actions.append(SetStage(st.index, StageStatus.passed,
                              "approved by a person" if _needs_person(d, st.index) else "gate and soak passed"))
    if st.index == 0 and d.release_state != "stable":
        members = d.members(0)
        if d.release_state == "built":  # nothing of the stage needed work: the lifecycle still goes by canary
            d.actions.append(Promote("canary", {"train": d.snap.id, "stage": st.name}))
        d.actions.append(Promote("stable", {
            "train": d.snap.id, "stage": st.name,
            "stores": [p.store for p in members if p.state is StoreState.succeeded],
            "failures": [p.store for p in members if p.state in _FAILED],
            "budget": budget_allowed(d.policy(0).failure_budget, len(members)),
            "finished_at": st.finished_at.isoformat() if st.finished_at else None,
            "soak_until": st.soak_until.isoformat() if st.soak_until else None,
            "approved": st.approved}))
        d.release_state = "stable"


# -- dispatching ----------------------------------------------------------------------------------------

@dataclass
class _Caps:
    """The train's stores in flight, per region and country, as dispatches are added."""

    total: int = 0
    region: Counter[str] = field(default_factory=Counter)
    country: Counter[str] = field(default_factory=Counter)

    def add(self, store: Store) -> None:
        self.total += 1
        self.region[store.region] += 1
        self.country[store.country] += 1

    def allow(self, policy: StagePolicy, store: Store) -> str | None:
        """None when one more store fits the caps; else which cap is full."""
        for limit, used, what in ((policy.max_concurrent, self.total, "the stage's concurrency cap"),
                                  (policy.max_per_region, self.region[store.region], f"region {store.region}'s cap"),
                                  (policy.max_per_country, self.country[store.country],
                                   f"country {store.country}'s cap")):
            if limit is not None and used >= limit:
                return f"{what} ({limit}) is full"
        return None


def _in_flight(d: _Draft) -> dict[int, _Caps]:
    """Per stage, its stores in flight (a forward train has one stage in flight at a time; a
    rollback may have several, each under its own stage's caps)."""
    caps: dict[int, _Caps] = {i: _Caps() for i in range(len(d.snap.spec.stages))}
    for p in d.snap.stores.values():
        store = d.fleet.stores.get(p.store)
        if p.state is StoreState.dispatched and store is not None:
            caps.setdefault(p.stage, _Caps()).add(store)
    return caps


def _not_due(d: _Draft, store: Store) -> Wait | None:
    """Why ``store`` may not start now (None: it may)."""
    holder = d.snap.locks.get(store.id)
    if holder is not None:
        return Wait(f"{store.id}: held by operation {holder}")
    need = d.node_duration * len(store.nodes)
    start = next_allowed_start(store, d.fleet.freezes, d.now, need)
    if start == d.now:
        return None
    frozen = freeze_at(d.fleet.freezes, store, d.now)
    why = f"frozen ({frozen.name})" if frozen is not None else "outside its window"
    if start is None:
        return Wait(f"{store.id}: {why}; no window of {need} fits before the planning horizon")
    return Wait(f"{store.id}: {why}; next window {_local_text(start, store)}", until=start)


def _dispatch(d: _Draft, stage: int | None, *, rollback: bool,
              candidates: Sequence[StoreProgress] | None = None) -> None:
    """Dispatch the due stores among ``candidates`` (the pending stores of ``stage`` by default),
    one child per stage and region."""
    if candidates is None:
        assert stage is not None
        candidates = [p for p in d.members(stage) if p.state is StoreState.pending and not d.store_done(p)]
    caps = _in_flight(d)
    chosen: dict[tuple[int, str], list[str]] = {}
    waits: list[Wait] = []
    for p in candidates:
        store = d.fleet.stores[p.store]
        why = _not_due(d, store)
        if why is None:
            full = caps[p.stage].allow(d.policy(p.stage), store)
            why = Wait(f"{store.id}: {full}") if full else None
        if why is not None:
            waits.append(why)
            continue
        caps[p.stage].add(store)
        chosen.setdefault((p.stage, store.region), []).append(store.id)
    for (index, region), stores in sorted(chosen.items()):
        d.actions.append(Dispatch(index, region, tuple(sorted(stores)), rollback=rollback))
    waits.sort(key=lambda w: (w.until or d.now, w.reason))
    d.waits.extend(waits[:WAIT_DETAIL])
    if len(waits) > WAIT_DETAIL:
        d.waits.append(Wait(f"{len(waits) - WAIT_DETAIL} more stores wait for their windows, a freeze, a lock or "
                            "a cap", until=waits[WAIT_DETAIL].until))


def _roll_back(d: _Draft) -> None:
    """``train abort --rollback``: return the train's stores still on the release (rule 5)."""
    release = d.snap.spec.release
    in_flight = [p for p in d.snap.stores.values() if p.state is StoreState.dispatched]
    todo: list[StoreProgress] = []
    stuck: list[str] = []
    for sid, p in sorted(d.snap.stores.items()):
        if (p.state in (StoreState.dispatched, StoreState.returned) or sid not in d.fleet.stores
                or d.snap.current.get(sid) != release):
            continue
        if p.returning and p.state is StoreState.failed:
            stuck.append(f"{sid} (its rollback failed)")
        elif d.snap.last_known_good.get(sid) in (None, release):
            stuck.append(f"{sid} (no known-good release other than {release} is recorded)")
        else:
            todo.append(p)
    if not in_flight and not todo:
        returned = sum(1 for p in d.snap.stores.values() if p.state is StoreState.returned)
        left = f"; still on {release}: {', '.join(stuck[:10])}" if stuck else ""
        d.finish(TrainStatus.aborted, f"rolled back: {returned} stores returned to their last known-good release{left}")
        return
    _dispatch(d, None, rollback=True, candidates=todo)
    if in_flight:
        d.waits.append(Wait(f"{len(in_flight)} stores in flight finish before the train ends"))
