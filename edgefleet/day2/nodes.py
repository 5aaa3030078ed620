"""Run a day-2 node operation on a running store (``edgefleet node add|replace|remove``).

Each is recorded in the ledger as an operation of its own kind (``node_add``, ``node_replace``,
``node_remove``: one store run, its events, its end) and holds the store's lock for its whole
run, so it never overlaps a rollout, a train or another node operation of the same store. Every
step the store notices runs only inside the store's maintenance window and outside freezes, on
the clock of the endpoints (the simulator's in simulation): the window is checked before each
one, with room for ``STEP_ROOM``; a window that closes stops the operation before its next step
(``WindowClosed``, recorded; running it again continues from what the store then is).

Add and replace (``run_join``): the operation is recorded with its node in its store run's detail
(``only_nodes``), and the rollout engine (``edgefleet.rollout.executor.execute``) runs it on the
store's current release: the node's seed built, the node booted through its BMC with the release
and its seed (or reimaged through the Talos API for a store without BMCs), Bootstrap only if it
were its store's last member, Ready, the store gate; every other node is observed, never touched,
and a failure is not rolled back (there is nothing to go back to). For the replacement of a control
plane, the dead machine's etcd member is removed first (Talos ``EtcdRemoveMemberByID`` through a
control plane that is Ready, under etcd's quorum rule) while the operation holds the store's
lock; the engine then takes the lock again for the join.

Remove (``run_remove``): for a control plane, the etcd members through another control plane
that is Ready, judged with etcd's quorum rule (``plan.quorum_problem``: ``QuorumAtRisk`` when the
members left would not have a started quorum); the drain (``drain.drain_node``); for a control
plane, Talos ``EtcdLeaveCluster`` on the node itself; Talos ``Reset`` wiping every partition,
without reboot (the machine stays off). Only that node is written to: the other nodes are read
(the node list, the member list), never changed. Afterwards delete the node from the inventory:
until then ``edgefleet diff`` and rollouts still count it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from edgefleet.day2.drain import DrainPolicy, drain_node
from edgefleet.day2.plan import NodeOp, NodeOpKind, quorum_problem
from edgefleet.errors import (
    EdgefleetError,
    NodeOperationRefused,
    ProbeError,
    QuorumAtRisk,
    TalosCallFailed,
    WindowClosed,
)
from edgefleet.health.cluster import ClusterSnapshot
from edgefleet.inventory.model import Fleet, Node, Role, Store
from edgefleet.rollout.endpoints import Endpoints
from edgefleet.rollout.journal import stmt_run, stmt_wave_advance
from edgefleet.rollout.ledger import Kind, Ledger, RolloutRecord, RolloutStatus, RunCursor, new_rollout_id
from edgefleet.rollout.request import RolloutRequest
from edgefleet.rollout.settings import EngineSettings
from edgefleet.rollout.states import RolloutEvent, RunEvent, WaveEvent, WaveState
from edgefleet.schedule.windows import freeze_at, window_at
from edgefleet.talos.api import TalosClient, client_for
from edgefleet.talos.certs import TalosRole

__all__ = ["STEP_ROOM", "NodeOpRun", "check_window", "run_join", "run_remove", "talos_client"]

STEP_ROOM = timedelta(minutes=10)  # a step starts only with this much of the window left
_KINDS = {NodeOpKind.add: Kind.node_add, NodeOpKind.replace: Kind.node_replace, NodeOpKind.remove: Kind.node_remove}


def check_window(fleet: Fleet, store: Store, now: datetime, step: str) -> None:
    """``WindowClosed`` unless ``store``'s window is open at ``now`` with ``STEP_ROOM`` left and no
    freeze covers it."""
    freeze = freeze_at(fleet.freezes, store, now)
    if freeze is not None:
        raise WindowClosed(f"store {store.id}: {step} not started: freeze {freeze.name} covers the store at "
                           f"{now.isoformat()}; run it again after the freeze, inside a maintenance window")
    win = window_at(store, now)
    if win is None or win[1] - now < STEP_ROOM:
        why = "outside its maintenance windows" if win is None else f"its window closes at {win[1].isoformat()}"
        raise WindowClosed(f"store {store.id}: {step} not started at {now.isoformat()}: {why}; run it again "
                           "inside the store's next maintenance window")


def talos_client(endpoints: Endpoints, home: Path, store: Store, node: Node, role: TalosRole) -> TalosClient:
    """A Talos API client for ``node`` (through the simulator's endpoint in simulation)."""
    t = endpoints.talos
    return client_for(home, store, node, role, now=datetime.now(UTC), endpoint=t.endpoint if t else None,
                      ca_pem=t.ca_pem if t else None, server_name=t.server_name if t else None, timeout_s=10.0)


@dataclass
class NodeOpRun:
    """One node operation's record in the ledger while it runs (``record``, ``cursor``)."""

    fleet: Fleet
    home: Path
    engine: Engine
    endpoints: Endpoints
    op: NodeOp
    operator: str = ""
    record: RolloutRecord | None = None
    cursor: RunCursor | None = None

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.engine)

    def now(self) -> datetime:
        return self.endpoints.clock()

    def step(self, what: str) -> None:
        """Check the window before ``what``, a step the store notices."""
        check_window(self.fleet, self.op.store, self.now(), what)

    def event(self, kind: str, reason: str = "", **detail: Any) -> None:
        assert self.record is not None
        self.ledger.event(self.now(), kind, rollout=self.record.id, store=self.op.store.id, node=self.op.node.name,
                          reason=reason, detail=detail or None)

    def create(self, settings: EngineSettings | None = None) -> RolloutRecord:
        """Record the operation (planned): one run of its store on the store's current release, the
        node and the steps in the run's detail (``only_nodes``: the engine touches no other node)."""
        op, ledger, now = self.op, self.ledger, self.now()
        release = ledger.store_releases([op.store.id]).get(op.store.id, (None, None))[0]
        if not release:
            raise NodeOperationRefused(f"store {op.store.id} has no release in the ledger: it was never provisioned "
                                       f"by edgefleet; provision it (`edgefleet provision {op.store.id}`)")
        rid = new_rollout_id(f"node-{op.kind.value}", now)
        request = RolloutRequest.build(kind="provision", release=release, stores=(op.store.id,),
                                       settings=settings or EngineSettings())
        rec = ledger.create_rollout(rollout_id=rid, kind=_KINDS[op.kind], release=release, now=now,
                                    policy=request.to_json(), plan={}, operator=self.operator,
                                    waves=[(0, op.kind.value, 0)], runs=[(op.store.id, 0, release, release)])
        ledger.write(stmt_run(rid, op.store.id, detail={"cluster_exists": True, "only_nodes": [op.node.name],
                                                        "steps": list(op.steps)}))
        self.record = rec
        return rec

    def failed(self, cursor: RunCursor, e: EdgefleetError) -> None:
        """Record the operation's failure (its run, its wave, the operation) with ``e``'s words."""
        assert self.record is not None
        ledger, rid, end = self.ledger, self.record.id, self.now()
        rec = ledger.rollout(rid)
        if rec.status is RolloutStatus.planned:
            ledger.advance_rollout(rec, RolloutEvent.start, end)
            ledger.write(stmt_wave_advance(rid, 0, WaveState.pending, WaveEvent.start))
        ledger.advance(cursor, RunEvent.fail, reason=str(e), ended_at=end)
        ledger.write(stmt_wave_advance(rid, 0, WaveState.running, WaveEvent.halt, failures=1, reason=str(e)[:500]))
        self.record = ledger.rollout(rid)
        ledger.advance_rollout(self.record, RolloutEvent.fail, end, reason=str(e))
        self.event(f"node_{self.op.kind.value}_failed", str(e))
        self.record = ledger.rollout(rid)

    @contextlib.asynccontextmanager
    async def recorded(self) -> AsyncIterator[NodeOpRun]:
        """Record the operation, hold the store's lock, and record its end however it ends."""
        op, ledger, now = self.op, self.ledger, self.now()
        rec = self.create()
        rid = rec.id
        async with ledger.reserve(op.store.id, rid, now=now) as cursor:
            self.cursor = cursor
            ledger.advance_rollout(rec, RolloutEvent.start, now)
            ledger.write(stmt_wave_advance(rid, 0, WaveState.pending, WaveEvent.start))
            ledger.advance(cursor, RunEvent.start, started_at=now)
            try:
                yield self
            except EdgefleetError as e:
                self.failed(cursor, e)
                raise
            end = self.now()
            ledger.advance(cursor, RunEvent.succeed, ended_at=end)
            ledger.write(stmt_wave_advance(rid, 0, WaveState.running, WaveEvent.pass_))
            self.record = ledger.rollout(rid)
            ledger.advance_rollout(self.record, RolloutEvent.succeed, end)
            self.event(f"node_{op.kind.value}_done", f"node {op.node.name} of store {op.store.id}")
        self.record = ledger.rollout(rid)


