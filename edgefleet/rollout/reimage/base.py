"""The reimager interface and what both methods share: the window guard and the wait for a node.

A reimage of one node, for either method, is five steps (``reimage_node`` runs them):

1. ``prepare``: what must hold before anything is touched (a BMC, or Talos API access and a seed
   URL; the image's sha256; URLs for this reimage; the network seed published);
2. ``disrupt``: the steps the store notices, each behind the ``WindowGuard`` (Redfish: insert
   image and seed, boot override, reset; in band: the Talos ``Reset``). A window about to close
   stops it before its step; the node then waits for the next window and starts again. On resume,
   a node the ledger recorded as booting is observed first (``observe``) and disrupted again only
   if it does not come up within its boot timeout;
3. ``wait``: Bootstrap exactly once when the node was its store's last etcd member
   (``QuorumPolicy``), then the node gate until the node is Ready on the release;
4. ``finish``: eject the media (Redfish) or check the Talos version it came back on (in band);
5. ``cleanup``: revoke this reimage's URLs and close the node's BMC session, always.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from edgefleet.errors import GateFailed, WindowClosed
from edgefleet.health.probes import ClusterSnapshot
from edgefleet.inventory.model import Node, Store, WipeMethod
from edgefleet.releases.catalog import Release
from edgefleet.rollout.context import EngineContext
from edgefleet.rollout.gates import (
    NodeBefore,
    Verdict,
    VerdictKind,
    api_unread_reason,
    evaluate_node,
    evaluate_rollback_node,
)
from edgefleet.rollout.journal import RunCursor, stmt_event, stmt_run
from edgefleet.rollout.states import Phase, Stage, Step
from edgefleet.schedule.windows import next_allowed_start, window_at

__all__ = ["NodeTask", "Reimager", "WindowGuard", "wait_node"]


class WindowGuard:
    """The one check of the maintenance window for a store: ``check`` before every step the store
    notices (room for ``margin()`` in a window, outside freezes, on the rollout's clock),
    ``wait_open`` until a stretch of a given length fits (bounded by ``window_wait_max_s``).

    The room a step needs is ``step_margin``, or twice as long as the store's recent steps took to
    be sent and answered across the run (``note_step``), whichever is longer, plus how far the rollout's clock may
    be off the store's (a simulator's clock read over HTTP). At the wall clock that is the margin
    itself; on a simulator running 3,600x on a loaded machine, a step answered 0.2 s later than
    its check lands 12 simulated minutes later: the check must leave room for that."""

    LATENCY_CAP_S = 5.0  # one pathological step does not close every window for the rest of the run

    def __init__(self, ctx: EngineContext, store: Store):
        self.ctx = ctx
        self.store = store
        self._last_check: float | None = None

    def start_sequence(self) -> None:
        """A sequence of steps begins (or begins again): its first step has nothing before it to time."""
        self._last_check = None

    def note_step(self) -> None:
        """Called before each step of a sequence: the time since the previous step's check is what
        that step took."""
        now = time.monotonic()
        if self._last_check is not None:
            took = min(now - self._last_check, self.LATENCY_CAP_S)
            self.ctx.step_latency_s = max(took, self.ctx.step_latency_s * 0.8)
        self._last_check = now

    def margin(self) -> timedelta:
        scale = self.ctx.endpoints.time_scale
        observed = timedelta(seconds=2 * self.ctx.step_latency_s * scale)
        return max(self.ctx.settings.step_margin, observed) + self.ctx.endpoints.clock_uncertainty

    def check(self) -> None:
        """Raise WindowClosed unless ``[now, now + margin())`` lies in a window, outside freezes."""
        t = self.ctx.now()
        margin = self.margin()
        start = next_allowed_start(self.store, self.ctx.fleet.freezes, t, margin,
                                   horizon=timedelta(hours=1) + margin)
        if start is None or start > t + timedelta(seconds=1):
            raise WindowClosed(f"the maintenance window of store {self.store.id} closes (or a freeze begins) "
                               f"within {margin}")

    async def wait_next_window(self, duration: timedelta) -> bool:
        """After ``check`` refused a step: wait for the end of the window occurrence we are in, then
        ``wait_open``. What is left of this occurrence only shrinks, so a step refused in it would be
        refused again (a store would start, eject and start again until the window shut)."""
        now = self.ctx.now()
        current = window_at(self.store, now)
        if current is not None:
            wait_s = self.ctx.endpoints.real_seconds((current[1] - now).total_seconds())
            if wait_s > self.ctx.settings.window_wait_max_s:
                return False
            await self.ctx.sleep(wait_s + 0.01)
        return await self.wait_open(duration)

    async def wait_open(self, duration: timedelta) -> bool:
        """Wait until ``[now, now + duration)`` fits a window outside freezes; False past the bound."""
        deadline = time.monotonic() + self.ctx.settings.window_wait_max_s
        while True:
            t = self.ctx.now()
            start = next_allowed_start(self.store, self.ctx.fleet.freezes, t, duration, horizon=timedelta(days=15))
            if start is not None and start <= t + timedelta(seconds=1):
                return True
            left = deadline - time.monotonic()
            if left <= 0 or start is None:
                return False
            await self.ctx.sleep(min(left, self.ctx.endpoints.real_seconds((start - t).total_seconds()) + 0.01, 5.0))


@dataclass
class NodeTask:
    """One node's reimage to one release, in one phase of its store run."""

    store: Store
    node: Node
    release: Release
    phase: Phase
    run: RunCursor
    before: NodeBefore | None
    resumed: Stage | None = None
    """The stage the ledger recorded for this node before an interruption (None: not this node)."""
    needs_bootstrap: bool = False

    @property
    def rollback(self) -> bool:
        return self.phase is Phase.rollback

    def step(self, stage: Stage) -> str:
        return str(Step(self.phase, stage, self.node.name))


