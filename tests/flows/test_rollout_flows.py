"""The Prefect flows end to end against the fleet simulator: provision_store, rollout (with an
automatic store rollback and a pause decided through Prefect's pause/resume with input) and
rollback. The simulator (BMCs, Kubernetes APIs, Talos API) runs on its own event loop in a thread."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from edgefleet.releases.catalog import ReleaseCatalog, ReleaseState
from edgefleet.rollout import operations as ops
from edgefleet.rollout.ledger import Ledger
from edgefleet.sim.build import build_sim
from edgefleet.sim.scenario import parse_scenario
from edgefleet.sim.server import running_server
from edgefleet.sim.talos_serve import running_talos_api
from tests.contract.rollout_world import (
    PASSWORD,
    PASSWORD_ENV,
    assert_ledger_matches,
    ledger_url,
    make_inventory,
    release_home,
)
from tests.helpers import REPO
from tests.hygiene import dump_state, find_secrets, run_secrets

START = datetime(2026, 11, 2, 21, 30, tzinfo=UTC)  # Monday evening, inside the stores' 22:00 local windows soon


def _flows() -> ModuleType:
    spec = importlib.util.spec_from_file_location("edgefleet_flows_rollout", REPO / "flows" / "rollout.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class SimThread:
    """The simulator on its own loop in a thread, for as long as the test needs it."""

    def __init__(self, inventory: Path, home: Path):
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(inventory, home), daemon=True)

    def _run(self, inventory: Path, home: Path) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            sim = build_sim(inventory, scenario=parse_scenario({"boot_seconds": 60}), time_scale=600.0, clock=START,
                            home=home, environ={PASSWORD_ENV: PASSWORD})
            async with running_talos_api(sim) as api:
                talos = {"endpoint": api.endpoint, "ca_pem": api.ca_pem.decode()}
                async with running_server(sim, talos=talos) as url:
                    self.url = url
                    self._ready.set()
                    await self._stop.wait()

        try:
            asyncio.run(main())
        except BaseException as e:  # surfaced to the test by __enter__/__exit__
            self._error = e
            self._ready.set()

    def __enter__(self) -> SimThread:
        self._thread.start()
        assert self._ready.wait(60), "simulator did not start"
        if self._error:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def post(self, path: str, body: dict[str, Any]) -> None:
        r = httpx.post(f"{self.url}{path}", json=body, trust_env=False, timeout=10)
        assert r.status_code == 200, r.text

    def get(self, path: str) -> Any:
        return httpx.get(f"{self.url}{path}", trust_env=False, timeout=10).json()


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_harness: Path) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    inv = tmp_path / "inventory"
    fleet = make_inventory(inv)
    home, engine = release_home(tmp_path, ["v1", "v2"])
    url = ledger_url(home)
    with SimThread(inv, home) as sim:
        yield {"fleet": fleet, "home": home, "engine": engine, "sim": sim,
               "common": {"sim_url": sim.url, "inventory": str(inv), "home": str(home), "state_url": url,
                          "poll_s": 0.2, "node_timeout_s": 20.0}}
    engine.dispose()


def _prefect_texts() -> dict[str, str]:
    """Everything the Prefect API holds about the runs: artifacts, flow and task runs (parameters,
    state messages and result data) and every log line."""
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)  # logs are shipped in batches: wait for the last ones

    async def pages(read_page: Any, limit: int = 200, most: int = 1_000_000) -> list[Any]:
        """Every item of a paginated Prefect read (bounded)."""
        items: list[Any] = []
        for offset in range(0, most, limit):
            page = await read_page(limit=limit, offset=offset)
            items.extend(page)
            if len(page) < limit:
                break
        return items

    async def read() -> dict[str, str]:
        out: dict[str, str] = {}
        async with get_client() as client:
            for a in await pages(client.read_artifacts):
                out[f"artifact {a.key or a.id} ({a.type})"] = json.dumps([a.data, a.description], default=str)
            for fr in await pages(client.read_flow_runs):
                out[f"flow run {fr.name} {fr.id}"] = json.dumps(fr.model_dump(mode="json"), default=str)
            for tr in await pages(client.read_task_runs):
                out[f"task run {tr.name} {tr.id}"] = json.dumps(tr.model_dump(mode="json"), default=str)
            for lg in await pages(client.read_logs):
                out[f"log {lg.id} of flow run {lg.flow_run_id}"] = f"{lg.name} {lg.message}"
        return out

    return asyncio.run(read())


def _assert_no_secrets(world: dict[str, Any], results: dict[str, Any], capfd: pytest.CaptureFixture[str]) -> None:
    """Secret hygiene of the flow runs above: neither the BMC password nor any key or token of the
    stores' clusters, nor the seed server's key, anywhere a person or a tool can read; seed and
    secret files readable by their owner only."""
    from edgefleet.report import collect_report, render_report

    home, engine = world["home"], world["engine"]
    secrets = run_secrets(home, [PASSWORD])
    assert len([s for s in secrets if "PEM line" in s.label]) >= 5 * len(world["fleet"].stores), len(secrets)
    prefect = _prefect_texts()
    assert any(k.startswith("artifact summary-") for k in prefect) and any(k.startswith("log ") for k in prefect)
    texts: dict[str, str | bytes] = {**prefect, **dump_state(engine),
                                     "report": render_report(collect_report(engine, now=datetime.now(UTC))),
                                     **{f"result of {k}": json.dumps(v, default=str) for k, v in results.items()}}
    captured = capfd.readouterr()
    texts |= {"stdout": captured.out, "stderr": captured.err}
    for log in [*home.rglob("*.log"), *home.rglob("*.jsonl")]:
        texts[str(log.relative_to(home))] = log.read_bytes()
    assert find_secrets(texts, secrets) == []
    # the scan can fail: one of those secrets planted in a copy of the texts is found
    planted = next(s for s in secrets if "PEM line 2" in s.label)
    assert find_secrets({**texts, "report": f"{texts['report']}{planted.value}"}, secrets) == [
        f"report: {planted.label}"]
    private = [*home.glob("seeds/engine/**/*.iso"), *home.glob("secrets/*"), home / "seed-server.key"]
    assert len(private) > len(world["fleet"].stores)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in private} == {p.name: "0o600" for p in private}


def _ledger_matches(world: dict[str, Any]) -> None:
    sim = world["sim"]
    assert_ledger_matches(sim.get("/sim/state")["nodes"], Ledger(world["engine"]), world["fleet"],
                          initial_release=sim.get("/sim/scenario")["initial_release"])


def test_provision_rollout_pause_and_rollback_flows(world: dict[str, Any], capfd: pytest.CaptureFixture[str]) -> None:
    flows = _flows()
    common, sim, engine = world["common"], world["sim"], world["engine"]
    ledger = Ledger(engine)

    async def provision_all() -> list[Any]:
        return await asyncio.gather(*(flows.provision_store(store=s, release="v1", return_state=True, **common)
                                      for s in sorted(world["fleet"].stores)))

    states = asyncio.run(provision_all())
    assert all(s.is_completed() for s in states), [s.message for s in states]
    assert {s: c for s, (c, _l) in ledger.store_releases().items()} == {s: "v1" for s in world["fleet"].stores}

    # A rollout of v2 where one worker never becomes Ready: its store is rolled back automatically,
    # the wave's budget holds, and the flow completes.
    sim.post("/sim/scenario", {"never_ready": ["no-0001-n4"]})
    state = asyncio.run(flows.rollout(release="v2", canary_stores=["dk-0002"], waves=["2", "100%"],
                                      failure_budget="1", max_concurrent=3, node_minutes=10.0, wave_soak_minutes=0.0,
                                      quorum_timeout_s=30.0, gate_timeout_s=40.0, bmc_attempts=5, reimage_attempts=2,
                                      gate_on_window=False, return_state=True, **common))
    assert state.is_completed(), state.message
    data = state.result()
    # the flow's timeouts and retry budgets are saved with the rollout (its request) and run with
    saved = ops.saved_request(ledger.rollout(data["rollout"]["id"])).settings
    assert (saved.node_ready_timeout_s, saved.quorum_timeout_s, saved.store_gate_timeout_s, saved.bmc_attempts,
            saved.reimage_attempts, saved.max_concurrent) == (20.0, 30.0, 40.0, 5, 2, 3)
    assert [e["detail"]["settings"] for e in ledger.events(data["rollout"]["id"], kind="execution_started")] == [
        saved.to_json()]
    results = {"provision": [s.message for s in states], "rollout": [state.message, data]}
    runs = {r["store"]: r["status"] for r in data["stores"]}
    assert runs.pop("no-0001") == "rolled_back"
    assert set(runs.values()) == {"succeeded"}
    assert sim.get("/sim/violations")["total"] == 0
    _ledger_matches(world)

    # The flow refuses nothing silently: rolling back v2 revokes it and puts everyone back on v1.
    sim.post("/sim/scenario", {"never_ready": []})
    state = asyncio.run(flows.rollback(release="v2", reason="flow test", max_concurrent=5, node_minutes=10.0,
                                       quorum_timeout_s=35.0, return_state=True, **common))
    assert state.is_completed(), state.message
    assert ops.saved_request(ledger.rollouts(1)[0]).settings.quorum_timeout_s == 35.0
    assert ReleaseCatalog(engine).get("v2").state is ReleaseState.revoked
    assert {s: c for s, (c, _l) in ledger.store_releases().items()} == {s: "v1" for s in world["fleet"].stores}
    assert sim.get("/sim/violations")["total"] == 0
    _ledger_matches(world)
    results["rollback"] = [state.message, state.result()]
    _assert_no_secrets(world, results, capfd)


def test_inconclusive_wave_pauses_the_flow_until_a_person_resumes_it(world: dict[str, Any]) -> None:
    """An unreachable canary is inconclusive, not a verdict: the flow run pauses (Prefect pause with
    input) and goes on only when someone resumes it with a decision."""
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import aresume_flow_run

    flows = _flows()
    common, sim, engine = world["common"], world["sim"], world["engine"]

    async def provision() -> list[Any]:
        return await asyncio.gather(*(flows.provision_store(store=s, release="v1", return_state=True, **common)
                                      for s in ("no-0002", "dk-0002")))

    assert all(s.is_completed() for s in asyncio.run(provision()))
    sim.post("/sim/scenario", {"offline_stores": ["no-0002"]})
    outcome: dict[str, Any] = {}

    def run() -> None:
        outcome["state"] = asyncio.run(flows.rollout(
            release="v2", stores=["no-0002", "dk-0002"], canary_stores=["no-0002"], waves=["100%"],
            failure_budget="0", max_concurrent=2, node_minutes=10.0, wave_soak_minutes=0.0, gate_on_window=False,
            return_state=True, **common))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    async def approve_when_paused() -> str:
        async with get_client() as client:
            for _ in range(600):
                for fr in await client.read_flow_runs(limit=50):
                    if fr.state is not None and fr.state.is_paused():
                        await aresume_flow_run(fr.id, run_input={"approve": True, "note": "checked the store"})
                        return str(fr.id)
                await asyncio.sleep(0.2)
        raise AssertionError("the rollout flow never paused")

    assert asyncio.run(approve_when_paused())
    thread.join(180)
    assert not thread.is_alive(), "the flow did not finish after it was resumed"
    state = outcome["state"]
    assert state.is_failed()  # the unreachable store is left failed, for a person to see
    rid = Ledger(engine).rollouts(1)[0].id
    st = ops.status(engine, rid)
    assert [w["status"] for w in st["waves"]] == ["passed", "passed"], st["waves"]
    assert {s["store"]: s["status"] for s in st["stores"]} == {"no-0002": "failed", "dk-0002": "succeeded"}
    assert [e["kind"] for e in Ledger(engine).events(rid) if e["kind"].startswith("decision")] == ["decision_approve"]
    assert sim.get("/sim/violations")["total"] == 0
    _ledger_matches(world)