@dataclass(frozen=True, slots=True)
class _Members:
    via: Node  # the healthy control plane they were read through
    ids: dict[str, int]  # member name -> id
    up: dict[str, bool]  # member name -> Ready in Kubernetes


async def _members(run: NodeOpRun) -> _Members:
    """The store's etcd members, read through a control plane other than the operation's node that
    is Ready (a member is up when its node is Ready)."""
    from edgefleet.health.storeapi import StoreApi

    store, node = run.op.store, run.op.node
    async with StoreApi(run.endpoints, run.home) as api:
        snap = await api.snapshot(store, readyz=False)
    if not isinstance(snap, ClusterSnapshot):
        raise QuorumAtRisk(f"store {store.id}: its Kubernetes API cannot be read ({snap}); the control planes' "
                           "health is unknown, so no etcd member is touched")
    ready = {n.name for n in snap.nodes if n.ready}
    others = [n for n in store.nodes if n.role is Role.controlplane and n.name != node.name and n.name in ready]
    if not others:
        raise QuorumAtRisk(f"store {store.id}: no control plane other than {node.name} is Ready; the etcd "
                           "members cannot be read through a healthy one")
    problems = []
    for via in others:
        try:
            async with talos_client(run.endpoints, run.home, store, via, TalosRole.reader) as c:
                members = await c.etcd_members()
            return _Members(via, {m.hostname: m.id for m in members}, {m.hostname: m.hostname in ready
                                                                        for m in members})
        except TalosCallFailed as e:
            problems.append(f"{via.name}: {e}")
    raise QuorumAtRisk(f"store {store.id}: the etcd members cannot be read: {'; '.join(problems)}")