class Reimager(Protocol):
    """One reimage method (see the module docstring for the steps)."""

    method: WipeMethod
    reset_if_observed_down: bool
    """Whether a node watched after a resume (``observe``) that did not come up is disrupted again."""

    async def prepare(self, task: NodeTask) -> None: ...

    async def observe(self, task: NodeTask) -> bool:
        """On resume: True when the node recorded mid-boot came up (no second disrupt)."""
        ...

    async def disrupt(self, task: NodeTask, guard: WindowGuard) -> None: ...

    async def abandon(self, task: NodeTask) -> None:
        """The window closed before the disrupt finished: undo what the store must not keep."""
        ...

    async def finish(self, task: NodeTask, up: bool) -> None: ...

    async def cleanup(self, task: NodeTask) -> None: ...

    async def settle(self, task: NodeTask) -> None:
        """The node the ledger names mid-reimage is already on the release: tidy up after it."""
        ...


async def record_step(ctx: EngineContext, task: NodeTask, stage: Stage, kind: str, detail: dict[str, object]) -> None:
    """The node's stage and its event, in one commit (before the step it names is taken)."""
    await ctx.journal.write(stmt_run(ctx.rollout_id, task.store.id, step=task.step(stage)),
                            stmt_event(ctx.now(), kind, rollout=ctx.rollout_id, store=task.store.id,
                                       node=task.node.name, detail=detail))


async def wait_node(ctx: EngineContext, task: NodeTask, timeout_s: float | None = None) -> Verdict:
    """Wait until the node is Ready on the release (a rollback: as it was before); the verdict
    after ``timeout_s`` (default: the node-ready timeout). An API that could not be read for the
    whole time raises an inconclusive GateFailed: it says nothing about the release."""
    s = ctx.settings
    timeout = s.node_ready_timeout_s if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout
    rel, name = task.release, task.node.name
    while True:
        snap = await ctx.store_api.snapshot(task.store, readyz=False)
        v = (evaluate_rollback_node(snap, name, rel.name, task.before, rel.talos_version) if task.rollback
             else evaluate_node(snap, name, rel.name, rel.talos_version))
        if v.passed:
            return v
        if time.monotonic() > deadline:
            if not isinstance(snap, ClusterSnapshot):
                raise GateFailed(f"node {name}: for {timeout:g} s, {api_unread_reason(snap)}", inconclusive=True)
            return Verdict(VerdictKind.failed, (*v.reasons, f"not Ready on {rel.name} within {timeout:g} s"))
        await ctx.sleep(s.poll_s)
