"""Release trains on a real Prefect server with one work pool and one ``prefect worker`` process per
region, against the fleet simulator (its own process, accelerated clock).

One server, one simulator and one fleet for the module: stores in two regions (``emea``,
``americas``) and ten IANA time zones, provisioned on v1. ``edgefleet train deploy`` makes the
pools ``edgefleet-emea`` and ``edgefleet-americas`` and the deployments; a worker per pool runs
them, with its own environment (inventory, state store, BMC password) as on its own machine.

* deploying is idempotent; the ``train-tick`` schedule runs ticks on its pool;
* child operations handed to ``PrefectDispatcher`` run on their region's pool; a worker killed
  with SIGKILL (with its flow-run process) mid-child: launching the child again resumes it from the
  ledger, and the simulator sees no node worked on twice and no violation.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from edgefleet.inventory.load import load_fleet
from edgefleet.inventory.model import Fleet
from edgefleet.releases.catalog import ReleaseCatalog, ReleaseState
from edgefleet.rollout import operations as ops
from edgefleet.rollout.endpoints import from_simulator
from edgefleet.rollout.executor import EngineSettings
from edgefleet.rollout.ledger import Ledger, RolloutStatus, RunStatus
from edgefleet.rollout.request import RolloutRequest
from edgefleet.schedule.windows import in_window
from edgefleet.state.db import create_state_engine
from edgefleet.trains.prefect_deploy import PrefectDispatcher, pool_name
from tests.contract.rollout_world import PASSWORD, PASSWORD_ENV, build_releases, ledger_matches_sim
from tests.contract.test_rollout_crash import _share_service_account_key
from tests.helpers import REPO, require_tool
from tests.integration.prefect_server import PrefectServer
from tests.integration.test_prefect_server import REIMAGE_KINDS, _start_simulator, _stop_simulator

pytestmark = pytest.mark.slow

# Ten zones in two regions; zones of one region share their UTC offset in December, so a store's
# window is open at the same instants as its region's others (START is inside all of them).
ZONES = {"emea": [("Europe/Copenhagen", "DK"), ("Europe/Oslo", "NO"), ("Europe/Berlin", "DE"),
                  ("Europe/Stockholm", "SE"), ("Europe/Paris", "FR")],
         "americas": [("America/New_York", "US"), ("America/Toronto", "CA"), ("America/Detroit", "US"),
                      ("America/Nassau", "BS"), ("America/Indiana/Indianapolis", "US")]}
WINDOWS = {"emea": {"days": ["daily"], "start": "22:00", "end": "08:00"},  # 21:00-07:00 UTC
           "americas": {"days": ["daily"], "start": "20:00", "end": "06:00"}}  # 01:00-11:00 UTC
STORES_PER_ZONE = 5  # 50 stores
CANARY_ZONES = 2  # per region: the first store of the first two zones is a canary


def _ring(zone: int, k: int) -> dict[str, Any]:
    """Rings: a canary in the first zones, then ring1 (the first store elsewhere and every second
    store), ring2 the rest: 4 canaries, 16 ring1, 30 ring2."""
    if k == 0 and zone < CANARY_ZONES:
        return {"ring": "canary", "canary": True}
    return {"ring": "ring1" if k <= 1 else "ring2"}
START = datetime(2026, 12, 8, 1, 30, tzinfo=UTC)  # a Tuesday: inside every window, 5.5 h before emea's close
SCALE = 60.0  # simulated seconds per real second: a 120 s boot takes 2 s
SETTINGS = EngineSettings(max_concurrent=1, node_ready_timeout_s=60.0, quorum_timeout_s=60.0, store_gate_timeout_s=60.0,
                          poll_s=0.1, heartbeat_s=0.5, power_deadline_s=20.0, node_duration=timedelta(minutes=20))
STALE_AFTER_S = 3.0  # a child's heartbeat (every 0.5 s) older than this: its runner is gone
RUN_WAIT_S = 240.0
KILL_STORES = 4  # per region, in the kill test (one at a time in americas: a kill lands mid-child)


@dataclass
class World:
    server: PrefectServer
    work: Path
    home: Path
    inventory: Path
    fleet: Fleet
    state_url: str
    sim_url: str
    worker_env: dict[str, str]
    sim: subprocess.Popen[str]
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def ensure_workers(self) -> dict[str, subprocess.Popen[bytes]]:
        """One running worker per region's pool (started now if it is not running)."""
        for region in ("emea", "americas"):
            w = self.workers.get(region)
            if w is None or w.poll() is not None:
                self.workers[region] = self.server.start_worker(pool_name(region), **self.worker_env)
        return self.workers

    def params(self) -> dict[str, Any]:
        """What a tick hands to its children: only the simulator (the rest is the workers' environment)."""
        return {"sim_url": self.sim_url, "stale_after_s": STALE_AFTER_S}


