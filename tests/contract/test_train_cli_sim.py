"""``edgefleet train start`` and ``train run`` as a user runs them (separate processes) against the
fleet simulator on 127.0.0.1 with an accelerated clock: five stores provisioned on v1, a train of v2
in two stages (one store, then the rest) with a one-hour soak. ``train run`` prints one plain line
per change off a terminal, exits 0 when the train succeeded; afterwards every store is on v2, the
second stage started only after the first one's soak, the release is stable, ``train status``
says so and the simulator's oracle counts no violation."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edgefleet.releases.catalog import ReleaseCatalog, ReleaseState
from edgefleet.rollout import operations as ops
from edgefleet.rollout.executor import EngineSettings
from edgefleet.rollout.ledger import Ledger, RolloutStatus
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

pytestmark = pytest.mark.slow

START = datetime(2026, 11, 3, 21, 30, tzinfo=UTC)  # Tuesday 22:30 in Copenhagen/Oslo: inside 22:00-05:00
SETTINGS = EngineSettings(node_ready_timeout_s=4.0, quorum_timeout_s=10.0, store_gate_timeout_s=6.0,
                          window_wait_max_s=5.0, poll_s=0.05, heartbeat_s=0.5, power_deadline_s=5.0)
SCALE = 600.0  # one simulated hour in six seconds


async def _cli(home: Path, *args: str, timeout: float = 150) -> tuple[int, str, str]:
    env = {**os.environ, "EDGEFLEET_HOME": str(home), PASSWORD_ENV: PASSWORD, "PYTHONPATH": str(REPO),
           "COLUMNS": "200"}
    env.pop("EDGEFLEET_STATE_URL", None)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "edgefleet.cli", *args, env=env, cwd=REPO,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_train_start_and_run_from_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_tool(shutil.which("packer"), "packer (Debian package `packer`)")
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    inventory = tmp_path / "inventory"
    fleet = make_inventory(inventory)
    home, engine = release_home(tmp_path, ["v1", "v2"])
    inv = ["-i", str(inventory)]

    async def main() -> None:
        async with running_world(fleet, home, boot_seconds=60, time_scale=SCALE, clock=START,
                                 ca_out=tmp_path / "talos-ca.pem") as (url, ep):
            made = [ops.create_provision(fleet, engine, home, sid, "v1", ep.clock(), settings=SETTINGS,
                                         operator="test") for sid in sorted(fleet.stores)]
            for rec in await asyncio.gather(*(ops.run(fleet, home, engine, ep, c.record.id, settings=SETTINGS)
                                              for c in made)):
                assert rec.status is RolloutStatus.succeeded, ops.status(engine, rec.id)

            code, out, err = await _cli(home, "train", "start", "--release", "v2", "--stage", "first=dk-0002",
                                        "--stage", "rest=100%", "--soak", "1h", "--node-minutes", "5",
                                        "--node-timeout", "4", "--quorum-timeout", "10", "--gate-timeout", "6",
                                        "--sim", url, *inv, "--json")
            assert code == 0, out + err
            started = json.loads(out)
            tid = started["train"]["id"]
            assert [s["name"] for s in started["stages"]] == ["first", "rest"]

            code, out, err = await _cli(home, "train", "run", tid, "--sim", url, "--poll", "0.2", *inv)
            assert code == 0, out + err
            lines = out.splitlines()
            assert any(line.startswith("running: first running 0/1") for line in lines), out
            assert any("waiting: stage rest unlocks after the soak of stage first" in line for line in lines), out
            assert lines[-1].startswith(f"train {tid}: succeeded"), out
            assert len(lines) == len(set(lines)), "a line repeated: plain output prints changes only"

            code, out, err = await _cli(home, "train", "status", tid, "--sim", url, *inv, "--json")
            assert code == 0, out + err
            status: dict[str, Any] = json.loads(out)
            assert status["train"]["status"] == "succeeded"
            assert [(s["name"], s["status"]) for s in status["stages"]] == [("first", "passed"), ("rest", "passed")]
            assert status["counts"] == {"succeeded": len(fleet.stores)} and status["waiting"] == []

            ledger = Ledger(engine)
            assert {s: c for s, (c, _l) in ledger.store_releases().items()} == {s: "v2" for s in fleet.stores}
            assert ReleaseCatalog(engine).get("v2").state is ReleaseState.stable
            first = datetime.fromisoformat(status["stages"][0]["soak_until"])
            children = [r for r in ledger.rollouts(limit=50) if r.train == tid]
            rest_runs = [run for r in children for run in ledger.runs(r.id) if run.store != "dk-0002"]
            assert rest_runs and all(run.started_at is not None and run.started_at >= first for run in rest_runs)
            assert first - datetime.fromisoformat(status["stages"][0]["finished_at"]) == timedelta(hours=1)
            assert (await get_json(f"{url}/sim/violations"))["total"] == 0
            await ledger_matches_sim(url, ledger, fleet)

    try:
        asyncio.run(main())
    finally:
        engine.dispose()
