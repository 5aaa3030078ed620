"""Release trains run in one process (``edgefleet.trains.controller.run_embedded``) against the
fleet simulator on 127.0.0.1, its clock accelerated: real Redfish over HTTP, the simulated Talos
API over mutual TLS, real release images built by the real Packer template, the real state store.

The fleet: 30 stores in 10 countries and 10 time zones (Sydney to Mexico City), each with a window
in its own zone (closed two hours around local noon), running v1 (the simulator's initial release,
recorded in the ledger as an earlier provisioning would have left it). Stages are the rings:
``canary`` (3 stores), ``ring1``, ``ring2``. Every train is declared to the simulator's oracle,
whose train rules (stage order, release state) and node rules must hold at the end, and the ledger
must agree with the simulator.

- the happy path: 3 stages with a 24 h soak; every store ends on v2, each stage starts only after
  the previous one's soak, v2 becomes stable after the canary stage (with its evidence event);
- a bad release: a canary never becomes Ready on it; the train halts with zero requests to the
  stores of later stages; ``abort --rollback`` brings the canaries back to v1 and revokes it;
  a second train over stores the first still holds is refused naming it;
- a freeze declared mid-train (a reloaded inventory): its stores wait, the train finishes after it.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from edgefleet.errors import LockHeld
from edgefleet.inventory.generate import write_inventory
from edgefleet.inventory.load import load_fleet
from edgefleet.inventory.model import Fleet
from edgefleet.releases.catalog import ReleaseCatalog, ReleaseState
from edgefleet.rollout.endpoints import Endpoints, from_simulator
from edgefleet.rollout.ledger import Kind, Ledger, stmt_store_release
from edgefleet.rollout.settings import EngineSettings
from edgefleet.secrets import ensure_secrets
from edgefleet.sim.build import build_sim
from edgefleet.sim.scenario import parse_scenario
from edgefleet.sim.server import running_server
from edgefleet.sim.talos_serve import running_talos_api
from edgefleet.state.db import create_state_engine
from edgefleet.trains.controller import run_embedded
from edgefleet.trains.model import (
    Decision,
    StagePolicy,
    StageSpec,
    StageStatus,
    StoreState,
    TrainSpec,
    TrainStatus,
)
from edgefleet.trains.store import TrainStore
from tests.contract.rollout_world import (
    PASSWORD,
    PASSWORD_ENV,
    assert_oracle_clean,
    build_releases,
    declare_spec,
    get_json,
    ledger_matches_sim,
    ledger_url,
)
from tests.helpers import make_stable, require_tool

pytestmark = pytest.mark.slow

START = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)  # a Monday, 13:00 in Copenhagen: its window opens at 14:00
SCALE = 7200.0  # two simulated hours per real second
ZONES = [("dk", "DK", "Europe/Copenhagen", "europe"), ("gb", "GB", "Europe/London", "europe"),
         ("fi", "FI", "Europe/Helsinki", "europe"), ("ae", "AE", "Asia/Dubai", "asia"),
         ("in", "IN", "Asia/Kolkata", "asia"), ("jp", "JP", "Asia/Tokyo", "asia"),
         ("au", "AU", "Australia/Sydney", "asia"), ("br", "BR", "America/Sao_Paulo", "americas"),
         ("us", "US", "America/New_York", "americas"), ("mx", "MX", "America/Mexico_City", "americas")]
CANARIES = {"dk-0001", "jp-0001", "us-0001"}
SETTINGS = EngineSettings(node_ready_timeout_s=1.0, quorum_timeout_s=3.0, store_gate_timeout_s=2.0,
                          window_wait_max_s=5.0, poll_s=0.02, heartbeat_s=0.3, power_deadline_s=4.0,
                          node_duration=timedelta(hours=4), max_concurrent=100)
# A node takes under a real second, but that is up to hours of fleet time at this scale on a loaded
# machine: the train starts a store only when four hours per node are left in its window, and the
# windows are long (22 hours, closed around local noon), so that no store runs out of window.
DISRUPTIVE = ("insert", "reset", "power_off", "boot_start", "talos_reset", "talos_bootstrap")


def make_fleet(root: Path, *, freezes: list[dict[str, Any]] | None = None) -> Fleet:
    """30 stores, 3 per country: ``-0001`` of dk, jp, us are the canaries, every ``-0002`` is ring1,
    the rest ring2; a 3-node store per region, 1-node stores otherwise."""
    fleet = {"fleet": {"name": "traintest"},
             "defaults": {"maintenance_windows": [{"days": ["daily"], "start": "14:00", "end": "12:00"}],
                          "network": {"dns": ["10.0.0.53"]},
                          "node_defaults": {"bmc": {"credentials": {"username": "admin",
                                                                    "password_env": PASSWORD_ENV}}}},
             "freezes": freezes or []}
    gv = {f"country_{cc}": {"timezone": tz} for cc, _c, tz, _r in ZONES}
    stores: dict[str, list[dict[str, Any]]] = {}
    index = 0
    for cc, country, _tz, region in ZONES:
        for k in (1, 2, 3):
            index += 1
            sid = f"{cc}-{k:04d}"
            prefix = f"10.{16 + index // 256}.{index % 256}"
            roles = ["controlplane"] * 3 if (k == 3 and cc in ("dk", "jp", "us")) else ["controlplane"]
            stores.setdefault(cc, []).append({
                "id": sid, "name": f"Store {sid}", "country": country, "region": region,
                "ring": "canary" if sid in CANARIES else ("ring1" if k == 2 else "ring2"),
                "network": {"subnet": f"{prefix}.0/24", "gateway": f"{prefix}.1"},
                "cluster": {"name": sid, **({"vip": f"{prefix}.9"} if len(roles) > 1 else {})},
                "nodes": [{"name": f"{sid}-n{j + 1}", "role": role, "mac": f"02:ef:00:02:{index:02x}:{j + 1:02x}",
                           "ip": f"{prefix}.{10 + j}", "bmc": {"url": f"https://{prefix}.{100 + j}"}}
                          for j, role in enumerate(roles)]})
    return load_fleet(write_inventory(root, fleet, gv, stores))


def ring_train(fleet: Fleet, release: str, *, soak: timedelta) -> tuple[TrainSpec, dict[str, int], list[str]]:
    """The default train: the rings in order, canary first (what ``train start`` resolves)."""
    names = ["canary", "ring1", "ring2"]
    policy = StagePolicy(failure_budget="10%", soak=soak)
    spec = TrainSpec(release=release, stages=tuple(StageSpec(n, n, policy) for n in names),
                     settings=SETTINGS.to_json())
    return spec, {sid: names.index(s.ring) for sid, s in fleet.stores.items()}, names


@dataclass
class World:
    fleet: Fleet
    home: Path
    engine: Engine
    url: str
    endpoints: Endpoints


@asynccontextmanager
async def running(fleet: Fleet, home: Path, engine: Engine, tmp: Path) -> AsyncIterator[World]:
    """The simulator (every node on v1 at ``START``), the engine's endpoints for it, and the ledger
    knowing each store on v1 with its cluster secrets, as after its provisioning."""
    for sid in fleet.stores:
        ensure_secrets(home, sid, cluster_exists=True, now=datetime.now(UTC))  # made for the module: loaded
        Ledger(engine).write(*stmt_store_release(sid, "v1", "v1", START))
    sim = build_sim(fleet, scenario=parse_scenario({"boot_seconds": 60, "initial_release": "v1"}), time_scale=SCALE,
                    clock=START, home=home, environ={PASSWORD_ENV: PASSWORD})
    async with running_talos_api(sim, ca_out=tmp / "talos-ca.pem") as api:
        talos = {"endpoint": api.endpoint, "ca_pem": api.ca_pem.decode()}
        async with running_server(sim, talos=talos) as url:
            yield World(fleet, home, engine, url, await from_simulator(url))


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every store's cluster secrets, made once (about a second each: an RSA-4096 key), two at a time."""
    home = tmp_path_factory.mktemp("secrets-home")
    stores = sorted(make_fleet(tmp_path_factory.mktemp("inventory")).stores)
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(_make_secrets, [home] * len(stores), stores))
    return home / "secrets"


