"""The release-train controller's adapter: read a train's snapshot from the state store, let the pure
``decide`` say what to do, and do it (``tick``); run a train in one process (``run_embedded``).

A tick:

1. ``snapshot``: the train, its stages and stores (``TrainStore``), and what its child operations
   did (the ledger's store runs of the rollouts whose ``train`` is the train): a dispatched store
   whose child finished becomes succeeded, failed, rolled back (a rollout child) or returned (a
   rollback child); one its child skipped goes back to pending (its next window), unless it is on
   the release already. A child that has not finished is *live* while its heartbeat is fresh
   (``STALE_AFTER`` of wall time, as ``rollout abort`` judges it) or, not started yet, while its
   dispatch is recent (``START_WITHIN``: a Prefect worker may take a while to pick it up);
2. the stores' new states are written back (with an event each);
3. ``decide`` (``edgefleet.trains.decide``) on the snapshot, the inventory and the fleet time;
4. its actions, in order: ``SetStage`` and ``Finish`` (with an event; a train aborted, or turned to
   rolling back, asks its children still running to stop starting stores), ``Promote`` (a catalog
   transition with an event holding the evidence), ``Dispatch`` (a child operation recorded in the
   ledger, its stores marked dispatched, then handed to the ``Dispatcher``), ``Resume`` (the child
   handed to the Dispatcher again; the executor continues it from the ledger, taking over the store
   locks its dead runner left, which only the same rollout id can).

A child is an ordinary rollout: a rollout of the release over the stores of one stage and region
(one wave, its failure budget the stores it holds: the stage's gate is the train's, judged from
the ledger), or a rollback to each store's last known-good release (``ops.create_rollback``,
which revokes the release). The Dispatcher starts it somewhere: in this process
(``EmbeddedDispatcher``), or as a Prefect flow run on its region's work pool.

Fleet time (``now``) is the endpoints' clock (the simulator's in tests and the demo); heartbeats
are wall time, as the executor writes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from sqlalchemy import Engine

from edgefleet.errors import EdgefleetError
from edgefleet.inventory.model import Fleet
from edgefleet.releases.catalog import ReleaseCatalog, ReleaseState
from edgefleet.rollout import operations as ops
from edgefleet.rollout.endpoints import Endpoints
from edgefleet.rollout.ledger import FINISHED, Kind, Ledger, RolloutRecord, RolloutStatus, RunStatus, StoreRunRecord
from edgefleet.rollout.plan import RolloutPolicy
from edgefleet.rollout.request import RolloutRequest
from edgefleet.rollout.settings import EngineSettings
from edgefleet.trains.decide import decide
from edgefleet.trains.model import (
    Decision,
    Dispatch,
    Finish,
    Promote,
    Resume,
    SetStage,
    StoreProgress,
    StoreState,
    TrainSnapshot,
    TrainStatus,
)
from edgefleet.trains.store import TrainRecord, TrainStore, spec_settings

__all__ = [
    "STALE_AFTER",
    "START_WITHIN",
    "Dispatcher",
    "EmbeddedDispatcher",
    "engine_settings",
    "run_embedded",
    "snapshot",
    "tick",
]

log = logging.getLogger("edgefleet.trains")

STALE_AFTER = timedelta(seconds=60)
"""A running child whose heartbeat is older than this (wall time) has lost its runner."""
START_WITHIN = timedelta(minutes=5)
"""A dispatched child not started after this long (wall time) was lost on its way to a runner."""
_DONE_EVENT = {StoreState.succeeded: "store_succeeded", StoreState.failed: "store_failed",
               StoreState.rolled_back: "store_rolled_back", StoreState.returned: "store_returned",
               StoreState.pending: "store_pending_again"}
_FINAL = (TrainStatus.succeeded, TrainStatus.aborted)


class Dispatcher(Protocol):
    """Starts a child operation somewhere, without waiting for it."""

    def launch(self, rollout_id: str, region: str) -> None: ...


def engine_settings(record: TrainRecord) -> EngineSettings:
    """The engine settings the train's children run with (the defaults when none were given)."""
    return spec_settings(record.spec)


# -- the snapshot ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Read:
    snap: TrainSnapshot
    record: TrainRecord
    changed: Mapping[str, StoreProgress]
    """Stores whose state the ledger moved since the train store last recorded it."""
    children: Mapping[str, RolloutRecord]


