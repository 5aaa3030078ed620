"""Reads are retried, actions are not blindly repeated (on the fleet simulator, in process,
127.0.0.1, with its reproducible fault bursts).

* A node that booted the new release and is fine, while its BMC answers four 500s in a row to the
  power-state GET after the reset (as many as the connector's attempts): its reimage must not
  fail. The read is read again within the step's deadline (the power deadline).
* A store's Kubernetes node list answering 500 twice in a row is read again within the read's
  deadline; a longer run comes back as the typed, transient error.
* A failing action (the reset answered 500 every time) still fails the reimage, and the connector
  never sends it twice in one sequence: the engine's sequence retries send it exactly once each.
"""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet.errors import KubeApiStatusError
from edgefleet.health.cluster import ClusterSnapshot
from edgefleet.rollout import operations as ops
from edgefleet.rollout.endpoints import Endpoints, StoreApi
from edgefleet.rollout.executor import EngineSettings
from edgefleet.rollout.ledger import Ledger, RolloutStatus, RunStatus
from tests.contract.rollout_world import (
    PASSWORD,
    PASSWORD_ENV,
    get_json,
    ledger_matches_sim,
    make_inventory,
    release_home,
    running_world,
)
from tests.helpers import require_tool

pytestmark = pytest.mark.slow

START = datetime(2026, 11, 3, 21, 30, tzinfo=UTC)  # inside the stores' 22:00-05:00 local window
SETTINGS = EngineSettings(node_ready_timeout_s=4.0, quorum_timeout_s=10.0, store_gate_timeout_s=6.0,
                          window_wait_max_s=5.0, poll_s=0.05, heartbeat_s=0.5, power_deadline_s=5.0,
                          bmc_backoff_s=0.05)


async def _scenario(url: str, **changes: Any) -> None:
    async with httpx.AsyncClient(trust_env=False) as c:
        resp = await c.post(f"{url}/sim/scenario", json=changes)
        assert resp.status_code == 200, resp.text


async def _faults(url: str, since: int, fault: str, node: str) -> list[dict[str, Any]]:
    events = (await get_json(f"{url}/sim/events?kind=fault&since={since}&limit=100000"))["events"]
    return [e for e in events if e["detail"]["fault"] == fault and e.get("node") == node]


def test_reads_are_retried_and_actions_are_not_repeated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_tool(shutil.which("packer"), "packer (Debian package `packer`)")
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    fleet = make_inventory(tmp_path / "inventory")
    home, engine = release_home(tmp_path, ["v1"])

    async def body(url: str, ep: Endpoints) -> None:
        ledger = Ledger(engine)
        since = (await get_json(f"{url}/sim/events?limit=1"))["last_seq"]

        # 1. four 500s on the power-state GET right after the reset: the node is fine, so is its reimage
        assert SETTINGS.bmc_attempts == 4
        await _scenario(url, bmc_bursts=[{"node": "dk-0002-n1", "method": "GET", "path": "Systems/1", "count": 4,
                                          "after": "reset"}])
        made = ops.create_provision(fleet, engine, home, "dk-0002", "v1", ep.clock(), settings=SETTINGS)
        rec = await ops.run(fleet, home, engine, ep, made.record.id, settings=SETTINGS)
        assert rec.status is RolloutStatus.succeeded, ops.status(engine, rec.id)
        burst = await _faults(url, since, "5xx burst", "dk-0002-n1")
        assert len(burst) == 4 and all(e["detail"]["method"] == "GET" for e in burst), burst
        assert not ledger.events(kind="reimage_failed")
        assert ledger.store_releases(["dk-0002"])["dk-0002"][0] == "v1"

        # 2. the store's node list answers 500 twice: read again within the read's deadline
        store = fleet.stores["dk-0002"]
        report = await get_json(f"{url}/sim/report")
        k8s_before = report["faults_injected"].get("k8s_burst", 0)
        await _scenario(url, bmc_bursts=[], k8s_bursts=[{"store": "dk-0002", "count": 2}])
        async with StoreApi(ep, home, deadline_s=5.0) as api:
            snap = await api.snapshot(store, readyz=False)
            assert isinstance(snap, ClusterSnapshot), snap
            assert [n.name for n in snap.nodes if n.ready] == ["dk-0002-n1"]
            # a run longer than the read's tries: the typed, transient error (the caller waits)
            await _scenario(url, k8s_bursts=[{"store": "dk-0002", "count": 50}])
            err = await api.snapshot(store, readyz=False)
            assert isinstance(err, KubeApiStatusError) and err.transient and err.status == 500, err
        report = await get_json(f"{url}/sim/report")
        assert report["faults_injected"]["k8s_burst"] - k8s_before == 2 + 3  # 2, then the 3 tries of READ_RETRY
        await _scenario(url, k8s_bursts=[])

        # 3. the reset answered 500 every time: the reimage fails; each sequence sent it once
        since = (await get_json(f"{url}/sim/events?limit=1"))["last_seq"]
        await _scenario(url, bmc_bursts=[{"node": "no-0002-n1", "method": "POST",
                                          "path": "Actions/ComputerSystem.Reset", "count": 1000}])
        made = ops.create_provision(fleet, engine, home, "no-0002", "v1", ep.clock(), settings=SETTINGS)
        rec = await ops.run(fleet, home, engine, ep, made.record.id, settings=SETTINGS)
        # the store failed; a BMC failing transiently says nothing about the release: paused for a person
        assert [r.status for r in ledger.runs(rec.id)] == [RunStatus.failed], ops.status(engine, rec.id)
        assert rec.status is RolloutStatus.paused and "inconclusive" in rec.reason, ops.status(engine, rec.id)
        resets = await _faults(url, since, "5xx burst", "no-0002-n1")
        assert len(resets) == SETTINGS.reimage_attempts and all(e["detail"]["method"] == "POST" for e in resets)
        failed = [e for e in ledger.events(kind="reimage_failed") if e["node"] == "no-0002-n1"]
        assert len(failed) == 1 and "ComputerSystem.Reset" in failed[0]["reason"], failed
        assert failed[0]["detail"]["bmc_error"] == "http_500"  # the kind the metrics count
        retries = [e for e in ledger.events(rec.id, kind="reimage_retry") if e["node"] == "no-0002-n1"]
        assert [e["detail"]["bmc_error"] for e in retries] == ["http_500"] * (SETTINGS.reimage_attempts - 1)
        state = (await get_json(f"{url}/sim/state"))["nodes"]
        assert state["no-0002-n1"]["release"] == "initial"  # never reset: still on what it ran
        await _scenario(url, bmc_bursts=[])

        assert (await get_json(f"{url}/sim/violations"))["total"] == 0
        await ledger_matches_sim(url, ledger, fleet.model_copy(update={"stores": {"dk-0002": store}}))

    async def main() -> None:
        async with running_world(fleet, home, boot_seconds=60, time_scale=300, clock=START,
                                 ca_out=tmp_path / "talos-ca.pem") as (url, ep):
            await asyncio.wait_for(body(url, ep), 150)

    try:
        asyncio.run(main())
    finally:
        engine.dispose()

