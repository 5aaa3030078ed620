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
* per store: its lock (``LockHeld`` -> the store is ``refused``, naming the holder); nodes in a
  safe order: control planes one at a time, each only while every other control plane is Ready
  and an etcd member (quorum gate), then workers;
* per node: desired vs actual (already Ready on the target: skipped, recorded); seeds for the
  node and release (``seeds.build``, incremental); the artifact's sha256 checked before the first
  BMC call (and every target release's image when the run starts: an altered one refuses the run
  before anything is touched); expiring image and seed URLs from the run's seed server, bound to
  this reimage of the node (``SeedServer.begin_reimage``: revoked once it is over); the steps of
  ``redfish.driver.reimage_sequence`` with the window re-checked before each one (a window about
  to close: media ejected, the node waits for the next window; the reset never lands outside; an
  action failed transiently, which the connector does not repeat: the sequence again from its
  start, at most ``reimage_attempts`` times); when
  the node is the store's only running control plane, Talos ``Bootstrap`` exactly once (only if its
  etcd has no data); wait until the node is Ready on the target; eject the media;
* store gate (all nodes Ready on the target, ``/readyz``, custom probes, soak); a store that
  fails is reimaged back to its previous release the same way and marked ``rolled_back`` (or
  ``failed`` when that fails too);
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

How a node knows its nocloud-net URL. A wiped node reads ``ds=nocloud-net;s=URL/`` from its SMBIOS
serial number or its kernel command line; both are set once, when the node is first installed,
and must stay valid for as long as the node lives. So the URL must not change between runs:

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
may be waiting for it) and the engine waits for it as usual. A BMC node the recorded step names
that is already Ready on the release was interrupted before its eject: it is skipped, and its
virtual media ejected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import Engine

from edgefleet.errors import (
    ArtifactError,
    BmcError,
    ConfigRenderError,
    EdgefleetError,
    LockHeld,
    NetworkSeedError,
    ProbeError,
    SecretsError,
    SeedError,
    StateError,
    TalosCallFailed,
    TalosRefused,
)
from edgefleet.health.probes import ClusterSnapshot, run_probes
from edgefleet.inventory.model import Fleet, Node, Role, Store, WipeMethod
from edgefleet.redfish.connector import BmcClients, RetryPolicy, connector_for_node
from edgefleet.redfish.driver import RedfishDriver, ReimageStep, eject_reimage_media, reimage_sequence
from edgefleet.releases.catalog import Release, ReleaseCatalog, verify_artifact
from edgefleet.rollout.endpoints import Endpoints, StoreApi
from edgefleet.rollout.gates import (
    RELEASE_LABEL,
    NodeBefore,
    Observed,
    Verdict,
    VerdictKind,
    WaveDecision,
    api_unread_reason,
    evaluate_node,
    evaluate_quorum,
    evaluate_rollback_node,
    evaluate_store,
    evaluate_wave,
)
from edgefleet.rollout.ledger import (
    FINISHED,
    RUN_DONE,
    Journal,
    Kind,
    Ledger,
    RolloutRecord,
    RolloutStatus,
    RunStatus,
    StoreRunRecord,
    stmt_event,
    stmt_node,
    stmt_run,
    stmt_store_release,
    stmt_wave,
)
from edgefleet.schedule.windows import next_allowed_start
from edgefleet.seeds.netseed import NetSeeds, nocloud_net_url
from edgefleet.seeds.server import SeedServer

__all__ = ["NETSEED_EXPIRES", "SEED_KEY_FILE", "SEED_URL_PATTERN", "EngineSettings", "Executor", "execute",
           "load_seed_server_key", "nocloud_urls", "redact", "seeds_dir"]

WINDOW_SHUT = "its maintenance window did not open"  # the reason of a store skipped for want of a window

SEED_KEY_FILE = "seed-server.key"
SEED_KEY_BYTES = 32
NETSEED_EXPIRES = 4102444800  # 2100-01-01T00:00:00Z: nocloud-net URLs live as long as the node's serial

log = logging.getLogger("edgefleet.rollout")

# A seed-server token in a URL (``<node b64>.<expiry>.<mac b64>``): a credential, never recorded.
_TOKEN = re.compile(r"/[A-Za-z0-9_-]{1,400}\.[0-9]{1,12}\.[A-Za-z0-9_-]{43}/")


def redact(text: str) -> str:
    """``text`` with every seed-server URL token replaced by ``<token>``."""
    return _TOKEN.sub("/<token>/", text)


# The names an older edgefleet wrote into a rollout's ``policy`` (one flat dict, durations as
# ``<name>_s`` seconds), and the plan's own keys that sat beside them (``operations._policy_json``).
_LEGACY_SECONDS = {"node_duration_s": "node_duration", "soak_s": "soak", "wave_soak_s": "wave_soak",
                   "step_margin_s": "step_margin"}
SEED_URL_PATTERN = r"^https?://[^\s/?#@]+(/[^\s?#]*)?$"  # an http(s) URL with a host, no query, no userinfo
_POLICY_KEYS = frozenset({"canary", "waves", "wave_groups", "failure_budget"})


