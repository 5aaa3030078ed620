"""``reimage_node``: the five steps of ``base`` for either method, and ``reimager_for`` the
method of a store."""

from __future__ import annotations

from edgefleet.errors import GateFailed, ReimageFailed, StoreRunFailed, WindowClosed
from edgefleet.health.probes import ClusterSnapshot
from edgefleet.inventory.model import Store, WipeMethod
from edgefleet.rollout.context import EngineContext
from edgefleet.rollout.gates import RELEASE_LABEL, Verdict
from edgefleet.rollout.journal import stmt_node
from edgefleet.rollout.reimage.base import NodeTask, Reimager, WindowGuard, wait_node
from edgefleet.rollout.reimage.inband import TalosInBandReimager
from edgefleet.rollout.reimage.quorum import QuorumPolicy
from edgefleet.rollout.reimage.redfish import RedfishReimager

__all__ = ["reimage_node", "reimager_for"]


def reimager_for(ctx: EngineContext, store: Store) -> Reimager:
    """The store's reimage method: in band for ``wipe_method: talos-api``, Redfish otherwise."""
    return TalosInBandReimager(ctx) if store.wipe_method is WipeMethod.talos_api else RedfishReimager(ctx)


async def _disrupt(ctx: EngineContext, r: Reimager, task: NodeTask, guard: WindowGuard) -> None:
    """``disrupt`` behind the guard; a window about to close: undo, wait for the next one, again."""
    while True:
        try:
            await r.disrupt(task, guard)
            return
        except WindowClosed:
            await r.abandon(task)
            await ctx.event("window_closing", store=task.store.id, node=task.node.name,
                            reason="the window closes before the reset: media ejected, waiting for the next window")
            if not await guard.wait_next_window(ctx.settings.node_duration):
                raise ReimageFailed(f"the maintenance window closed before node {task.node.name} was reset and did "
                                    "not reopen") from None


async def reimage_node(ctx: EngineContext, r: Reimager, task: NodeTask, guard: WindowGuard,
                       quorum: QuorumPolicy) -> None:
    """prepare, disrupt (or observe a node recorded mid-boot), wait, finish, cleanup; records the
    node's observed release and readiness. GateFailed when the node is not healthy on the release."""
    try:
        await r.prepare(task)
        observed = await r.observe(task)
        if not observed:
            await _disrupt(ctx, r, task, guard)
        try:
            verdict = await _wait(ctx, task, quorum, reraise=not (observed and r.reset_if_observed_down))
            if verdict is None or (observed and r.reset_if_observed_down and not verdict.passed):
                # Watched for its boot timeout after the resume and not up: reset it again.
                await ctx.event("reimage_observe_timeout", store=task.store.id, node=task.node.name,
                                reason=verdict.why() if verdict else "the store's API could not be read",
                                detail={"release": task.release.name})
                await _disrupt(ctx, r, task, guard)
                verdict = await _wait(ctx, task, quorum, reraise=True)
                assert verdict is not None
        except StoreRunFailed:
            await r.finish(task, False)  # the node's reimage is over either way
            raise
        await _finish(ctx, r, task, verdict)
    finally:
        await r.cleanup(task)


async def _wait(ctx: EngineContext, task: NodeTask, quorum: QuorumPolicy, *, reraise: bool) -> Verdict | None:
    """Bootstrap when the node needs it, then wait for it; None (``reraise`` False) when the
    store's API could not be read for the whole node-ready timeout."""
    try:
        if task.needs_bootstrap:
            await quorum.bootstrap(task)
        return await wait_node(ctx, task)
    except GateFailed:
        if reraise:
            raise
        return None


async def _finish(ctx: EngineContext, r: Reimager, task: NodeTask, verdict: Verdict) -> None:
    store, node = task.store, task.node
    snap = await ctx.store_api.snapshot(store, readyz=False)
    st = next((n for n in snap.nodes if n.name == node.name), None) if isinstance(snap, ClusterSnapshot) else None
    await ctx.journal.write(*stmt_node(node.name, store.id, st.label(RELEASE_LABEL) if st else None,
                                       bool(st and st.ready), ctx.now()))
    # Before the gate's verdict: in band, a node that joined on another Talos version is better
    # explained by the Version it reports than by its OS image string.
    await r.finish(task, bool(st and st.ready))
    if not verdict.passed:
        await ctx.event("node_gate_failed", store=store.id, node=node.name, reason=verdict.why())
        raise GateFailed(f"node {node.name} not healthy on {task.release.name}: {verdict.why()}")
    await ctx.event("node_done", store=store.id, node=node.name, detail={"release": task.release.name})
