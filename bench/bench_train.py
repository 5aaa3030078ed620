"""A release train over a generated fleet, in the stores' real maintenance windows, against the
fleet simulator (its own process, its clock accelerated): fleet time from the train's start to its
end against the window-bound lower bound, the simulator's oracle (its safety rules and the train
rules: stage order, release state), every store on the target, and the CPU and peak RSS of the
process that runs the controller and its children.

The world: ``plan_synthetic_fleet`` (3,400 stores in 54 time zones by default), its maintenance
windows as generated (nightly windows in each store's local time, the canary ring's own; freezes
dropped so that two weeks suffice), one release ``built`` only. The train has three stages: the
canary ring, then 10% of the stores left, then the rest, each with a 24 h soak (fleet time); the
canary stage promotes the release to stable. The simulator's clock starts on a Monday at 12:00 UTC
and runs ``--time-scale`` times faster than the wall clock (boots take 120 simulated seconds).

One worker: ``edgefleet train start``, then ``edgefleet train run`` (the controller ticking, its
children in the same process), measured as a child process of its own (``os.wait4``: CPU and peak
RSS of that process alone).

The lower bound (``window_lower_bound``, pure): stage by stage, each store at its first window
start after the stage unlocks with room for ``node_duration x nodes`` (``next_allowed_start``, as
the controller's ``decide`` asks), taking at least ``nodes x boot``; the stage ends when its last
store does, the next stage unlocks after that plus the soak, and the train ends after the last
stage's soak (as the controller finishes it). No caps, no tick or poll latency.

Time scale: at the default x2400, 300 stores take about 6 minutes (their train about ten fleet
days). The accelerated clock turns the controller's own work into fleet time (a real second is 40
fleet minutes), so a lower scale measures the calendar more faithfully. 3,400 stores need about
140 ms of CPU per node (measured at 300 stores), 10,500 nodes: some 1,500 CPU seconds
in one process, so keep the scale at x150 or below (over an hour of wall time).

Two workers (children spread over two processes) need a dispatcher that hands children to other
processes: the Prefect work pools (``train-tick`` and ``rollout-<region>`` deployments). This
benchmark does not measure it and says so in its output.

    python -m bench.bench_train [--stores 3400] [--time-scale 2400] [--tick 0.15] [--max-concurrent 500]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.bench_rollout import BOOT_SECONDS, PASSWORD, REPO, make_home, workdir
from bench.common import write_result

START = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)  # a Monday noon, UTC
RELEASE = "bench-train"
SOAK = "24h"
STAGES = ("canary=canary", "ring1=10%", "rest=100%")
NODE_MINUTES = 20.0
GOAL = 1.05
TWO_WORKERS_NOTE = ("two workers not measured: the controller runs children either in its own process (`train run`) "
                    "or on Prefect work pools; spreading one train's children over two processes needs the Prefect "
                    "workers (the train-tick and rollout-<region> deployments), which this run does not start")


# -- the world --------------------------------------------------------------------------------------

def make_inventory(out: Path, stores: int, seed: int = 1) -> Path:
    """The generated fleet with its maintenance windows as generated; freezes dropped."""
    from edgefleet.inventory.generate import plan_synthetic_fleet, write_inventory

    fleet, gv, by_country = plan_synthetic_fleet(stores, seed, freezes=False)
    return write_inventory(out, fleet, gv, by_country)


def build_built_release(home: Path, state: str) -> None:
    """``RELEASE`` built with the real Packer template and left ``built``: the train moves it."""
    from edgefleet.releases.build import ReleaseSpec, build_release
    from edgefleet.releases.catalog import ReleaseCatalog
    from edgefleet.releases.upstream import write_fake_upstream
    from edgefleet.state.db import create_state_engine

    engine = create_state_engine(state)
    try:
        up = home.parent / "upstream.iso"
        sha = write_fake_upstream(up, "v1.12.6")
        build_release(ReleaseSpec(name=RELEASE, talos_version="v1.12.6", upstream_iso=str(up), upstream_sha256=sha,
                                  kernel_args=("talos.platform=nocloud",)), home=home, catalog=ReleaseCatalog(engine))
    finally:
        engine.dispose()


class Simulator:
    """``edgefleet sim serve`` on 127.0.0.1 with its clock at ``START``, ``scale`` times faster."""

    def __init__(self, inventory: Path, home: Path, scale: float, work: Path):
        import re

        scenario = work / "scenario.yml"
        scenario.write_text(f"boot_seconds: {BOOT_SECONDS}\n")
        self.env = {**os.environ, "EDGEFLEET_BMC_PASSWORD": PASSWORD}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.cli", "sim", "serve", "-i", str(inventory), "--port", "0",
             "--talos-port", "-1", "--time-scale", f"{scale:g}", "--home", str(home), "--scenario", str(scenario),
             "--clock", START.isoformat()],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env, cwd=REPO)
        assert self.proc.stdout is not None
        line = ""
        while not (m := re.search(r"http://127\.0\.0\.1:(\d+)", line)):
            line = self.proc.stdout.readline()
            if not line:
                break
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if not m:
            self.stop()
            raise RuntimeError(f"the simulator did not start: {line!r}")
        self.url = f"http://127.0.0.1:{m.group(1)}"
        # Its log drained to a file: a full pipe would stop the simulator.
        self._drain = threading.Thread(target=self._copy, args=(work / "sim.log",), daemon=True)
        self._drain.start()

    def _copy(self, log: Path) -> None:
        assert self.proc.stdout is not None
        with log.open("w") as fh:
            for line in self.proc.stdout:
                fh.write(line)

    def call(self, path: str, body: Any = None) -> Any:
        with httpx.Client(trust_env=False, timeout=120) as c:
            r = c.get(f"{self.url}{path}") if body is None else c.post(f"{self.url}{path}", json=body)
        r.raise_for_status()
        return r.json()

    def now(self) -> datetime:
        return datetime.fromisoformat(self.call("/sim/clock")["now"])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


# -- the lower bound (pure) -------------------------------------------------------------------------

@dataclass(frozen=True)
class StageBound:
    name: str
    stores: int
    unlocks: datetime
    end: datetime
    """When its last store can have finished."""
    soak_until: datetime


def window_lower_bound(fleet: Any, stages: Sequence[tuple[str, Sequence[str], timedelta]], start: datetime, *,
                       node_duration: timedelta, boot: timedelta) -> list[StageBound]:
    """The train's window-bound schedule from ``start`` (see the module docstring): ``stages`` as
    (name, store ids, soak) in order. A store without a feasible window raises ValueError."""
    from edgefleet.schedule.windows import next_allowed_start

    out: list[StageBound] = []
    unlocks = start
    for name, members, soak in stages:
        end = unlocks
        for sid in members:
            store = fleet.stores[sid]
            nodes = len(store.nodes)
            begin = next_allowed_start(store, fleet.freezes, unlocks, node_duration * nodes,
                                       horizon=timedelta(days=60))
            if begin is None:
                raise ValueError(f"store {sid} has no window of {node_duration * nodes} within 60 days")
            end = max(end, begin + boot * nodes)
        out.append(StageBound(name, len(members), unlocks, end, end + soak))
        unlocks = end + soak
    return out


# -- one measured process ----------------------------------------------------------------------------

def measured(cmd: Sequence[str], env: Mapping[str, str], log: Path, timeout_s: float
             ) -> tuple[int, float, float, float]:
    """Run ``cmd`` as a child process; its exit code, wall seconds, CPU seconds (user + system) and
    peak RSS (MiB), of that process alone."""
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(list(cmd), env=dict(env), cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        deadline = t0 + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return (proc.returncode, time.perf_counter() - t0, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def declare(sim: Simulator, state: str, train_id: str) -> list[tuple[str, list[str], timedelta]]:
    """The train's stages as recorded, told to the simulator's oracle; returns them."""
    from edgefleet.state.db import create_state_engine
    from edgefleet.trains.store import TrainStore

    engine = create_state_engine(state)
    try:
        trains = TrainStore(engine)
        rec = trains.get(train_id)
        stores = trains.stores(train_id)
    finally:
        engine.dispose()
    stages: list[tuple[str, list[str], timedelta]] = []
    body = []
    for i, st in enumerate(rec.spec.stages):
        members = sorted(s for s, p in stores.items() if p.stage == i)
        if members:
            stages.append((st.name, members, st.policy.soak))
            body.append({"name": st.name, "stores": members, "soak_s": st.policy.soak.total_seconds(),
                         "failure_budget": st.policy.failure_budget})
    sim.call("/sim/oracle/train", {"release": rec.release, "stages": body})
    return stages


def outcome(state: str, train_id: str) -> dict[str, Any]:
    """The train as the state store holds it at the end: status, start and end (fleet time), each
    stage's last finish and soak, each store's state."""
    from edgefleet.state.db import create_state_engine
    from edgefleet.trains.store import TrainStore

    engine = create_state_engine(state)
    try:
        trains = TrainStore(engine)
        rec = trains.get(train_id)
        states: dict[str, int] = {}
        for p in trains.stores(train_id).values():
            states[p.state.value] = states.get(p.state.value, 0) + 1
        stages = [{"name": st.name, "status": st.status.value,
                   "finished_at": st.finished_at.isoformat() if st.finished_at else None,
                   "soak_until": st.soak_until.isoformat() if st.soak_until else None}
                  for st in trains.stages(train_id)]
    finally:
        engine.dispose()
    return {"status": rec.status.value, "reason": rec.reason, "created_at": rec.created_at.isoformat(),
            "ended_at": rec.updated_at.isoformat(), "stores": states, "stages": stages}


# -- the benchmark ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Knobs:
    stores: int = 3400
    time_scale: float = 2400.0
    tick_s: float = 0.15
    engine_poll_s: float = 0.1
    max_concurrent: int = 500

    def real_s(self, fleet_s: float) -> float:
        return fleet_s / self.time_scale


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgefleet.cli", *args]


def train_world(k: Knobs, work: Path) -> dict[str, Any]:
    """Set the world up, start and run the train, check it; every figure as a dict."""
    from edgefleet.inventory.load import load_fleet

    t0 = time.perf_counter()
    inventory = make_inventory(work / "inventory", k.stores)
    home = work / "home"
    state = make_home(home, inventory, [])
    build_built_release(home, state)
    fleet = load_fleet(inventory)
    nodes = sum(len(s.nodes) for s in fleet.stores.values())
    zones = len({s.timezone for s in fleet.stores.values()})
    print(f"train: {k.stores} stores / {nodes} nodes in {zones} time zones set up in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    sim = Simulator(inventory, home, k.time_scale, work)
    env = {**sim.env, "EDGEFLEET_HOME": str(home), "EDGEFLEET_STATE_URL": state, "PYTHONPATH": str(REPO),
           "EDGEFLEET_INVENTORY": str(inventory), "COLUMNS": "200"}
    try:
        # Engine timeouts are real seconds: a node boots in BOOT_SECONDS / scale.
        timeout = max(5.0, 60 * BOOT_SECONDS / k.time_scale)
        start_args = ["train", "start", "-r", RELEASE, "-i", str(inventory), "--sim", sim.url, "--soak", SOAK,
                      "--node-minutes", f"{NODE_MINUTES:g}", "--node-timeout", f"{timeout:g}",
                      "--gate-timeout", f"{timeout:g}", "--quorum-timeout", f"{timeout:g}",
                      "--poll", f"{k.engine_poll_s:g}", "--max-concurrent", str(k.max_concurrent), "--json"]
        for st in STAGES:
            start_args += ["--stage", st]
        p = subprocess.run(_cli(*start_args), env=env, cwd=REPO, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise RuntimeError(f"train start failed (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        train_id = json.loads(p.stdout)["train"]["id"]
        stages = declare(sim, state, train_id)
        run_cmd = _cli("train", "run", train_id, "-i", str(inventory), "--sim", sim.url, "--poll", f"{k.tick_s:g}",
                       "--json")
        print(f"train: {train_id} started at {sim.now():%a %Y-%m-%d %H:%M} UTC (fleet time); `edgefleet "
              f"train run` ticking every {k.tick_s:g} s, clock x{k.time_scale:g}", flush=True)
        code, wall, cpu, rss = measured(run_cmd, env, work / "train-run.log", timeout_s=6 * 3600)
        if sim.proc.poll() is not None:  # its stores' failures would be the simulator's absence
            raise RuntimeError(f"the simulator exited during the train (exit code {sim.proc.returncode}; "
                               f"its log: {work / 'sim.log'}): no figure of this run is meaningful")
        got = outcome(state, train_id)
        violations = sim.call("/sim/violations")
        report = sim.call("/sim/report")
    finally:
        sim.stop()
    if code != 0:
        print((work / "train-run.log").read_text()[-3000:], file=sys.stderr)
    start = datetime.fromisoformat(got["created_at"])
    bound = window_lower_bound(fleet, stages, start, node_duration=timedelta(minutes=NODE_MINUTES),
                               boot=timedelta(seconds=BOOT_SECONDS))
    return {"train": train_id, "exit": code, "wall_s": wall, "cpu_s": cpu, "rss_mib": rss, "nodes": nodes,
            "stores": k.stores, "zones": zones, "outcome": got, "violations": violations,
            "releases": report.get("releases", {}),
            "bound": [{"name": b.name, "stores": b.stores, "unlocks": b.unlocks.isoformat(),
                       "end": b.end.isoformat(), "soak_until": b.soak_until.isoformat()} for b in bound]}


def _violation_count(v: Any) -> int:
    if isinstance(v, dict):
        if "total" in v:
            return int(v["total"])
        return len(v.get("violations", []))
    return len(v) if isinstance(v, list) else -1


def _by_rule(v: Any) -> str:
    rules = v.get("by_rule") if isinstance(v, dict) else None
    if not rules:
        return ""
    first = (v.get("violations") or [{}])[0]
    return f": {rules}, first {json.dumps(first)[:300]}"


def rows_of(r: dict[str, Any], k: Knobs) -> list[dict[str, object]]:
    got, bound = r["outcome"], r["bound"]
    start = datetime.fromisoformat(got["created_at"])
    fleet_h = (datetime.fromisoformat(got["ended_at"]) - start).total_seconds() / 3600
    bound_h = (datetime.fromisoformat(bound[-1]["soak_until"]) - start).total_seconds() / 3600
    ratio = fleet_h / bound_h
    violations = _violation_count(r["violations"])
    on_target = r["releases"].get(RELEASE, 0)
    states = got["stores"]
    stage_text = "; ".join(
        f"{s['name']} last store {(s['finished_at'] or '-')[:16]} (bound {b['end'][:16]})"
        for s, b in zip(got["stages"], bound, strict=False))
    per_node = r["cpu_s"] / r["nodes"] * 1000
    return [
        {"measure": f"train of {r['stores']} stores / {r['nodes']} nodes in {r['zones']} zones, 3 stages, soak {SOAK}, "
                    f"real windows, clock x{k.time_scale:g}, tick {k.tick_s:g} s: fleet hours start to end vs "
                    f"window-bound lower bound ({stage_text})",
         "edgefleet": round(fleet_h, 2), "baseline": round(bound_h, 2), "ratio": f"{ratio:.3f}x",
         "goal": f"<= {GOAL}x", "met": ratio <= GOAL and got["status"] == "succeeded"},
        {"measure": f"simulator violations (oracle + train rules{_by_rule(r['violations'])}); train {got['status']}; "
                    "stores "
                    f"{', '.join(f'{n} {s}' for s, n in sorted(states.items()))}; nodes on {RELEASE}: "
                    f"{on_target}/{r['nodes']}",
         "edgefleet": violations, "goal": "0", "met": violations == 0 and on_target == r["nodes"]},
        {"measure": "`train run` (controller + children, one process) CPU per node (ms); wall "
                    f"{r['wall_s']:.0f} s",
         "edgefleet": round(per_node, 2)},
        {"measure": "`train run` peak RSS (MiB)", "edgefleet": round(r["rss_mib"])},
        {"measure": "one worker vs two workers", "edgefleet": "one worker only", "baseline": "not measured",
         "note": TWO_WORKERS_NOTE},
    ]


def run(stores: int = 3400, time_scale: float = 2400.0, tick: float = 0.15, max_concurrent: int = 500,
        result: str = "train") -> list[dict[str, object]]:
    k = Knobs(stores=stores, time_scale=time_scale, tick_s=tick, max_concurrent=max_concurrent)
    with workdir("bench-train-") as tmp:
        r = train_world(k, tmp)
        if r["exit"] != 0:
            raise RuntimeError(f"train run exited {r['exit']}: {r['outcome']}")
    rows = rows_of(r, k)
    for row in rows:
        print("train:", row, flush=True)
    print(f"train: {TWO_WORKERS_NOTE}", flush=True)
    print(f"train summary: {stores} stores, fleet {rows[0]['edgefleet']} h vs bound {rows[0]['baseline']} h = "
          f"{rows[0]['ratio']} (goal <= {GOAL}x), violations {rows[1]['edgefleet']}, CPU {rows[2]['edgefleet']} "
          f"ms/node, RSS {rows[3]['edgefleet']} MiB, wall {r['wall_s']:.0f} s; two workers: not measured", flush=True)
    write_result(result, rows, notes=(
        "One run on a 2-core machine shared with other work. The simulator's clock runs x"
        f"{time_scale:g} (boots 120 simulated seconds); the train's stores in their generated maintenance windows "
        "(freezes dropped). " + TWO_WORKERS_NOTE + ". Details: " + json.dumps(
            {"stages": r["outcome"]["stages"], "bound": r["bound"]})))
    return rows


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_train", description=__doc__.split("\n\n")[0])
    p.add_argument("--stores", type=int, default=3400)
    p.add_argument("--time-scale", type=float, default=2400.0,
                   help="simulated seconds per real second (3,400 stores need far less: see the docstring)")
    p.add_argument("--tick", type=float, default=0.15, help="real seconds between the controller's ticks")
    p.add_argument("--max-concurrent", type=int, default=500, help="the train's global cap on stores at once")
    p.add_argument("--result", default="train", help="the results file (bench/results/NAME.json)")
    a = p.parse_args(argv)
    run(a.stores, a.time_scale, a.tick, a.max_concurrent, a.result)


if __name__ == "__main__":
    main(sys.argv[1:])
