"""One quorum and bootstrap policy for both reimage methods.

Before a control plane goes down: the quorum gate (``gates.evaluate_quorum``, in etcd
membership health: a healthy control plane waits until every other one is healthy; one that is
already down goes at once), with the membership read through a control plane that is up.
After it comes back: Bootstrap exactly once, only on a control plane whose etcd holds no data,
and only when it was its store's last etcd member (no other control plane up) or its in-band
reset said so."""

from __future__ import annotations

import time

from edgefleet.errors import GateFailed, ReimageFailed, SecretsError, TalosCallFailed, TalosRefused, error_kind
from edgefleet.health.probes import ClusterSnapshot
from edgefleet.inventory.model import Node, Role, Store
from edgefleet.rollout.context import EngineContext
from edgefleet.rollout.gates import Observed, evaluate_quorum
from edgefleet.rollout.reimage.base import NodeTask, record_step
from edgefleet.rollout.states import Stage

__all__ = ["QuorumPolicy"]


class QuorumPolicy:
    def __init__(self, ctx: EngineContext):
        self.ctx = ctx

    async def etcd_members(self, store: Store, snap: Observed, node: Node) -> tuple[list[str] | None, str]:
        """The store's etcd members, as a control plane that is up lists them (also members that are
        down: the gate counts a member healthy only when its node is Ready too) (None
        without Talos API access), and why they could not be read ("" when they could). A list
        that cannot be read is no evidence that a control plane is down: the gate then waits."""
        if not self.ctx.endpoints.talos_enabled:
            return None, ""
        ready = {n.name for n in snap.nodes if n.ready} if isinstance(snap, ClusterSnapshot) else set()
        cps = [n for n in store.nodes if n.role is Role.controlplane and n.name != node.name]
        via = next((n for n in cps if n.name in ready), cps[0] if cps else None)
        if via is None:
            return None, ""
        try:
            async with self.ctx.talos(store, via) as c:
                return [m.hostname for m in await c.etcd_members()], ""
        except (TalosCallFailed, SecretsError) as e:
            return [], f"the etcd members cannot be read through {via.name}: {e}"

    async def before_down(self, store: Store, node: Node, first: Observed = None) -> Observed:
        """Wait until control plane ``node`` may go down (quorum timeout: GateFailed); returns the
        last snapshot. ``first``: a snapshot just read (saves a request when the gate passes)."""
        ctx = self.ctx
        deadline = time.monotonic() + ctx.settings.quorum_timeout_s
        others = [n for n in store.nodes if n.role is Role.controlplane and n.name != node.name]
        while True:
            snap, first = (first, None) if first is not None else (await ctx.store_api.snapshot(store, readyz=False),
                                                                   None)
            members, unread = await self.etcd_members(store, snap, node) if others else (None, "")
            v = evaluate_quorum(store, snap, node.name, members)
            down = isinstance(snap, ClusterSnapshot) and not any(n.name == node.name and n.ready for n in snap.nodes)
            if v.passed and (not unread or down):
                return snap
            if time.monotonic() > deadline:
                raise GateFailed(f"quorum gate before control plane {node.name}: {unread or v.why()}")
            await ctx.sleep(ctx.settings.poll_s)

    @staticmethod
    def last_member(store: Store, node: Node, snap: Observed) -> bool:
        """Whether ``node`` is a control plane with no other control plane up: it will need Bootstrap."""
        if node.role is not Role.controlplane:
            return False
        cps = {c.name for c in store.nodes if c.role is Role.controlplane}
        return not (isinstance(snap, ClusterSnapshot)
                    and any(n.name != node.name and n.ready for n in snap.nodes if n.name in cps))

    async def bootstrap(self, task: NodeTask) -> None:
        """Bootstrap etcd on the node once it answers, unless its etcd already holds data."""
        ctx = self.ctx
        if not ctx.endpoints.talos_enabled:
            return
        store, node = task.store, task.node
        deadline = time.monotonic() + ctx.settings.node_ready_timeout_s
        while True:
            try:
                async with ctx.talos(store, node) as c:
                    await c.version()
                    try:
                        await c.etcd_members()
                        await ctx.event("bootstrap_not_needed", store=store.id, node=node.name,
                                        reason="etcd already holds data")
                        return
                    except TalosRefused:
                        pass  # no etcd data: this cluster needs its bootstrap
                    await record_step(ctx, task, Stage.bootstrap, "bootstrap_started", {})
                    try:
                        await c.bootstrap()
                    except TalosRefused as e:
                        await ctx.event("bootstrap_refused", store=store.id, node=node.name, reason=str(e),
                                        detail={"talos_error": error_kind(e)})
                        return
                    await ctx.event("bootstrapped", store=store.id, node=node.name)
                    return
            except TalosRefused:
                raise
            except TalosCallFailed as e:
                if not e.transient or time.monotonic() > deadline:
                    raise ReimageFailed(f"bootstrap of {node.name}: {e}") from None
            except SecretsError as e:
                raise ReimageFailed(f"bootstrap of {node.name}: {e}") from None
            await ctx.sleep(ctx.settings.poll_s)
