"""A release image altered after its build (same size, one byte changed: its sha256 no longer
matches the catalog) is refused by provision, rollout and rollback before a single BMC request,
counted by the fleet simulator (in process, 127.0.0.1); the error names the release and both
hashes. Through the CLI (``edgefleet provision`` / ``rollback --sim``, exit 1) and the operations
API. Once the file is restored, the refused rollback runs to completion from where it was."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edgefleet.errors import ArtifactError
from edgefleet.releases.catalog import ReleaseCatalog
from edgefleet.releases.upstream import sha256_file
from edgefleet.rollout import operations as ops
from edgefleet.rollout.endpoints import Endpoints
from edgefleet.rollout.executor import EngineSettings
from edgefleet.rollout.ledger import Ledger, RolloutStatus
from edgefleet.rollout.plan import RolloutPolicy
from tests.contract.rollout_world import (
    PASSWORD,
    PASSWORD_ENV,
    get_json,
    ledger_matches_sim,
    make_inventory,
    release_home,
    running_world,
)
from tests.helpers import REPO, require_tool
from tests.hygiene import dump_state, find_secrets, run_secrets

pytestmark = pytest.mark.slow

START = datetime(2026, 11, 3, 21, 30, tzinfo=UTC)  # inside the stores' 22:00-05:00 local window
SETTINGS = EngineSettings(node_ready_timeout_s=4.0, quorum_timeout_s=10.0, store_gate_timeout_s=6.0,
                          window_wait_max_s=5.0, poll_s=0.05, heartbeat_s=0.5, power_deadline_s=5.0)
POLICY = RolloutPolicy(canary=0, waves=("100%",), failure_budget=0, max_concurrent=5,
                       node_duration=timedelta(minutes=10), wave_soak=timedelta(0))


async def _bmc_requests(url: str) -> int:
    report = await get_json(f"{url}/sim/report")
    return sum(v for k, v in report["requests"].items() if k.startswith("bmc "))


outputs: list[str] = []


async def _cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "edgefleet"), *args, env=env, cwd=str(env["EDGEFLEET_HOME"]),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    outputs.append((out + err).decode())
    return proc.returncode, outputs[-1]


def test_an_altered_image_is_refused_before_any_bmc_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_tool(shutil.which("packer"), "packer (Debian package `packer`)")
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    fleet = make_inventory(tmp_path / "inventory")
    home, engine = release_home(tmp_path, ["v1", "v2"])
    v1 = ReleaseCatalog(engine).get("v1")
    good = v1.artifact_path.read_bytes()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env.update({"EDGEFLEET_HOME": str(home), "EDGEFLEET_INVENTORY": str(tmp_path / "inventory"),
                PASSWORD_ENV: PASSWORD, "COLUMNS": "400", "PYTHONPATH": str(REPO)})

    def refused(text: str) -> None:
        assert "release v1" in text and f"the catalog recorded {v1.sha256}" in text, text
        assert "was altered" in text and str(v1.artifact_path) in text.replace("\n", ""), text

    async def body(url: str, ep: Endpoints) -> None:
        ledger = Ledger(engine)
        # dk-0002 on v1, then on v2 (its last known-good release is v1)
        for made in (ops.create_provision(fleet, engine, home, "dk-0002", "v1", ep.clock(), settings=SETTINGS),
                     ops.create_rollout(fleet, engine, "v2", POLICY, ep.clock(), settings=SETTINGS,
                                        stores=["dk-0002"])):
            rec = await ops.run(fleet, home, engine, ep, made.record.id, settings=SETTINGS)
            assert rec.status is RolloutStatus.succeeded, ops.status(engine, rec.id)
        assert ledger.store_releases(["dk-0002"])["dk-0002"] == ("v2", "v1")

        # v1's image changes after its build: same size, one byte different
        bad = bytearray(good)
        bad[len(bad) // 2] ^= 0xFF
        v1.artifact_path.write_bytes(bytes(bad))
        assert sha256_file(v1.artifact_path) != v1.sha256 and len(bad) == v1.size
        before = await _bmc_requests(url)

        # provision (CLI): refused, exit 1
        code, text = await _cli(env, "provision", "dk-0003", "--release", "v1", "--sim", url, "--poll", "0.05")
        assert code == 1, text
        refused(text)
        # rollout (operations API): refused, nothing marked running
        made = ops.create_rollout(fleet, engine, "v1", POLICY, ep.clock(), settings=SETTINGS, stores=["dk-0001"])
        with pytest.raises(ArtifactError) as exc:
            await ops.run(fleet, home, engine, ep, made.record.id, settings=SETTINGS)
        refused(str(exc.value))
        assert ledger.rollout(made.record.id).status is RolloutStatus.planned
        # fleet rollback of v2 to v1 (CLI): refused, exit 1
        code, text = await _cli(env, "rollback", "--release", "v2", "--reason", "test", "--sim", url,
                                "--poll", "0.05", "--node-timeout", "4")
        assert code == 1, text
        refused(text)
        assert await _bmc_requests(url) == before  # not one BMC request
        events = ledger.events(kind="artifact_refused")
        assert len(events) == 3 and all(e["detail"] == {"release": "v1"} for e in events)
        assert {r.store for r in ledger.runs(made.record.id)} == {"dk-0001"}
        assert ledger.locks_held_by(made.record.id) == []
        sim_events = (await get_json(f"{url}/sim/events?limit=100000"))["events"]
        assert not [e for e in sim_events if e["operation"] in {e["rollout"] for e in events}]

        # the file restored, the refused rollback goes on from where it was: dk-0002 back on v1
        v1.artifact_path.write_bytes(good)
        rollback = next(r for r in ledger.rollouts(50) if r.kind.value == "rollback")
        rec = await ops.resume(fleet, home, engine, ep, rollback.id, settings=ops.settings_for(POLICY, SETTINGS))
        assert rec.status is RolloutStatus.succeeded, ops.status(engine, rec.id)
        assert ledger.store_releases(["dk-0002"])["dk-0002"][0] == "v1"
        assert await _bmc_requests(url) > before
        assert (await get_json(f"{url}/sim/violations"))["total"] == 0
        await ledger_matches_sim(url, ledger, fleet)
        assert find_secrets({"cli": "\n".join(outputs), **dump_state(engine)}, run_secrets(home, [PASSWORD])) == []

    async def main() -> None:
        async with running_world(fleet, home, boot_seconds=60, time_scale=300, clock=START,
                                 ca_out=tmp_path / "talos-ca.pem") as (url, ep):
            await asyncio.wait_for(body(url, ep), 150)

    try:
        asyncio.run(main())
    finally:
        engine.dispose()
