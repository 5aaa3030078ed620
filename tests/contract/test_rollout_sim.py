"""The rollout engine end to end against the fleet simulator on 127.0.0.1: real Redfish over HTTP,
the simulated Talos API over mutual TLS, the real seed server, real release images built by the
real Packer template and real NoCloud seeds. Boots are time-scaled so the story takes seconds:

provision five stores on v1 (one-node stores need their Talos bootstrap), roll v2 out as canary +
waves while one worker never becomes Ready (its store is rolled back automatically and the wave
budget holds), a second operation on a locked store is refused naming the holder, then v2 is
rolled back across the fleet. A second world: a rollout cancelled mid-flight and resumed, an
unreachable canary that pauses the rollout until a person approves, and an abort while running.
An IPv6-only world: the sample inventory's Vietnamese stores (vn-001 on IPv4, vn-002 IPv6-only).
A third world mixes a store with BMCs and two without (``wipe_method: talos-api``), reimaged in
band through the Talos API and network seeds: provisioned, rolled out and rolled back.
After each step: the simulator's oracle reports zero safety violations and the ledger agrees with
what the simulator observed.
"""

from __future__ import annotations

import asyncio
import shutil
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet.inventory.load import load_fleet
from edgefleet.inventory.model import Fleet
from edgefleet.releases.build import ReleaseSpec, build_release
from edgefleet.releases.catalog import ReleaseCatalog, ReleaseState
from edgefleet.releases.upstream import write_fake_upstream
from edgefleet.rollout import operations as ops
from edgefleet.rollout.endpoints import Endpoints
from edgefleet.rollout.executor import NETSEED_EXPIRES, SEED_KEY_FILE, EngineSettings, nocloud_urls
from edgefleet.rollout.ledger import Ledger, RolloutStatus, RunStatus
from edgefleet.rollout.plan import RolloutPolicy
from tests.contract.rollout_world import (
    PASSWORD,
    PASSWORD_ENV,
    get_json,
    ledger_matches_sim,
    make_inventory,
    make_mixed_inventory,
    release_home,
    running_world,
)
from tests.helpers import SAMPLE_INVENTORY, make_stable, require_tool

pytestmark = pytest.mark.slow

START = datetime(2026, 11, 3, 21, 30, tzinfo=UTC)  # Tuesday 22:30 in Copenhagen/Oslo: inside 22:00-05:00
SETTINGS = EngineSettings(node_ready_timeout_s=4.0, quorum_timeout_s=10.0, store_gate_timeout_s=6.0,
                          window_wait_max_s=5.0, poll_s=0.05, heartbeat_s=0.5, power_deadline_s=5.0)


@dataclass
class World:
    fleet: Fleet
    home: Path
    url: str


async def _violations(url: str) -> dict[str, Any]:
    data: dict[str, Any] = await get_json(f"{url}/sim/violations")
    return data


def run_world(tmp: Path, body: Callable[[World, Endpoints, Any], Awaitable[None]], monkeypatch: pytest.MonkeyPatch,
              *, scale: float = 600.0, inventory: Callable[[Path], Fleet] = make_inventory,
              clock: datetime = START) -> None:
    require_tool(shutil.which("packer"), "packer (Debian package `packer`)")
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    fleet = inventory(tmp / "inventory")
    home, engine = release_home(tmp, ["v1", "v2", "v3"])

    async def main() -> None:
        async with running_world(fleet, home, boot_seconds=60, time_scale=scale, clock=clock,
                                 ca_out=tmp / "talos-ca.pem") as (url, endpoints):
            assert endpoints.talos is not None and endpoints.talos_enabled
            await asyncio.wait_for(body(World(fleet, home, url), endpoints, engine), 150)

    try:
        asyncio.run(main())
    finally:
        engine.dispose()


