"""The simulator's train rules over real HTTP (``edgefleet.sim.oracle_trains``: ``stage_order`` and
``release_state``): a train declared through ``/sim/oracle/train`` (with the helper the train tests
use), reimages sent to the simulated BMCs' Redfish endpoints and resets to its Talos API, each rule
firing when provoked and silent on a correct sequence."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet.sim.build import build_sim
from edgefleet.sim.scenario import parse_scenario
from edgefleet.sim.server import running_server
from edgefleet.sim.talos_serve import running_talos_api
from edgefleet.talos.api import client_for
from edgefleet.talos.certs import TalosRole
from edgefleet.talos.inband import reimage_in_band
from edgefleet.trains.model import StagePolicy, StageSpec, TrainSpec
from tests.contract.rollout_world import assert_oracle_clean, declare_spec, declare_train
from tests.contract.test_inband_reimage import Rig as InBandRig
from tests.contract.test_inband_reimage import World, world
from tests.contract.test_inband_reimage import run as run_in_band
from tests.contract.test_sim_server import PASSWORD, PASSWORD_ENV, Artifacts, Rig, artifacts, run

pytestmark = pytest.mark.clock  # seed tokens meet the real clock
__all__ = ["artifacts", "world"]  # the module-scoped fixtures, shared with test_sim_server and test_inband_reimage

RELEASE = "r2026.11"  # what the artifacts' release image installs
SOAK_S = 1800


async def eject(rig: Rig, node: str) -> None:
    """End a reimage as the engine does: both media out (the store is settled again)."""
    for slot in ("Cd", "Usb"):
        r = await rig.client.post(f"{rig.bmc(node)}/Managers/1/VirtualMedia/{slot}/Actions/VirtualMedia.EjectMedia",
                                  json={})
        assert r.status_code == 204, r.text


async def reimaged(rig: Rig, node: str, *, seed: str | None = None) -> None:
    """Reimage ``node`` from the release image, wait for its boot, eject its media."""
    await rig.reimage(node, seed=seed)

    async def booted() -> bool:
        state = (await rig.client.get(f"{rig.sim_url}/sim/state", params={"node": node})).json()["nodes"][node]
        return not state["booting"] and state["power"] == "On" and state["release"] == RELEASE

    await rig.wait(booted)
    await eject(rig, node)


async def reset(rig: Rig, node: str) -> None:
    r = await rig.client.post(f"{rig.bmc(node)}/Systems/1/Actions/ComputerSystem.Reset",
                              json={"ResetType": "ForceRestart"})
    assert r.status_code == 204, r.text


async def now(rig: Rig) -> datetime:
    return datetime.fromisoformat((await rig.client.get(f"{rig.sim_url}/sim/clock")).json()["now"])


async def jump(rig: Rig, to: datetime) -> None:
    r = await rig.client.post(f"{rig.sim_url}/sim/clock", json={"now": to.isoformat()})
    assert r.status_code == 200, r.text


async def violations(rig: Rig) -> dict[str, Any]:
    return await rig.violations()


# --- stage order ------------------------------------------------------------------------------------

def test_stage_order_catches_a_later_stage_touched_before_the_gate(artifacts: Artifacts) -> None:
    async def body(rig: Rig) -> None:
        await declare_train(rig.sim_url, RELEASE, [["dk-0002"], ["dk-0001"]], SOAK_S)
        await rig.reimage("dk-0001-n1")  # stage 2 before anything of the canary stage
        v = await violations(rig)
        assert v["by_rule"] == {"stage_order": 4}, v  # both inserts, the boot override and the reset
        first = v["violations"][0]
        assert first["store"] == "dk-0001" and first["node"] == "dk-0001-n1" and first["operation"] == "op-1"
        assert first["detail"].startswith("InsertMedia Cd on dk-0001-n1 at ")
        assert ("store dk-0001 is in stage stage1 of the r2026.11 train, but stage canary has not passed: dk-0002 "
                "not Ready on r2026.11") in first["detail"]

    run(artifacts, body, scenario={"boot_seconds": 5})


def test_stage_order_waits_for_every_store_and_the_soak(artifacts: Artifacts) -> None:
    """A correct sequence is silent: the canary stage reimaged and settled, its soak over, then the
    next stage. Before the soak ends (and while a canary is still mid-reimage) the same request is a
    violation."""

    async def body(rig: Rig) -> None:
        oracle = await declare_train(rig.sim_url, RELEASE, [["dk-0002"], ["dk-0001"]], SOAK_S,
                                     names=["canary", "ring1"])
        assert oracle["enforced"] and oracle["trains"][0]["stages"][0]["waiting"] == \
            "dk-0002 not Ready on r2026.11 (the stage may have 0 such stores)"
        await rig.reimage("dk-0002-n1")
        await reset(rig, "dk-0001-n3")  # the canary is mid-reimage: too early
        v = await violations(rig)
        assert v["by_rule"] == {"stage_order": 1} and "dk-0002 still being reimaged" in v["violations"][0]["detail"]

        async def up() -> bool:
            return await rig.is_ready("dk-0002", "dk-0002-n1")

        await rig.wait(up)
        await eject(rig, "dk-0002-n1")
        came_up = await now(rig)
        await reset(rig, "dk-0001-n3")  # settled and Ready, but soaking
        v = await violations(rig)
        assert v["by_rule"] == {"stage_order": 2}, v
        assert "its soak runs until " in v["violations"][1]["detail"]
        soak_end = datetime.fromisoformat(v["violations"][1]["detail"].split("its soak runs until ")[1].split(" ")[0])
        assert timedelta(seconds=SOAK_S - 60) < soak_end - came_up <= timedelta(seconds=SOAK_S)

        await jump(rig, soak_end + timedelta(seconds=1))
        await rig.wait(lambda: rig.is_ready("dk-0001", "dk-0001-n3"))
        await reimaged(rig, "dk-0001-n1")  # stage ring1 after the gate and the soak: silent
        assert (await violations(rig))["total"] == 2
        oracle = (await rig.client.get(f"{rig.sim_url}/sim/oracle")).json()
        assert oracle["trains"][0]["stages"][0]["passed_at"] == soak_end.isoformat()
        # derived: the canary stage passed, so the release is stable from then on
        assert oracle["releases"][RELEASE] == [{"since": soak_end.isoformat(), "stable": True,
                                                "how": "its train's stage canary passed"}]

    run(artifacts, body, scenario={"boot_seconds": 5})


def test_stage_order_failure_budget_and_a_rolled_back_canary_stage(artifacts: Artifacts) -> None:
    """A stage passes with at most its failure budget of stores off the release; once passed it
    stays passed (a rollback of its stores later does not make the next stage's requests
    violations)."""

    async def body(rig: Rig) -> None:
        await declare_train(rig.sim_url, RELEASE, [["dk-0002", "no-0001"], ["dk-0001"]], 0, budgets=[1, 0])
        await reimaged(rig, "dk-0002-n1")  # no-0001 stays on the initial release: within the budget of 1
        await rig.wait(lambda: rig.is_ready("dk-0002", "dk-0002-n1"))
        await reset(rig, "dk-0001-n3")
        await rig.wait(lambda: rig.is_ready("dk-0001", "dk-0001-n3"))
        await reset(rig, "dk-0002-n1")  # a canary reboots: the stage had passed already
        await reset(rig, "dk-0001-n2")
        await assert_oracle_clean(rig.sim_url)

    run(artifacts, body, scenario={"boot_seconds": 0.3})

    async def over_budget(rig: Rig) -> None:
        await declare_train(rig.sim_url, RELEASE, [["dk-0002", "no-0001"], ["dk-0001"]], 0)
        await reimaged(rig, "dk-0002-n1")
        await reset(rig, "dk-0001-n3")
        v = await violations(rig)
        assert v["by_rule"] == {"stage_order": 1}, v
        assert "no-0001 not Ready on r2026.11 (the stage may have 0 such stores)" in v["violations"][0]["detail"]

    run(artifacts, over_budget, scenario={"boot_seconds": 0.3})


def test_declaring_a_train_is_checked(artifacts: Artifacts) -> None:
    async def body(rig: Rig) -> None:
        post = rig.client.post
        url = f"{rig.sim_url}/sim/oracle/train"
        cases = [
            ({"release": RELEASE, "stages": [["dk-0002"], ["nowhere"]]}, "stages[1] names stores the simulator "
                                                                        "does not have: nowhere"),
            ({"release": RELEASE, "stages": [["dk-0002"], ["dk-0002"]]}, "store dk-0002 is in two stages"),
            ({"release": RELEASE, "stages": []}, "stages must be a non-empty list"),
            ({"release": RELEASE, "stages": [["dk-0002"]], "soak_s": -1}, "soak_s must be a number of seconds"),
            ({"release": RELEASE, "stages": [{"stores": ["dk-0002"], "failure_budget": "200%"}]}, "200%"),
            ({"stages": [["dk-0002"]]}, "release must be a release name"),
        ]
        for data, said in cases:
            r = await post(url, json=data)
            assert r.status_code == 400 and said in r.json()["error"], (data, r.text)
        r = await post(f"{rig.sim_url}/sim/oracle/release", json={"release": RELEASE, "state": "golden"})
        assert r.status_code == 400 and "not one of built, canary, stable, revoked" in r.json()["error"]
        r = await post(url, content=b"{not json")
        assert r.status_code == 400
        assert not (await rig.client.get(f"{rig.sim_url}/sim/oracle")).json()["enforced"]

    run(artifacts, body)


# --- release state -----------------------------------------------------------------------------------

def test_release_state_catches_a_non_stable_release_outside_the_canaries(artifacts: Artifacts) -> None:
    async def body(rig: Rig) -> None:
        # Nothing told yet: any release goes anywhere (plain rollouts without trains).
        await reimaged(rig, "no-0001-n4", seed="dk-0001-n1")
        assert (await violations(rig))["total"] == 0
        r = await rig.client.post(f"{rig.sim_url}/sim/oracle/release", json={"release": RELEASE, "state": "canary"})
        assert r.status_code == 200 and r.json()["enforced"]
        await reimaged(rig, "no-0001-n4", seed="dk-0001-n1")
        v = await violations(rig)
        assert v["by_rule"] == {"release_state": 1}, v
        assert v["violations"][0]["node"] == "no-0001-n4"
        assert v["violations"][0]["detail"].startswith("no-0001-n4 came up on release r2026.11, which was not stable "
                                                       "when it was reimaged at ")
        assert "not stable since " in v["violations"][0]["detail"] and "told canary" in v["violations"][0]["detail"]
        # Told stable: the same reimage is fine; revoked: a violation again.
        await rig.client.post(f"{rig.sim_url}/sim/oracle/release", json={"release": RELEASE, "state": "stable"})
        await reimaged(rig, "no-0001-n4", seed="dk-0001-n1")
        assert (await violations(rig))["total"] == 1
        await rig.client.post(f"{rig.sim_url}/sim/oracle/release", json={"release": RELEASE, "state": "revoked"})
        await reimaged(rig, "no-0001-n4", seed="dk-0001-n1")
        assert (await violations(rig))["by_rule"] == {"release_state": 2}
        # A reboot from disk installs nothing: never a release_state violation.
        await reset(rig, "no-0001-n4")
        await asyncio.sleep(0.5)
        assert (await violations(rig))["total"] == 2

    run(artifacts, body)


def test_release_state_allows_the_canary_stage_and_derives_stable(artifacts: Artifacts) -> None:
    """A train's canary stage may take its release before it is stable; a store outside it may
    not, until the canary stage passed (the release is stable from then on, derived)."""

    async def body(rig: Rig) -> None:
        await declare_train(rig.sim_url, RELEASE, [["dk-0002"], ["dk-0001"]], SOAK_S)
        await reimaged(rig, "dk-0002-n1")  # the canary stage: fine
        await reimaged(rig, "no-0001-n4", seed="dk-0001-n1")  # in no stage, before the canary stage passed
        v = await violations(rig)
        assert v["by_rule"] == {"release_state": 1}, v
        assert "no train of it passed its canary stage" in v["violations"][0]["detail"]
        await jump(rig, await now(rig) + timedelta(seconds=SOAK_S + 1))
        await reimaged(rig, "no-0001-n4", seed="dk-0001-n1")
        await reimaged(rig, "dk-0001-n1")
        assert (await violations(rig))["by_rule"] == {"release_state": 1}

    run(artifacts, body)


def test_release_state_allows_inventory_canaries(tmp_path: Path, artifacts: Artifacts) -> None:
    """A store marked ``canary: true`` in the inventory takes a release that is not stable yet, as
    the release reach rule allows."""
    fleet = artifacts.fleet.model_copy(update={"stores": {
        sid: s.model_copy(update={"canary": sid == "no-0001"}) for sid, s in artifacts.fleet.stores.items()}})

    async def body(rig: Rig) -> None:
        await rig.client.post(f"{rig.sim_url}/sim/oracle/release", json={"release": RELEASE, "state": "built"})
        await reimaged(rig, "no-0001-n4", seed="dk-0001-n1")
        await assert_oracle_clean(rig.sim_url)
        await reimaged(rig, "dk-0002-n1")
        assert (await violations(rig))["by_rule"] == {"release_state": 1}

    run(Artifacts(fleet, artifacts.home, artifacts.root, artifacts.secrets), body)


# --- through the Talos API ---------------------------------------------------------------------------

def test_stage_order_catches_a_talos_api_reset(artifacts: Artifacts, tmp_path: Path) -> None:
    """A Talos API Reset of a later stage's node is a disruptive step like a BMC reset."""

    async def main() -> None:
        sim = build_sim(artifacts.fleet, scenario=parse_scenario({"boot_seconds": 0.3}), time_scale=1.0,
                        clock=datetime.fromisoformat("2026-11-03T22:30:00+00:00"), home=artifacts.home,
                        environ={PASSWORD_ENV: PASSWORD})
        async with running_talos_api(sim, ca_out=tmp_path / "talos-ca.pem") as api, \
                running_server(sim, talos={"endpoint": api.endpoint, "ca_pem": api.ca_pem.decode()}) as url:
            await declare_spec(url, _spec(), {"dk-0002": 0, "dk-0001": 1})
            store = artifacts.fleet.store("dk-0001")
            async with client_for(artifacts.home, store, store.nodes[2], TalosRole.admin, endpoint=api.endpoint,
                                  ca_pem=api.ca_pem, server_name="127.0.0.1", timeout_s=5.0) as talos:
                await talos.reset(graceful=False, reboot=True, wipe_labels=("EPHEMERAL",), node="dk-0001-n3")
            v = sim.violations
            assert [x.rule for x in v] == ["stage_order"], v
            assert v[0].node == "dk-0001-n3" and "stage canary has not passed" in v[0].detail

    asyncio.run(main())


