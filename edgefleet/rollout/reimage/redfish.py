"""``RedfishReimager``: a node with a BMC, reimaged from virtual media.

``disrupt`` runs ``redfish.driver.reimage_sequence``, the very code the sushy-tools conformance
test runs (stale media ejected; boot image and seed inserted; one-time boot from CD; reset; power
On awaited), with the ``WindowGuard`` checked before each step the store notices. An action
that failed transiently (which the connector does not repeat: it may have been applied) starts
the sequence again from its beginning, at most ``reimage_attempts`` times."""

from __future__ import annotations

from edgefleet.errors import ArtifactError, BmcError, ReimageFailed, error_kind
from edgefleet.inventory.model import Node, WipeMethod
from edgefleet.redfish.connector import connector_for_node
from edgefleet.redfish.driver import RedfishDriver, ReimageResult, ReimageStep, eject_reimage_media, reimage_sequence
from edgefleet.retry import RetryPolicy, retrying
from edgefleet.rollout.context import EngineContext
from edgefleet.rollout.reimage.base import NodeTask, WindowGuard, record_step
from edgefleet.rollout.settings import seeds_dir
from edgefleet.rollout.states import Stage

__all__ = ["RedfishReimager"]


class RedfishReimager:
    method = WipeMethod.bmc
    reset_if_observed_down = True  # a node watched after a resume that did not come up is reset again

    def __init__(self, ctx: EngineContext):
        self.ctx = ctx
        self._drivers: dict[str, RedfishDriver] = {}
        self._urls: dict[str, tuple[str, str]] = {}

    def driver(self, node: Node) -> RedfishDriver:
        """The node's driver, one per node reimage: discovery and the BMC session are reused for
        the reimage and the eject (``cleanup`` closes it)."""
        driver = self._drivers.get(node.name)
        if driver is None:
            s = self.ctx.settings
            assert self.ctx.clients is not None
            conn = connector_for_node(node, self.ctx.clients, resolver=self.ctx.endpoints.bmc,
                                      operation_id=self.ctx.rollout_id,
                                      retry=RetryPolicy(attempts=s.bmc_attempts, backoff_s=s.bmc_backoff_s))
            driver = RedfishDriver(conn, vendor=node.bmc.vendor if node.bmc else None,
                                   poll_interval_s=min(1.0, s.poll_s))
            self._drivers[node.name] = driver
        return driver

    async def prepare(self, task: NodeTask) -> None:
        from edgefleet.seeds.build import seed_path

        ctx, store, node = self.ctx, task.store, task.node
        if node.bmc is None:
            raise ReimageFailed(f"node {node.name} has no BMC and store {store.id} has wipe_method bmc; give it a "
                                "bmc in the inventory or set the store's wipe_method to talos-api")
        try:
            image_rel = ctx.artifact(task.release)  # sha256 checked before any BMC call
        except ArtifactError as e:  # e.g. the release a failed store goes back to was altered
            raise ReimageFailed(str(e)) from None
        seed_file = seed_path(seeds_dir(ctx.home, task.release.name, store.id), store.id, node.name)
        seed_rel = seed_file.resolve().relative_to(ctx.home.resolve()).as_posix()
        wall = ctx.wall()
        seeds = ctx.seed_server
        seeds.begin_reimage(node.name)  # its URLs stop working once this reimage is over (cleanup)
        self._urls[node.name] = (seeds.url_for(image_rel, node.name, wall), seeds.url_for(seed_rel, node.name, wall))

    async def observe(self, task: NodeTask) -> bool:
        """A node recorded as booting before the interruption is watched (bootstrapped when it
        needs it, then waited for) before it is reset again: a second reset would restart a boot
        that may be nearly done. ``reimage_node`` resets it only if it does not come up in time."""
        if task.resumed not in (Stage.booting, Stage.bootstrap):
            return False
        await self.ctx.event("reimage_observed", store=task.store.id, node=task.node.name,
                             reason="the node was reset before the interruption: watching it boot before any new "
                                    "reset", detail={"release": task.release.name,
                                                     "timeout_s": self.ctx.settings.node_ready_timeout_s})
        return True

    async def disrupt(self, task: NodeTask, guard: WindowGuard) -> None:
        ctx, store, node, rel = self.ctx, task.store, task.node, task.release
        await record_step(ctx, task, Stage.reimage, "reimage_started", {"release": rel.name, "phase": task.phase.value})
        image_url, seed_url = self._urls[node.name]
        s = ctx.settings
        async def before_step(step: ReimageStep) -> None:
            del step  # every step the store notices needs the same room in the window
            guard.note_step()
            guard.check()

        async def sequence() -> ReimageResult:
            guard.start_sequence()
            return await reimage_sequence(self.driver(node), image_url, seed_url,
                                          power_deadline_s=s.power_deadline_s, before_step=before_step)

        def again(e: BaseException) -> bool:
            # A failed action (a reset answered 5xx, a cut connection) is sent once by the connector,
            # as it may have been applied: the sequence starts again from its beginning. A reset that
            # did land is then repeated on a node booting the same media, which boots it again: the
            # outcome is the same. A BMC that failed every attempt the connector made is not asked
            # again here.
            return isinstance(e, BmcError) and e.transient and e.attempts < s.bmc_attempts

        async def record(attempt: int, e: BaseException, wait: float) -> None:
            del wait
            await ctx.event("reimage_retry", store=store.id, node=node.name, reason=str(e),
                            detail={"attempt": attempt, "attempts": max(1, s.reimage_attempts),
                                    "bmc_error": error_kind(e)})

        try:
            res = await retrying(RetryPolicy(attempts=max(1, s.reimage_attempts), backoff_s=s.bmc_backoff_s,
                                             backoff_max_s=max(s.bmc_backoff_s, 1.0) * 2 ** s.reimage_attempts,
                                             jitter=False),
                                 sequence, retry_if=again, before_sleep=record, sleep=ctx.sleep)
        except BmcError as e:
            await ctx.event("reimage_failed", store=store.id, node=node.name, reason=str(e),
                            detail={"bmc_error": error_kind(e)})
            await self.abandon(task)
            # A BMC that keeps failing transiently (unreachable, 5xx) says nothing about the release.
            raise ReimageFailed(f"reimaging {node.name} to {rel.name} failed: {e}",
                                inconclusive=e.transient) from None
        await record_step(ctx, task, Stage.booting, "reimage_booting",
                          {"release": rel.name, "reset": list(res.reset_types), "boot_slot": res.boot_slot,
                           "seed_slot": res.seed_slot})

    async def abandon(self, task: NodeTask) -> None:
        await self._eject(task)

    async def finish(self, task: NodeTask, up: bool) -> None:
        del up  # the media goes either way: the seed holds the node's machine config
        await self._eject(task)

    async def _eject(self, task: NodeTask) -> None:
        try:
            ejected = await eject_reimage_media(self.driver(task.node))
            await self.ctx.event("media_ejected", store=task.store.id, node=task.node.name,
                                 detail={"slots": list(ejected)})
        except BmcError as e:
            await self.ctx.event("eject_failed", store=task.store.id, node=task.node.name, reason=str(e),
                                 detail={"bmc_error": error_kind(e)})

    async def cleanup(self, task: NodeTask) -> None:
        self.ctx.seed_server.end_reimage(task.node.name)  # this reimage's image and seed URLs: revoked
        self._urls.pop(task.node.name, None)
        driver = self._drivers.pop(task.node.name, None)
        if driver is not None:
            await driver.conn.aclose()

    async def settle(self, task: NodeTask) -> None:
        """A node found Ready on the release that the ledger names mid-reimage was interrupted
        between its boot and its eject: its media (the seed holds its machine config) must not
        stay attached."""
        if task.node.bmc is None:
            return
        try:
            await self._eject(task)
        finally:
            await self.cleanup(task)
