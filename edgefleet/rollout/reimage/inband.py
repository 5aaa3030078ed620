"""``TalosInBandReimager``: a node of a store without BMCs (``wipe_method: talos-api``).

``prepare`` publishes the node's seed on the run's seed server under the nocloud-net route and
registers its URL (the simulator; a real node has it in its SMBIOS serial or kernel arguments,
see ``edgefleet.rollout.settings``); ``disrupt`` is ``talos.inband.reimage_in_band`` (Talos
``Reset`` wiping STATE and EPHEMERAL) behind the ``WindowGuard``; ``finish`` checks that the node
came back on the release's Talos version (the reset keeps the BOOT partition). A node recorded as
booting before an interruption is not wiped again: its seed is served again and it is waited for."""

from __future__ import annotations

from edgefleet.errors import (
    GateFailed,
    NetworkSeedError,
    ProbeError,
    ReimageFailed,
    SecretsError,
    SeedError,
    TalosCallFailed,
    error_kind,
)
from edgefleet.inventory.model import WipeMethod
from edgefleet.rollout.context import EngineContext
from edgefleet.rollout.reimage.base import NodeTask, WindowGuard, record_step
from edgefleet.rollout.settings import nocloud_url, seeds_dir
from edgefleet.rollout.states import Stage

__all__ = ["TalosInBandReimager"]


class TalosInBandReimager:
    method = WipeMethod.talos_api
    reset_if_observed_down = False  # a node wiped in band is never wiped twice for one reimage

    def __init__(self, ctx: EngineContext):
        self.ctx = ctx
        self._urls: dict[str, str] = {}

    async def prepare(self, task: NodeTask) -> None:
        from edgefleet.seeds.build import seed_path

        ctx, store, node, rel = self.ctx, task.store, task.node, task.release
        if not ctx.endpoints.talos_enabled:
            raise ReimageFailed(f"store {store.id} is reimaged in band (wipe_method talos-api) but this run has no "
                                "Talos API access (a simulator without --talos-port?)")
        if store.seed_url is None and ctx.settings.seed_public_url is None and ctx.endpoints.simulator is None:
            raise ReimageFailed(f"store {store.id} is reimaged in band but has no seed_url (the address its nodes "
                                "reach the seed server under); set seed_url in the inventory, or give the run "
                                "--seed-public-url (rollout start, rollback, provision, resume)")
        try:
            assert ctx.netseeds is not None
            ctx.netseeds.publish(store.id, node.name, seed_path(seeds_dir(ctx.home, rel.name, store.id), store.id,
                                                                node.name))
            url = nocloud_url(ctx.seed_server, store, node)
            await ctx.endpoints.register_netseeds({node.name: url})
        except (SeedError, ProbeError) as e:
            again = " again" if self._resumed(task) else ""
            if not again:
                await ctx.event("reimage_failed", store=store.id, node=node.name, reason=str(e),
                                detail={"talos_error": error_kind(e)})
            raise ReimageFailed(f"publishing the network seed of {node.name} for {rel.name}{again} failed: "
                                f"{e}") from None
        self._urls[node.name] = url

    @staticmethod
    def _resumed(task: NodeTask) -> bool:
        return task.resumed in (Stage.booting, Stage.bootstrap)

    async def observe(self, task: NodeTask) -> bool:
        """Reset before the interruption: the node may be waiting for its seed (published again by
        ``prepare``); it is waited for rather than wiped twice."""
        if not self._resumed(task):
            return False
        await self.ctx.event("reimage_resumed", store=task.store.id, node=task.node.name,
                             reason="the node was reset before the interruption: its seed is served again, no second "
                                    "wipe", detail={"release": task.release.name, "method": self.method.value})
        return True

    async def disrupt(self, task: NodeTask, guard: WindowGuard) -> None:
        from edgefleet.talos.inband import reimage_in_band

        ctx, store, node, rel = self.ctx, task.store, task.node, task.release
        await record_step(ctx, task, Stage.reimage, "reimage_started",
                          {"release": rel.name, "phase": task.phase.value, "method": self.method.value})
        guard.check()  # the Reset is the step the store notices
        try:
            async with ctx.talos(store, node) as c:
                res = await reimage_in_band(c, node, seed_url=self._urls[node.name],
                                            deadline_s=ctx.settings.inband_deadline_s)
        except (TalosCallFailed, NetworkSeedError, SecretsError) as e:
            await ctx.event("reimage_failed", store=store.id, node=node.name, reason=str(e),
                            detail={"talos_error": error_kind(e)})
            # A node that does not answer (or a seed server it cannot be checked against) says
            # nothing about the release.
            raise ReimageFailed(f"reimaging {node.name} in band to {rel.name} failed: {e}",
                                inconclusive=bool(getattr(e, "transient", False))) from None
        task.needs_bootstrap = task.needs_bootstrap or res.needs_bootstrap
        await record_step(ctx, task, Stage.booting, "reimage_booting",
                          {"release": rel.name, "method": self.method.value, "graceful": res.graceful,
                           "wiped": list(res.wiped), "etcd_members": list(res.etcd_members),
                           "needs_bootstrap": res.needs_bootstrap, "talos_before": res.talos_version})

    async def abandon(self, task: NodeTask) -> None:
        del task  # nothing attached to the node in band

    async def finish(self, task: NodeTask, up: bool) -> None:
        """After the node is up: it must run the release's Talos (the reset kept BOOT)."""
        if not up:
            return
        ctx, store, node, rel = self.ctx, task.store, task.node, task.release
        try:
            async with ctx.talos(store, node) as c:
                got = (await c.version(node=str(node.ip))).tag
        except (TalosCallFailed, SecretsError) as e:
            raise GateFailed(f"node {node.name}: its Talos version cannot be read after the in-band reimage: {e}",
                             inconclusive=bool(getattr(e, "transient", False))) from None
        want = rel.talos_version
        if got.lstrip("v") != want.lstrip("v"):
            why = (f"node {node.name} came back on Talos {got}, but release {rel.name} is Talos {want}: an in-band "
                   "reimage keeps the boot partition; upgrade the node to the release's installer image "
                   f"({rel.installer_image}) with a Talos upgrade")
            await ctx.event("talos_version_mismatch", store=store.id, node=node.name, reason=why,
                            detail={"running": got, "release": want})
            raise GateFailed(why)
        await ctx.event("talos_version_checked", store=store.id, node=node.name, detail={"running": got})

    async def settle(self, task: NodeTask) -> None:
        del task  # a node found on the release after an interruption: nothing attached to it in band

    async def cleanup(self, task: NodeTask) -> None:
        self.ctx.seed_server.end_reimage(task.node.name)
        self._urls.pop(task.node.name, None)