def _write_fleet(inv: Path) -> None:
    stores = []
    for region, zones in ZONES.items():
        for z, (tz, cc) in enumerate(zones):
            for k in range(STORES_PER_ZONE):
                i = len(stores) + 1
                sid = f"{cc.lower()}-{tz.split('/')[-1].lower().replace('_', '')[:6]}-{k + 1}"
                stores.append({
                    "id": sid, "name": sid, "country": cc, "region": region, "timezone": tz, **_ring(z, k),
                    "maintenance_windows": [WINDOWS[region]], "cluster": {"name": sid},
                    "network": {"subnet": f"10.40.{i}.0/24", "gateway": f"10.40.{i}.1"},
                    "nodes": [{"name": f"{sid}-n1", "role": "controlplane", "mac": f"02:ef:00:04:{i:02x}:01",
                               "ip": f"10.40.{i}.10", "bmc": {"url": f"https://10.40.{i}.100", "credentials": {
                                   "username": "admin", "password_env": PASSWORD_ENV}}}]})
    (inv / "stores").mkdir(parents=True, exist_ok=True)
    (inv / "fleet.yml").write_text(yaml.safe_dump({"fleet": {"name": "trains"},
                                                   "defaults": {"network": {"dns": ["10.0.0.53"]}}}))
    (inv / "stores" / "all.yml").write_text(yaml.safe_dump({"stores": stores}, sort_keys=False))


def _provision(world_fleet: Fleet, home: Path, state_url: str, url: str) -> None:
    engine = create_state_engine(state_url)

    async def go() -> None:
        ep = await from_simulator(url)
        made = [ops.create_provision(world_fleet, engine, home, sid, "v1", ep.clock(), settings=SETTINGS.model_copy(
            update={"max_concurrent": 100}), operator="test") for sid in sorted(world_fleet.stores)]
        recs = await asyncio.wait_for(asyncio.gather(*(ops.run(world_fleet, home, engine, ep, c.record.id)
                                                       for c in made)), 120)
        bad = [ops.status(engine, r.id)["stores"] for r in recs if r.status is not RolloutStatus.succeeded]
        assert not bad, bad

    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(PASSWORD_ENV, PASSWORD)
            _share_service_account_key(mp)
            asyncio.run(go())
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_tool(shutil.which("packer"), "packer (Debian package `packer`)")
    work = tmp_path_factory.mktemp("trains-prefect")
    home, inventory = work / "edgefleet-home", work / "inventory"
    home.mkdir()
    _write_fleet(inventory)
    fleet = load_fleet(inventory)
    state_url = f"sqlite:///{work / 'edgefleet.db'}"
    engine = create_state_engine(state_url)
    try:
        catalog = ReleaseCatalog(engine)
        build_releases(home, work, catalog, ["v1", "v2"])  # stable: what a passed train made them
        build_releases(home, work, catalog, ["v3"], stable=False)  # the train's, just built
        assert {r.name: r.state for r in catalog.list()} == {"v1": ReleaseState.stable, "v2": ReleaseState.stable,
                                                            "v3": ReleaseState.built}
    finally:
        engine.dispose()
    scenario = work / "scenario.yaml"
    scenario.write_text("boot_seconds: 120\nenforce_maintenance: true\n")
    sim, url = _start_simulator(inventory, home, START, scenario, work / "sim.log", time_scale=SCALE)
    server: PrefectServer | None = None
    try:
        t0 = time.monotonic()
        _provision(fleet, home, state_url, url)
        t1 = time.monotonic()
        server = PrefectServer.start(work / "prefect-home")
        print(f"world: {len(fleet.stores)} stores provisioned in {t1 - t0:.0f} s, Prefect server up in "
              f"{time.monotonic() - t1:.0f} s")
        worker_env = {"EDGEFLEET_REPO": str(REPO), "EDGEFLEET_INVENTORY": str(inventory),
                      "EDGEFLEET_STATE_URL": state_url, "EDGEFLEET_HOME": str(home), PASSWORD_ENV: PASSWORD}
        yield World(server, work, home, inventory, fleet, state_url, url, worker_env, sim)
    finally:
        if server is not None:
            server.stop()  # workers first, then the server
        _stop_simulator(sim)