def _make_secrets(home: Path, store: str) -> None:
    ensure_secrets(home, store, cluster_exists=False, now=datetime.now(UTC))


def in_world(tmp: Path, monkeypatch: pytest.MonkeyPatch, secrets: Path, body: Callable[[World], Awaitable[None]], *,
             stable: tuple[str, ...] = ("v1",), fleet: Callable[[Path], Fleet] = make_fleet,
             timeout: float = 120) -> None:
    require_tool(shutil.which("packer"), "packer (Debian package `packer`)")
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    home = tmp / "home"
    home.mkdir()
    shutil.copytree(secrets, home / "secrets")
    engine = create_state_engine(ledger_url(home))
    catalog = ReleaseCatalog(engine)
    build_releases(home, tmp, catalog, ["v1", "v2"], stable=False)
    for name in stable:
        make_stable(catalog, name)

    async def main() -> None:
        async with running(fleet(tmp / "inventory"), home, engine, tmp) as w:
            await asyncio.wait_for(body(w), timeout)

    try:
        asyncio.run(main())
    finally:
        engine.dispose()


async def sim_events(url: str, **query: str) -> list[dict[str, Any]]:
    data = await get_json(f"{url}/sim/events?limit=100000&" + "&".join(f"{k}={v}" for k, v in query.items()))
    events: list[dict[str, Any]] = data["events"]
    return events


