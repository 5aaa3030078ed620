"""Draining a node through the simulator's Kubernetes API: cordon, the Eviction API and its
PodDisruptionBudgets over real HTTP on 127.0.0.1 (``edgefleet.day2.drain`` with
``edgefleet.health.drainapi``), and the per-node request counts that prove no other node was touched."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from edgefleet.day2.drain import DrainPolicy, drain_node
from edgefleet.errors import DrainBlocked
from edgefleet.health.drainapi import open_drain_api
from edgefleet.inventory.model import Fleet, Store
from edgefleet.sim.build import build_sim
from edgefleet.sim.scenario import Scenario
from edgefleet.sim.server import running_server

FAST = DrainPolicy(attempts=3, backoff_s=0.01, backoff_max_s=0.02)


def _store(sid: str, index: int, roles: list[str]) -> Store:
    return Store.model_validate({
        "id": sid, "name": sid.upper(), "country": "DK", "region": "nordics", "timezone": "Europe/Copenhagen",
        "maintenance_windows": [{"days": ["daily"], "start": "22:00", "end": "05:00"}],
        "network": {"subnet": f"10.30.{index}.0/24", "gateway": f"10.30.{index}.1", "dns": ["10.0.0.53"]},
        "cluster": {"name": sid},
        "nodes": [{"name": f"{sid}-n{k + 1}", "role": r, "mac": f"02:ee:00:00:{index:02x}:{k + 1:02x}",
                   "ip": f"10.30.{index}.{10 + k}"} for k, r in enumerate(roles)]})


def fleet() -> Fleet:
    roles = ["controlplane", "worker", "worker", "worker"]
    return Fleet(name="drain", stores={"aa": _store("aa", 1, roles), "bb": _store("bb", 2, roles)})


def run(body: Any, scenario: Scenario) -> Any:
    async def main() -> Any:
        sim = build_sim(fleet(), scenario=scenario, clock=datetime(2026, 11, 25, 23, 0, tzinfo=UTC))
        try:
            async with running_server(sim) as url:
                return await asyncio.wait_for(body(sim, url), 60)
        finally:
            sim.close()
    return asyncio.run(main())


def test_drain_cordons_evicts_and_touches_no_other_node() -> None:
    async def body(sim: Any, url: str) -> None:
        async with open_drain_api(f"{url}/k8s/aa", sim.home, "aa") as api:
            report = await drain_node(api, "aa", "aa-n2", policy=FAST)
        assert report.evicted == ["shop/web-1"] and report.left == ["shop/node-exporter-aa-n2"]
        async with httpx.AsyncClient() as c:
            node = (await c.get(f"{url}/k8s/aa/api/v1/nodes/aa-n2")).json()
            assert node["spec"] == {"unschedulable": True}
            pods = (await c.get(f"{url}/k8s/aa/api/v1/pods", params={"fieldSelector": "spec.nodeName=aa-n2"})).json()
            assert [p["metadata"]["name"] for p in pods["items"]] == ["node-exporter-aa-n2"]
            web = [p["spec"]["nodeName"] for p in (await c.get(f"{url}/k8s/aa/api/v1/pods")).json()["items"]
                   if p["metadata"]["labels"]["app"] == "web"]
            assert len(web) == 3 and "aa-n2" not in web  # the replacement runs elsewhere
            counts = (await c.get(f"{url}/sim/report")).json()["node_requests"]
        assert counts == {"aa-n2": {"k8s cordon": 1, "k8s evict": 1}}

    run(body, Scenario(boot_seconds=1))


def test_a_budget_that_allows_nothing_blocks_the_drain_naming_pod_and_budget() -> None:
    async def body(sim: Any, url: str) -> None:
        async with open_drain_api(f"{url}/k8s/bb", sim.home, "bb") as api:
            with pytest.raises(DrainBlocked) as e:
                await drain_node(api, "bb", "bb-n3", policy=FAST)
        msg = str(e.value)
        assert "node bb-n3 cannot be drained: pod shop/web-2" in msg and "disruption budget web" in msg
        assert "violate the pod's disruption budget" in msg and "refused 3 times" in msg
        assert (e.value.pod, e.value.budget) == ("web-2", "web")
        async with httpx.AsyncClient() as c:
            counts = (await c.get(f"{url}/sim/report")).json()["node_requests"]
            pods = (await c.get(f"{url}/k8s/bb/api/v1/pods")).json()["items"]
        assert counts == {"bb-n3": {"k8s cordon": 1, "k8s evict": 3}}
        assert sum(p["metadata"]["labels"]["app"] == "web" for p in pods) == 3  # nothing evicted

    run(body, Scenario(boot_seconds=1, strict_pdbs=["bb"]))


def test_eviction_waits_for_the_budget_to_recover() -> None:
    """One web pod on a NotReady node uses the budget up: the eviction is refused (429) until it is
    Ready again, and the drain's backoff outlasts that."""
    async def body(sim: Any, url: str) -> None:
        down = sim.nodes["aa-n4"]
        down.joined, down.reason = False, "kubelet stopped (test)"

        async def recover() -> None:
            await asyncio.sleep(0.15)
            down.joined = True

        task = asyncio.create_task(recover())
        async with open_drain_api(f"{url}/k8s/aa", sim.home, "aa") as api:
            report = await drain_node(api, "aa", "aa-n2", policy=DrainPolicy(attempts=8, backoff_s=0.05,
                                                                             backoff_max_s=0.1))
        await task
        assert report.evicted == ["shop/web-1"] and report.refusals >= 1

    run(body, Scenario(boot_seconds=1))