def _live(child: RolloutRecord, wall: datetime, stale_after: timedelta, start_within: timedelta) -> bool:
    if child.status is RolloutStatus.paused:  # waiting for a person, not dead
        return True
    limit = start_within if child.status is RolloutStatus.planned else stale_after
    return child.heartbeat_at is not None and wall - child.heartbeat_at < limit


def _outcome(p: StoreProgress, child: RolloutRecord | None, run: StoreRunRecord | None, on_release: bool,
             live: bool) -> StoreProgress:
    """The store as its child operation left it (``p`` when nothing changed)."""
    if p.state is not StoreState.dispatched or child is None:
        return StoreProgress(p.store, p.stage, p.state, p.rollout, finished_at=run.ended_at if run else None,
                             returning=child is not None and child.kind is Kind.rollback)
    back = child.kind is Kind.rollback
    state: StoreState | None = None
    if run is None:  # planned without it: it was on the target already (or, for a rollback, off the release)
        state = (StoreState.failed if on_release else StoreState.returned) if back else (
            StoreState.succeeded if on_release else StoreState.pending)
    elif run.status is RunStatus.succeeded:
        state = StoreState.returned if back else StoreState.succeeded
    elif run.status is RunStatus.rolled_back and not back:
        state = StoreState.rolled_back
    elif run.status in (RunStatus.failed, RunStatus.refused, RunStatus.split_, RunStatus.rolled_back):
        state = StoreState.failed
    elif run.status is RunStatus.skipped or (run.status is RunStatus.pending and child.status in FINISHED):
        state = (StoreState.returned if back and not on_release else StoreState.succeeded if on_release and not back
                 else StoreState.pending)
    elif child.status in FINISHED:  # running, but its operation ended (aborted): the store is as it is
        state = StoreState.failed
    if state is None:
        return StoreProgress(p.store, p.stage, p.state, p.rollout, live=live, returning=back)
    return StoreProgress(p.store, p.stage, state, p.rollout, finished_at=run.ended_at if run else None,
                         returning=back)


def _read(engine: Engine, fleet: Fleet, train_id: str, wall: datetime, stale_after: timedelta,
          start_within: timedelta) -> _Read:
    trains, ledger = TrainStore(engine), Ledger(engine)
    rec = trains.get(train_id)
    stored = trains.stores(train_id)
    children = {c.id: c for c in ledger.train_rollouts(train_id)}
    runs = ledger.train_runs(train_id)
    releases = ledger.store_releases(stored)
    on_release = set(ledger.stores_on(rec.release)) & set(stored)
    stores: dict[str, StoreProgress] = {}
    changed: dict[str, StoreProgress] = {}
    for sid, p in stored.items():
        child = children.get(p.rollout) if p.rollout else None
        run = runs.get(p.rollout, {}).get(sid) if p.rollout else None
        live = child is not None and _live(child, wall, stale_after, start_within)
        now_p = _outcome(p, child, run, sid in on_release, live)
        stores[sid] = now_p
        if now_p.state is not p.state:
            changed[sid] = now_p
    holders = ledger.lock_holders(stored)
    locks = {s: h for s, h in holders.items() if h != stores[s].rollout or stores[s].state is not StoreState.dispatched}
    catalog = ReleaseCatalog(engine).find(rec.release)
    snap = TrainSnapshot(
        id=rec.id, spec=rec.spec, status=rec.status, release_state=catalog.state.value if catalog else "revoked",
        stages=tuple(trains.stages(train_id)), stores=stores, locks=locks,
        current={s: (rec.release if s in on_release else releases.get(s, (None, None))[0]) for s in stored},
        last_known_good={s: releases.get(s, (None, None))[1] for s in stored},
        pause_requested=rec.pause_requested, abort_requested=rec.abort_requested,
        rollback_requested=rec.rollback_requested)
    return _Read(snap, rec, changed, children)


def snapshot(engine: Engine, fleet: Fleet, train_id: str, *, wall: datetime | None = None,
             stale_after: timedelta = STALE_AFTER, start_within: timedelta = START_WITHIN) -> TrainSnapshot:
    """What ``decide`` reads about train ``train_id`` now (``wall``: the wall clock, for heartbeats)."""
    return _read(engine, fleet, train_id, wall or datetime.now(UTC), stale_after, start_within).snap


# -- the tick -------------------------------------------------------------------------------------------

