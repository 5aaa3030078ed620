"""What users do, as plain functions: plan and run a rollout, roll a release back across the fleet,
provision a store, resume, abort, and read a rollout's status. The CLI and the Prefect flows call
these; each records the operation in the ledger first, then runs the executor on it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from edgefleet.errors import InputError, StateError
from edgefleet.inventory.model import Fleet
from edgefleet.releases.catalog import ReleaseCatalog, ReleaseState
from edgefleet.releases.reach import check_reach, outside_reach
from edgefleet.rollout.endpoints import Endpoints
from edgefleet.rollout.executor import EngineSettings, execute
from edgefleet.rollout.ledger import (
    FINISHED,
    RUN_DONE,
    Kind,
    Ledger,
    RolloutRecord,
    RolloutStatus,
    RunCursor,
    RunStatus,
    new_rollout_id,
    repair_command,
    stmt_advance,
    stmt_run,
)
from edgefleet.rollout.liveness import EXECUTOR_STALE_AFTER, executor_live
from edgefleet.rollout.plan import RolloutPlan, RolloutPolicy, budget_allowed, plan_rollout
from edgefleet.rollout.request import OVERRIDABLE, RolloutRequest
from edgefleet.rollout.states import RolloutEvent, RunEvent, SkipCause

__all__ = [
    "Created",
    "abort",
    "check_provision_reach",
    "check_request_reach",
    "create_provision",
    "create_rollback",
    "create_rollout",
    "plan",
    "plan_request",
    "record_rollout",
    "resume",
    "run",
    "saved_request",
    "settings_for",
    "status",
]


@dataclass(frozen=True)
class Created:
    record: RolloutRecord
    plan: RolloutPlan | None
    skipped: tuple[tuple[str, str], ...] = ()
    request: RolloutRequest | None = None


def settings_for(policy: RolloutPolicy, base: EngineSettings | None = None) -> EngineSettings:
    """The engine settings a rollout of ``policy`` with ``base`` runs with (``RolloutRequest.of``
    merges them; this is its settings half)."""
    return RolloutRequest.of("rollout", "-", policy, base).settings


def _current(ledger: Ledger) -> dict[str, str | None]:
    return {s: c for s, (c, _lkg) in ledger.store_releases().items()}


def plan(fleet: Fleet, engine: Engine, release: str, policy: RolloutPolicy, now: datetime, *,
         stores: Sequence[str] | None = None) -> RolloutPlan:
    """The plan of rolling ``release`` out now (refuses an unknown or revoked release)."""
    return plan_request(fleet, engine, RolloutRequest.of("rollout", release, policy, stores=stores), now)


def plan_request(fleet: Fleet, engine: Engine, request: RolloutRequest, now: datetime) -> RolloutPlan:
    """The plan of ``request`` now (refuses an unknown or revoked release)."""
    rel = ReleaseCatalog(engine).get(request.release)
    return plan_rollout(fleet, request.release, request.policy(), now, current=_current(Ledger(engine)),
                        release_state=rel.state.value, stores=request.stores)


def create_rollout(fleet: Fleet, engine: Engine, release: str, policy: RolloutPolicy, now: datetime, *,
                   settings: EngineSettings | None = None, operator: str = "", stores: Sequence[str] | None = None
                   ) -> Created:
    """Plan and record a rollout of ``release`` (status planned): ``record_rollout`` of the request
    made of ``policy`` and ``settings``."""
    return record_rollout(fleet, engine, RolloutRequest.of("rollout", release, policy, settings, stores=stores), now,
                          operator=operator)


def record_rollout(fleet: Fleet, engine: Engine, request: RolloutRequest, now: datetime, *, operator: str = "",
                   canary_stores: Collection[str] = (), force_reason: str | None = None,
                   train: str | None = None) -> Created:
    """Plan ``request`` and record it (status planned): the request whole, its waves and one
    planned row per store (wave, earliest start, from-release), which the executor consumes;
    ``train``: the release train it is a child of (``edgefleet.trains``).

    A release that is not stable may reach only canary stores (``edgefleet.releases.reach``;
    ``canary_stores`` adds to the inventory's): ReleaseNotStable otherwise, unless ``force_reason``
    is given, which is recorded as an event ``release_forced``."""
    state, p = check_request_reach(fleet, engine, request, now, canary_stores=canary_stores,
                                   force_reason=force_reason)
    ledger = Ledger(engine)
    planned = p.stores()
    reached = [ps.store_id for ps in planned]
    rid = new_rollout_id("rollout", now)
    rec = ledger.create_rollout(
        rollout_id=rid, kind=Kind.rollout, release=request.release, now=now, policy=request.to_json(),
        plan=_notes(p.skipped, p.unschedulable), operator=operator,
        waves=[(w.index, w.name, w.failure_budget) for w in p.waves],
        runs=[(ps.store_id, ps.wave, ps.from_release, request.release) for ps in planned],
        starts={ps.store_id: ps.start for ps in planned}, train=train)
    for sid, why in p.unschedulable:
        ledger.event(now, "store_unschedulable", rollout=rid, store=sid, reason=why)
    _record_forced(ledger, fleet, now, rid, request.release, state, reached, canary_stores=canary_stores,
                   force_reason=force_reason, operator=operator)
    return Created(rec, p, p.skipped, request)


def check_request_reach(fleet: Fleet, engine: Engine, request: RolloutRequest, now: datetime, *,
                        canary_stores: Collection[str] = (), force_reason: str | None = None
                        ) -> tuple[str, RolloutPlan]:
    """The release's state and the plan of ``request`` now, after checking that the stores it would
    put the release on are within the release's reach (``edgefleet.releases.reach.check_reach``).
    Writes nothing: a scheduled run checks this before it waits for its window."""
    if request.kind != "rollout":
        raise InputError(f"record_rollout takes a rollout request, not a {request.kind}")
    rel = ReleaseCatalog(engine).require_rollable(request.release)  # the release row, read once
    p = plan_rollout(fleet, request.release, request.policy(), now, current=_current(Ledger(engine)),
                     release_state=rel.state.value, stores=request.stores)
    check_reach(fleet, request.release, rel.state.value, [ps.store_id for ps in p.stores()],
                canary_stores=canary_stores, force_reason=force_reason)
    return rel.state.value, p


def _record_forced(ledger: Ledger, fleet: Fleet, now: datetime, rollout_id: str, release: str, state: str,
                   stores: Sequence[str], *, canary_stores: Collection[str], force_reason: str | None,
                   operator: str) -> None:
    """The event ``release_forced`` when ``force_reason`` let ``release`` reach stores outside its reach."""
    outside = outside_reach(fleet, state, stores, canary_stores=canary_stores)
    if force_reason is not None and outside:
        ledger.event(now, "release_forced", rollout=rollout_id, reason=force_reason,
                     detail={"operator": operator, "release": release, "release_state": state, "stores": outside})


def _notes(skipped: Sequence[tuple[str, str]], unschedulable: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    return {"skipped": [{"store": s, "reason": r} for s, r in skipped],
            "unschedulable": [{"store": s, "reason": r} for s, r in unschedulable]}


def create_rollback(fleet: Fleet, engine: Engine, release: str, now: datetime, *, reason: str,
                    policy: RolloutPolicy | None = None, settings: EngineSettings | None = None,
                    operator: str = "", stores: Collection[str] | None = None) -> Created:
    """Revoke ``release`` and record a fleet rollback: every store wholly or partly on it (of
    ``stores`` when given) goes back to its last known-good release (one wave, the policy's caps
    and failure budget)."""
    request = RolloutRequest.of("rollback", release, policy or RolloutPolicy(canary=0, waves=("100%",)), settings)
    catalog = ReleaseCatalog(engine)
    rel = catalog.get(release)
    if rel.state is not ReleaseState.revoked:
        catalog.revoke(release, now=now, reason=reason or f"rolled back by {operator or 'edgefleet'}")
    ledger = Ledger(engine)
    known = ledger.store_releases()
    runs: list[tuple[str, int, str | None, str]] = []
    skipped: list[tuple[str, str]] = []
    chosen = set(stores) if stores is not None else None
    for sid in ledger.stores_on(release):
        if chosen is not None and sid not in chosen:
            continue
        if sid not in fleet.stores:
            skipped.append((sid, "not in the inventory any more"))
            continue
        _cur, lkg = known.get(sid, (None, None))
        if lkg is None or lkg == release:
            skipped.append((sid, f"no known-good release other than {release} is recorded"))
            continue
        lkg_rel = catalog.find(lkg)
        if lkg_rel is None or lkg_rel.state is ReleaseState.revoked:
            skipped.append((sid, f"its last known-good release {lkg} is missing or revoked"))
            continue
        runs.append((sid, 0, release, lkg))
    rid = new_rollout_id("rollback", now)
    budget = budget_allowed(request.failure_budget, len(runs))
    rec = ledger.create_rollout(rollout_id=rid, kind=Kind.rollback, release=release, now=now,
                                policy=request.to_json(), plan=_notes(skipped), operator=operator,
                                waves=[(0, "rollback", budget)] if runs else [], runs=runs)
    for sid, why in skipped:
        ledger.event(now, "store_not_rolled_back", rollout=rid, store=sid, reason=why)
    return Created(rec, None, tuple(skipped), request)


def create_provision(fleet: Fleet, engine: Engine, home: Path, store_id: str, release: str, now: datetime, *,
                     settings: EngineSettings | None = None, operator: str = "", force_reason: str | None = None
                     ) -> Created:
    """Record the provisioning of one store on ``release``: its secrets are created now when the
    ledger has never seen the store (and refused missing otherwise). A release that is not stable
    may provision only a canary store, unless ``force_reason`` is given (event ``release_forced``)."""
    from edgefleet.secrets import ensure_secrets

    if store_id not in fleet.stores:
        raise InputError(f"no store {store_id!r} in the inventory {fleet.source or ''}".rstrip())
    request = RolloutRequest.build(kind="provision", release=release, stores=(store_id,),
                                   settings=settings or EngineSettings())
    state = check_provision_reach(fleet, engine, release, (store_id,), force_reason=force_reason)
    ledger = Ledger(engine)
    seen = ledger.seen_store(store_id)
    # The CAs' validity starts at the real time, not the rollout's clock: real TLS stacks (and the
    # simulator's) check certificates against the wall clock, and a simulated clock may run ahead.
    ensure_secrets(home, store_id, cluster_exists=seen, now=datetime.now(UTC))
    rid = new_rollout_id("provision", now)
    rec = ledger.create_rollout(rollout_id=rid, kind=Kind.provision, release=release, now=now,
                                policy=request.to_json(), plan={}, operator=operator,
                                waves=[(0, "provision", 0)], runs=[(store_id, 0, None, release)],
                                starts={store_id: now})
    ledger.write(stmt_run(rid, store_id, detail={"cluster_exists": seen}))
    _record_forced(ledger, fleet, now, rid, release, state, (store_id,), canary_stores=(),
                   force_reason=force_reason, operator=operator)
    return Created(rec, None, (), request)


def check_provision_reach(fleet: Fleet, engine: Engine, release: str, stores: Sequence[str], *,
                          force_reason: str | None = None) -> str:
    """The release's state, after checking that it may be provisioned on ``stores`` (refused: an
    unknown or revoked release, or ReleaseNotStable naming the non-canary stores). Writes nothing:
    ``provision`` of several stores checks them all before it provisions any."""
    rel = ReleaseCatalog(engine).require_rollable(release)
    check_reach(fleet, release, rel.state.value, stores, force_reason=force_reason)
    return rel.state.value


def saved_request(record: RolloutRecord, **override: Any) -> RolloutRequest:
    """The request saved with ``record``, with settings ``override`` (None values ignored)."""
    return RolloutRequest.from_saved(record.kind.value, record.release, record.policy, **override)


async def run(fleet: Fleet, home: Path, engine: Engine, endpoints: Endpoints, rollout_id: str, *,
              settings: EngineSettings | None = None) -> RolloutRecord:
    """Execute a recorded rollout (or continue it) to its end, a halt or a pause."""
    return await execute(fleet=fleet, home=home, engine=engine, endpoints=endpoints, rollout_id=rollout_id,
                         settings=settings)


async def resume(fleet: Fleet, home: Path, engine: Engine, endpoints: Endpoints, rollout_id: str, *,
                 decision: str | None = None, settings: EngineSettings | None = None,
                 overrides: dict[str, Any] | None = None) -> RolloutRecord:
    """Continue a rollout where the ledger says (after a crash, or a pause with ``decision``
    ``approve``/``reject``). Settings: ``settings``, else the saved request's with ``overrides``
    (e.g. ``{"node_ready_timeout_s": 900}``; None values keep the saved ones), saved back to the
    ledger when they change something, so a later resume keeps them."""
    ledger = Ledger(engine)
    rec = ledger.rollout(rollout_id)
    if rec.status in FINISHED and not ledger.split_runs(rollout_id):
        raise StateError(f"rollout {rollout_id} is {rec.status.value} ({rec.reason}); nothing to resume")
    if decision is not None:
        if decision not in ("approve", "reject"):
            raise InputError(f"decision {decision!r}: use approve or reject")
        if rec.status is not RolloutStatus.paused:
            raise StateError(f"rollout {rollout_id} is {rec.status.value}, not paused: there is nothing to decide")
        ledger.set_rollout(rollout_id, endpoints.clock(), decision=decision)
        ledger.event(endpoints.clock(), f"decision_{decision}", rollout=rollout_id)
    elif rec.status is RolloutStatus.paused:
        raise StateError(f"rollout {rollout_id} is paused ({rec.reason}); resume it with --approve or --reject")
    if settings is None:
        saved = saved_request(rec)
        changed = {k: v for k, v in (overrides or {}).items() if v is not None}
        if set(changed) - set(OVERRIDABLE):
            raise InputError(f"resume cannot override {', '.join(sorted(set(changed) - set(OVERRIDABLE)))}; "
                             f"it overrides {', '.join(OVERRIDABLE)}")
        request = saved.with_settings(**changed)
        if request != saved:
            ledger.save_request(rollout_id, endpoints.clock(), request.to_json(),
                                {k: request.settings.model_dump(mode="json")[k] for k in changed})
        settings = request.settings
    return await execute(fleet=fleet, home=home, engine=engine, endpoints=endpoints, rollout_id=rollout_id,
                         settings=settings)


def abort(engine: Engine, rollout_id: str, now: datetime, *, stale_after: timedelta = EXECUTOR_STALE_AFTER
          ) -> RolloutRecord:
    """Ask a running rollout to stop starting stores (running ones finish their current node). A
    rollout with no live executor (never started, paused, or its heartbeat is stale) is marked
    aborted at once: its unstarted stores skipped, its store locks released."""
    ledger = Ledger(engine)
    rec = ledger.rollout(rollout_id)
    if rec.status in FINISHED:
        raise StateError(f"rollout {rollout_id} is already {rec.status.value}")
    ledger.set_rollout(rollout_id, now, abort_requested=True)
    ledger.event(now, "abort_requested", rollout=rollout_id)
    if not executor_live(rec, datetime.now(UTC), stale_after):
        stmts = []
        for r in ledger.runs(rollout_id):
            cursor = RunCursor(rollout_id, r.store, r.status)
            if r.status is RunStatus.pending:
                stmts.append(stmt_advance(cursor, RunEvent.skip, ended_at=now, reason="not started: the rollout was "
                                          "aborted", detail={**r.detail, "skipped": SkipCause.aborted.value}))
            elif r.status is RunStatus.running:
                stmts.append(stmt_advance(cursor, RunEvent.fail, ended_at=now, reason=f"aborted while its run had "
                                          f"stopped at step {r.step!r}: check the store"))
        if stmts:
            ledger.write(*stmts)
        split = {r.store for _, r in ledger.split_runs(rollout_id)}  # they stay locked until repaired
        for store in ledger.locks_held_by(rollout_id):
            if store not in split:
                ledger.release_lock(store, rollout_id)
        ledger.advance_rollout(rec, RolloutEvent.abort, now, reason="aborted by a person")
    return ledger.rollout(rollout_id)


def status(engine: Engine, rollout_id: str | None = None) -> dict[str, Any]:
    """A rollout's record, waves, store runs and counts (the latest rollout when no id is given)."""
    ledger = Ledger(engine)
    if rollout_id is None:
        recent = ledger.rollouts(limit=1)
        if not recent:
            raise StateError("the ledger has no rollouts yet")
        rollout_id = recent[0].id
    rec = ledger.rollout(rollout_id)
    runs = ledger.runs(rollout_id)
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.status.value] = counts.get(r.status.value, 0) + 1
    # Stores left split across releases come first, each with the command that continues its repair.
    split = [{"store": r.store, "from_release": r.from_release, "to_release": r.to_release, "reason": r.reason,
              "command": repair_command(rollout_id),
              "nodes": {n: {"release": rel, "ready": ready}
                        for n, (_s, rel, ready) in sorted(ledger.node_states(r.store).items())}}
             for r in runs if r.status is RunStatus.split_]
    return {"rollout": rec.to_json(), "split": split,
            "waves": [{"index": w.index, "name": w.name, "status": w.status, "budget": w.budget,
                       "failures": w.failures, "reason": w.reason,
                       "stores": sum(1 for r in runs if r.wave == w.index),
                       "done": sum(1 for r in runs if r.wave == w.index and r.status in RUN_DONE)}
                      for w in ledger.waves(rollout_id)],
            "counts": counts, "stores": [r.to_json() for r in runs]}