def failures(ledger: Ledger, train: str) -> list[str]:
    """What went wrong with the train's stores, for a failing assertion."""
    made = {c.id: c.created_at for c in ledger.train_rollouts(train)}
    return [f"{s} ({rid} made {made[rid]:%d %H:%M}, started {r.started_at and f'{r.started_at:%d %H:%M}'}, ended "
            f"{r.ended_at and f'{r.ended_at:%d %H:%M}'}): {r.status.value} at {r.step!r}: {r.reason}"
            for rid, per in ledger.train_runs(train).items() for s, r in per.items()]


def stage_children(ledger: Ledger, train: str, stores: Mapping[str, int]) -> dict[int, list[Any]]:
    """The train's child rollouts by the stage of their stores."""
    out: dict[int, list[Any]] = {}
    runs = ledger.train_runs(train)
    for child in ledger.train_rollouts(train):
        stages = {stores[s] for s in runs.get(child.id, {})}
        assert len(stages) <= 1, f"child {child.id} spans stages {stages}"
        if stages:
            out.setdefault(stages.pop(), []).append(child)
    return out


def test_a_train_carries_a_release_across_time_zones_stage_by_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     secrets: Path) -> None:
    async def body(w: World) -> None:
        assert len({s.timezone for s in w.fleet.stores.values()}) >= 8
        spec, assign, names = ring_train(w.fleet, "v2", soak=timedelta(hours=24))
        trains, ledger = TrainStore(w.engine), Ledger(w.engine)
        rec = trains.create(spec, assign, names, w.endpoints.clock(), operator="test")
        await declare_spec(w.url, spec, assign)
        final = await run_embedded(w.fleet, w.home, w.engine, w.endpoints, rec.id, poll_s=0.05)
        assert final.status is TrainStatus.succeeded, final.reason + "\n" + "\n".join(failures(ledger, rec.id))

        state = (await get_json(f"{w.url}/sim/state"))["nodes"]
        assert {n: v["release"] for n, v in state.items()} == dict.fromkeys(state, "v2")
        assert {p.state for p in trains.stores(rec.id).values()} == {StoreState.succeeded}
        await assert_oracle_clean(w.url)
        await ledger_matches_sim(w.url, ledger, w.fleet)

        # Each stage soaked 24 h from its last store's finish, and the next started only after.
        stages = trains.stages(rec.id)
        assert [s.status for s in stages] == [StageStatus.passed] * 3
        children = stage_children(ledger, rec.id, assign)
        runs = ledger.train_runs(rec.id)
        for st in stages:
            ended = [r.ended_at for c in children[st.index] for r in runs[c.id].values()]
            assert st.finished_at == max(e for e in ended if e is not None)
            assert st.soak_until == st.finished_at + timedelta(hours=24)
            if st.index:
                prev = stages[st.index - 1]
                assert prev.soak_until is not None
                starts = [r.started_at for c in children[st.index] for r in runs[c.id].values()]
                assert min(c.created_at for c in children[st.index]) >= prev.soak_until
                assert all(s is not None and s >= prev.soak_until for s in starts)

        # v2 became stable once the canary stage passed, with the evidence recorded.
        assert ReleaseCatalog(w.engine).get("v2").state is ReleaseState.stable
        (promoted,) = [e for e in ledger.events(rec.id, kind="release_promoted") if e["detail"]["to"] == "stable"]
        assert sorted(promoted["detail"]["evidence"]["stores"]) == sorted(CANARIES)
        assert promoted["detail"]["evidence"]["failures"] == []
        assert datetime.fromisoformat(promoted["ts"]) >= stages[0].soak_until  # type: ignore[operator]
        assert datetime.fromisoformat(promoted["ts"]) <= min(c.created_at for c in children[1])
        # Every disruptive step went in during its store's window (the oracle's window rule) and per
        # region: one child per region and tick, never mixing regions.
        for cs in children.values():
            for c in cs:
                assert c.kind is Kind.rollout and len({w.fleet.stores[s].region for s in runs[c.id]}) == 1

    in_world(tmp_path, monkeypatch, secrets, body)