class EngineSettings(BaseModel):
    """Knobs of one execution, validated. Durations ending in ``_s`` are real seconds;
    ``node_duration``, ``soak``, ``wave_soak`` and ``step_margin`` are on the rollout's clock
    (simulated time in sim mode).

    Recorded whole with the rollout (``to_json``: every field, ``model_dump(mode="json")``) and read
    back whole on resume (``from_json``), so a resumed rollout runs with exactly the settings it was
    started with. A field missing from a record (one written before the field existed) takes its
    default; a key this version does not know is refused (``StateError`` naming it), rather than
    resuming with a setting silently dropped: it was written by a newer edgefleet."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_concurrent: int = Field(100, ge=1)
    max_per_region: int | None = Field(None, ge=1)
    max_per_country: int | None = Field(None, ge=1)
    node_duration: timedelta = timedelta(minutes=20)
    soak: timedelta = timedelta(0)
    wave_soak: timedelta = timedelta(0)  # between waves, after a wave passed its gate
    node_ready_timeout_s: float = Field(1800.0, gt=0)
    quorum_timeout_s: float = Field(600.0, gt=0)
    store_gate_timeout_s: float = Field(600.0, gt=0)
    window_wait_max_s: float = Field(25 * 3600.0, ge=0)  # the next daily window always opens within this
    poll_s: float = Field(2.0, gt=0)
    power_deadline_s: float | None = Field(None, gt=0)  # None: the BMC vendor's power transition time
    heartbeat_s: float = Field(5.0, gt=0)
    seed_public_url: str | None = Field(None, pattern=SEED_URL_PATTERN)
    seed_token_ttl_s: float = Field(6 * 3600.0, gt=0)
    step_margin: timedelta = timedelta(minutes=5)  # room left in the window before each BMC step
    pre_hook: str | None = None  # Ansible playbook run before a store is touched (edgefleet.rollout.hooks)
    post_hook: str | None = None  # ... and after its store gate passed; failing: the store is rolled back
    hook_timeout_s: float = Field(300.0, gt=0)
    bmc_attempts: int = Field(4, ge=1)
    bmc_backoff_s: float = Field(0.5, ge=0)
    # a node's Redfish sequence, from its start after an action failed transiently
    reimage_attempts: int = Field(3, ge=1)
    inband_deadline_s: float = Field(120.0, gt=0)  # a talos-api node's Version, seed check and Reset, together

    @field_validator("node_duration", "soak", "wave_soak", "step_margin")
    @classmethod
    def _not_negative(cls, v: timedelta) -> timedelta:
        if v < timedelta(0):
            raise ValueError("must not be negative")
        return v

    def to_json(self) -> dict[str, Any]:
        """Every field, as JSON (durations as ISO 8601 durations)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, data: dict[str, Any], **override: Any) -> EngineSettings:
        """The settings recorded in a rollout's ``policy``: ``{"settings": {...}, <plan keys>}`` as
        written now, or the flat dict an older edgefleet wrote (``node_duration_s`` and the other
        ``_s`` durations in seconds, the plan's keys beside them). ``override``: fields to replace
        (None values are ignored). Raises ``StateError`` for unknown keys or invalid values."""
        if isinstance(data.get("settings"), dict):
            known = dict(data["settings"])
        else:
            known = {k: v for k, v in data.items() if k not in _POLICY_KEYS}
            for old, name in _LEGACY_SECONDS.items():
                if old in known and name not in known:
                    known[name] = timedelta(seconds=float(known.pop(old)))
        known.update({k: v for k, v in override.items() if v is not None})
        unknown = sorted(set(known) - set(cls.model_fields))
        if unknown:
            raise StateError(f"the recorded engine settings hold {', '.join(unknown)}, which this edgefleet does not "
                             "know: the rollout was recorded by a newer edgefleet; resume it with that version")
        try:
            return cls.model_validate(known)
        except ValidationError as e:
            raise StateError(f"the recorded engine settings are invalid: {_validation_text(e)}") from None


def _validation_text(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())