# -- helpers -------------------------------------------------------------------------------------------

def _deploy(world: World, *args: str) -> dict[str, Any]:
    """``edgefleet train deploy`` against the world's server, as a person runs it from the checkout."""
    import json

    from edgefleet.cli import app

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        for k, v in world.server.env().items():
            if k.startswith("PREFECT_"):
                mp.setenv(k, v)
        result = CliRunner().invoke(app, ["train", "deploy", "-i", str(world.inventory), "--json", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def _api(world: World, fn: Any) -> Any:
    """``await fn(client)`` with a Prefect client of the world's server."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def go() -> Any:
        async with get_client() as client:
            return await fn(client)

    with temporary_settings(updates={PREFECT_API_URL: world.server.api_url}):
        return asyncio.run(go())


def _runs_tagged(world: World, tag: str) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    return list(_api(world, lambda c: c.read_flow_runs(
        flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])), limit=200)))


def _launch(world: World, train_id: str, rollout_id: str, region: str) -> str:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    dispatcher = PrefectDispatcher(train_id, world.params())
    with temporary_settings(updates={PREFECT_API_URL: world.server.api_url}):
        dispatcher.launch(rollout_id, region)
    return dispatcher.launched[rollout_id]


def _wait_runs(world: World, ids: list[str], timeout: float = RUN_WAIT_S) -> dict[str, Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    runs: dict[str, Any] = {}
    while time.monotonic() < deadline:
        got = _api(world, lambda c: c.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(i) for i in ids]))))
        runs = {str(r.id): r for r in got}
        if len(runs) == len(ids) and all(r.state is not None and r.state.is_final() for r in runs.values()):
            return runs
        time.sleep(1)
    raise AssertionError(f"runs not final within {timeout:g} s: "
                         f"{ {i: r.state.type.value if r.state else None for i, r in runs.items()} }\n"
                         f"{world.server.worker_logs()}")


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), deepest last: a process worker starts each flow run in
    a session of its own, so killing the worker's group would leave the run alive."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill_worker_machine(worker: subprocess.Popen[bytes]) -> list[int]:
    """SIGKILL a worker and every process it started, as if its machine died: no cleanup of any kind."""
    procs = [worker.pid, *_descendants(worker.pid)]
    for pid in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    worker.wait(10)
    return procs


def _record(world: World, stores: list[str], release: str) -> str:
    engine = create_state_engine(world.state_url)
    try:
        request = RolloutRequest.build(kind="rollout", release=release, stores=stores, canary=0, waves=("100%",),
                                       failure_budget=len(stores), settings=SETTINGS.to_json())
        now = datetime.fromisoformat(httpx.get(f"{world.sim_url}/sim/clock", trust_env=False).json()["now"])
        return ops.record_rollout(world.fleet, engine, request, now, operator="test").record.id
    finally:
        engine.dispose()


# -- tests ---------------------------------------------------------------------------------------------

def test_deploy_makes_a_pool_and_a_deployment_per_region_idempotently(world: World) -> None:
    first = _deploy(world, "--interval", "3600", "--tick-pool", pool_name("emea"))
    assert first["regions"] == ["americas", "emea"]
    assert sorted(first["pools_created"]) == ["edgefleet-americas", "edgefleet-emea"] and first["pools_kept"] == []
    assert sorted(first["deployments"]) == ["run-operation/rollout-americas", "run-operation/rollout-emea",
                                            "train-tick/train-tick"]
    again = _deploy(world, "--interval", "3600", "--tick-pool", pool_name("emea"))
    assert again["pools_created"] == [] and sorted(again["pools_kept"]) == ["edgefleet-americas", "edgefleet-emea"]

    async def read(client: Any) -> tuple[Any, ...]:
        pools = {p.name: p for p in await client.read_work_pools()}
        deployments = {d.name: d for d in await client.read_deployments()}
        schedules = await client.read_deployment_schedules(deployments["train-tick"].id)
        return pools, deployments, schedules

    pools, deployments, schedules = _api(world, read)
    assert {n: p.type for n, p in pools.items() if n.startswith("edgefleet-")} == {
        "edgefleet-americas": "process", "edgefleet-emea": "process"}
    assert sorted(deployments) == ["rollout-americas", "rollout-emea", "train-tick"]  # nothing twice
    for region in ("americas", "emea"):
        d = deployments[f"rollout-{region}"]
        assert (d.work_pool_name, d.entrypoint) == (f"edgefleet-{region}", "flows/train.py:run_operation")
        assert d.pull_steps == [{"prefect.deployments.steps.set_working_directory": {
            "directory": "{{ $EDGEFLEET_REPO }}"}}]
        assert d.parameter_openapi_schema["required"] == ["rollout_id"]
    tick = deployments["train-tick"]
    assert (tick.work_pool_name, tick.entrypoint) == ("edgefleet-emea", "flows/train.py:train_tick")
    assert tick.global_concurrency_limit is not None and tick.global_concurrency_limit.limit == 1
    assert tick.concurrency_options is not None and tick.concurrency_options.collision_strategy.value == "CANCEL_NEW"
    assert len(schedules) == 1 and schedules[0].schedule.interval == timedelta(hours=1)
    assert schedules[0].active


def test_children_run_on_their_region_pool_and_a_killed_worker_is_resumed(world: World) -> None:
    """Two child rollouts (one per region, every store of it) handed to ``PrefectDispatcher``: each
    runs on its region's worker. The americas worker is SIGKILLed (with its flow-run process) while
    a node of its child is booting; launching that child again (what the next tick does for a child
    whose heartbeat went stale) resumes it from the ledger on a new worker of the pool."""
    t0 = time.monotonic()
    if not any(d == "train-tick/train-tick" for d in _deploy(world, "--interval", "3600")["deployments"]):
        raise AssertionError("deploy made no train-tick")
    workers = world.ensure_workers()
    by_region = {r: sorted(s for s, st in world.fleet.stores.items() if st.region == r)[:KILL_STORES]
                 for r in ("emea", "americas")}
    sim_events0 = httpx.get(f"{world.sim_url}/sim/events?limit=1", trust_env=False).json()["last_seq"]
    rollouts = {r: _record(world, by_region[r], "v2") for r in by_region}
    runs = {r: _launch(world, "tr-harness", rollouts[r], r) for r in by_region}

    # Kill the americas worker machine once one of its child's nodes is booting.
    engine = create_state_engine(world.state_url)
    ledger = Ledger(engine)
    try:
        deadline = time.monotonic() + 120
        booting: list[str] = []
        while not booting:
            assert time.monotonic() < deadline, f"the americas child never booted a node\n{world.server.worker_logs()}"
            booting = [e["store"] for e in ledger.events(rollouts["americas"]) if e["kind"] == "reimage_booting"]
            time.sleep(0.1)
        killed = _kill_worker_machine(workers["americas"])
        assert len(killed) >= 2, "the worker had no flow-run process to kill"
        rec = ledger.rollout(rollouts["americas"])
        assert rec.status is RolloutStatus.running and ledger.locks_held_by(rec.id)  # left as a crash leaves it
        unfinished = [r.store for r in ledger.runs(rec.id) if r.status is not RunStatus.succeeded]
        assert unfinished, "the child finished before the kill"

        # The next tick's Resume: the same rollout launched again, on a fresh worker of the pool.
        time.sleep(STALE_AFTER_S + 1)
        world.ensure_workers()
        resumed = _launch(world, "tr-harness", rollouts["americas"], "americas")
        final = _wait_runs(world, [runs["emea"], resumed])
        for run_id in (runs["emea"], resumed):
            assert final[run_id].state.is_completed(), f"{final[run_id].state}\n{world.server.worker_logs()}"

        # Prefect: every child on its region's pool, tagged with the train, region and rollout.
        children = _runs_tagged(world, "edgefleet-train:tr-harness")
        assert {str(r.id) for r in children} == {runs["emea"], runs["americas"], resumed}
        for r in children:
            region = next(t.split(":", 1)[1] for t in r.tags if t.startswith("edgefleet-region:"))
            assert r.work_pool_name == f"edgefleet-{region}", (r.name, r.work_pool_name)
            assert f"edgefleet-rollout:{rollouts[region]}" in r.tags

        # The ledger: both children succeeded, every store on v2, one store run each, no lock left.
        for region, rid in rollouts.items():
            assert ledger.rollout(rid).status is RolloutStatus.succeeded, ops.status(engine, rid)
            assert sorted(r.store for r in ledger.runs(rid)) == by_region[region]
            assert ledger.locks_held_by(rid) == []
        on = {s: c for s, (c, _) in ledger.store_releases().items()}
        assert on == {s: "v2" if s in by_region[st.region] else "v1" for s, st in world.fleet.stores.items()}
        assert any(e["kind"] == "execution_started" and e["detail"].get("resumed")
                   for e in ledger.events(rollouts["americas"]))
        asyncio.run(ledger_matches_sim(world.sim_url, ledger, world.fleet))
    finally:
        engine.dispose()

    # The simulator: no violation, and no node worked on twice (one reset per node, by its own child).
    violations = httpx.get(f"{world.sim_url}/sim/violations", trust_env=False).json()
    assert violations["total"] == 0, violations
    events = httpx.get(f"{world.sim_url}/sim/events", params={"since": sim_events0, "limit": 100000},
                       trust_env=False).json()["events"]
    resets = Counter((e["node"], e["operation"]) for e in events if e["kind"] == "reset")
    expected = {(f"{s}-n1", rollouts[r]): 1 for r, stores in by_region.items() for s in stores}
    assert dict(resets) == expected
    for e in events:
        if e["kind"] in REIMAGE_KINDS:
            assert in_window(world.fleet.stores[e["store"]], datetime.fromisoformat(e["time"])), e
    reached = httpx.get(f"{world.sim_url}/sim/operations", trust_env=False).json()
    for region, rid in rollouts.items():
        assert set(reached[rid]) == set(by_region[region])
    print(f"two children on two pools with a worker killed: {time.monotonic() - t0:.0f} s")


def test_run_operation_refuses_a_live_runner_resumes_a_dead_one_and_skips_a_finished_one(world: World) -> None:
    """The three ways a launch finds its operation: still heartbeating elsewhere (Cancelled, nothing
    touched), running with its runner gone (resumed to the end), finished (Completed, nothing done)."""
    t0 = time.monotonic()
    _deploy(world, "--interval", "3600")
    world.ensure_workers()
    store = sorted(s for s, st in world.fleet.stores.items() if st.region == "emea")[KILL_STORES]
    rid = _record(world, [store], "v2")
    engine = create_state_engine(world.state_url)
    ledger = Ledger(engine)
    try:
        # A runner elsewhere: it marked the rollout running and beats (every 0.5 s) until the launch ended.
        ledger.set_rollout(rid, START, status=RolloutStatus.running.value, heartbeat_at=datetime.now(UTC))
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(0.5):
                ledger.set_rollout(rid, START, heartbeat_at=datetime.now(UTC))

        beater = threading.Thread(target=beat, daemon=True)
        beater.start()
        try:
            live = _launch(world, "tr-harness-2", rid, "emea")
            state = _wait_runs(world, [live])[live].state
        finally:
            stop.set()
            beater.join(5)
        assert state.is_cancelled() and f"{rid} has a live runner" in (state.message or ""), state
        assert rid not in httpx.get(f"{world.sim_url}/sim/operations", trust_env=False).json()  # nothing touched
        assert ledger.rollout(rid).status is RolloutStatus.running

        time.sleep(STALE_AFTER_S + 1)  # no runner beats: stale
        dead = _launch(world, "tr-harness-2", rid, "emea")
        state = _wait_runs(world, [dead])[dead].state
        assert state.is_completed(), f"{state}\n{world.server.worker_logs()}"
        assert ledger.rollout(rid).status is RolloutStatus.succeeded
        reached = httpx.get(f"{world.sim_url}/sim/operations", trust_env=False).json()[rid]

        again = _launch(world, "tr-harness-2", rid, "emea")
        state = _wait_runs(world, [again])[again].state
        assert state.is_completed() and "already succeeded" in (state.message or ""), state
        assert httpx.get(f"{world.sim_url}/sim/operations", trust_env=False).json()[rid] == reached
        assert [r.status for r in ledger.runs(rid)] == [RunStatus.succeeded]
    finally:
        engine.dispose()
    print(f"live, dead and finished launches: {time.monotonic() - t0:.0f} s")


# -- a train over the whole fleet, ticked by the schedule -------------------------------------------

TICK_S = 8  # the train-tick interval in the soak test (real seconds)
SOAK = timedelta(hours=24)
TRAIN_WAIT_S = 420.0  # bound on the whole train, fleet-time jumps included


def _sim_now(world: World) -> datetime:
    try:
        return datetime.fromisoformat(httpx.get(f"{world.sim_url}/sim/clock", trust_env=False).json()["now"])
    except httpx.TransportError as e:
        raise AssertionError(f"the simulator does not answer ({e}); its process: returncode {world.sim.poll()}; "
                             f"its log: {(world.work / 'sim.log').read_text()[-3000:]}") from e


def _jump(world: World, to: datetime) -> None:
    """Move the simulator's clock forward to ``to`` (only while nothing is in flight: the soak and the
    hours until a window opens pass in an instant instead of minutes of real time)."""
    r = httpx.post(f"{world.sim_url}/sim/clock", json={"now": to.isoformat()}, trust_env=False)
    assert r.status_code == 200, r.text


def _next_instant(after: datetime, hour: int, minute: int) -> datetime:
    at = after.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return at if at > after else at + timedelta(days=1)


def _idle_target(world: World, trains: Any, train_id: str, now: datetime) -> datetime | None:
    """Where the fleet clock may jump while no child is in flight: the end of a soak, or the next
    instant a pending store of the running stage may start (``next_allowed_start``, as decide sees it)."""
    from edgefleet.schedule.windows import next_allowed_start
    from edgefleet.trains.model import StageStatus, StoreState

    stores = trains.stores(train_id)
    if any(p.state is StoreState.dispatched for p in stores.values()):
        return None
    targets: list[datetime] = []
    for st in trains.stages(train_id):
        if st.status is StageStatus.soaking and st.soak_until is not None:
            targets.append(st.soak_until)
        if st.status is StageStatus.running:
            for sid, p in stores.items():
                if p.stage == st.index and p.state is StoreState.pending:
                    store = world.fleet.stores[sid]
                    at = next_allowed_start(store, world.fleet.freezes, now,
                                            len(store.nodes) * SETTINGS.node_duration)
                    if at is not None:
                        targets.append(at)
    later = [t for t in targets if t > now + timedelta(minutes=5)]
    return min(later) + timedelta(minutes=1) if later and len(later) == len(targets) else None


def test_train_three_stages_on_two_pools_with_a_worker_killed(world: World) -> None:
    """A train of v3 (built) over 50 stores in ten zones: canary, ring1, ring2 (the inventory's rings),
    a 24 h soak after each stage. Ticks come from the ``train-tick`` schedule on the emea pool; the
    children run on their region's pool. The americas worker is SIGKILLed (with its flow-run process)
    while a ring2 node of its child is booting; a new worker starts and the next tick resumes the
    child. Every store ends on v3, v3 is promoted to stable after the canary stage, the simulator's
    oracle finds nothing and no node is reimaged twice."""
    from edgefleet.trains.model import StagePolicy, StageSpec, StageStatus, StoreState, TrainSpec, TrainStatus
    from edgefleet.trains.store import TrainStore

    if importlib.util.find_spec("edgefleet.trains.controller") is None:
        reason = "edgefleet.trains.controller is not written yet: train_tick has no controller to tick"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    t0 = time.monotonic()
    _deploy(world, "--interval", str(TICK_S), "--tick-pool", pool_name("emea"), "--sim", world.sim_url,
            "--param", f"stale_after_s={STALE_AFTER_S}")
    workers = world.ensure_workers()
    _jump(world, _next_instant(_sim_now(world), 1, 5))  # both regions' windows open for the next six hours
    engine = create_state_engine(world.state_url)
    trains = TrainStore(engine)
    ledger = Ledger(engine)
    events0 = httpx.get(f"{world.sim_url}/sim/events?limit=1", trust_env=False).json()["last_seq"]
    try:
        names = ["canary", "ring1", "ring2"]
        spec = TrainSpec(release="v3", stages=tuple(
            StageSpec(n, f"ring_{n}", StagePolicy(failure_budget=0, soak=SOAK)) for n in names),
            settings=SETTINGS.to_json())  # a child works on one store at a time: the kill lands mid-child
        assignments = {sid: names.index(st.ring) for sid, st in world.fleet.stores.items()}
        train = trains.create(spec, assignments, names, _sim_now(world), operator="test").id
        # The simulator's oracle learns the train: its stage order and release state rules hold from now on.
        declared = httpx.post(f"{world.sim_url}/sim/oracle/train", trust_env=False, json={
            "release": "v3", "soak_s": SOAK.total_seconds(),
            "stages": [{"name": n, "stores": sorted(s for s, i in assignments.items() if i == k), "failure_budget": 0}
                       for k, n in enumerate(names)]})
        assert declared.status_code == 200, declared.text

        killed: list[int] = []
        deadline = time.monotonic() + TRAIN_WAIT_S
        while True:
            rec = trains.get(train)
            if rec.status not in (TrainStatus.running, TrainStatus.paused):
                break
            assert time.monotonic() < deadline, (
                f"train {train} not done in {TRAIN_WAIT_S:g} s: {rec.status} {trains.stages(train)}\n"
                f"{world.server.worker_logs()}")
            stores = trains.stores(train)
            if not killed:
                booting = [p.rollout for sid, p in stores.items()
                           if p.stage == 2 and p.state is StoreState.dispatched and p.rollout
                           and world.fleet.stores[sid].region == "americas"
                           and any(e["kind"] == "reimage_booting" for e in ledger.events(p.rollout))]
                if booting:
                    killed = _kill_worker_machine(workers["americas"])
                    assert any(r.status is not RunStatus.succeeded for r in ledger.runs(booting[0]))
                    workers = world.ensure_workers()
            target = _idle_target(world, trains, train, _sim_now(world))
            if target is not None:
                _jump(world, target)
            time.sleep(0.5)
        assert rec.status is TrainStatus.succeeded, (rec, trains.stages(train), trains.stores(train))
        assert killed, "the americas worker was never killed: no ring2 child was seen booting"
        assert all(st.status is StageStatus.passed for st in trains.stages(train))
        assert {s: p.state for s, p in trains.stores(train).items()} == {
            s: StoreState.succeeded for s in world.fleet.stores}
        assert ReleaseCatalog(engine).get("v3").state is ReleaseState.stable
        assert {s: c for s, (c, _) in ledger.store_releases().items()} == {s: "v3" for s in world.fleet.stores}
        asyncio.run(ledger_matches_sim(world.sim_url, ledger, world.fleet))
        children = {r.id: r for r in ledger.rollouts(limit=1000) if r.train == train}
    finally:
        engine.dispose()

    # The simulator: nothing outside a window, no stage order or release state broken, no node twice.
    violations = httpx.get(f"{world.sim_url}/sim/violations", trust_env=False).json()
    assert violations["total"] == 0, violations
    events = httpx.get(f"{world.sim_url}/sim/events", params={"since": events0, "limit": 100000},
                       trust_env=False).json()["events"]
    resets = Counter(e["node"] for e in events if e["kind"] == "reset" and e["operation"] in children)
    assert resets == Counter({f"{s}-n1": 1 for s in world.fleet.stores})

    # Prefect: each child on its region's pool; the ticks on the schedule, on the tick's pool.
    runs = _runs_tagged(world, f"edgefleet-train:{train}")
    assert {next(t.split(":", 1)[1] for t in r.tags if t.startswith("edgefleet-rollout:")) for r in runs} == set(
        children)
    for r in runs:
        region = next(t.split(":", 1)[1] for t in r.tags if t.startswith("edgefleet-region:"))
        assert r.work_pool_name == f"edgefleet-{region}", (r.name, r.work_pool_name)
    ticks = _runs_tagged(world, "edgefleet")  # the deployments' tags: ticks and children alike
    scheduled = [r for r in ticks if r.auto_scheduled]
    assert scheduled and all(r.work_pool_name == "edgefleet-emea" for r in scheduled)
    assert any(r.state is not None and r.state.is_completed() for r in scheduled)

    # Each tick's artifact: where the train stands; the last one shows every stage passed.
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    key = f"train-{train}".lower()
    artifacts = _api(world, lambda c: c.read_artifacts(
        artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))))
    assert artifacts, f"no tick artifact {key}"
    last = max(artifacts, key=lambda a: a.created)
    for i, name in enumerate(["canary", "ring1", "ring2"]):
        assert f"| {i} {name} | passed |" in last.data, last.data
    print(f"train of {len(world.fleet.stores)} stores, 3 stages, {len(children)} children, "
          f"{len(runs)} child runs: {time.monotonic() - t0:.0f} s")