def test_a_bad_release_halts_at_its_canaries_and_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             secrets: Path) -> None:
    async def body(w: World) -> None:
        async with httpx.AsyncClient(trust_env=False) as c:
            r = await c.post(f"{w.url}/sim/scenario", json={"never_ready_on": {"v2": ["us-0001-n1"]}})
            assert r.status_code == 200, r.text
        spec, assign, names = ring_train(w.fleet, "v2", soak=timedelta(hours=24))
        spec = TrainSpec(spec.release, (StageSpec("canary", "canary", StagePolicy(failure_budget=0)),
                                        *spec.stages[1:]), settings=spec.settings)
        trains, ledger = TrainStore(w.engine), Ledger(w.engine)
        rec = trains.create(spec, assign, names, w.endpoints.clock(), operator="test")
        await declare_spec(w.url, spec, assign)
        halted = await run_embedded(w.fleet, w.home, w.engine, w.endpoints, rec.id, poll_s=0.05)
        assert halted.status is TrainStatus.halted and "stage canary failed" in halted.reason
        stores = trains.stores(rec.id)
        # us-0001's window opens last: jp-0001 and dk-0001 took v2 before it failed (and was rolled back)
        assert stores["us-0001"].state is StoreState.rolled_back
        assert {stores[s].state for s in CANARIES - {"us-0001"}} == {StoreState.succeeded}
        assert [s.status for s in trains.stages(rec.id)] == [StageStatus.failed, StageStatus.locked,
                                                            StageStatus.locked]
        assert ReleaseCatalog(w.engine).get("v2").state is ReleaseState.canary

        # Zero BMC or Talos requests to any store of a later stage.
        later = sorted(s for s, i in assign.items() if i > 0)
        touched = {s for per in (await get_json(f"{w.url}/sim/operations")).values() for s in per}
        assert touched == CANARIES
        for sid in later:
            assert [e for e in await sim_events(w.url, store=sid) if e["kind"] in DISRUPTIVE] == []

        # A second train over stores the halted one still holds is refused, naming it.
        with pytest.raises(LockHeld, match=f"belongs to train {rec.id}"):
            trains.create(spec, {"gb-0003": 0, "us-0001": 0}, ["canary"], w.endpoints.clock())

        # abort --rollback: the canaries still on v2 go back to v1, and v2 is revoked.
        trains.request(rec.id, now=w.endpoints.clock(), abort=True, rollback=True)
        done = await run_embedded(w.fleet, w.home, w.engine, w.endpoints, rec.id, poll_s=0.05)
        assert done.status is TrainStatus.aborted, done.reason
        assert ReleaseCatalog(w.engine).get("v2").state is ReleaseState.revoked
        stores = trains.stores(rec.id)
        assert {stores[s].state for s in CANARIES - {"us-0001"}} == {StoreState.returned}
        state = (await get_json(f"{w.url}/sim/state"))["nodes"]
        assert {n: v["release"] for n, v in state.items()} == dict.fromkeys(state, "v1")
        back = [c for c in ledger.train_rollouts(rec.id) if c.created_at >= halted.updated_at]
        assert back and all(c.kind is Kind.rollback for c in back)
        assert touched == {s for per in (await get_json(f"{w.url}/sim/operations")).values() for s in per}
        await assert_oracle_clean(w.url)
        await ledger_matches_sim(w.url, ledger, w.fleet)
        # Its stores are free again.
        assert trains.active_holder("us-0001") is None

    in_world(tmp_path, monkeypatch, secrets, body, timeout=90)


