"""One store's run: its window, its caps, its lock (``ledger.reserve``), then forward to the target
(pre hook, every node in repair order, store gate, post hook) and, when that fails, back to its
previous release the same way. A store whose way back fails too is recorded as it is: ``split``
when its nodes run different releases (each node's release in ``node_state``, the store's current
release no longer claimed, its lock kept until a person continues the repair with
``edgefleet rollout resume <id>``), ``failed`` otherwise.

Every status change is a move of ``states.TRANSITIONS`` (``journal.stmt_advance``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.errors import (
    ConfigRenderError,
    EdgefleetError,
    GateFailed,
    LockHeld,
    ReimageFailed,
    SecretsError,
    StoreRunFailed,
)
from edgefleet.health.probes import ClusterSnapshot, run_probes
from edgefleet.inventory.model import Node, Role, Store
from edgefleet.releases.catalog import Release
from edgefleet.rollout.context import EngineContext
from edgefleet.rollout.gates import (
    RELEASE_LABEL,
    NodeBefore,
    Observed,
    VerdictKind,
    evaluate_node,
    evaluate_rollback_node,
    evaluate_store,
    repair_order,
)
from edgefleet.rollout.journal import RunCursor, stmt_advance, stmt_event, stmt_node, stmt_run, stmt_store_release
from edgefleet.rollout.ledger import Kind, RolloutRecord, StoreRunRecord, repair_command
from edgefleet.rollout.reimage import NodeTask, QuorumPolicy, WindowGuard, reimage_node, reimager_for
from edgefleet.rollout.settings import redact, seeds_dir
from edgefleet.rollout.states import Outcome, Phase, RunEvent, RunState, SkipCause, Stage, Step

__all__ = ["WINDOW_SHUT", "Aborted", "CapSlots", "StoreRunner"]

WINDOW_SHUT = "its maintenance window did not open"  # said in the reason of a store skipped for want of a window


class Aborted(Exception):
    """A person aborted the rollout: stop after the current node."""


@dataclass
class CapSlots:
    glob: asyncio.Semaphore
    limit_region: int | None
    limit_country: int | None
    regions: dict[str, asyncio.Semaphore] = field(default_factory=dict)
    countries: dict[str, asyncio.Semaphore] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def hold(self, store: Store) -> AsyncIterator[None]:
        sems = [self.glob]
        if self.limit_region is not None:
            sems.append(self.regions.setdefault(store.region, asyncio.Semaphore(self.limit_region)))
        if self.limit_country is not None:
            sems.append(self.countries.setdefault(store.country, asyncio.Semaphore(self.limit_country)))
        async with contextlib.AsyncExitStack() as stack:
            for s in sems:  # always in the same order: no deadlock between stores
                await stack.enter_async_context(s)
            yield


def _before_from(snapshot: Observed, store: Store) -> dict[str, dict[str, Any]]:
    by_name = {n.name: n for n in snapshot.nodes} if isinstance(snapshot, ClusterSnapshot) else {}
    return {n.name: {"release": by_name[n.name].label(RELEASE_LABEL) if n.name in by_name else None,
                     "ready": bool(by_name[n.name].ready) if n.name in by_name else False} for n in store.nodes}


@dataclass
class _Store:
    """What one store run carries from step to step."""

    store: Store
    run: StoreRunRecord
    cursor: RunCursor
    rec: RolloutRecord
    before: dict[str, NodeBefore]
    from_release: str | None
    resume: Step | None


class StoreRunner:
    """Runs store runs of one execution (see the module docstring)."""

    def __init__(self, ctx: EngineContext, started: RolloutRecord):
        self.ctx = ctx
        self.started = started  # the record as this execution found it (its kind is what is read)
        self.quorum = QuorumPolicy(ctx)

    async def _end(self, cursor: RunCursor, event: RunEvent, reason: str | None, *extra: Any, **values: Any) -> None:
        """The run's final move (``reason`` None: the recorded reason stays), with ``extra`` statements."""
        ctx = self.ctx
        if reason is not None:
            values["reason"] = redact(reason)
        await ctx.journal.write(stmt_advance(cursor, event, ended_at=ctx.now(), **values), *extra)

    # -- the store's task -------------------------------------------------------------------------

    async def task(self, run: StoreRunRecord, caps: CapSlots) -> Outcome:
        ctx = self.ctx
        cursor = RunCursor(ctx.rollout_id, run.store, run.status)
        store = ctx.fleet.stores.get(run.store)
        repair = run.status is RunState.split_  # a person continues it: an abort does not skip it
        if repair and (store is None or not await WindowGuard(ctx, store).wait_open(ctx.settings.node_duration)):
            # Still split, still locked: said so, and left for the next attempt.
            await ctx.event("repair_not_started", store=run.store, reason="the store is no longer in the inventory"
                            if store is None else f"{WINDOW_SHUT} within {ctx.settings.window_wait_max_s:g} s")
            return Outcome.split_
        if store is None:
            await self._end(cursor, RunEvent.fail, f"store {run.store} is no longer in the inventory")
            return Outcome.failed
        aborted = {"detail": {**run.detail, "skipped": SkipCause.aborted.value}}
        if ctx.abort and not repair:
            await self._end(cursor, RunEvent.skip, "not started: the rollout was aborted", **aborted)
            return Outcome.skipped
        if not repair and not await WindowGuard(ctx, store).wait_open(ctx.settings.node_duration):
            await self._end(cursor, RunEvent.skip, f"{WINDOW_SHUT} (outside freezes) within "
                                                   f"{ctx.settings.window_wait_max_s:g} s",
                            detail={**run.detail, "skipped": SkipCause.window.value})
            return Outcome.skipped
        async with caps.hold(store):
            if ctx.abort and not repair:
                await self._end(cursor, RunEvent.skip, "not started: the rollout was aborted", **aborted)
                return Outcome.skipped
            try:
                async with ctx.ledger.reserve(store.id, ctx.rollout_id, now=ctx.now(), run=run) as held:
                    return await self._body(store, run, held)
            except LockHeld as e:
                await self._end(cursor, RunEvent.refuse, str(e))
                await ctx.event("lock_refused", store=store.id, reason=str(e))
                return Outcome.refused

    async def _open(self, store: Store, run: StoreRunRecord, cursor: RunCursor) -> _Store:
        """The run marked running, with what the store looked like before it was first touched."""
        ctx = self.ctx
        rec = self.started
        detail = dict(run.detail)
        if "before" not in detail:
            detail["before"] = _before_from(await ctx.store_api.snapshot(store, readyz=False), store)
        before = {n: NodeBefore(v.get("release"), bool(v.get("ready"))) for n, v in detail["before"].items()}
        from_release = run.from_release
        if from_release is None and rec.kind is Kind.rollout:
            seen = {b.release for b in before.values()}
            if len(seen) == 1 and (only := seen.pop()) is not None and ctx.catalog.find(only) is not None:
                from_release = only
        resume = Step.parse(run.step)
        await ctx.journal.write(
            stmt_advance(cursor, RunEvent.start, started_at=run.started_at or ctx.now(), detail=detail,
                         from_release=from_release, step=str(resume or Step(Phase.forward, Stage.start))),
            stmt_event(ctx.now(), "store_started", rollout=ctx.rollout_id, store=store.id,
                       detail={"from": from_release, "to": run.to_release, "resumed_step": run.step or None}))
        return _Store(store, run, cursor, rec, before, from_release, resume)

    async def _body(self, store: Store, run: StoreRunRecord, cursor: RunCursor) -> Outcome:
        ctx = self.ctx
        st = await self._open(store, run, cursor)
        if run.status is RunState.split_:
            return await self._rollback(st, "a person continued the repair of the split store")
        if st.resume is not None and st.resume.phase is Phase.rollback:
            return await self._rollback(st, run.reason or "resumed rollback")
        if ctx.settings.pre_hook:
            hook = await self._hook(ctx.settings.pre_hook, store, "pre", run.to_release)
            if hook is not None:
                await self._end(cursor, RunEvent.fail, f"{hook}; the store was not touched")
                return Outcome.failed
        try:
            await self._converge(st, run.to_release, Phase.forward, cluster_exists=bool(run.detail.get(
                "cluster_exists", True)))
            await self._store_gate(store, run.to_release, before=None)
            if ctx.settings.post_hook:
                hook = await self._hook(ctx.settings.post_hook, store, "post", run.to_release)
                if hook is not None:
                    raise GateFailed(hook)
        except StoreRunFailed as f:
            return await self._after_failure(st, f)
        except Aborted:
            return await self._as_found(st, "aborted mid-store: stopped after a finished node", "aborted")
        lkg = run.to_release if st.rec.kind is not Kind.rollout else (st.from_release or None)
        await self._end(cursor, RunEvent.succeed, None, *stmt_store_release(store.id, run.to_release, lkg, ctx.now()),
                        stmt_event(ctx.now(), "store_succeeded", rollout=ctx.rollout_id, store=store.id,
                                   detail={"release": run.to_release}), step=str(Step(Phase.forward, Stage.done)))
        return Outcome.succeeded

    async def _hook(self, playbook: str, store: Store, phase: str, release: str) -> str | None:
        """Run a hook; None when it passed, else why it failed (recorded as an event either way)."""
        from edgefleet.rollout.hooks import run_hook

        ctx = self.ctx
        work = ctx.home / "hooks" / ctx.rollout_id
        try:
            res = await asyncio.to_thread(run_hook, Path(playbook), ctx.fleet, store, phase=phase, release=release,
                                          operation=ctx.rollout_id, work_dir=work,
                                          timeout_s=ctx.settings.hook_timeout_s)
        except EdgefleetError as e:
            await ctx.event(f"{phase}_hook_failed", store=store.id, reason=str(e))
            return f"{phase} hook: {e}"
        await ctx.event(f"{phase}_hook_{'passed' if res.ok else 'failed'}", store=store.id, reason=res.detail,
                        detail={"status": res.status, "rc": res.rc})
        return None if res.ok else res.detail

    async def _after_failure(self, st: _Store, f: StoreRunFailed) -> Outcome:
        ctx = self.ctx
        reason = redact(f.reason)
        await ctx.event("store_gate_failed", store=st.store.id, reason=reason)
        if st.rec.kind is not Kind.rollout or st.from_release is None:
            why = ("no previous release is known to go back to" if st.rec.kind is Kind.rollout
                   else f"a {st.rec.kind.value} is not rolled back automatically")
            await self._end(st.cursor, RunEvent.fail, f"{reason} ({why})")
            return Outcome.inconclusive if f.inconclusive else Outcome.failed
        await ctx.journal.write(stmt_run(ctx.rollout_id, st.store.id, step=str(Step(Phase.rollback, Stage.start)),
                                         reason=reason))
        st.resume = Step(Phase.rollback, Stage.start)
        out = await self._rollback(st, reason)
        return Outcome.inconclusive if f.inconclusive and out is not Outcome.rolled_back else out

    async def _rollback(self, st: _Store, why: str) -> Outcome:
        ctx, store, to = self.ctx, st.store, st.from_release
        if to is None:
            await self._end(st.cursor, RunEvent.fail, f"{why}; no previous release to roll back to")
            return Outcome.failed
        await ctx.event("store_rollback_started", store=store.id, reason=why, detail={"to": to})
        try:
            await self._converge(st, to, Phase.rollback, cluster_exists=True)
            await self._store_gate(store, to, before=st.before)
        except (StoreRunFailed, Aborted) as f2:
            return await self._unrepaired(st, why, str(f2))
        lkg = ctx.ledger.store_releases([store.id]).get(store.id, (None, None))[1]
        await self._end(st.cursor, RunEvent.roll_back, f"{why}; rolled back to {to}",
                        *stmt_store_release(store.id, to, lkg or to, ctx.now()),
                        stmt_event(ctx.now(), "store_rolled_back", rollout=ctx.rollout_id, store=store.id,
                                   reason=why, detail={"release": to}), step=str(Step(Phase.rollback, Stage.done)))
        return Outcome.rolled_back

    async def _unrepaired(self, st: _Store, why: str, failure: str) -> Outcome:
        """The way back failed: the store is recorded as found (``_as_found``)."""
        return await self._as_found(st, f"{why}; rolling back to {st.from_release} failed too: {failure}", failure)

    async def _as_found(self, st: _Store, reason: str, failure: str) -> Outcome:
        """The store left where it is (the way back failed, or an abort stopped it mid-store). Its
        nodes as they are now are recorded one by one; on one release the store is ``failed`` and
        that release is its current one; on several (or unknown) it is ``split``: no current release
        claimed, its lock kept until a person continues the repair."""
        ctx, store, to = self.ctx, st.store, st.from_release
        snap = await ctx.store_api.snapshot(store, readyz=False)
        recorded = ctx.ledger.node_states(store.id)
        on: dict[str, str | None] = {n.name: recorded[n.name][1] if n.name in recorded else None for n in store.nodes}
        stmts: list[Any] = []
        if isinstance(snap, ClusterSnapshot):
            for n in store.nodes:
                seen = next((s for s in snap.nodes if s.name == n.name), None)
                on[n.name] = seen.label(RELEASE_LABEL) if seen else None
                stmts += stmt_node(n.name, store.id, on[n.name], bool(seen and seen.ready), ctx.now())
        releases = set(on.values())
        lkg = ctx.ledger.store_releases([store.id]).get(store.id, (None, None))[1] or to
        if len(releases) == 1 and None not in releases:
            (current,) = releases
            await self._end(st.cursor, RunEvent.fail, reason + (f" (all its nodes are on {current})"
                                                                if current != to else ""),
                            *stmts, *stmt_store_release(store.id, current, lkg, ctx.now()))
            return Outcome.failed
        cmd = repair_command(ctx.rollout_id)
        where = ", ".join(f"{n} on {r or 'an unknown release'}" for n, r in on.items())
        await self._end(st.cursor, RunEvent.split_, f"{reason}; the store is split across releases ({where}) and "
                        f"stays locked: fix the nodes, then `{cmd}`", *stmts,
                        *stmt_store_release(store.id, None, lkg, ctx.now()),
                        stmt_event(ctx.now(), "store_split", rollout=ctx.rollout_id, store=store.id, reason=failure,
                                   detail={"nodes": on, "command": cmd, "to": to}))
        return Outcome.split_

    # -- nodes ------------------------------------------------------------------------------------

    async def _converge(self, st: _Store, release: str, phase: Phase, *, cluster_exists: bool) -> None:
        ctx, store = self.ctx, st.store
        rel = ctx.release(release)
        reimager, guard = reimager_for(ctx, store), WindowGuard(ctx, store)
        seeds_ready = False
        snap: Observed = await ctx.store_api.snapshot(store, readyz=False)
        only = st.run.detail.get("only_nodes")  # a day-2 node operation: its node, no other
        order = [n for n in repair_order(store, snap, release) if only is None or n.name in only]
        for i, node in enumerate(_resumed_first(order, st.resume, phase)):
            if ctx.abort and phase is Phase.forward:
                raise Aborted()
            if i:
                snap = await ctx.store_api.snapshot(store, readyz=False)
            before = st.before.get(node.name)
            gate = (evaluate_rollback_node(snap, node.name, release, before, rel.talos_version)
                    if phase is Phase.rollback else evaluate_node(snap, node.name, release, rel.talos_version))
            task = NodeTask(store, node, rel, phase, st.cursor, before,
                            resumed=st.resume.at(node.name, phase) if st.resume else None)
            if gate.passed:
                await ctx.event("node_skipped", store=store.id, node=node.name,
                                reason=f"already on {release} and Ready",
                                extra=tuple(stmt_node(node.name, store.id, release, True, ctx.now())))
                if task.resumed is not None:
                    await reimager.settle(task)
                continue
            if node.role is Role.controlplane:
                snap = await self.quorum.before_down(store, node, first=snap)
            task.needs_bootstrap = QuorumPolicy.last_member(store, node, snap)
            if not await guard.wait_open(ctx.settings.node_duration):
                raise ReimageFailed(f"the maintenance window closed before node {node.name} and did not reopen")
            if not seeds_ready:
                await self._build_seeds(store, rel, cluster_exists)
                seeds_ready = True
            await reimage_node(ctx, reimager, task, guard, self.quorum)

    async def _build_seeds(self, store: Store, rel: Release, cluster_exists: bool) -> None:
        from edgefleet.seeds.build import build_seeds
        from edgefleet.talos.config import default_schema

        ctx = self.ctx
        out = seeds_dir(ctx.home, rel.name, store.id)
        try:
            report = await asyncio.to_thread(build_seeds, ctx.fleet, [store.id], None, rel.ref(), ctx.home, out,
                                             now=ctx.wall(), existing_clusters=[store.id] if cluster_exists else (),
                                             schema=default_schema())
        except (SecretsError, LockHeld, ConfigRenderError) as e:
            raise ReimageFailed(f"seeds for {rel.name}: {e}") from None
        await ctx.event("seeds_ready", store=store.id, detail={"release": rel.name, "written": len(report.written),
                                                               "skipped": report.skipped})

    async def _store_gate(self, store: Store, release: str, *, before: dict[str, NodeBefore] | None) -> None:
        ctx, s = self.ctx, self.ctx.settings
        deadline = time.monotonic() + s.store_gate_timeout_s
        healthy_since = None
        while True:
            snap = await ctx.store_api.snapshot(store, readyz=True)
            probes = await run_probes(ctx.endpoints.probes(store)) if store.probes else ()
            v = evaluate_store(store, snap, release, probes, healthy_since=healthy_since, now=ctx.now(),
                               soak=s.soak, before=before)
            if v.passed:
                await ctx.event("store_gate_passed", store=store.id, detail={"release": release})
                return
            soaking = v.kind is VerdictKind.soaking
            if soaking and healthy_since is None:
                healthy_since = ctx.now()
            elif not soaking:
                healthy_since = None
            if time.monotonic() > deadline:
                raise GateFailed(f"store gate on {release}: {v.why()}",
                                 inconclusive=not isinstance(snap, ClusterSnapshot))
            await ctx.sleep(s.poll_s if not soaking else min(
                s.poll_s, ctx.endpoints.real_seconds(s.soak.total_seconds())))


def _resumed_first(order: list[Node], resume: Step | None, phase: Phase) -> list[Node]:
    """The node the ledger names mid-reimage in this phase first: a resumed run observes (and
    settles: media ejected) the node it was working on before it touches another. In repair order
    it could come last (it is often Ready on the release already), and once another node's step is
    recorded nothing would name it mid-reimage any more: its media would stay attached."""
    if resume is None or resume.phase is not phase or not resume.node:
        return order
    return sorted(order, key=lambda n: n.name != resume.node)