def test_provision_rollout_with_automatic_rollback_locks_and_fleet_rollback(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(w: World, ep: Endpoints, engine: Any) -> None:
        ledger = Ledger(engine)
        now = ep.clock
        # 1. provision every store on v1
        created = [ops.create_provision(w.fleet, engine, w.home, sid, "v1", now(), settings=SETTINGS,
                                        operator="test") for sid in sorted(w.fleet.stores)]
        recs = await asyncio.gather(*(ops.run(w.fleet, w.home, engine, ep, c.record.id, settings=SETTINGS)
                                      for c in created))
        for r in recs:
            assert r.status is RolloutStatus.succeeded, ops.status(engine, r.id)
        assert (await _violations(w.url))["total"] == 0
        boots = (await get_json(f"{w.url}/sim/events?kind=talos_bootstrap"))["events"]
        # one-node stores lose their only etcd member on reimage: exactly one Bootstrap each
        assert sorted(e["store"] for e in boots) == ["dk-0002", "dk-0003", "no-0002"]
        assert {s: c for s, (c, _l) in ledger.store_releases().items()} == {s: "v1" for s in w.fleet.stores}
        await ledger_matches_sim(w.url, ledger, w.fleet)

        # 2. v2 as canary + waves; one worker of no-0001 never becomes Ready
        async with httpx.AsyncClient(trust_env=False) as c:
            resp = await c.post(f"{w.url}/sim/scenario", json={"never_ready": ["no-0001-n4"]})
            assert resp.status_code == 200, resp.text
        policy = RolloutPolicy(canary=["dk-0002"], waves=(2, "100%"), failure_budget=1, max_concurrent=3,
                               node_duration=timedelta(minutes=10), wave_soak=timedelta(minutes=20))
        made = ops.create_rollout(w.fleet, engine, "v2", policy, now(), settings=SETTINGS, operator="test")
        assert made.plan is not None
        assert [s.store_id for s in made.plan.waves[0].stores] == ["dk-0002"]
        assert [len(wv.stores) for wv in made.plan.waves] == [1, 2, 2]
        rec = await ops.run(w.fleet, w.home, engine, ep, made.record.id, settings=settings_of(policy))
        st = ops.status(engine, rec.id)
        runs = {s["store"]: s for s in st["stores"]}
        assert runs["no-0001"]["status"] == RunStatus.rolled_back.value, runs["no-0001"]
        assert "no-0001-n4" in runs["no-0001"]["reason"]
        assert all(runs[s]["status"] == "succeeded" for s in runs if s != "no-0001"), runs
        assert rec.status is RolloutStatus.succeeded, st
        assert all(wv["status"] == "passed" for wv in st["waves"]), st["waves"]
        assert any(wv["failures"] == 1 and wv["budget"] == 1 for wv in st["waves"])
        assert (await _violations(w.url))["total"] == 0
        await ledger_matches_sim(w.url, ledger, w.fleet)
        by_wave = {wv: [r for r in ledger.runs(rec.id) if r.wave == wv] for wv in (0, 1, 2)}
        for wv in (1, 2):  # each wave starts after the previous one ended plus the soak
            prev_end = max(r.ended_at for r in by_wave[wv - 1] if r.ended_at)
            first = min(r.started_at for r in by_wave[wv] if r.started_at)
            assert first - prev_end >= timedelta(minutes=20), (wv, prev_end, first)
        assert len(ledger.events(rec.id, kind="wave_soak")) == 2
        kinds = [e["kind"] for e in ledger.events(rec.id, store="no-0001")]
        assert "store_gate_failed" in kinds and "store_rolled_back" in kinds

        # 3. a second operation on a locked store is refused, naming the holder, and touches nothing
        ledger.acquire_lock("dk-0002", "ro-someone-else", now())
        blocked = ops.create_provision(w.fleet, engine, w.home, "dk-0002", "v1", now(), settings=SETTINGS)
        out = await ops.run(w.fleet, w.home, engine, ep, blocked.record.id, settings=SETTINGS)
        run = ledger.runs(out.id)[0]
        assert run.status is RunStatus.refused and "ro-someone-else" in run.reason
        assert out.status is RolloutStatus.failed
        touched = (await get_json(f"{w.url}/sim/events?limit=100000"))["events"]
        assert not [e for e in touched if e["operation"] == out.id]
        assert ledger.release_lock("dk-0002", "ro-someone-else")

        # 4. roll v2 back across the fleet: revoked, every store on it back to v1
        rb = ops.create_rollback(w.fleet, engine, "v2", now(), reason="test: bad release", policy=policy,
                                 settings=SETTINGS, operator="test")
        assert ReleaseCatalog(engine).get("v2").state is ReleaseState.revoked
        assert sorted(r.store for r in ledger.runs(rb.record.id)) == ["dk-0001", "dk-0002", "dk-0003", "no-0002"]
        rrec = await ops.run(w.fleet, w.home, engine, ep, rb.record.id, settings=settings_of(policy))
        assert rrec.status is RolloutStatus.succeeded, ops.status(engine, rrec.id)
        assert {s: c for s, (c, _l) in ledger.store_releases().items()} == {s: "v1" for s in w.fleet.stores}
        assert ledger.stores_on("v2") == []
        assert (await _violations(w.url))["total"] == 0
        await ledger_matches_sim(w.url, ledger, w.fleet)
        with pytest.raises(Exception, match="revoked"):
            ops.create_rollout(w.fleet, engine, "v2", policy, now())
        # nothing secret in the ledger
        dump = repr(ledger.events()) + repr([ops.status(engine, r.id) for r in ledger.rollouts(50)])
        assert PASSWORD not in dump and "PRIVATE KEY" not in dump and "http://" not in dump

    run_world(tmp_path, body, monkeypatch)


def settings_of(policy: RolloutPolicy) -> EngineSettings:
    return ops.settings_for(policy, SETTINGS)


def test_interrupted_rollout_resumes_to_completion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(w: World, ep: Endpoints, engine: Any) -> None:
        ledger = Ledger(engine)
        now = ep.clock
        for sid in sorted(w.fleet.stores):
            prov = ops.create_provision(w.fleet, engine, w.home, sid, "v1", now(), settings=SETTINGS)
            assert (await ops.run(w.fleet, w.home, engine, ep, prov.record.id, settings=SETTINGS)).status \
                is RolloutStatus.succeeded
        policy = RolloutPolicy(canary=0, waves=("100%",), failure_budget=0, max_concurrent=5,
                               node_duration=timedelta(minutes=10), wave_soak=timedelta(0))
        made = ops.create_rollout(w.fleet, engine, "v3", policy, now(), settings=SETTINGS)
        task = asyncio.create_task(ops.run(w.fleet, w.home, engine, ep, made.record.id,
                                           settings=settings_of(policy)))
        # interrupt once some node of the 3-control-plane store is mid-reimage
        for _ in range(400):
            await asyncio.sleep(0.02)
            if any(e["kind"] == "reimage_booting" for e in ledger.events(made.record.id, store="no-0001")):
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        mid = ledger.rollout(made.record.id)
        assert mid.status is RolloutStatus.running  # the ledger still says what was going on
        assert any(r.status is RunStatus.running for r in ledger.runs(mid.id))
        rec = await ops.resume(w.fleet, w.home, engine, ep, mid.id, settings=settings_of(policy))
        assert rec.status is RolloutStatus.succeeded, ops.status(engine, rec.id)
        assert {s: c for s, (c, _l) in ledger.store_releases().items()} == {s: "v3" for s in w.fleet.stores}
        assert (await _violations(w.url))["total"] == 0
        await ledger_matches_sim(w.url, ledger, w.fleet)
        with pytest.raises(Exception, match="succeeded"):
            await ops.resume(w.fleet, w.home, engine, ep, mid.id)

        # An unreachable canary (BMCs and API answer 503) is inconclusive, not a verdict on the
        # release: the rollout pauses for a person, who approves; the next wave then runs.
        async with httpx.AsyncClient(trust_env=False) as c:
            resp = await c.post(f"{w.url}/sim/scenario", json={"offline_stores": ["no-0002"]})
            assert resp.status_code == 200, resp.text
        policy = RolloutPolicy(canary=["no-0002"], waves=("100%",), failure_budget=0, max_concurrent=5,
                               node_duration=timedelta(minutes=10), wave_soak=timedelta(0))
        made = ops.create_rollout(w.fleet, engine, "v2", policy, now(), settings=SETTINGS)
        fast = EngineSettings(**{**settings_of(policy).__dict__, "bmc_attempts": 2, "bmc_backoff_s": 0.05})
        paused = await ops.run(w.fleet, w.home, engine, ep, made.record.id, settings=fast)
        assert paused.status is RolloutStatus.paused, ops.status(engine, paused.id)
        assert "inconclusive" in paused.reason
        assert [r.status for r in ledger.runs(paused.id) if r.wave == 1] == [RunStatus.pending] * 4
        with pytest.raises(Exception, match="--approve or --reject"):
            await ops.resume(w.fleet, w.home, engine, ep, paused.id, settings=fast)
        done = await ops.resume(w.fleet, w.home, engine, ep, paused.id, decision="approve", settings=fast)
        st = ops.status(engine, done.id)
        assert [wv["status"] for wv in st["waves"]] == ["passed", "passed"], st["waves"]
        assert done.status is RolloutStatus.failed  # the offline store is left failed, for a person to see
        assert {r.store: r.status for r in ledger.runs(done.id)} == {
            "no-0002": RunStatus.failed, **{s: RunStatus.succeeded for s in w.fleet.stores if s != "no-0002"}}
        assert (await _violations(w.url))["total"] == 0
        await ledger_matches_sim(w.url, ledger, w.fleet)

        # Abort while running: the executor notices (heartbeat), finishes the node under way and
        # starts no further store.
        async with httpx.AsyncClient(trust_env=False) as c:
            resp = await c.post(f"{w.url}/sim/scenario", json={"offline_stores": []})
            assert resp.status_code == 200, resp.text
        policy = RolloutPolicy(canary=0, waves=(1,), failure_budget=0, max_concurrent=1,
                               node_duration=timedelta(minutes=10), wave_soak=timedelta(0))
        made = ops.create_rollout(w.fleet, engine, "v1", policy, now(), settings=SETTINGS)
        task = asyncio.create_task(ops.run(w.fleet, w.home, engine, ep, made.record.id,
                                           settings=settings_of(policy)))
        for _ in range(400):
            await asyncio.sleep(0.02)
            if ledger.events(made.record.id, kind="reimage_booting"):
                break
        assert ops.abort(engine, made.record.id, now()).status is RolloutStatus.running  # live: it only asks
        aborted = await task
        assert aborted.status is RolloutStatus.aborted
        final = ledger.runs(aborted.id)
        assert not [r for r in final if r.status in (RunStatus.pending, RunStatus.running)]
        assert sum(r.status is RunStatus.skipped for r in final) >= len(final) - 2
        # A store stopped mid-way is recorded as found: split (and still locked, for its repair) when
        # its nodes run different releases, else failed on the one release they run.
        split = sorted(r.store for r in final if r.status is RunStatus.split_)
        assert sorted(ledger.locks_held_by(aborted.id)) == split
        assert (await _violations(w.url))["total"] == 0
        await ledger_matches_sim(w.url, ledger, w.fleet)
        if split:  # the repair a person starts: back to the store's previous release
            repaired = await ops.resume(w.fleet, w.home, engine, ep, aborted.id, settings=settings_of(policy))
            assert {r.store: r.status for r in ledger.runs(repaired.id) if r.store in split} == {
                s: RunStatus.rolled_back for s in split}, ops.status(engine, repaired.id)
            assert ledger.locks_held_by(aborted.id) == []
            await ledger_matches_sim(w.url, ledger, w.fleet)
        media = {n: v["media"] for n, v in (await get_json(f"{w.url}/sim/state"))["nodes"].items()}
        assert not any(media.values()), media  # no node left with media inserted

        # Hooks (real ansible-runner, connection: local): the pre hook runs before each store, a
        # post hook that fails for one store fails its gate and the store is rolled back.
        pre, post = w.home / "pre.yml", w.home / "post.yml"
        pre.write_text("- hosts: all\n  gather_facts: false\n  tasks:\n    - copy:\n"
                       "        content: \"{{ edgefleet_hook_release }}\"\n"
                       "        dest: \"{{ marker_dir }}/{{ edgefleet_hook_store }}\"\n"
                       "      run_once: true\n  vars:\n    marker_dir: " + str(w.home) + "\n")
        post.write_text("- hosts: all\n  gather_facts: false\n  tasks:\n    - assert:\n        that: "
                        "[edgefleet_hook_store != 'dk-0002']\n        fail_msg: the point of sale refuses\n")
        before = {s: c for s, (c, _l) in ledger.store_releases(["dk-0002", "dk-0003"]).items()}
        policy = RolloutPolicy(canary=0, waves=("100%",), failure_budget=1, max_concurrent=2,
                               node_duration=timedelta(minutes=10), wave_soak=timedelta(0))
        hooked = EngineSettings(**{**settings_of(policy).__dict__, "pre_hook": str(pre), "post_hook": str(post)})
        made = ops.create_rollout(w.fleet, engine, "v3", policy, now(), settings=hooked,
                                  stores=["dk-0002", "dk-0003"])
        rec = await ops.run(w.fleet, w.home, engine, ep, made.record.id, settings=hooked)
        runs = {r.store: r for r in ledger.runs(rec.id)}
        assert runs["dk-0003"].status is RunStatus.succeeded, runs
        assert runs["dk-0002"].status is RunStatus.rolled_back and "the point of sale refuses" in runs["dk-0002"].reason
        assert (w.home / "dk-0002").read_text() == (w.home / "dk-0003").read_text() == "v3"
        assert ledger.store_releases(["dk-0002"])["dk-0002"][0] == before["dk-0002"]
        assert (await _violations(w.url))["total"] == 0
        await ledger_matches_sim(w.url, ledger, w.fleet)

    run_world(tmp_path, body, monkeypatch)


def test_stores_without_bmc_are_provisioned_rolled_out_and_back_in_band(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    in_band = {"dk-0101-n1", "dk-0102-n1", "dk-0102-n2", "dk-0102-n3"}

    async def sim_events(w: World, kind: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = (await get_json(f"{w.url}/sim/events?kind={kind}&limit=100000"))["events"]
        return events

    async def check(w: World, engine: Any, rid: str, release: str, resets_before: int) -> int:
        ledger = Ledger(engine)
        rec = ledger.rollout(rid)
        assert rec.status is RolloutStatus.succeeded, ops.status(engine, rid)
        assert {s: c for s, (c, _l) in ledger.store_releases().items()} == {s: release for s in w.fleet.stores}
        assert (await _violations(w.url))["total"] == 0, await _violations(w.url)
        await ledger_matches_sim(w.url, ledger, w.fleet)
        # the same steps as the BMC path, marked in band, and the Talos version checked afterwards
        booting = {e["node"]: e["detail"] for e in ledger.events(rid, kind="reimage_booting")}
        assert {n for n, d in booting.items() if d.get("method") == "talos-api"} == in_band, booting
        assert booting["dk-0001-n1"].get("method") is None and "boot_slot" in booting["dk-0001-n1"]
        assert booting["dk-0101-n1"]["needs_bootstrap"] and not booting["dk-0101-n1"]["graceful"]
        assert all(booting[n]["graceful"] and not booting[n]["needs_bootstrap"] for n in in_band - {"dk-0101-n1"})
        assert {e["node"] for e in ledger.events(rid, kind="talos_version_checked")} == in_band
        assert {e["node"] for e in ledger.events(rid, kind="node_done")} == in_band | {"dk-0001-n1"}
        # exactly one Bootstrap per one-node store; none for the store whose etcd kept quorum
        assert sorted(e["store"] for e in ledger.events(rid, kind="bootstrapped")) == ["dk-0001", "dk-0101"]
        # the simulator saw Talos API resets (wiping STATE and EPHEMERAL), no virtual media, and
        # each wiped node read its seed over the network and joined
        resets = await sim_events(w, "talos_reset")
        fresh = resets[resets_before:]
        assert sorted(e["node"] for e in fresh) == sorted(in_band), fresh
        assert all(e["detail"]["wipe"] == ["EPHEMERAL", "STATE"] for e in fresh)
        assert not [e for e in await sim_events(w, "insert") if e["node"] in in_band]
        reads = [e for e in await sim_events(w, "seed_read") if e["detail"].get("release") == release]
        assert {e["node"] for e in reads if e["detail"]["source"] == "network" and e["detail"]["joined"]} == in_band
        return len(resets)

    async def body(w: World, ep: Endpoints, engine: Any) -> None:
        ledger = Ledger(engine)
        now = ep.clock
        # 1. provision every store on v1 (the in-band stores' nodes run Talos already)
        created = [ops.create_provision(w.fleet, engine, w.home, sid, "v1", now(), settings=SETTINGS,
                                        operator="test") for sid in sorted(w.fleet.stores)]
        await asyncio.gather(*(ops.run(w.fleet, w.home, engine, ep, c.record.id, settings=SETTINGS)
                               for c in created))
        resets = 0
        for c in created:
            sid = ledger.runs(c.record.id)[0].store
            rec = ledger.rollout(c.record.id)
            assert rec.status is RolloutStatus.succeeded, ops.status(engine, rec.id)
            if sid != "dk-0001":
                assert {e["node"] for e in ledger.events(rec.id, kind="talos_version_checked")} == {
                    n.name for n in w.fleet.stores[sid].nodes}
        assert (await _violations(w.url))["total"] == 0
        assert sorted(e["store"] for e in await sim_events(w, "talos_bootstrap")) == ["dk-0001", "dk-0101"]
        resets = len(await sim_events(w, "talos_reset"))
        assert resets == 4
        await ledger_matches_sim(w.url, ledger, w.fleet)

        # 2. roll v2 out: the one-node in-band store as canary, then the rest
        policy = RolloutPolicy(canary=["dk-0101"], waves=("100%",), failure_budget=0, max_concurrent=3,
                               node_duration=timedelta(minutes=10), wave_soak=timedelta(0))
        made = ops.create_rollout(w.fleet, engine, "v2", policy, now(), settings=SETTINGS, operator="test")
        rec = await ops.run(w.fleet, w.home, engine, ep, made.record.id, settings=settings_of(policy))
        resets = await check(w, engine, rec.id, "v2", resets)
        # the three control planes went down one at a time, each after the previous one was back
        order = [e for e in ledger.events(rec.id, store="dk-0102") if e["kind"] in ("reimage_started", "node_done")]
        assert [e["kind"] for e in order] == ["reimage_started", "node_done"] * 3, order

        # 3. fleet rollback of v2: every store back on v1, in band where there is no BMC
        rb = ops.create_rollback(w.fleet, engine, "v2", now(), reason="test: bad release", policy=policy,
                                 settings=SETTINGS, operator="test")
        rrec = await ops.run(w.fleet, w.home, engine, ep, rb.record.id, settings=settings_of(policy))
        await check(w, engine, rrec.id, "v1", resets)
        assert ledger.stores_on("v2") == []

        # 4. a release whose installer image carries another Talos version: the in-band reset keeps
        # the boot partition, the node comes back on that version; its store fails with the reason
        # and is rolled back (in band too)
        up = w.home / "upstream-old.iso"
        build_release(ReleaseSpec(name="v9", talos_version="v1.12.6", upstream_iso=str(up),
                                  upstream_sha256=write_fake_upstream(up, "v1.12.6"),
                                  installer_image="ghcr.io/siderolabs/installer:v1.12.5",
                                  kernel_args=("talos.platform=nocloud",)), home=w.home, catalog=ReleaseCatalog(engine))
        make_stable(ReleaseCatalog(engine), "v9")
        made = ops.create_rollout(w.fleet, engine, "v9", policy, now(), settings=SETTINGS, stores=["dk-0101"])
        rec = await ops.run(w.fleet, w.home, engine, ep, made.record.id, settings=settings_of(policy))
        run = ledger.runs(rec.id)[0]
        assert run.status is RunStatus.rolled_back, run
        assert "came back on Talos v1.12.5, but release v9 is Talos v1.12.6" in run.reason, run.reason
        assert "ghcr.io/siderolabs/installer:v1.12.5" in run.reason
        assert [e["detail"] for e in ledger.events(rec.id, kind="talos_version_mismatch")] == [
            {"running": "v1.12.5", "release": "v1.12.6"}]
        assert ledger.store_releases(["dk-0101"])["dk-0101"][0] == "v1"
        assert (await get_json(f"{w.url}/sim/state"))["nodes"]["dk-0101-n1"]["talos_version"] == "v1.12.6"
        assert (await _violations(w.url))["total"] == 0
        await ledger_matches_sim(w.url, ledger, w.fleet)

        # 5. interrupted while an in-band node boots (slowly), then resumed: the node's seed is
        # served again by the new run (the old run's server is gone), and it is not wiped twice
        async with httpx.AsyncClient(trust_env=False) as http:
            resp = await http.post(f"{w.url}/sim/scenario", json={
                "boot_seconds": 60, "slow_boot": {"nodes": ["dk-0102-n1"], "factor": 20}})
            assert resp.status_code == 200, resp.text
        made = ops.create_rollout(w.fleet, engine, "v3", policy, now(), settings=SETTINGS, stores=["dk-0102"])
        task = asyncio.create_task(ops.run(w.fleet, w.home, engine, ep, made.record.id,
                                           settings=settings_of(policy)))
        for _ in range(400):
            await asyncio.sleep(0.02)
            if ledger.events(made.record.id, kind="reimage_booting"):
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ledger.runs(made.record.id)[0].step == "forward:dk-0102-n1:booting"
        resets = len(await sim_events(w, "talos_reset"))
        rec = await ops.resume(w.fleet, w.home, engine, ep, made.record.id, settings=settings_of(policy))
        assert rec.status is RolloutStatus.succeeded, ops.status(engine, rec.id)
        assert [e["node"] for e in ledger.events(rec.id, kind="reimage_resumed")] == ["dk-0102-n1"]
        assert sorted(e["node"] for e in (await sim_events(w, "talos_reset"))[resets:]) == ["dk-0102-n2",
                                                                                             "dk-0102-n3"]
        assert ledger.store_releases(["dk-0102"])["dk-0102"][0] == "v3"
        assert (await _violations(w.url))["total"] == 0
        await ledger_matches_sim(w.url, ledger, w.fleet)

        # the nodes' URLs stay valid across runs: a persistent 0600 key, a fixed expiry
        key = w.home / SEED_KEY_FILE
        assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
        store = w.fleet.stores["dk-0102"]
        urls = nocloud_urls(w.home, store, "https://seeds.example.net")
        assert urls == nocloud_urls(w.home, store, "https://seeds.example.net")
        assert all(u.startswith("https://seeds.example.net/") and f".{NETSEED_EXPIRES}." in u
                   and u.endswith(f"/nocloud/dk-0102/{n}/") for n, u in urls.items())
        # no token or URL in the ledger
        dump = repr(ledger.events()) + repr([ops.status(engine, r.id) for r in ledger.rollouts(50)])
        assert PASSWORD not in dump and "PRIVATE KEY" not in dump and "http://" not in dump

    run_world(tmp_path, body, monkeypatch, inventory=make_mixed_inventory)


def test_stores_whose_window_never_opens_leave_the_operation_failed_not_succeeded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside a freeze nothing is touched; an operation whose stores could not be done must not
    report success (a fleet rollback that rolled back nothing would otherwise look finished)."""

    async def body(w: World, ep: Endpoints, engine: Any) -> None:
        async with httpx.AsyncClient(trust_env=False) as c:  # into the Black Friday freeze
            resp = await c.post(f"{w.url}/sim/clock", json={"now": "2026-11-24T21:30:00+00:00"})
            assert resp.status_code == 200, resp.text
        await ep.resync()
        policy = RolloutPolicy(canary=0, waves=("100%",), failure_budget=0, max_concurrent=5,
                               node_duration=timedelta(minutes=10), wave_soak=timedelta(0))
        settings = EngineSettings(**{**settings_of(policy).__dict__, "window_wait_max_s": 1.0})
        made = ops.create_rollout(w.fleet, engine, "v2", policy, ep.clock(), settings=settings,
                                  stores=["dk-0002"])
        rec = await ops.run(w.fleet, w.home, engine, ep, made.record.id, settings=settings)
        assert rec.status is RolloutStatus.failed, rec
        assert "1 not done: its maintenance window did not open (dk-0002)" in rec.reason
        (run,) = Ledger(engine).runs(rec.id)
        assert run.status is RunStatus.skipped
        assert (await get_json(f"{w.url}/sim/events?kind=reset"))["events"] == []
        assert (await _violations(w.url))["total"] == 0
        await ledger_matches_sim(w.url, Ledger(engine), w.fleet)

    run_world(tmp_path, body, monkeypatch)


def _vietnam_sample(root: Path) -> Fleet:
    """The sample inventory's Vietnamese stores as they are (vn-002 is IPv6-only), only the BMC
    password's variable renamed to the one the simulator is given."""
    shutil.copytree(SAMPLE_INVENTORY, root, ignore=shutil.ignore_patterns("*.md"))
    for f in (root / "stores").glob("*.yml"):
        if f.name != "vn.yml":
            f.unlink()
    fleet_yml = root / "fleet.yml"
    fleet_yml.write_text(fleet_yml.read_text().replace("EDGEFLEET_BMC_PASSWORD", PASSWORD_ENV))
    return load_fleet(root)


def test_ipv6_only_sample_store_is_provisioned_and_rolled_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(w: World, ep: Endpoints, engine: Any) -> None:
        ledger = Ledger(engine)
        v6 = w.fleet.store("vn-002")
        assert v6.network.families == (6,) and all(n.ip.version == 6 for n in v6.nodes)
        created = [ops.create_provision(w.fleet, engine, w.home, sid, "v1", ep.clock(), settings=SETTINGS,
                                        operator="test") for sid in sorted(w.fleet.stores)]
        recs = await asyncio.gather(*(ops.run(w.fleet, w.home, engine, ep, c.record.id, settings=SETTINGS)
                                      for c in created))
        for r in recs:
            assert r.status is RolloutStatus.succeeded, ops.status(engine, r.id)
        made = ops.create_rollout(w.fleet, engine, "v2", RolloutPolicy(waves=("100%",)), ep.clock(),
                                  settings=SETTINGS, operator="test")
        rec = await ops.run(w.fleet, w.home, engine, ep, made.record.id, settings=SETTINGS)
        assert rec.status is RolloutStatus.succeeded, ops.status(engine, rec.id)
        assert {s: c for s, (c, _l) in ledger.store_releases().items()} == {"vn-001": "v2", "vn-002": "v2"}
        assert (await _violations(w.url))["total"] == 0, await _violations(w.url)
        await ledger_matches_sim(w.url, ledger, w.fleet)
        # each vn-002 node booted v2 from its seed (virtual media) and joined: the simulator joins a
        # node only when the seed's network-config carries the node's inventory address (IPv6 here)
        boots = (await get_json(f"{w.url}/sim/events?kind=boot_done&limit=100000"))["events"]
        joined = {e["node"] for e in boots if e["detail"].get("release") == "v2" and e["detail"].get("joined")}
        assert {n.name for n in v6.nodes} <= joined, boots[-6:]
        # its Kubernetes nodes report their IPv6 InternalIP
        nodes = await get_json(f"{w.url}/k8s/vn-002/api/v1/nodes")
        internal = {i["metadata"]["name"]: a["address"] for i in nodes["items"] for a in i["status"]["addresses"]
                    if a["type"] == "InternalIP"}
        assert internal == {n.name: str(n.ip) for n in v6.nodes}

    # Tuesday 22:30 in Ho Chi Minh City (UTC+7): inside the sample's 22:00-05:00 window.
    run_world(tmp_path, body, monkeypatch, inventory=_vietnam_sample, clock=datetime(2026, 11, 3, 15, 30, tzinfo=UTC))