def test_a_freeze_declared_mid_train_holds_its_stores_until_it_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     secrets: Path) -> None:
    freeze_start, freeze_end = START + timedelta(hours=2), START + timedelta(hours=30)

    async def body(w: World) -> None:
        spec, assign, names = ring_train(w.fleet, "v2", soak=timedelta(hours=2))
        # Two stages: the canaries, then the Finnish and Emirati stores, which the freeze covers.
        assign = {s: (0 if s in CANARIES else 1) for s in assign if s in CANARIES or s[:2] in ("fi", "ae")}
        spec = TrainSpec(spec.release, spec.stages[:2], settings=spec.settings)
        trains = TrainStore(w.engine)
        rec = trains.create(spec, assign, names[:2], w.endpoints.clock(), operator="test")
        await declare_spec(w.url, spec, assign)
        frozen: list[str] = []

        def reload_inventory(_decision: Decision) -> None:
            # The freeze is declared once the train runs: the inventory is reloaded with it.
            if not frozen and w.endpoints.clock() >= START + timedelta(hours=1):
                w.fleet.freezes[:] = make_fleet(tmp_path / "inventory2", freezes=[
                    {"name": "audit", "start": freeze_start.isoformat(), "end": freeze_end.isoformat(),
                     "reason": "year-end audit", "countries": ["FI", "AE"]}]).freezes
                frozen.append("declared")

        waits: list[str] = []

        def on_tick(decision: Decision) -> None:
            reload_inventory(decision)
            waits.extend(x.reason for x in decision.waiting)

        final = await run_embedded(w.fleet, w.home, w.engine, w.endpoints, rec.id, poll_s=0.05, on_tick=on_tick)
        assert final.status is TrainStatus.succeeded and frozen
        runs = Ledger(w.engine).train_runs(rec.id)
        stage1 = [r for per in runs.values() for s, r in per.items() if assign[s] == 1]
        assert stage1 and all(r.started_at is not None and r.started_at >= freeze_end for r in stage1)
        # The second stage unlocked during the freeze, and its stores said they waited for it.
        soaked = trains.stages(rec.id)[0].soak_until
        assert soaked is not None and freeze_start < soaked < freeze_end
        assert any("frozen (audit)" in x for x in waits)
        await assert_oracle_clean(w.url)
        await ledger_matches_sim(w.url, Ledger(w.engine), w.fleet)

    in_world(tmp_path, monkeypatch, secrets, body, timeout=90)