def load_seed_server_key(home: Path) -> bytes:
    """The seed server's persistent HMAC key, ``<home>/seed-server.key`` (created 0600 on first use)."""
    path = home / SEED_KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as e:
        raise SeedError(f"cannot create the seed server key {path}: {e.strerror}; check that the edgefleet home "
                        f"{home} exists and is writable") from None
    else:
        try:
            os.write(fd, secrets.token_bytes(SEED_KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
    try:
        key = path.read_bytes()
        mode = path.stat().st_mode & 0o777
    except OSError as e:
        raise SeedError(f"cannot read the seed server key {path}: {e.strerror}") from None
    if len(key) != SEED_KEY_BYTES:
        raise SeedError(f"the seed server key {path} has {len(key)} bytes, not {SEED_KEY_BYTES}: restore it from a "
                        "backup (deleting it invalidates every talos-api node's nocloud-net URL)")
    if mode & 0o077:
        raise SeedError(f"the seed server key {path} is readable by others (mode {mode:o}): chmod 600 it")
    return key


def nocloud_urls(home: Path, store: Store, base_url: str) -> dict[str, str]:
    """Node name -> the long-lived nocloud-net ``s=`` URL of each node of ``store`` (see the module
    docstring): signed with the persistent key, expiring at ``NETSEED_EXPIRES``, under the store's
    ``seed_url`` when set, else ``base_url``."""
    server = SeedServer(home, secret=load_seed_server_key(home), public_url=base_url)
    return {n.name: _nocloud_url(server, store, n) for n in store.nodes}


def _nocloud_url(server: SeedServer, store: Store, node: Node) -> str:
    return nocloud_net_url(server, store, node, datetime.fromtimestamp(0, UTC), ttl_s=float(NETSEED_EXPIRES))


def _in_band(store: Store) -> bool:
    return store.wipe_method is WipeMethod.talos_api


def seeds_dir(home: Path, release: str, store_id: str) -> Path:
    """Where the engine keeps a store's seeds for a release (one small incremental index each)."""
    return home / "seeds" / "engine" / release / store_id


class _Aborted(Exception):
    """A person aborted the rollout: stop after the current node."""


class _WindowClosed(Exception):
    """The maintenance window would close (or a freeze begin) before the next disruptive step."""


class _StoreFailed(Exception):
    def __init__(self, reason: str, *, inconclusive: bool = False):
        reason = redact(reason)
        self.reason = reason
        self.inconclusive = inconclusive
        super().__init__(reason)


@dataclass
class _Caps:
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


def _ordered(store: Store) -> list[Node]:
    return ([n for n in store.nodes if n.role is Role.controlplane]
            + [n for n in store.nodes if n.role is not Role.controlplane])


class Executor:
    """Runs one rollout from the ledger (see the module docstring). Build it, then ``await run()``."""

    def __init__(self, *, fleet: Fleet, home: Path, engine: Engine, endpoints: Endpoints, rollout_id: str,
                 settings: EngineSettings, wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.fleet = fleet
        self.home = home
        self.ledger = Ledger(engine)
        self.catalog = ReleaseCatalog(engine)
        self.journal = Journal(engine)
        self.endpoints = endpoints
        self.id = rollout_id
        self.s = settings
        self.wall = wall_clock
        self.now = endpoints.clock
        self._abort = False
        self._verified: dict[str, Path] = {}
        self._releases: dict[str, Release] = {}
        self._drivers: dict[str, RedfishDriver] = {}
        self.record: RolloutRecord | None = None
        self._started: RolloutRecord | None = None  # the record as this run found it

    # -- helpers ------------------------------------------------------------------------------------

    async def _event(self, kind: str, *, store: str | None = None, node: str | None = None, reason: str = "",
                     detail: dict[str, Any] | None = None, extra: tuple[Any, ...] = ()) -> None:
        await self.journal.write(*extra, stmt_event(self.now(), kind, rollout=self.id, store=store, node=node,
                                                     reason=redact(reason), detail=detail))

    def _release(self, name: str) -> Release:
        rel = self._releases.get(name)
        if rel is None:
            rel = self._releases[name] = self.catalog.get(name)
        return rel

    def _artifact(self, rel: Release) -> str:
        """The image's path relative to the seed server root, after checking its sha256 (once per
        run per release, before the first BMC call that uses it)."""
        path = self._verified.get(rel.name)
        if path is None:
            path = self._verified[rel.name] = verify_artifact(rel)
        try:
            return path.resolve().relative_to(self.home.resolve()).as_posix()
        except ValueError:
            raise ArtifactError(f"release {rel.name}: artifact {path} is outside the edgefleet home {self.home}; "
                                "the seed server only serves files under it") from None

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    # -- the run ------------------------------------------------------------------------------------

    async def run(self) -> RolloutRecord:
        rec = self._started = self.ledger.rollout(self.id)
        if rec.status in FINISHED:
            return rec
        if rec.status is RolloutStatus.paused and rec.decision not in ("approve", "reject"):
            raise StateError(f"rollout {self.id} is paused for a decision ({rec.reason}); run "
                             f"`edgefleet rollout resume {self.id} --approve` or `--reject`")
        seed_key = load_seed_server_key(self.home)  # before the rollout is marked running: fix and run again
        await self._verify_targets()  # likewise: an altered image is refused before any BMC call
        self.ledger.set_rollout(self.id, self.now(), status=RolloutStatus.running.value, heartbeat_at=self.wall(),
                                abort_requested=rec.abort_requested)
        self._abort = rec.abort_requested
        self._release_finished_locks()
        async with self.journal, BmcClients() as clients, StoreApi(self.endpoints, self.home) as api, \
                SeedServer(self.home, token_ttl_s=self.s.seed_token_ttl_s, public_url=self.s.seed_public_url,
                           secret=seed_key) as seeds:
            self.clients, self.api, self.seeds = clients, api, seeds
            self.netseeds = NetSeeds.attach(seeds)
            # What this execution runs with, whole (a resume must show the settings of the start),
            # and where its seed server listens (what a seed_public_url must lead to).
            await self._event("execution_started", reason=f"seed server on {seeds.host}:{seeds.port}",
                              detail={"settings": self.s.to_json(), "seed_server": f"{seeds.host}:{seeds.port}",
                                      "resumed": rec.status is not RolloutStatus.planned})
            beat = asyncio.create_task(self._heartbeat())
            try:
                status, reason = await self._waves(rec)
            finally:
                beat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beat
        self.ledger.set_rollout(self.id, self.now(), status=status.value, reason=reason)
        self.ledger.event(self.now(), f"rollout_{status.value}", rollout=self.id, reason=reason)
        self.record = self.ledger.rollout(self.id)
        return self.record

    async def _verify_targets(self) -> None:
        """Re-hash the image of every release this run still has to put on a store (``_artifact``),
        recording and raising ArtifactError when one is missing or was altered since its build."""
        names = sorted({r.to_release for r in self.ledger.runs(self.id) if r.status not in RUN_DONE})
        for name in names:
            try:
                await asyncio.to_thread(self._artifact, self._release(name))
            except ArtifactError as e:
                self.ledger.event(self.now(), "artifact_refused", rollout=self.id, reason=str(e),
                                  detail={"release": name})
                raise

    def _release_finished_locks(self) -> None:
        """A run interrupted between its store's final record and the lock's release left the lock
        behind; the run is done, so resuming does not run it again: release such locks now."""
        done = {r.store for r in self.ledger.runs(self.id) if r.status in RUN_DONE}
        for store in sorted(set(self.ledger.locks_held_by(self.id)) & done):
            if self.ledger.release_lock(store, self.id):
                self.ledger.event(self.now(), "lock_released", rollout=self.id, store=store,
                                  reason="its store run had finished before the interruption")

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.s.heartbeat_s)
            rec = self.ledger.find_rollout(self.id)
            if rec is not None and rec.abort_requested and not self._abort:
                self._abort = True
                log.warning("rollout %s: abort requested; finishing the current nodes", self.id)
            self.ledger.set_rollout(self.id, self.now(), heartbeat_at=self.wall())

    async def _waves(self, rec: RolloutRecord) -> tuple[RolloutStatus, str]:
        caps = _Caps(asyncio.Semaphore(self.s.max_concurrent), self.s.max_per_region, self.s.max_per_country)
        runs = self.ledger.runs(self.id)  # the planned rows: wave, earliest start, from/to release
        waves = self.ledger.waves(self.id)
        for wave in waves:
            if wave.status in ("passed", "halted"):
                if wave.status == "halted":
                    return RolloutStatus.halted, wave.reason
                continue
            if wave.status == "paused":
                if rec.decision == "reject":
                    await self.journal.write(stmt_wave(self.id, wave.index, status="halted",
                                                       reason="rejected by a person"))
                    await self._skip_rest(runs, "halted: a person rejected the paused wave")
                    return RolloutStatus.halted, f"wave {wave.name}: rejected by a person"
                await self.journal.write(stmt_wave(self.id, wave.index, status="passed",
                                                   reason="approved by a person"),
                                         stmt_event(self.now(), "wave_approved", rollout=self.id,
                                                    detail={"wave": wave.index}))
                self.ledger.set_rollout(self.id, self.now(), decision="")
                rec = self.ledger.rollout(self.id)
                continue
            members = [r for r in runs if r.wave == wave.index]
            await self.journal.write(stmt_wave(self.id, wave.index, status="running"),
                                     stmt_event(self.now(), "wave_started", rollout=self.id,
                                                detail={"wave": wave.index, "name": wave.name,
                                                        "stores": len(members)}))
            # Stores with more nodes first (longest processing time first): under the caps, a long
            # store started last would hold the wave open alone for its whole length. Among equals,
            # the planned order (earliest start).
            todo = sorted((r for r in members if r.status not in RUN_DONE),
                          key=lambda r: (-self._node_count(r), r.earliest_start or self.now(), r.store))
            outcomes = await asyncio.gather(*(self._store_task(r, caps) for r in todo))
            inconclusive = sum(1 for o in outcomes if o == "inconclusive")
            final = {r.store: r for r in self.ledger.runs(self.id) if r.wave == wave.index}
            failed = sum(1 for r in final.values() if r.status in (RunStatus.failed, RunStatus.rolled_back)) \
                - inconclusive
            decision, why = evaluate_wave(failed, inconclusive, wave.budget)
            if self._abort:
                await self.journal.write(stmt_wave(self.id, wave.index, status="halted", failures=failed,
                                                   reason="aborted"))
                await self._skip_rest(runs, "not started: the rollout was aborted")
                return RolloutStatus.aborted, "aborted by a person"
            status = {WaveDecision.proceed: "passed", WaveDecision.halt: "halted",
                      WaveDecision.pause: "paused"}[decision]
            await self.journal.write(stmt_wave(self.id, wave.index, status=status, failures=failed, reason=why),
                                     stmt_event(self.now(), f"wave_{status}", rollout=self.id, reason=why,
                                                detail={"wave": wave.index, "failed": failed,
                                                        "inconclusive": inconclusive, "budget": wave.budget}))
            if decision is WaveDecision.halt:
                await self._skip_rest(runs, f"not started: wave {wave.name} halted the rollout ({why})")
                return RolloutStatus.halted, f"wave {wave.name}: {why}"
            if decision is WaveDecision.pause:
                return RolloutStatus.paused, f"wave {wave.name}: {why}"
            if self.s.wave_soak > timedelta(0) and wave.index < waves[-1].index:
                await self._event("wave_soak", reason=f"waiting {self.s.wave_soak} before the next wave",
                                  detail={"wave": wave.index})
                until = time.monotonic() + self.endpoints.real_seconds(self.s.wave_soak.total_seconds())
                while time.monotonic() < until and not self._abort:
                    await self._sleep(min(1.0, until - time.monotonic()))
        final_runs = self.ledger.runs(self.id)
        bad = [r for r in final_runs if r.status in (RunStatus.failed, RunStatus.refused)]
        rolled = [r for r in final_runs if r.status is RunStatus.rolled_back]
        ok = [r for r in final_runs if r.status is RunStatus.succeeded]
        # A store whose window never opened (a freeze, say) was not done: the operation did not
        # reach its goal, even though nothing went wrong on the stores it did touch.
        shut = [r for r in final_runs if r.status is RunStatus.skipped and r.reason.startswith(WINDOW_SHUT)]
        summary = f"{len(ok)} succeeded, {len(rolled)} rolled back, {len(bad)} failed or refused"
        if shut:
            summary += f", {len(shut)} not done: {WINDOW_SHUT} ({', '.join(r.store for r in shut[:10])}" + (
                ", ...)" if len(shut) > 10 else ")")
        return (RolloutStatus.failed if bad or shut else RolloutStatus.succeeded), summary

    def _node_count(self, run: StoreRunRecord) -> int:
        store = self.fleet.stores.get(run.store)
        return len(store.nodes) if store is not None else 0

    async def _skip_rest(self, runs: list[StoreRunRecord], reason: str) -> None:
        current = {r.store: r for r in self.ledger.runs(self.id)}
        stmts = [stmt_run(self.id, r.store, status=RunStatus.skipped, reason=reason, ended_at=self.now())
                 for r in runs if current[r.store].status is RunStatus.pending]
        if stmts:
            await self.journal.write(*stmts)

    # -- one store --------------------------------------------------------------------------------

    async def _store_task(self, run: StoreRunRecord, caps: _Caps) -> str:
        store = self.fleet.stores.get(run.store)
        if store is None:
            await self.journal.write(stmt_run(self.id, run.store, status=RunStatus.failed, ended_at=self.now(),
                                              reason=f"store {run.store} is no longer in the inventory"))
            return "failed"
        if self._abort:
            await self.journal.write(stmt_run(self.id, store.id, status=RunStatus.skipped, ended_at=self.now(),
                                              reason="not started: the rollout was aborted"))
            return "skipped"
        if not await self._wait_window(store, self.s.node_duration):
            await self.journal.write(stmt_run(self.id, store.id, status=RunStatus.skipped, ended_at=self.now(),
                                              reason=f"{WINDOW_SHUT} (outside freezes) within "
                                                     f"{self.s.window_wait_max_s:g} s"))
            return "skipped"
        async with caps.hold(store):
            if self._abort:
                await self.journal.write(stmt_run(self.id, store.id, status=RunStatus.skipped, ended_at=self.now(),
                                                  reason="not started: the rollout was aborted"))
                return "skipped"
            try:
                self.ledger.acquire_lock(store.id, self.id, self.now())
            except LockHeld as e:
                await self.journal.write(stmt_run(self.id, store.id, status=RunStatus.refused, ended_at=self.now(),
                                                  reason=str(e)))
                await self._event("lock_refused", store=store.id, reason=str(e))
                return "refused"
            try:
                return await self._store_body(store, run)
            finally:
                self.ledger.release_lock(store.id, self.id)

    async def _store_body(self, store: Store, run: StoreRunRecord) -> str:
        # Only the record's kind is read here. A fresh read per store would parse the whole plan
        # (every store of the rollout) once per store and keep it for as long as the store runs:
        # at 3,400 stores and 500 at once, over a GiB.
        rec = self._started or self.ledger.rollout(self.id)
        detail = dict(run.detail)
        if "before" not in detail:
            detail["before"] = _before_from(await self.api.snapshot(store, readyz=False), store)
        before = {n: NodeBefore(v.get("release"), bool(v.get("ready"))) for n, v in detail["before"].items()}
        from_release = run.from_release
        if from_release is None and rec.kind is Kind.rollout:
            seen = {b.release for b in before.values()}
            if len(seen) == 1 and (only := seen.pop()) is not None and self.catalog.find(only) is not None:
                from_release = only
        await self.journal.write(
            stmt_run(self.id, store.id, status=RunStatus.running, started_at=run.started_at or self.now(),
                     detail=detail, from_release=from_release, step=run.step or "start"),
            stmt_event(self.now(), "store_started", rollout=self.id, store=store.id,
                       detail={"from": from_release, "to": run.to_release, "resumed_step": run.step or None}))
        rollback_phase = run.step.startswith("rollback")
        if not rollback_phase and self.s.pre_hook:
            hook = await self._hook(self.s.pre_hook, store, "pre", run.to_release)
            if hook is not None:
                await self.journal.write(stmt_run(self.id, store.id, status=RunStatus.failed, ended_at=self.now(),
                                                  reason=f"{hook}; the store was not touched"))
                return "failed"
        if not rollback_phase:
            try:
                await self._converge(store, run.to_release, rollback=False, before=before, resume_step=run.step,
                                     cluster_exists=bool(detail.get("cluster_exists", True)))
                await self._store_gate(store, run.to_release, before=None)
                if self.s.post_hook:
                    hook = await self._hook(self.s.post_hook, store, "post", run.to_release)
                    if hook is not None:
                        raise _StoreFailed(hook)
            except _StoreFailed as f:
                return await self._after_failure(store, run, rec, from_release, before, f)
            except _Aborted:
                await self.journal.write(stmt_run(self.id, store.id, status=RunStatus.failed, ended_at=self.now(),
                                                  reason="aborted mid-store: stopped after a finished node; the "
                                                         "store may be on two releases"))
                return "failed"
            lkg = run.to_release if rec.kind is not Kind.rollout else (from_release or None)
            await self.journal.write(
                stmt_run(self.id, store.id, status=RunStatus.succeeded, ended_at=self.now(), step="done"),
                *stmt_store_release(store.id, run.to_release, lkg, self.now()),
                stmt_event(self.now(), "store_succeeded", rollout=self.id, store=store.id,
                           detail={"release": run.to_release}))
            return "succeeded"
        return await self._rollback(store, run, from_release, before, run.reason or "resumed rollback")

    async def _hook(self, playbook: str, store: Store, phase: str, release: str) -> str | None:
        """Run a hook; None when it passed, else why it failed (recorded as an event either way)."""
        from edgefleet.rollout.hooks import run_hook

        work = self.home / "hooks" / self.id
        try:
            res = await asyncio.to_thread(run_hook, Path(playbook), self.fleet, store, phase=phase, release=release,
                                          operation=self.id, work_dir=work, timeout_s=self.s.hook_timeout_s)
        except EdgefleetError as e:
            await self._event(f"{phase}_hook_failed", store=store.id, reason=str(e))
            return f"{phase} hook: {e}"
        await self._event(f"{phase}_hook_{'passed' if res.ok else 'failed'}", store=store.id, reason=res.detail,
                          detail={"status": res.status, "rc": res.rc})
        return None if res.ok else res.detail

    async def _after_failure(self, store: Store, run: StoreRunRecord, rec: RolloutRecord, from_release: str | None,
                             before: dict[str, NodeBefore], f: _StoreFailed) -> str:
        await self._event("store_gate_failed", store=store.id, reason=f.reason)
        if rec.kind is not Kind.rollout or from_release is None:
            why = ("no previous release is known to go back to" if rec.kind is Kind.rollout
                   else f"a {rec.kind.value} is not rolled back automatically")
            await self.journal.write(stmt_run(self.id, store.id, status=RunStatus.failed, ended_at=self.now(),
                                              reason=f"{f.reason} ({why})"))
            return "inconclusive" if f.inconclusive else "failed"
        await self.journal.write(stmt_run(self.id, store.id, step="rollback:start", reason=f.reason))
        out = await self._rollback(store, run, from_release, before, f.reason)
        return "inconclusive" if f.inconclusive and out != "rolled_back" else out

    async def _rollback(self, store: Store, run: StoreRunRecord, from_release: str | None,
                        before: dict[str, NodeBefore], why: str) -> str:
        if from_release is None:
            await self.journal.write(stmt_run(self.id, store.id, status=RunStatus.failed, ended_at=self.now(),
                                              reason=f"{why}; no previous release to roll back to"))
            return "failed"
        await self._event("store_rollback_started", store=store.id, reason=why, detail={"to": from_release})
        try:
            await self._converge(store, from_release, rollback=True, before=before, cluster_exists=True,
                                 resume_step=run.step)
            await self._store_gate(store, from_release, before=before)
        except (_StoreFailed, _Aborted) as f2:
            await self.journal.write(stmt_run(self.id, store.id, status=RunStatus.failed, ended_at=self.now(),
                                              reason=f"{why}; rolling back to {from_release} failed too: {f2}"))
            return "failed"
        lkg = self.ledger.store_releases([store.id]).get(store.id, (None, None))[1]
        await self.journal.write(
            stmt_run(self.id, store.id, status=RunStatus.rolled_back, ended_at=self.now(), step="rollback:done",
                     reason=f"{why}; rolled back to {from_release}"),
            *stmt_store_release(store.id, from_release, lkg or from_release, self.now()),
            stmt_event(self.now(), "store_rolled_back", rollout=self.id, store=store.id, reason=why,
                       detail={"release": from_release}))
        return "rolled_back"

    async def _wait_window(self, store: Store, duration: timedelta) -> bool:
        """Wait until ``[now, now + duration)`` fits a window outside freezes; False past the bound."""
        deadline = time.monotonic() + self.s.window_wait_max_s
        while True:
            t = self.now()
            start = next_allowed_start(store, self.fleet.freezes, t, duration, horizon=timedelta(days=15))
            if start is not None and start <= t + timedelta(seconds=1):
                return True
            left = deadline - time.monotonic()
            if left <= 0 or start is None:
                return False
            await self._sleep(min(left, self.endpoints.real_seconds((start - t).total_seconds()) + 0.01, 5.0))

    # -- nodes ----------------------------------------------------------------------------------

    async def _converge(self, store: Store, release: str, *, rollback: bool, before: dict[str, NodeBefore],
                        cluster_exists: bool, resume_step: str = "") -> None:
        phase = "rollback" if rollback else "forward"
        rel = self._release(release)
        seeds_ready = False
        cps = [n for n in store.nodes if n.role is Role.controlplane]
        for node in _ordered(store):
            if self._abort and not rollback:
                raise _Aborted()
            snap: Observed = await self.api.snapshot(store, readyz=False)
            gate = (evaluate_rollback_node(snap, node.name, release, before.get(node.name), rel.talos_version)
                    if rollback else evaluate_node(snap, node.name, release, rel.talos_version))
            if gate.passed:
                await self._event("node_skipped", store=store.id, node=node.name,
                                  reason=f"already on {release} and Ready",
                                  extra=tuple(stmt_node(node.name, store.id, release, True, self.now())))
                if node.bmc is not None and not _in_band(store) and resume_step.startswith(f"{phase}:{node.name}:"):
                    # Interrupted between the node's boot and its eject: its media (the seed holds
                    # the node's machine config) must not stay attached.
                    try:
                        await self._eject(store, node)
                    finally:
                        await self._done_with(node)
                continue
            in_band = _in_band(store)
            if not in_band and node.bmc is None:
                raise _StoreFailed(f"node {node.name} has no BMC and store {store.id} has wipe_method bmc; give it a "
                                   "bmc in the inventory or set the store's wipe_method to talos-api")
            if in_band and not self.endpoints.talos_enabled:
                raise _StoreFailed(f"store {store.id} is reimaged in band (wipe_method talos-api) but this run has no "
                                   "Talos API access (a simulator without --talos-port?)")
            if node.role is Role.controlplane:
                snap = await self._wait_quorum(store, node, phase, first=snap)
            others_up = isinstance(snap, ClusterSnapshot) and any(
                n.name != node.name and n.ready for n in snap.nodes if n.name in {c.name for c in cps})
            bootstrap = node.role is Role.controlplane and not others_up
            if not await self._wait_window(store, self.s.node_duration):
                raise _StoreFailed(f"the maintenance window closed before node {node.name} and did not reopen")
            if not seeds_ready:
                await self._build_seeds(store, rel, cluster_exists)
                seeds_ready = True
            try:
                while True:
                    try:
                        if in_band and resume_step in (f"{phase}:{node.name}:booting",
                                                       f"{phase}:{node.name}:bootstrap"):
                            # Reset before the interruption: the node may be waiting for its seed
                            # (from the previous run's server); serve it again rather than wipe twice.
                            await self._republish(store, node, rel)
                        elif in_band:
                            bootstrap = await self._reimage_in_band(store, node, rel, phase) or bootstrap
                        else:
                            await self._reimage(store, node, rel, phase)
                        break
                    except _WindowClosed:
                        await self._eject(store, node)
                        await self._event("window_closing", store=store.id, node=node.name,
                                          reason="the window closes before the reset: media ejected, waiting for the "
                                                 "next window")
                        if not await self._wait_window(store, self.s.node_duration):
                            raise _StoreFailed(f"the maintenance window closed before node {node.name} was reset "
                                               "and did not reopen") from None
                try:
                    if bootstrap:
                        await self._bootstrap(store, node, phase)
                    verdict = await self._wait_node(store, node, rel, rollback, before.get(node.name))
                except _StoreFailed:
                    await self._eject(store, node)  # the node's reimage is over either way
                    raise
                await self._eject(store, node)
                snap = await self.api.snapshot(store, readyz=False)
                st = (next((n for n in snap.nodes if n.name == node.name), None)
                      if isinstance(snap, ClusterSnapshot) else None)
                await self.journal.write(*stmt_node(node.name, store.id, st.label(RELEASE_LABEL) if st else None,
                                                    bool(st and st.ready), self.now()))
                if in_band and st is not None and st.ready:
                    # Before the gate's verdict: a node that joined on another Talos version is
                    # better explained by the Version it reports than by its OS image string.
                    await self._check_talos_version(store, node, rel)
                if not verdict.passed:
                    await self._event("node_gate_failed", store=store.id, node=node.name, reason=verdict.why())
                    raise _StoreFailed(f"node {node.name} not healthy on {release}: {verdict.why()}")
                await self._event("node_done", store=store.id, node=node.name, detail={"release": release})
            finally:
                await self._done_with(node)

    async def _build_seeds(self, store: Store, rel: Release, cluster_exists: bool) -> None:
        from edgefleet.seeds.build import build_seeds
        from edgefleet.talos.config import default_schema

        ref = rel.ref()
        out = seeds_dir(self.home, rel.name, store.id)
        try:
            report = await asyncio.to_thread(build_seeds, self.fleet, [store.id], None, ref, self.home, out,
                                             now=self.wall(), existing_clusters=[store.id] if cluster_exists else (),
                                             schema=default_schema())
        except (SecretsError, LockHeld, ConfigRenderError) as e:
            raise _StoreFailed(f"seeds for {rel.name}: {e}") from None
        await self._event("seeds_ready", store=store.id, detail={"release": rel.name, "written": len(report.written),
                                                                 "skipped": report.skipped})

    async def _reimage(self, store: Store, node: Node, rel: Release, phase: str) -> None:
        from edgefleet.seeds.build import seed_path

        try:
            image_rel = self._artifact(rel)  # sha256 checked before any BMC call
        except ArtifactError as e:  # e.g. the release a failed store goes back to was altered
            raise _StoreFailed(str(e)) from None
        seed_file = seed_path(seeds_dir(self.home, rel.name, store.id), store.id, node.name)
        seed_rel = seed_file.resolve().relative_to(self.home.resolve()).as_posix()
        step = f"{phase}:{node.name}:reimage"
        await self.journal.write(stmt_run(self.id, store.id, step=step),
                                 stmt_event(self.now(), "reimage_started", rollout=self.id, store=store.id,
                                            node=node.name, detail={"release": rel.name, "phase": phase}))
        wall = self.wall()
        self.seeds.begin_reimage(node.name)  # its URLs stop working once this reimage is over (_done_with)
        image_url, seed_url = self.seeds.url_for(image_rel, node.name, wall), self.seeds.url_for(seed_rel, node.name,
                                                                                                  wall)
        attempt, attempts = 1, max(1, self.s.reimage_attempts)
        while True:
            try:
                res = await self._sequence(store, self._driver(node), image_url, seed_url)
                break
            except BmcError as e:
                if e.transient and e.attempts < self.s.bmc_attempts and attempt < attempts:
                    # The connector repeats idempotent requests (up to bmc_attempts); a failed
                    # action (a reset answered 5xx, a cut connection) is sent once, as it may have
                    # been applied. The sequence starts again from its beginning: stale media
                    # ejected, both inserted, boot override, reset. A reset that did land is then
                    # repeated on a node booting the same media, which boots it again: the outcome
                    # is the same. (A BMC that failed every attempt the connector made, an
                    # unreachable one say, is not asked again here.)
                    await self._event("reimage_retry", store=store.id, node=node.name, reason=str(e),
                                      detail={"attempt": attempt, "attempts": attempts})
                    await self._sleep(self.s.bmc_backoff_s * 2 ** (attempt - 1))
                    attempt += 1
                    continue
                await self._event("reimage_failed", store=store.id, node=node.name, reason=str(e))
                await self._eject(store, node)
                # A BMC that keeps failing transiently (unreachable, 5xx) says nothing about the release.
                raise _StoreFailed(f"reimaging {node.name} to {rel.name} failed: {e}",
                                   inconclusive=e.transient) from None
        await self.journal.write(stmt_run(self.id, store.id, step=f"{phase}:{node.name}:booting"),
                                 stmt_event(self.now(), "reimage_booting", rollout=self.id, store=store.id,
                                            node=node.name, detail={"release": rel.name, **res}))

    async def _reimage_in_band(self, store: Store, node: Node, rel: Release, phase: str) -> bool:
        """Wipe ``node`` through the Talos API so it boots from its network seed (module docstring);
        True when it was its store's last etcd member (it needs its Bootstrap once it is up)."""
        from edgefleet.seeds.build import seed_path
        from edgefleet.talos.inband import reimage_in_band

        if store.seed_url is None and self.s.seed_public_url is None and self.endpoints.simulator is None:
            raise _StoreFailed(f"store {store.id} is reimaged in band but has no seed_url (the address its nodes "
                               "reach the seed server under); set seed_url in the inventory, or give the run "
                               "--seed-public-url (rollout start, rollback, provision, resume)")
        seed_file = seed_path(seeds_dir(self.home, rel.name, store.id), store.id, node.name)
        step = f"{phase}:{node.name}:reimage"
        await self.journal.write(stmt_run(self.id, store.id, step=step),
                                 stmt_event(self.now(), "reimage_started", rollout=self.id, store=store.id,
                                            node=node.name, detail={"release": rel.name, "phase": phase,
                                                                    "method": WipeMethod.talos_api.value}))
        try:
            self.netseeds.publish(store.id, node.name, seed_file)
            url = _nocloud_url(self.seeds, store, node)
            await self.endpoints.register_netseeds({node.name: url})
        except (SeedError, ProbeError) as e:
            await self._event("reimage_failed", store=store.id, node=node.name, reason=str(e))
            raise _StoreFailed(f"publishing the network seed of {node.name} for {rel.name} failed: {e}") from None
        self._guard(store)  # the Reset is the step the store notices
        try:
            async with self._talos(store, node) as c:
                res = await reimage_in_band(c, node, seed_url=url, deadline_s=self.s.inband_deadline_s)
        except (TalosCallFailed, NetworkSeedError, SecretsError) as e:
            await self._event("reimage_failed", store=store.id, node=node.name, reason=str(e))
            # A node that does not answer (or a seed server it cannot be checked against) says
            # nothing about the release.
            raise _StoreFailed(f"reimaging {node.name} in band to {rel.name} failed: {e}",
                               inconclusive=bool(getattr(e, "transient", False))) from None
        await self.journal.write(stmt_run(self.id, store.id, step=f"{phase}:{node.name}:booting"),
                                 stmt_event(self.now(), "reimage_booting", rollout=self.id, store=store.id,
                                            node=node.name,
                                            detail={"release": rel.name, "method": WipeMethod.talos_api.value,
                                                    "graceful": res.graceful, "wiped": list(res.wiped),
                                                    "etcd_members": list(res.etcd_members),
                                                    "needs_bootstrap": res.needs_bootstrap,
                                                    "talos_before": res.talos_version}))
        return res.needs_bootstrap

    async def _republish(self, store: Store, node: Node, rel: Release) -> None:
        from edgefleet.seeds.build import seed_path

        try:
            self.netseeds.publish(store.id, node.name, seed_path(seeds_dir(self.home, rel.name, store.id), store.id,
                                                                 node.name))
            await self.endpoints.register_netseeds({node.name: _nocloud_url(self.seeds, store, node)})
        except (SeedError, ProbeError) as e:
            raise _StoreFailed(f"publishing the network seed of {node.name} for {rel.name} again failed: {e}") from None
        await self._event("reimage_resumed", store=store.id, node=node.name,
                          reason="the node was reset before the interruption: its seed is served again, no second "
                                 "wipe", detail={"release": rel.name, "method": WipeMethod.talos_api.value})

    async def _check_talos_version(self, store: Store, node: Node, rel: Release) -> None:
        """After an in-band reimage: the node must run the release's Talos (the reset kept BOOT)."""
        try:
            async with self._talos(store, node) as c:
                got = (await c.version(node=str(node.ip))).tag
        except (TalosCallFailed, SecretsError) as e:
            raise _StoreFailed(f"node {node.name}: its Talos version cannot be read after the in-band reimage: {e}",
                               inconclusive=bool(getattr(e, "transient", False))) from None
        want = rel.talos_version
        if got.lstrip("v") != want.lstrip("v"):
            why = (f"node {node.name} came back on Talos {got}, but release {rel.name} is Talos {want}: an in-band "
                   "reimage keeps the boot partition; upgrade the node to the release's installer image "
                   f"({rel.installer_image}) with a Talos upgrade")
            await self._event("talos_version_mismatch", store=store.id, node=node.name, reason=why,
                              detail={"running": got, "release": want})
            raise _StoreFailed(why)
        await self._event("talos_version_checked", store=store.id, node=node.name, detail={"running": got})

    def _guard(self, store: Store) -> None:
        """Raise _WindowClosed unless ``[now, now + step_margin)`` lies in a window, outside freezes."""
        t = self.now()
        start = next_allowed_start(store, self.fleet.freezes, t, self.s.step_margin, horizon=timedelta(hours=1))
        if start is None or start > t + timedelta(seconds=1):
            raise _WindowClosed()

    async def _sequence(self, store: Store, driver: RedfishDriver, image_url: str, seed_url: str) -> dict[str, Any]:
        """``redfish.driver.reimage_sequence`` (the code the sushy-tools conformance test runs),
        with the window checked on our clock before every step that the store would notice
        (insert, boot override, reset): a slow BMC must not push the reset past the window's end."""

        async def before_step(step: ReimageStep) -> None:
            del step  # every step the store notices needs the same room in the window
            self._guard(store)

        res = await reimage_sequence(driver, image_url, seed_url, power_deadline_s=self.s.power_deadline_s,
                                     before_step=before_step)
        return {"reset": list(res.reset_types), "boot_slot": res.boot_slot, "seed_slot": res.seed_slot}

    async def _eject(self, store: Store, node: Node) -> None:
        if _in_band(store):
            return  # no virtual media in band
        try:
            ejected = await eject_reimage_media(self._driver(node))
            await self._event("media_ejected", store=store.id, node=node.name, detail={"slots": list(ejected)})
        except BmcError as e:
            await self._event("eject_failed", store=store.id, node=node.name, reason=str(e))

    def _driver(self, node: Node) -> RedfishDriver:
        """The node's driver, one per node reimage: discovery and the BMC session are reused for
        the reimage and the eject (``_done_with`` closes it)."""
        driver = self._drivers.get(node.name)
        if driver is None:
            conn = connector_for_node(node, self.clients, resolver=self.endpoints.bmc, operation_id=self.id,
                                      retry=RetryPolicy(attempts=self.s.bmc_attempts, backoff_s=self.s.bmc_backoff_s))
            driver = RedfishDriver(conn, vendor=node.bmc.vendor if node.bmc else None,
                                   poll_interval_s=min(1.0, self.s.poll_s))
            self._drivers[node.name] = driver
        return driver

    async def _done_with(self, node: Node) -> None:
        self.seeds.end_reimage(node.name)  # the node's image and seed URLs of this reimage: revoked
        driver = self._drivers.pop(node.name, None)
        if driver is not None:
            await driver.conn.aclose()

    def _talos(self, store: Store, node: Node) -> Any:
        from edgefleet.talos.api import client_for
        from edgefleet.talos.certs import Role as TalosRole

        t = self.endpoints.talos
        return client_for(self.home, store, node, TalosRole.admin, now=self.wall(),
                          endpoint=t.endpoint if t else None, ca_pem=t.ca_pem if t else None,
                          server_name=t.server_name if t else None, timeout_s=5.0)

    async def _etcd_members(self, store: Store, via: Node) -> list[str] | None:
        if not self.endpoints.talos_enabled:
            return None
        try:
            async with self._talos(store, via) as c:
                return [m.hostname for m in await c.etcd_members()]
        except (TalosCallFailed, SecretsError):
            return []

    async def _wait_quorum(self, store: Store, node: Node, phase: str, *, first: Observed = None) -> Observed:
        """Wait until the quorum gate lets ``node`` go down; ``first``: a snapshot just read (one
        request saved per control plane when the gate passes at once)."""
        deadline = time.monotonic() + self.s.quorum_timeout_s
        others = [n for n in store.nodes if n.role is Role.controlplane and n.name != node.name]
        while True:
            snap, first = (first, None) if first is not None else (await self.api.snapshot(store, readyz=False), None)
            members = await self._etcd_members(store, others[0]) if others else None
            v = evaluate_quorum(store, snap, node.name, members)
            if v.passed:
                return snap
            if time.monotonic() > deadline:
                raise _StoreFailed(f"quorum gate before control plane {node.name}: {v.why()}")
            await self._sleep(self.s.poll_s)

    async def _bootstrap(self, store: Store, node: Node, phase: str) -> None:
        """Bootstrap etcd on ``node`` once it answers, unless its etcd already holds data."""
        if not self.endpoints.talos_enabled:
            return
        deadline = time.monotonic() + self.s.node_ready_timeout_s
        while True:
            try:
                async with self._talos(store, node) as c:
                    await c.version()
                    try:
                        await c.etcd_members()
                        await self._event("bootstrap_not_needed", store=store.id, node=node.name,
                                          reason="etcd already holds data")
                        return
                    except TalosRefused:
                        pass  # no etcd data: this cluster needs its bootstrap
                    await self.journal.write(stmt_run(self.id, store.id, step=f"{phase}:{node.name}:bootstrap"),
                                             stmt_event(self.now(), "bootstrap_started", rollout=self.id,
                                                        store=store.id, node=node.name))
                    try:
                        await c.bootstrap()
                    except TalosRefused as e:
                        await self._event("bootstrap_refused", store=store.id, node=node.name, reason=str(e))
                        return
                    await self._event("bootstrapped", store=store.id, node=node.name)
                    return
            except TalosRefused:
                raise
            except TalosCallFailed as e:
                if not e.transient or time.monotonic() > deadline:
                    raise _StoreFailed(f"bootstrap of {node.name}: {e}") from None
            except SecretsError as e:
                raise _StoreFailed(f"bootstrap of {node.name}: {e}") from None
            await self._sleep(self.s.poll_s)

    async def _wait_node(self, store: Store, node: Node, rel: Release, rollback: bool,
                         before: NodeBefore | None) -> Verdict:
        deadline = time.monotonic() + self.s.node_ready_timeout_s
        while True:
            snap = await self.api.snapshot(store, readyz=False)
            v = (evaluate_rollback_node(snap, node.name, rel.name, before, rel.talos_version) if rollback
                 else evaluate_node(snap, node.name, rel.name, rel.talos_version))
            if v.passed:
                return v
            if time.monotonic() > deadline:
                if not isinstance(snap, ClusterSnapshot):
                    # Says nothing about the release: the API could not be looked at (and why).
                    raise _StoreFailed(f"node {node.name}: for {self.s.node_ready_timeout_s:g} s, "
                                       f"{api_unread_reason(snap)}", inconclusive=True)
                return Verdict(VerdictKind.failed, (
                    *v.reasons, f"not Ready on {rel.name} within {self.s.node_ready_timeout_s:g} s"))
            await self._sleep(self.s.poll_s)

    async def _store_gate(self, store: Store, release: str, *, before: dict[str, NodeBefore] | None) -> None:
        deadline = time.monotonic() + self.s.store_gate_timeout_s
        healthy_since: datetime | None = None
        while True:
            snap = await self.api.snapshot(store, readyz=True)
            probes = await run_probes(self.endpoints.probes(store)) if store.probes else ()
            v = evaluate_store(store, snap, release, probes, healthy_since=healthy_since, now=self.now(),
                               soak=self.s.soak, before=before)
            if v.passed:
                await self._event("store_gate_passed", store=store.id, detail={"release": release})
                return
            soaking = v.reasons and all(r.startswith("soaking") for r in v.reasons)
            if soaking and healthy_since is None:
                healthy_since = self.now()
            elif not soaking:
                healthy_since = None
            if time.monotonic() > deadline:
                raise _StoreFailed(f"store gate on {release}: {v.why()}",
                                   inconclusive=not isinstance(snap, ClusterSnapshot))
            await self._sleep(self.s.poll_s if not soaking else min(
                self.s.poll_s, self.endpoints.real_seconds(self.s.soak.total_seconds())))


async def execute(*, fleet: Fleet, home: Path, engine: Engine, endpoints: Endpoints, rollout_id: str,
                  settings: EngineSettings | None = None) -> RolloutRecord:
    """Run (or resume) rollout ``rollout_id`` to its end, a halt or a pause; returns its record."""
    ledger = Ledger(engine)
    rec = ledger.rollout(rollout_id)
    st = settings or EngineSettings.from_json(rec.policy)
    return await Executor(fleet=fleet, home=home, engine=engine, endpoints=endpoints, rollout_id=rollout_id,
                          settings=st).run()