def tick(engine: Engine, fleet: Fleet, home: Path, train_id: str, now: datetime, dispatcher: Dispatcher, *,
         wall: datetime | None = None, stale_after: timedelta = STALE_AFTER,
         start_within: timedelta = START_WITHIN) -> Decision:
    """One reconcile step of train ``train_id`` at fleet time ``now`` (see the module docstring)."""
    del home  # the children run where the dispatcher runs them, with their own home
    wall = wall or datetime.now(UTC)
    read = _read(engine, fleet, train_id, wall, stale_after, start_within)
    trains = TrainStore(engine)
    if read.changed:
        trains.set_stores(train_id, {s: (p.state, p.rollout) for s, p in read.changed.items()}, now)
        for sid, p in sorted(read.changed.items()):
            trains.event(now, _DONE_EVENT[p.state], train_id, store=sid, reason=f"child {p.rollout}",
                         rollout=p.rollout, stage=p.stage)
    decision = decide(read.snap, fleet, now, node_duration=engine_settings(read.record).node_duration)
    apply = _Apply(engine, fleet, read, now, wall, dispatcher)
    for action in decision.actions:
        apply.one(action)
    trains.touch(train_id, now)
    return decision


@dataclass
class _Apply:
    engine: Engine
    fleet: Fleet
    read: _Read
    now: datetime
    wall: datetime
    dispatcher: Dispatcher

    @property
    def train(self) -> str:
        return self.read.record.id

    def one(self, action: SetStage | Finish | Promote | Dispatch | Resume) -> None:
        trains = TrainStore(self.engine)
        if isinstance(action, SetStage):
            trains.set_stage(self.train, action, self.now)
            name = self.read.snap.stages[action.index].name
            trains.event(self.now, f"stage_{action.status.value}", self.train, reason=f"stage {name}: {action.reason}",
                         stage=action.index, soak_until=action.soak_until.isoformat() if action.soak_until else None)
        elif isinstance(action, Finish):
            trains.set_status(self.train, action.status, action.reason, self.now)
            trains.event(self.now, f"train_{action.status.value}", self.train, reason=action.reason)
            if action.status in (TrainStatus.aborted, TrainStatus.rolling_back):
                self._stop_children()
        elif isinstance(action, Promote):
            self._promote(action)
        elif isinstance(action, Dispatch):
            self._dispatch(action)
        else:
            Ledger(self.engine).set_rollout(action.rollout, self.now, heartbeat_at=self.wall)
            trains.event(self.now, "child_resumed", self.train, reason=f"child {action.rollout} lost its runner",
                         rollout=action.rollout, region=action.region)
            self.dispatcher.launch(action.rollout, action.region)

    def _promote(self, action: Promote) -> None:
        catalog, release = ReleaseCatalog(self.engine), self.read.record.release
        target = ReleaseState(action.to)
        current = catalog.get(release).state
        if current is target:
            return
        try:
            catalog.promote(release, target, now=self.now, note=f"promoted by train {self.train}")
        except EdgefleetError as e:
            TrainStore(self.engine).event(self.now, "release_not_promoted", self.train, reason=str(e), to=action.to)
            return
        TrainStore(self.engine).event(self.now, "release_promoted", self.train,
                                      reason=f"{release}: {current.value} -> {target.value}",
                                      release=release, to=target.value, evidence=dict(action.evidence))

    def _dispatch(self, action: Dispatch) -> None:
        trains, rec = TrainStore(self.engine), self.read.record
        settings = engine_settings(rec)
        operator = f"train {self.train}"
        try:
            if action.rollback:
                policy = RolloutPolicy(canary=0, waves=("100%",), failure_budget=len(action.stores),
                                       max_concurrent=settings.max_concurrent, max_per_region=settings.max_per_region,
                                       max_per_country=settings.max_per_country,
                                       node_duration=settings.node_duration, wave_soak=timedelta(0))
                made = ops.create_rollback(self.fleet, self.engine, rec.release, self.now, policy=policy,
                                           settings=settings, operator=operator, stores=action.stores,
                                           reason=f"train {self.train} rolled back by a person")
            else:
                request = RolloutRequest.build(kind="rollout", release=rec.release, stores=action.stores, canary=0,
                                               waves=("100%",), failure_budget=len(action.stores), settings=settings)
                made = ops.record_rollout(self.fleet, self.engine, request, self.now, operator=operator,
                                          train=self.train, canary_stores=action.stores if action.stage == 0 else ())
        except EdgefleetError as e:
            trains.event(self.now, "dispatch_refused", self.train, reason=str(e), stage=action.stage,
                         region=action.region, stores=list(action.stores))
            return
        rid = made.record.id
        # The dispatch time, in wall time, is the child's first heartbeat: it is live until a runner
        # takes it (``START_WITHIN``), then while its runner beats.
        Ledger(self.engine).set_rollout(rid, self.now, heartbeat_at=self.wall, train=self.train)
        trains.set_stores(self.train, {s: (StoreState.dispatched, rid) for s in action.stores}, self.now)
        trains.event(self.now, "child_dispatched", self.train, reason=f"{len(action.stores)} stores of {action.region}",
                     rollout=rid, stage=action.stage, region=action.region, rollback=action.rollback,
                     stores=list(action.stores))
        self.dispatcher.launch(rid, action.region)

    def _stop_children(self) -> None:
        """Ask the train's unfinished forward children to stop starting stores."""
        for rid, child in self.read.children.items():
            if child.kind is Kind.rollout and child.status not in FINISHED:
                with contextlib.suppress(EdgefleetError):
                    ops.abort(self.engine, rid, self.now)


