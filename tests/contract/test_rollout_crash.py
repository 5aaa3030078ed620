"""Crash and resume through the command line: the simulator and the orchestrator are separate
processes; the orchestrator is killed with SIGKILL mid-rollout (no cleanup of any kind), a second
operation on a store it held is refused naming it, and ``rollout resume`` finishes the rollout.
The simulator's oracle must report zero violations and the ledger must match the simulator."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from edgefleet.releases.catalog import ReleaseCatalog
from edgefleet.rollout.ledger import Ledger, RolloutStatus, RunStatus
from edgefleet.state.db import create_state_engine
from tests.contract.rollout_world import PASSWORD, PASSWORD_ENV, build_releases, ledger_matches_sim, make_inventory
from tests.helpers import REPO

pytestmark = pytest.mark.slow

START = "2026-11-03T21:30:00Z"

# The commands as the edgefleet CLI registers them (``rollout`` sub-app, ``rollback``, ``provision``),
# with the CLI's error handling: EdgefleetError -> message + its exit code.
RUNNER = """
import sys, typer
from edgefleet.cli._common import err_console
from edgefleet.cli.rollout import app as rollout_app, provision_cmd, rollback_cmd
from edgefleet.errors import EdgefleetError
app = typer.Typer()
app.add_typer(rollout_app, name="rollout")
app.command("rollback")(rollback_cmd)
app.command("provision")(provision_cmd)
try:
    app(standalone_mode=False)
except EdgefleetError as e:
    err_console.print(f"error: {e}", markup=False, soft_wrap=True)
    sys.exit(e.exit_code)
except Exception as e:
    show, code = getattr(e, "show", None), getattr(e, "exit_code", None)
    if callable(show) and isinstance(code, int):
        show()
        sys.exit(code)
    raise
"""


def _env(home: Path, inventory: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env.update({"EDGEFLEET_HOME": str(home), "EDGEFLEET_INVENTORY": str(inventory), PASSWORD_ENV: PASSWORD,
                "COLUMNS": "200", "PYTHONPATH": str(REPO)})
    return env


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", RUNNER, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False, cwd=REPO)


def test_kill_9_mid_rollout_then_resume(tmp_path: Path) -> None:
    fleet = make_inventory(tmp_path / "inventory")
    home = tmp_path / "home"
    home.mkdir()
    engine = create_state_engine(f"sqlite:///{home / 'edgefleet.db'}")
    build_releases(home, tmp_path, ReleaseCatalog(engine), ["v1", "v2"])
    env = _env(home, tmp_path / "inventory")
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text("boot_seconds: 30\n")
    # 200x: a boot takes 0.15 s, the 7-hour maintenance window about two minutes of real time
    sim = subprocess.Popen([sys.executable, "-m", "edgefleet.cli", "sim", "serve", "--port", "0", "--talos-port", "0",
                            "--time-scale", "200", "--clock", START, "--home", str(home), "--scenario",
                            str(scenario)],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert sim.stdout is not None
        line = sim.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert m, line + (sim.stderr.read() if sim.stderr else "")
        url = m.group(0)
        for _ in range(100):  # the Talos API line comes after the HTTP one; /sim/endpoints lists it
            if "talos" in httpx.get(f"{url}/sim/endpoints", trust_env=False).json():
                break
            time.sleep(0.05)
        fast = ["--sim", url, "--node-timeout", "4", "--poll", "0.05"]
        t0 = time.monotonic()
        for sid in sorted(fleet.stores):
            p = cli(env, "provision", sid, "--release", "v1", *fast)
            assert p.returncode == 0, p.stdout + p.stderr
        print(f"provisioned in {time.monotonic() - t0:.1f} s")

        ledger = Ledger(engine)
        rollout = subprocess.Popen([sys.executable, "-c", RUNNER, "rollout", "start", "--release", "v2",
                                    "--canary", "0", "--waves", "100%", "--failure-budget", "0", "--node-minutes",
                                    "10", *fast], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   cwd=REPO)
        rid = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            recent = ledger.rollouts(limit=1)
            if recent and recent[0].kind.value == "rollout":
                rid = recent[0].id
                if any(e["kind"] == "reimage_booting" for e in ledger.events(rid, store="no-0001")):
                    break
            time.sleep(0.02)
        assert rid is not None and rollout.poll() is None, "the rollout did not get going"
        os.kill(rollout.pid, signal.SIGKILL)
        rollout.wait(10)

        rec = ledger.rollout(rid)
        assert rec.status is RolloutStatus.running
        held = ledger.locks_held_by(rid)
        assert "no-0001" in held  # a crashed holder keeps its locks ...
        p = cli(env, "provision", "no-0001", "--release", "v1", *fast)
        assert p.returncode == 1 and f"locked by operation {rid}" in p.stdout + p.stderr, p.stdout + p.stderr
        r = cli(env, "rollout", "status", rid, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["rollout"]["status"] == "running"

        t0 = time.monotonic()
        r = cli(env, "rollout", "resume", rid, *fast)  # ... and only the same rollout takes them over
        print(f"resumed in {time.monotonic() - t0:.1f} s")
        assert r.returncode == 0, r.stdout + r.stderr
        rec = ledger.rollout(rid)
        assert rec.status is RolloutStatus.succeeded, rec
        assert all(run.status is RunStatus.succeeded for run in ledger.runs(rid))
        assert ledger.locks_held_by(rid) == []
        assert {s: c for s, (c, _l) in ledger.store_releases().items()} == {s: "v2" for s in fleet.stores}
        violations = httpx.get(f"{url}/sim/violations", trust_env=False).json()
        assert violations["total"] == 0, violations
        asyncio.run(ledger_matches_sim(url, ledger, fleet))

        r = cli(env, "rollout", "status", rid)
        assert r.returncode == 0 and "succeeded" in r.stdout
        r = cli(env, "rollout", "plan", "--release", "no-such-release")
        assert r.returncode == 2 and "unknown release" in r.stdout + r.stderr
        r = cli(env, "rollout", "resume", rid)
        assert r.returncode == 1 and "nothing to resume" in r.stdout + r.stderr
    finally:
        sim.send_signal(signal.SIGINT)
        try:
            sim.wait(10)
        except subprocess.TimeoutExpired:
            sim.kill()
        engine.dispose()
