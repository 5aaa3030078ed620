"""The rollout engine: executes a rollout recorded in the ledger, wave by wave, store by store,
node by node, and records every step before and after taking it.

Plain asyncio (the Prefect flows wrap ``execute``; nothing here imports prefect). One process,
one event loop: a store is a coroutine, BMC calls share pooled HTTP clients, ledger writes share
group commits (``ledger.Journal``).

Order of things:

* waves in order; a wave's stores run concurrently under the caps (global, per region, per
  country: semaphores), each only inside its maintenance window and outside freezes, judged by
  the clock the endpoints give (the simulator's in sim mode). A store whose window is not open
  waits for it, at most ``window_wait_max_s`` real seconds;
* per store (``edgefleet.rollout.storerun``): its lock (``ledger.reserve``; ``LockHeld`` -> the
  store is ``refused``, naming the holder); nodes in repair order (those not Ready or not on the
  release first, control planes before workers), a control plane only while the quorum gate says
  so (in etcd membership health: a healthy one waits until every other control plane is healthy,
  one already down goes at once);
* per node: desired vs actual (already Ready on the target: skipped, recorded); seeds for the
  node and release (``seeds.build``, incremental); the artifact's sha256 checked before the first
  BMC call (and every target release's image when the run starts: an altered one refuses the run
  before anything is touched); expiring image and seed URLs from the run's seed server, bound to
  this reimage of the node (``SeedServer.begin_reimage``: revoked once it is over); the steps of
  ``redfish.driver.reimage_sequence`` with the window re-checked before each one (a window about
  to close: media ejected, the node waits for the next window; the reset never lands outside; an
  action failed transiently, which the connector does not repeat: the sequence again from its
  start, at most ``reimage_attempts`` times); when the node is the store's only running control
  plane, Talos ``Bootstrap`` exactly once (only if its etcd has no data); wait until the node is
  Ready on the target; eject the media. The steps for either method are in
  ``edgefleet.rollout.reimage``;
* store gate (all nodes Ready on the target, ``/readyz``, custom probes, soak); a store that
  fails is reimaged back to its previous release the same way and marked ``rolled_back``; when
  that fails too it is ``split`` (its nodes on different releases, each recorded; its lock kept
  until a person runs ``edgefleet rollout resume <id>``, which continues the repair) or
  ``failed`` (all its nodes still on one release);
* wave gate: failures beyond the budget halt the rollout; inconclusive stores that could tip it
  pause it for a person (``rollout resume --approve|--reject``).

Stores without a BMC (``wipe_method: talos-api``) are reimaged in band instead, per node: the
same seeds, the node's seed published on the run's seed server under the nocloud-net route
(``edgefleet.seeds.netseed.NetSeeds``), the node's nocloud-net URL made known to it (see below),
the window re-checked, then ``talos.inband.reimage_in_band`` with an ``os:admin`` client (Talos
``Reset`` wiping STATE and EPHEMERAL; the node boots from disk, fetches its seed from the URL and
joins on the release its machine config names); Bootstrap, the Ready wait, the quorum gate and
the ledger's steps and events are those of the BMC path (no media, so no eject). Afterwards the
node's Talos ``Version`` must be the release's: the reset keeps the BOOT partition, so a node
that came back on another Talos version fails its store (which is then rolled back) with a
message saying it needs a Talos upgrade to the release's installer image.

How a node knows its nocloud-net URL (``edgefleet.rollout.settings``). A wiped node reads
``ds=nocloud-net;s=URL/`` from its SMBIOS serial number or its kernel command line; both are set
once, when the node is first installed, and must stay valid for as long as the node lives. So the
URL must not change between runs:

* the seed server's HMAC key is persistent: ``<home>/seed-server.key`` (32 random bytes, mode
  0600, created on first use; ``load_seed_server_key``). Every run's seed server uses it, so URLs
  minted by one run are valid in the next. Rotating the key (delete the file) invalidates every
  node's URL: each talos-api node then needs its serial / kernel argument set again;
* the per-node token does not expire in practice: its expiry is fixed at ``NETSEED_EXPIRES``
  (2100-01-01) and its scope is the node's three nocloud files only (``nocloud_scope``), so the
  URL is a stable function of the key, the store, the node and the base URL;
* the base URL is the store's ``seed_url`` (the address the store's nodes reach the seed server
  under, e.g. through the store's VPN), else ``seed_public_url``; against the simulator, the
  run's own 127.0.0.1 address. A real talos-api store with neither fails with a message saying so.

``nocloud_urls(home, store, base_url)`` computes the URLs (and ``nocloud_datasource`` the
``ds=`` strings) for the person or tool that installs a node. They are not put into the machine
config: Talos 1.12's config schema has no ``machine.install.extraKernelArgs`` any more (the
kernel command line comes from the boot assets), so the string goes into the SMBIOS serial
(hypervisors, many edge boxes) or the boot assets' kernel arguments at installation. Against
the simulator the engine registers each node's URL (``POST /sim/netseed``) before its reset.

Provisioning a talos-api store in band needs nodes that already run Talos with a machine config
of the store (installed once by hand from the release image and the node's seed, with the ``ds=``
string set): the engine then finds them unformed or on another release and wipes them in band;
a 1-node store loses its only etcd member and gets its Bootstrap exactly once.

Resume: store runs that are not finished run again; the per-node desired-vs-actual check skips
what is already done, a store run whose recorded step is in its rollback phase continues the
rollback, and Bootstrap is only ever sent to a control plane whose etcd holds no data. An
in-band node whose recorded step is ``booting`` (or ``bootstrap``) was reset before the
interruption: it is not wiped again; its seed is published and its URL registered again (the node
may be waiting for it) and the engine waits for it as usual. A BMC node recorded as booting is
watched first, and reset again only if it does not come up within the node-ready timeout. A BMC
node the recorded step names that is already Ready on the release was interrupted before its
eject: it is skipped, and its virtual media ejected. Resuming a rollout with split stores first
continues their repair (a finished rollout too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine

from edgefleet.errors import ArtifactError, StateError
from edgefleet.inventory.model import Fleet
from edgefleet.redfish.connector import BmcClients
from edgefleet.releases.catalog import ReleaseCatalog
from edgefleet.rollout.context import EngineContext
from edgefleet.rollout.endpoints import Endpoints, StoreApi
from edgefleet.rollout.gates import WaveDecision, evaluate_wave
from edgefleet.rollout.journal import Journal, RunCursor, stmt_advance, stmt_event, stmt_wave_advance
from edgefleet.rollout.ledger import Ledger, RolloutRecord, StoreRunRecord, repair_command
from edgefleet.rollout.settings import (
    NETSEED_EXPIRES,
    SEED_KEY_FILE,
    SEED_URL_PATTERN,
    EngineSettings,
    load_seed_server_key,
    nocloud_urls,
    redact,
    seeds_dir,
)
from edgefleet.rollout.states import (
    FINISHED,
    RUN_DONE,
    RUN_FINAL,
    Outcome,
    RolloutEvent,
    RolloutState,
    RunEvent,
    RunState,
    SkipCause,
    WaveEvent,
    WaveState,
)
from edgefleet.rollout.storerun import WINDOW_SHUT, CapSlots, StoreRunner
from edgefleet.seeds.server import SeedServer

__all__ = ["NETSEED_EXPIRES", "SEED_KEY_FILE", "SEED_URL_PATTERN", "EngineSettings", "Executor", "execute",
           "load_seed_server_key", "nocloud_urls", "redact", "seeds_dir"]

log = logging.getLogger("edgefleet.rollout")

# A wave gate's decision -> the wave's move and the state it ends in.
_WAVE_END = {WaveDecision.proceed: (WaveEvent.pass_, WaveState.passed),
             WaveDecision.halt: (WaveEvent.halt, WaveState.halted),
             WaveDecision.pause: (WaveEvent.pause, WaveState.paused)}
# How a rollout ends -> the move that gets it there.
_ROLLOUT_END = {RolloutState.halted: RolloutEvent.halt, RolloutState.paused: RolloutEvent.pause,
                RolloutState.aborted: RolloutEvent.abort, RolloutState.succeeded: RolloutEvent.succeed,
                RolloutState.failed: RolloutEvent.fail}


class Executor:
    """Runs one rollout from the ledger (see the module docstring). Build it, then ``await run()``."""

    def __init__(self, *, fleet: Fleet, home: Path, engine: Engine, endpoints: Endpoints, rollout_id: str,
                 settings: EngineSettings, wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.ledger = Ledger(engine)
        self.endpoints = endpoints
        self.id = rollout_id
        self.s = settings
        self.ctx = EngineContext(rollout_id, fleet, home, settings, self.ledger, Journal(engine),
                                 ReleaseCatalog(engine), endpoints, wall_clock)
        self.now = endpoints.clock
        self.record: RolloutRecord | None = None

    # -- the run ------------------------------------------------------------------------------------

    async def run(self) -> RolloutRecord:
        ctx = self.ctx
        rec = self.ledger.rollout(self.id)
        split = [r for _, r in self.ledger.split_runs(self.id)]
        if rec.status in FINISHED and not split:
            return rec
        if rec.status is RolloutState.paused and rec.decision not in ("approve", "reject"):
            raise StateError(f"rollout {self.id} is paused for a decision ({rec.reason}); run "
                             f"`edgefleet rollout resume {self.id} --approve` or `--reject`")
        seed_key = load_seed_server_key(ctx.home)  # before the rollout is marked running: fix and run again
        await self._verify_targets()  # likewise: an altered image is refused before any BMC call
        event = RolloutEvent.repair if rec.status in FINISHED else RolloutEvent.start
        self.ledger.advance_rollout(rec, event, self.now(), heartbeat_at=ctx.wall(),
                                    abort_requested=rec.abort_requested)
        ctx.abort = rec.abort_requested and event is RolloutEvent.start
        self._release_finished_locks()
        async with ctx.journal, BmcClients() as clients, StoreApi(self.endpoints, ctx.home) as api, \
                SeedServer(ctx.home, token_ttl_s=self.s.seed_token_ttl_s, public_url=self.s.seed_public_url,
                           secret=seed_key) as seeds:
            ctx.attach(api, clients, seeds)
            # What this execution runs with, whole (a resume must show the settings of the start),
            # and where its seed server listens (what a seed_public_url must lead to).
            await ctx.event("execution_started", reason=f"seed server on {seeds.host}:{seeds.port}",
                            detail={"settings": self.s.to_json(), "seed_server": f"{seeds.host}:{seeds.port}",
                                    "resumed": rec.status is not RolloutState.planned})
            beat = asyncio.create_task(self._heartbeat())
            try:
                runner = StoreRunner(ctx, rec)
                await self._repair(runner, split)
                status, reason = (self._summary() if event is RolloutEvent.repair
                                  else await self._waves(rec, runner))
            finally:
                beat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beat
        self.ledger.advance_rollout(self.ledger.rollout(self.id), _ROLLOUT_END[status], self.now(), reason=reason)
        self.ledger.event(self.now(), f"rollout_{status.value}", rollout=self.id, reason=reason)
        self.record = self.ledger.rollout(self.id)
        return self.record

    async def _repair(self, runner: StoreRunner, split: list[StoreRunRecord]) -> None:
        """A person resumed the rollout: continue the repair of its split stores (they hold their locks)."""
        if not split:
            return
        await self.ctx.event("repair_started", reason=f"{len(split)} split store(s): continuing their repair",
                             detail={"stores": [r.store for r in split]})
        caps = CapSlots(asyncio.Semaphore(self.s.max_concurrent), self.s.max_per_region, self.s.max_per_country)
        await asyncio.gather(*(runner.task(r, caps) for r in split))

    async def _verify_targets(self) -> None:
        """Re-hash the image of every release this run still has to put on a store (``artifact``),
        recording and raising ArtifactError when one is missing or was altered since its build."""
        runs = self.ledger.runs(self.id)
        names = sorted({r.to_release for r in runs if r.status not in RUN_DONE}
                       | {r.from_release for r in runs if r.status is RunState.split_ and r.from_release})
        for name in names:
            try:
                await asyncio.to_thread(self.ctx.artifact, self.ctx.release(name))
            except ArtifactError as e:
                self.ledger.event(self.now(), "artifact_refused", rollout=self.id, reason=str(e),
                                  detail={"release": name})
                raise

    def _release_finished_locks(self) -> None:
        """A run interrupted between its store's final record and the lock's release left the lock
        behind; the run is done, so resuming does not run it again: release such locks now. (A
        split store keeps its lock: it is not done.)"""
        done = {r.store for r in self.ledger.runs(self.id) if r.status in RUN_FINAL}
        for store in sorted(set(self.ledger.locks_held_by(self.id)) & done):
            if self.ledger.release_lock(store, self.id):
                self.ledger.event(self.now(), "lock_released", rollout=self.id, store=store,
                                  reason="its store run had finished before the interruption")

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.s.heartbeat_s)
            rec = self.ledger.find_rollout(self.id)
            if rec is not None and rec.abort_requested and not self.ctx.abort:
                self.ctx.abort = True
                log.warning("rollout %s: abort requested; finishing the current nodes", self.id)
            self.ledger.set_rollout(self.id, self.now(), heartbeat_at=self.ctx.wall())

    # -- waves --------------------------------------------------------------------------------------

    async def _waves(self, rec: RolloutRecord, runner: StoreRunner) -> tuple[RolloutState, str]:
        caps = CapSlots(asyncio.Semaphore(self.s.max_concurrent), self.s.max_per_region, self.s.max_per_country)
        runs = self.ledger.runs(self.id)
        waves = self.ledger.waves(self.id)
        last = max((w.index for w in waves), default=0)
        for wave in waves:
            if wave.status is WaveState.halted:
                return RolloutState.halted, wave.reason
            if wave.status is WaveState.passed:
                continue
            if wave.status is WaveState.paused:
                if rec.decision == "reject":
                    await self.ctx.journal.write(stmt_wave_advance(self.id, wave.index, wave.status, WaveEvent.halt,
                                                                   reason="rejected by a person"))
                    await self._skip_rest(runs, "halted: a person rejected the paused wave", SkipCause.halted)
                    return RolloutState.halted, f"wave {wave.name}: rejected by a person"
                await self.ctx.journal.write(
                    stmt_wave_advance(self.id, wave.index, wave.status, WaveEvent.pass_, reason="approved by a person"),
                    stmt_event(self.now(), "wave_approved", rollout=self.id, detail={"wave": wave.index}))
                self.ledger.set_rollout(self.id, self.now(), decision="")
                rec = self.ledger.rollout(self.id)
                continue
            stop = await self._wave(wave.index, wave.name, wave.status, wave.budget, runs, runner, caps)
            if stop is not None:
                return stop
            if self.s.wave_soak > timedelta(0) and wave.index < last:
                await self._wave_soak(wave.index)
        return self._summary()

    async def _wave(self, index: int, name: str, status: WaveState, budget: int, runs: list[StoreRunRecord],
                    runner: StoreRunner, caps: CapSlots) -> tuple[RolloutState, str] | None:
        """Run one wave's stores and its gate; the rollout's end when the wave stops it."""
        ctx = self.ctx
        members = [r for r in runs if r.wave == index]
        await ctx.journal.write(stmt_wave_advance(self.id, index, status, WaveEvent.start),
                                stmt_event(self.now(), "wave_started", rollout=self.id,
                                           detail={"wave": index, "name": name, "stores": len(members)}))
        # Stores with more nodes first (longest processing time first): under the caps, a long
        # store started last would hold the wave open alone for its whole length.
        # Among equals, the planned order (earliest start).
        todo = sorted((r for r in members if r.status not in RUN_DONE),
                      key=lambda r: (-self._node_count(r), r.earliest_start or self.now(), r.store))
        outcomes = await asyncio.gather(*(runner.task(r, caps) for r in todo))
        inconclusive = sum(1 for o in outcomes if o is Outcome.inconclusive)
        final = [r for r in self.ledger.runs(self.id) if r.wave == index]
        failed = sum(1 for r in final if r.status in (RunState.failed, RunState.rolled_back, RunState.split_)) \
            - inconclusive
        decision, why = evaluate_wave(failed, inconclusive, budget)
        if ctx.abort:
            await ctx.journal.write(stmt_wave_advance(self.id, index, WaveState.running, WaveEvent.halt,
                                                      failures=failed, reason="aborted"))
            await self._skip_rest(runs, "not started: the rollout was aborted", SkipCause.aborted)
            return RolloutState.aborted, "aborted by a person"
        move, ends = _WAVE_END[decision]
        await ctx.journal.write(stmt_wave_advance(self.id, index, WaveState.running, move, failures=failed, reason=why),
                                stmt_event(self.now(), f"wave_{ends.value}", rollout=self.id, reason=why,
                                           detail={"wave": index, "failed": failed, "inconclusive": inconclusive,
                                                   "budget": budget}))
        if decision is WaveDecision.halt:
            await self._skip_rest(runs, f"not started: wave {name} halted the rollout ({why})", SkipCause.halted)
            return RolloutState.halted, f"wave {name}: {why}"
        if decision is WaveDecision.pause:
            return RolloutState.paused, f"wave {name}: {why}"
        return None

    async def _wave_soak(self, index: int) -> None:
        await self.ctx.event("wave_soak", reason=f"waiting {self.s.wave_soak} before the next wave",
                             detail={"wave": index})
        until = time.monotonic() + self.endpoints.real_seconds(self.s.wave_soak.total_seconds())
        while time.monotonic() < until and not self.ctx.abort:
            await self.ctx.sleep(min(1.0, until - time.monotonic()))

    def _summary(self) -> tuple[RolloutState, str]:
        """The rollout's end once every wave ran: succeeded only when every store is done."""
        final_runs = self.ledger.runs(self.id)
        by = {st: [r for r in final_runs if r.status is st] for st in RunState}
        bad = by[RunState.failed] + by[RunState.refused]
        # A store whose window never opened (a freeze, say) was not done: the operation did not
        # reach its goal, even though nothing went wrong on the stores it did touch.
        shut = [r for r in by[RunState.skipped] if _skip_cause(r) is SkipCause.window]
        split = by[RunState.split_]
        summary = (f"{len(by[RunState.succeeded])} succeeded, {len(by[RunState.rolled_back])} rolled back, "
                   f"{len(bad)} failed or refused")
        if split:
            summary = (f"{len(split)} split across releases and locked ({', '.join(r.store for r in split[:10])}): "
                       f"continue the repair with `{repair_command(self.id)}`; " + summary)
        if shut:
            summary += f", {len(shut)} not done: {WINDOW_SHUT} ({', '.join(r.store for r in shut[:10])}" + (
                ", ...)" if len(shut) > 10 else ")")
        return (RolloutState.failed if bad or shut or split else RolloutState.succeeded), summary

    def _node_count(self, run: StoreRunRecord) -> int:
        store = self.ctx.fleet.stores.get(run.store)
        return len(store.nodes) if store is not None else 0

    async def _skip_rest(self, runs: list[StoreRunRecord], reason: str, cause: SkipCause) -> None:
        current = {r.store: r for r in self.ledger.runs(self.id)}
        stmts = [stmt_advance(RunCursor(self.id, r.store, RunState.pending), RunEvent.skip, reason=reason,
                              ended_at=self.now(), detail={**current[r.store].detail, "skipped": cause.value})
                 for r in runs if current[r.store].status is RunState.pending]
        if stmts:
            await self.ctx.journal.write(*stmts)


def _skip_cause(run: StoreRunRecord) -> SkipCause | None:
    """Why ``run`` was skipped: its ``detail``; a run recorded before the cause was kept there
    says it only in its reason, which then begins with ``WINDOW_SHUT`` (the one cause read back)."""
    cause = run.detail.get("skipped")
    if cause is not None:
        return SkipCause(cause)
    return SkipCause.window if run.reason.startswith(WINDOW_SHUT) else None


async def execute(*, fleet: Fleet, home: Path, engine: Engine, endpoints: Endpoints, rollout_id: str,
                  settings: EngineSettings | None = None) -> RolloutRecord:
    """Run (or resume) rollout ``rollout_id`` to its end, a halt or a pause; returns its record."""
    ledger = Ledger(engine)
    rec = ledger.rollout(rollout_id)
    st = settings or EngineSettings.from_json(rec.policy)
    return await Executor(fleet=fleet, home=home, engine=engine, endpoints=endpoints, rollout_id=rollout_id,
                          settings=st).run()