# -- in one process -------------------------------------------------------------------------------------

class EmbeddedDispatcher:
    """Runs children as asyncio tasks of this process's event loop (``ops.run``, which resumes a
    child from the ledger when it ran before). ``launch`` may be called from any thread."""

    def __init__(self, fleet: Fleet, home: Path, engine: Engine, endpoints: Endpoints):
        self.fleet, self.home, self.engine, self.endpoints = fleet, home, engine, endpoints
        self._loop = asyncio.get_running_loop()
        self._tasks: dict[str, asyncio.Task[RolloutRecord]] = {}
        self._lock = threading.Lock()
        self.errors: list[tuple[str, BaseException]] = []

    def launch(self, rollout_id: str, region: str) -> None:
        self._loop.call_soon_threadsafe(self._start, rollout_id)

    def _start(self, rollout_id: str) -> None:
        with self._lock:
            task = self._tasks.get(rollout_id)
            if task is not None and not task.done():
                return  # its runner is alive in this process
            task = self._loop.create_task(ops.run(self.fleet, self.home, self.engine, self.endpoints, rollout_id),
                                          name=f"child {rollout_id}")
            task.add_done_callback(lambda t, rid=rollout_id: self._done(rid, t))  # type: ignore[misc]
            self._tasks[rollout_id] = task

    def _done(self, rollout_id: str, task: asyncio.Task[RolloutRecord]) -> None:
        if task.cancelled():
            return
        err = task.exception()
        if err is not None:  # its rollout stays unfinished without a heartbeat: the next ticks resume it
            log.error("child %s of the train failed: %s", rollout_id, err)
            self.errors.append((rollout_id, err))

    def running(self) -> int:
        """Children running in this process now."""
        with self._lock:
            return sum(1 for t in self._tasks.values() if not t.done())

    async def close(self) -> None:
        """Stop the children still running (their rollouts resume from the ledger later)."""
        with self._lock:
            tasks = [t for t in self._tasks.values() if not t.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


_STOPPED = frozenset({TrainStatus.succeeded, TrainStatus.aborted, TrainStatus.halted, TrainStatus.paused})


async def run_embedded(fleet: Fleet, home: Path, engine: Engine, endpoints: Endpoints, train_id: str, *,
                       poll_s: float = 1.0, on_tick: Callable[[Decision], None] | None = None) -> TrainRecord:
    """Tick train ``train_id`` every ``poll_s`` real seconds, its children running in this process,
    until it succeeded, was aborted, halted or paused and no child of it runs here any more; returns
    its record. Fleet time is the endpoints' clock."""
    dispatcher = EmbeddedDispatcher(fleet, home, engine, endpoints)
    trains = TrainStore(engine)
    try:
        while True:
            decision = await asyncio.to_thread(tick, engine, fleet, home, train_id, endpoints.clock(), dispatcher)
            if on_tick is not None:
                on_tick(decision)
            await asyncio.sleep(0)  # let the launches of this tick start
            rec = trains.get(train_id)
            if rec.status in _STOPPED and dispatcher.running() == 0:
                return rec
            await asyncio.sleep(poll_s)
    finally:
        await dispatcher.close()