def _spec() -> TrainSpec:
    return TrainSpec(release=RELEASE, stages=(
        StageSpec("canary", "canary", StagePolicy(soak=timedelta(hours=24), failure_budget=0)),
        StageSpec("ring1", "ring1", StagePolicy(soak=timedelta(hours=24)))))


def test_release_state_catches_an_in_band_reimage_onto_a_release_not_stable(world: World) -> None:
    """A store without BMCs reimaged through the Talos API comes up on the release its network seed
    names: outside the canary stage that release must be stable; inside it, it may be a canary."""

    async def reimage(r: InBandRig, name: str) -> None:
        r.sim.net_seed_urls[name] = r.seed_url(name)
        _, node = r.node(name)
        async with r.client(name) as c:
            await reimage_in_band(c, node, seed_url=r.sim.net_seed_urls[name], deadline_s=20)
        await r.until(f"{name} on r2", lambda: r.sim.nodes[name].joined and r.sim.nodes[name].release == "r2")

    async def body(r: InBandRig) -> None:
        async with httpx.AsyncClient(trust_env=False, timeout=10) as c:
            got = await c.post(f"{r.url}/sim/oracle/release", json={"release": "r2", "state": "canary"})
            assert got.status_code == 200, got.text
        await reimage(r, "two-n2")
        assert [(v.node, v.rule) for v in r.sim.violations] == [("two-n2", "release_state")], r.sim.violations
        await declare_train(r.url, "r2", [["two"], ["one"]], 3600)  # now "two" is r2's canary stage
        await reimage(r, "two-n3")
        assert len(r.sim.violations) == 1, r.sim.violations

    run_in_band(world, body)

