"""Repairing a store whose rollout failed part-way, against the fleet simulator: a 3-control-plane
store whose control plane at position 1, 2 or 3 never becomes Ready on the new release.

* The rollback starts with the broken control plane (it is down already, so the quorum gate does
  not hold it back); once it is back, the healthy ones follow: the store ends ``rolled_back``,
  every node on the old release, with zero oracle violations.
* When the broken one cannot be brought back either, the store ends ``split``: the ledger records
  each node's release as the simulator has it, claims no current release for the store, keeps the
  store locked (another rollout is refused, naming the command), and status puts it first with
  that command. ``rollout resume`` then continues the repair once the node is fixed.
* A BMC node recorded as booting when its run was interrupted is watched on resume, not reset again.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from edgefleet.rollout import operations as ops
from edgefleet.rollout.endpoints import Endpoints
from edgefleet.rollout.executor import EngineSettings
from edgefleet.rollout.ledger import Ledger, RolloutStatus, RunStatus
from edgefleet.rollout.plan import RolloutPolicy
from tests.contract.rollout_world import (
    PASSWORD,
    PASSWORD_ENV,
    get_json,
    make_inventory,
    release_home,
    running_world,
)
from tests.helpers import require_tool

pytestmark = pytest.mark.slow

START = datetime(2026, 11, 3, 21, 30, tzinfo=UTC)  # 22:30 in Copenhagen: inside the 22:00-05:00 window
STORE = "dk-0001"  # three control planes
SETTINGS = EngineSettings(node_ready_timeout_s=3.0, quorum_timeout_s=6.0, store_gate_timeout_s=6.0,
                          window_wait_max_s=5.0, poll_s=0.05, heartbeat_s=0.5, power_deadline_s=5.0)
POLICY = RolloutPolicy(canary=0, waves=("100%",), failure_budget=1, max_concurrent=1,
                       node_duration=timedelta(minutes=10), wave_soak=timedelta(0))

Body = Callable[[str, Endpoints, Engine, Any], Awaitable[None]]


def run_world(tmp: Path, monkeypatch: pytest.MonkeyPatch, body: Body) -> None:
    require_tool(shutil.which("packer"), "packer (Debian package `packer`)")
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    fleet = make_inventory(tmp / "inventory")
    home, engine = release_home(tmp, ["v1", "v2"])

    async def main() -> None:
        async with running_world(fleet, home, boot_seconds=60, time_scale=300, clock=START,
                                 ca_out=tmp / "talos-ca.pem") as (url, ep):
            prov = ops.create_provision(fleet, engine, home, STORE, "v1", ep.clock(), settings=SETTINGS)
            assert (await ops.run(fleet, home, engine, ep, prov.record.id, settings=SETTINGS)).status \
                is RolloutStatus.succeeded
            await asyncio.wait_for(body(url, ep, engine, (fleet, home)), 200)

    try:
        asyncio.run(main())
    finally:
        engine.dispose()


async def never_ready(url: str, nodes: list[str]) -> None:
    async with httpx.AsyncClient(trust_env=False) as c:
        r = await c.post(f"{url}/sim/scenario", json={"never_ready": nodes})
        assert r.status_code == 200, r.text


async def break_on_the_new_release(ledger: Ledger, rid: str, url: str, node: str, *, heal: bool) -> None:
    """Make ``node`` never Ready once it boots the new release; with ``heal``, fixed again as soon as
    its rollback reimage starts (so only a rollback that starts with it can succeed)."""
    while not any(e["node"] == node for e in ledger.events(rid, kind="reimage_booting")):
        await asyncio.sleep(0.02)
    await never_ready(url, [node])
    if not heal:
        return
    while not any(e["node"] == node and e["detail"].get("phase") == "rollback"
                  for e in ledger.events(rid, kind="reimage_started")):
        await asyncio.sleep(0.02)
    await never_ready(url, [])


async def sim_releases(url: str, store: str) -> dict[str, str | None]:
    nodes = (await get_json(f"{url}/sim/state"))["nodes"]
    return {n: v["release"] for n, v in nodes.items() if n.startswith(store + "-")}


async def violations(url: str) -> dict[str, Any]:
    data: dict[str, Any] = await get_json(f"{url}/sim/violations")
    return data


@pytest.mark.parametrize("position", [1, 2, 3])
def test_rollback_starts_with_the_broken_control_plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       position: int) -> None:
    bad = f"{STORE}-n{position}"

    async def body(url: str, ep: Endpoints, engine: Engine, world: Any) -> None:
        fleet, home = world
        ledger = Ledger(engine)
        made = ops.create_rollout(fleet, engine, "v2", POLICY, ep.clock(), settings=SETTINGS, stores=[STORE])
        breaker = asyncio.create_task(break_on_the_new_release(ledger, made.record.id, url, bad, heal=True))
        rec = await ops.run(fleet, home, engine, ep, made.record.id, settings=SETTINGS)
        await asyncio.wait_for(breaker, 5)
        (run,) = ledger.runs(rec.id)
        assert run.status is RunStatus.rolled_back, (run.status, run.reason)
        rolled = [e["node"] for e in ledger.events(rec.id, kind="reimage_started")
                  if e["detail"]["phase"] == "rollback"]
        assert rolled[0] == bad, rolled  # the broken one first
        assert set((await sim_releases(url, STORE)).values()) == {"v1"}
        assert ledger.store_releases([STORE])[STORE][0] == "v1"
        assert (await violations(url))["total"] == 0
        assert ledger.lock_holder(STORE) is None

    run_world(tmp_path, monkeypatch, body)


def test_a_store_that_cannot_be_repaired_is_split_locked_and_repaired_on_resume(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch
                                                                                 ) -> None:
    bad = f"{STORE}-n2"

    async def body(url: str, ep: Endpoints, engine: Engine, world: Any) -> None:
        fleet, home = world
        ledger = Ledger(engine)
        made = ops.create_rollout(fleet, engine, "v2", POLICY, ep.clock(), settings=SETTINGS, stores=[STORE])
        rid = made.record.id
        breaker = asyncio.create_task(break_on_the_new_release(ledger, rid, url, bad, heal=False))
        rec = await ops.run(fleet, home, engine, ep, rid, settings=SETTINGS)
        await breaker
        (run,) = ledger.runs(rid)
        assert run.status is RunStatus.split_, (run.status, run.reason)
        assert rec.status is RolloutStatus.failed and f"edgefleet rollout resume {rid}" in rec.reason
        # The ledger says what the nodes run, node by node, and claims no release for the store.
        sim = await sim_releases(url, STORE)
        assert len(set(sim.values())) > 1, sim  # really split: n1 on v2, n2 back on v1 but NotReady, n3 on v1
        assert {n: rel for n, (_s, rel, _r) in ledger.node_states(STORE).items()} == sim
        assert ledger.store_releases([STORE])[STORE][0] is None
        assert STORE in ledger.stores_on("v2")
        # Locked until a person acts: another operation is refused, with the command to run.
        assert ledger.lock_holder(STORE) == rid
        other = ops.create_rollout(fleet, engine, "v1", POLICY, ep.clock(), settings=SETTINGS, stores=[STORE])
        refused = await ops.run(fleet, home, engine, ep, other.record.id, settings=SETTINGS)
        (orun,) = ledger.runs(refused.id)
        assert orun.status is RunStatus.refused and f"`edgefleet rollout resume {rid}`" in orun.reason, orun.reason
        st = ops.status(engine, rid)
        assert [s["store"] for s in st["split"]] == [STORE]
        assert st["split"][0]["command"] == f"edgefleet rollout resume {rid}"
        assert st["split"][0]["nodes"][bad]["release"] == sim[bad]
        assert (await violations(url))["total"] == 0

        # A person fixes the node and continues the repair.
        await never_ready(url, [])
        done = await ops.resume(fleet, home, engine, ep, rid, settings=SETTINGS)
        (run,) = ledger.runs(rid)
        assert run.status is RunStatus.rolled_back, (run.status, run.reason)
        # Rolled back within the failure budget: the rollout ends as any such rollout does.
        assert done.status is RolloutStatus.succeeded and "1 rolled back" in done.reason, done.reason
        assert set((await sim_releases(url, STORE)).values()) == {"v1"}
        assert ledger.store_releases([STORE])[STORE][0] == "v1" and STORE not in ledger.stores_on("v2")
        assert ledger.lock_holder(STORE) is None
        assert ops.status(engine, rid)["split"] == []
        assert (await violations(url))["total"] == 0
        with pytest.raises(Exception, match="nothing to resume"):
            await ops.resume(fleet, home, engine, ep, rid, settings=SETTINGS)

    run_world(tmp_path, monkeypatch, body)


def test_resume_watches_a_bmc_node_that_was_booting_instead_of_resetting_it(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(url: str, ep: Endpoints, engine: Engine, world: Any) -> None:
        fleet, home = world
        ledger = Ledger(engine)
        slow = EngineSettings(**{**SETTINGS.__dict__, "node_ready_timeout_s": 20.0})
        async with httpx.AsyncClient(trust_env=False) as c:  # its first node boots for 30 simulated minutes
            r = await c.post(f"{url}/sim/scenario", json={"slow_boot": {"nodes": [f"{STORE}-n1"], "factor": 30}})
            assert r.status_code == 200, r.text
        made = ops.create_rollout(fleet, engine, "v2", POLICY, ep.clock(), settings=slow, stores=[STORE])
        rid = made.record.id
        task = asyncio.create_task(ops.run(fleet, home, engine, ep, rid, settings=slow))
        while not ledger.events(rid, kind="reimage_booting"):
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (run,) = ledger.runs(rid)
        node = run.step.split(":")[1]
        assert run.step == f"forward:{node}:booting"
        rec = await ops.resume(fleet, home, engine, ep, rid, settings=slow)
        assert rec.status is RolloutStatus.succeeded, ops.status(engine, rid)
        assert [e["node"] for e in ledger.events(rid, kind="reimage_observed")] == [node]
        resets = [e for e in (await get_json(f"{url}/sim/events?node={node}&kind=reset"))["events"]
                  if e.get("operation") == rid]
        assert len(resets) == 1, resets  # reset once, before the interruption; watched after it
        assert (await violations(url))["total"] == 0

    run_world(tmp_path, monkeypatch, body)