async def run_remove(run: NodeOpRun, *, drain_policy: DrainPolicy = DrainPolicy()) -> RolloutRecord:
    """Remove ``run.op.node`` from its running store (module docstring)."""
    from edgefleet.health.drainapi import open_drain_api

    op = run.op
    store, node = op.store, op.node
    run.step(f"removal of {node.name}")
    async with run.recorded():
        if op.control_plane:
            members = await _members(run)
            why = quorum_problem(store, members.up, node.name)
            if why is not None:
                raise QuorumAtRisk(why)
            run.event("etcd_quorum_checked", "", members=members.up, via=members.via.name)
        run.step(f"drain of {node.name}")
        try:
            url = run.endpoints.k8s(store)
        except ProbeError as e:
            raise QuorumAtRisk(f"store {store.id}: {e}") from None
        async with open_drain_api(url, run.home, store.id) as api:
            report = await drain_node(api, store.id, node.name, policy=drain_policy)
        run.event("node_drained", "", evicted=report.evicted, left=report.left, refusals=report.refusals)
        async with talos_client(run.endpoints, run.home, store, node, TalosRole.admin) as c:
            if op.control_plane:
                run.step(f"etcd leave of {node.name}")
                await c.etcd_leave()
                run.event("etcd_left")
            run.step(f"Talos Reset of {node.name}")
            await c.reset(graceful=False, reboot=False, wipe_labels=None)
            run.event("node_reset", "wiped, powered off: delete it from the inventory")
    assert run.record is not None
    return run.record


async def _remove_old_member(run: NodeOpRun) -> None:
    """Replace of a control plane: the dead machine's etcd member goes first, removed through a
    healthy other control plane, so the new machine joins a cluster that never counts it."""
    store, name = run.op.store, run.op.node.name
    members = await _members(run)
    if name not in members.ids:
        run.event("etcd_member_absent", f"no etcd member {name}: nothing to remove", via=members.via.name)
        return
    if members.up[name]:
        raise QuorumAtRisk(f"store {store.id}: node {name} is Ready and its etcd member is up: the machine being "
                           f"replaced still runs; take it out first (`edgefleet node remove {store.id} {name}`)")
    why = quorum_problem(store, members.up, name)
    if why is not None:
        raise QuorumAtRisk(why)
    run.step(f"removal of {name}'s old etcd member")
    async with talos_client(run.endpoints, run.home, store, members.via, TalosRole.admin) as c:
        await c.etcd_remove_member(members.ids[name])
    run.event("etcd_member_removed", f"the old member of {name}, through {members.via.name}",
              member_id=str(members.ids[name]), via=members.via.name)


async def run_join(run: NodeOpRun, *, settings: EngineSettings | None = None) -> RolloutRecord:
    """Add a worker, or replace a node: (replace of a control plane: its old etcd member removed
    first) then the node reimaged by the rollout engine on the store's current release, alone
    (its seed built, booted through its BMC or the Talos API, Ready, the store gate)."""
    from edgefleet.rollout.executor import execute

    op = run.op
    run.step(f"{op.kind.value} of {op.node.name}")
    rec = run.create(settings)
    ledger, store = run.ledger, op.store
    if op.kind is NodeOpKind.replace and op.control_plane:
        async with ledger.reserve(store.id, rec.id, now=run.now()) as cursor:
            try:
                await _remove_old_member(run)
            except EdgefleetError as e:
                run.failed(cursor, e)
                raise
    done = await execute(fleet=run.fleet, home=run.home, engine=run.engine, endpoints=run.endpoints,
                         rollout_id=rec.id, settings=settings)
    run.record = done
    return done
