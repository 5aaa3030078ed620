"""Whole rollouts: a generated fleet rolled out through edgefleet's engine against the fleet
simulator (its own process, boots time-scaled), then the same through the Prefect ``rollout``
flow. Reported against the critical-path lower bound of the plan (waves, nodes per store one at a
time, the scaled boot time, soaks), with the orchestrator's CPU per node and peak RSS.

Each measured run is a child process of its own (clean CPU and RSS figures); the simulator is
another. Every store must really be reimaged: the simulator's counters (media boots that joined,
every node on the target release) and its oracle (zero violations) are checked after each run,
and the ledger must say every store succeeded.

The generated fleet keeps its size, countries, time zones and node counts (1, 3 or 5 nodes per
store, about 3.1 on average); its maintenance windows are opened all day and its freezes dropped,
so the run measures the orchestrator rather than the calendar (the engine still checks the
window before every disruptive step).

    python -m bench.bench_rollout [--stores 3400] [--concurrency 500] [--boot-real 8] [--no-flow]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.common import write_result

PASSWORD = "bench-only-password"
START = datetime(2026, 11, 3, 22, 30, tzinfo=UTC)
BOOT_SECONDS = 120.0  # simulated seconds a boot takes; divided by the time scale
REPO = Path(__file__).resolve().parent.parent
WAVES = ("1", "5", "20%", "100%")
SIM_START_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Knobs:
    """One rollout's parameters, the same for the engine and the flow."""

    concurrency: int = 500
    boot_real_s: float = 8.0
    poll_s: float = 1.0
    canary: int = 1
    wave_soak_real_s: float = 0.0
    node_timeout_s: float = 600.0
    gate_timeout_s: float = 600.0

    @property
    def time_scale(self) -> float:
        return BOOT_SECONDS / self.boot_real_s


# -- the world --------------------------------------------------------------------------------------

def make_inventory(out: Path, stores: int, seed: int = 1) -> Path:
    """The generated fleet with all-day windows and no freezes (see the module docstring)."""
    from edgefleet.inventory.generate import plan_synthetic_fleet, write_inventory

    fleet, gv, by_country = plan_synthetic_fleet(stores, seed, freezes=False)
    fleet["defaults"]["maintenance_windows"] = [{"days": ["daily"], "start": "00:00", "end": "00:00"}]
    gv.pop("ring_canary", None)
    for sts in by_country.values():
        for st in sts:
            st.pop("maintenance_windows", None)
    return write_inventory(out, fleet, gv, by_country)


def make_home(home: Path, inventory: Path, releases: list[str]) -> str:
    """Secrets for every store (one set shared: RSA-4096 costs about 0.5 s per store), releases
    built with the real Packer template; returns the ledger's URL."""
    from edgefleet.inventory.load import load_fleet
    from edgefleet.releases.build import ReleaseSpec, build_release
    from edgefleet.releases.catalog import ReleaseCatalog, ReleaseState
    from edgefleet.releases.upstream import write_fake_upstream
    from edgefleet.secrets import generate_secrets, store_secrets
    from edgefleet.state.db import create_state_engine

    fleet = load_fleet(inventory)
    home.mkdir(parents=True, exist_ok=True)
    shared = generate_secrets(datetime.now(UTC))
    for sid in fleet.stores:
        store_secrets(home, sid, shared)
    url = f"sqlite:///{home / 'edgefleet.db'}"
    engine = create_state_engine(url)
    try:
        up = home.parent / "upstream.iso"
        sha = write_fake_upstream(up, "v1.12.6")
        for name in releases:
            build_release(ReleaseSpec(name=name, talos_version="v1.12.6", upstream_iso=str(up), upstream_sha256=sha,
                                      kernel_args=("talos.platform=nocloud",)), home=home,
                          catalog=ReleaseCatalog(engine))
            for state in (ReleaseState.canary, ReleaseState.stable):  # the benchmark rolls out to every store
                ReleaseCatalog(engine).promote(name, state, now=datetime.now(UTC), note="benchmark release")
    finally:
        engine.dispose()
    return url


class Simulator:
    """``edgefleet sim serve`` as a child process on 127.0.0.1 (BMCs and Kubernetes APIs only)."""

    def __init__(self, inventory: Path, home: Path, knobs: Knobs, work: Path):
        scenario = work / "scenario.yml"
        scenario.write_text(f"boot_seconds: {BOOT_SECONDS}\n")
        self.env = {**os.environ, "EDGEFLEET_BMC_PASSWORD": PASSWORD}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.cli", "sim", "serve", "-i", str(inventory), "--port", "0",
             "--talos-port", "-1", "--time-scale", f"{knobs.time_scale:g}", "--home", str(home), "--scenario",
             str(scenario), "--clock", START.isoformat()],
            stdout=subprocess.PIPE, text=True, env=self.env, cwd=REPO)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if not m:
            self.stop()
            raise RuntimeError(f"the simulator did not start: {line!r}")
        self.url = f"http://127.0.0.1:{m.group(1)}"

    def get(self, path: str) -> Any:
        r = httpx.get(f"{self.url}{path}", trust_env=False, timeout=120)
        r.raise_for_status()
        return r.json()

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid)

    def rss_mib(self) -> float:
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        m = re.search(r"VmHWM:\s+(\d+)", text)
        return int(m.group(1)) / 1024 if m else 0.0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """CPU seconds of this process's live children (the embedded Prefect server)."""
    me, total = os.getpid(), 0.0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == me:
                total += proc_cpu_s(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    return total


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A temporary directory, removed on success and kept (its path printed) when the run fails:
    its ledger and inventory are what explains the failure."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    except BaseException:
        print(f"kept the failed run's world for inspection: {path}", file=sys.stderr, flush=True)
        raise
    shutil.rmtree(path, ignore_errors=True)


# -- the lower bound ------------------------------------------------------------------------------

def wave_lower_bound(durations: list[float], concurrency: int) -> float:
    """A lower bound on the makespan of running stores of these durations on ``concurrency``
    slots (P||Cmax): the longest store, the total over the slots, and the two stores that must
    share a slot when there are more stores than slots."""
    if not durations:
        return 0.0
    d = sorted(durations, reverse=True)
    lb = max(d[0], sum(d) / concurrency)
    if len(d) > concurrency:
        lb = max(lb, d[concurrency - 1] + d[concurrency])
    return lb


def lower_bound(waves: list[list[int]], knobs: Knobs) -> tuple[float, list[float]]:
    """The plan's critical path in real seconds: waves in sequence (with the soak between them),
    each store's nodes one at a time, a node no faster than its boot."""
    per_wave = [wave_lower_bound([n * knobs.boot_real_s for n in w], knobs.concurrency) for w in waves]
    soaks = knobs.wave_soak_real_s * max(0, sum(1 for w in waves if w) - 1)
    return sum(per_wave) + soaks, per_wave


# -- one measured run (a child process) -----------------------------------------------------------

def _policy_and_settings(knobs: Knobs) -> tuple[Any, Any]:
    from edgefleet.rollout import operations as ops
    from edgefleet.rollout.plan import RolloutPolicy

    policy = RolloutPolicy(canary=knobs.canary, waves=tuple(int(w) if w.isdigit() else w for w in WAVES),
                           max_concurrent=knobs.concurrency, failure_budget=0,
                           node_duration=timedelta(minutes=20),
                           wave_soak=timedelta(seconds=knobs.wave_soak_real_s * knobs.time_scale))
    settings = ops.settings_for(policy, _engine_settings(knobs))
    return policy, settings


def _engine_settings(knobs: Knobs) -> Any:
    from edgefleet.rollout.executor import EngineSettings

    # What the flow builds from its arguments (flows/rollout.py), so both runs do the same work.
    return EngineSettings(node_ready_timeout_s=knobs.node_timeout_s, poll_s=knobs.poll_s, soak=timedelta(0),
                          store_gate_timeout_s=knobs.gate_timeout_s, quorum_timeout_s=knobs.gate_timeout_s)


async def _engine_run(a: argparse.Namespace, knobs: Knobs) -> str:
    from edgefleet.inventory.load import load_fleet
    from edgefleet.rollout import operations as ops
    from edgefleet.rollout.endpoints import from_simulator
    from edgefleet.state.db import open_state

    fleet = load_fleet(a.inventory)
    engine = open_state(a.state)
    endpoints = await from_simulator(a.sim)
    policy, settings = _policy_and_settings(knobs)
    made = ops.create_rollout(fleet, engine, a.release, policy, endpoints.clock(), settings=settings,
                              operator="bench")
    rec = await ops.run(fleet, Path(a.home), engine, endpoints, made.record.id, settings=settings)
    return rec.id


def _flow_run(a: argparse.Namespace, knobs: Knobs) -> tuple[str, float]:
    """The Prefect ``rollout`` flow with the same arguments; returns the rollout id and the
    seconds the embedded server took to come up (a trivial flow run first, not measured)."""
    from prefect import flow

    from flows.rollout import rollout

    @flow(name="bench-warm-up")
    def warm_up() -> int:
        return 1

    t0 = time.perf_counter()
    warm_up()
    warm = time.perf_counter() - t0
    flow_fn: Any = rollout  # a Prefect flow: with return_state=True, a coroutine of its final State
    asyncio.run(flow_fn(
        a.release, canary=knobs.canary, waves=list(WAVES), max_concurrent=knobs.concurrency, failure_budget="0",
        node_minutes=20.0, node_timeout_s=knobs.node_timeout_s, gate_timeout_s=knobs.gate_timeout_s,
        poll_s=knobs.poll_s, soak_s=0.0, wave_soak_minutes=knobs.wave_soak_real_s * knobs.time_scale / 60,
        gate_on_window=False, sim_url=a.sim, inventory=a.inventory, home=a.home, state_url=a.state,
        return_state=True))  # the ledger holds the outcome; check_run reads it
    from edgefleet.rollout.ledger import Ledger
    from edgefleet.state.db import open_state

    rid = Ledger(open_state(a.state)).rollouts(limit=1)[0].id
    return rid, warm


class RssSampler:
    """Samples this process's RSS and thread count every second into ``log`` (time, MiB, threads):
    where a peak happens says what made it."""

    def __init__(self, log: Path | None):
        self.log = log
        self._stop = threading.Event()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        if log is not None:
            self._thread.start()

    def _run(self) -> None:
        assert self.log is not None
        with self.log.open("w") as fh:
            while not self._stop.wait(1.0):
                text = Path("/proc/self/status").read_text()
                rss = re.search(r"VmRSS:\s+(\d+)", text)
                threads = re.search(r"Threads:\s+(\d+)", text)
                fh.write(f"{time.perf_counter() - self._t0:.1f} {int(rss.group(1)) / 1024 if rss else 0:.0f} "
                         f"{threads.group(1) if threads else '?'}\n")
                fh.flush()

    def stop(self) -> None:
        self._stop.set()


def _census(out: Path) -> None:
    """On SIGUSR1: the most numerous object types the garbage collector tracks, appended to ``out``."""
    import collections
    import gc

    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    with out.open("a") as fh:
        fh.write(f"-- {time.strftime('%H:%M:%S')}\n")
        fh.writelines(f"{n} {name}\n" for name, n in counts.most_common(30))


def child(a: argparse.Namespace) -> None:
    """Run one rollout (``--phase engine|flow``) and print its figures as one JSON line."""
    knobs = Knobs(concurrency=a.concurrency, boot_real_s=a.boot_real, poll_s=a.poll, canary=a.canary,
                  wave_soak_real_s=a.wave_soak_real)
    warm = 0.0
    prof = None
    if a.profile:
        from pyinstrument import Profiler

        prof = Profiler(async_mode="disabled")
    # Imports before the clock starts: a worker that runs rollouts has them loaded.
    import edgefleet.rollout.operations
    import edgefleet.seeds.build
    import edgefleet.talos.config  # noqa: F401
    if a.phase == "flow":
        import flows.rollout  # noqa: F401
    sampler = RssSampler(Path(a.rss_log) if a.rss_log else None)
    if a.rss_log:
        signal.signal(signal.SIGUSR1, lambda *_: _census(Path(a.rss_log).with_suffix(".census")))
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    if prof is not None:
        prof.start()
    if a.phase == "engine":
        rid = asyncio.run(_engine_run(a, knobs))
    else:
        rid, warm = _flow_run(a, knobs)
    if prof is not None:
        prof.stop()
        Path(a.profile).write_text(prof.output_text(unicode=False, color=False, show_all=False))
    wall = time.perf_counter() - t0 - warm
    cpu = time.process_time() - cpu0
    sampler.stop()
    server_cpu = children_cpu_s()
    print(json.dumps({"rollout": rid, "wall_s": wall, "cpu_s": cpu, "warm_s": warm, "server_cpu_s": server_cpu,
                      "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


def _run_child(phase: str, inventory: Path, home: Path, state: str, sim: Simulator, release: str, knobs: Knobs,
               work: Path, profile: Path | None = None, timeout_s: float = 7200) -> dict[str, Any]:
    env = {**sim.env, "PREFECT_HOME": str(work / "prefect"), "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING",
           "PREFECT_LOGGING_TO_API_ENABLED": "false", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "bench.bench_rollout", "--phase", phase, "--inventory", str(inventory),
           "--home", str(home), "--state", state, "--sim", sim.url, "--release", release,
           "--concurrency", str(knobs.concurrency), "--boot-real", f"{knobs.boot_real_s:g}",
           "--poll", f"{knobs.poll_s:g}", "--canary", str(knobs.canary), "--wave-soak-real",
           f"{knobs.wave_soak_real_s:g}"]
    if profile is not None:
        cmd += ["--profile", str(profile)]
    cmd += ["--rss-log", str(work / f"rss-{phase}-{release}.log")]
    p = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"{phase} run failed (exit {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(lines[-1])
    return out


# -- checks ----------------------------------------------------------------------------------------

def check_run(sim: Simulator, state: str, rollout_id: str, release: str, nodes: int, joined_before: int
              ) -> tuple[int, list[list[str]], int]:
    """Every store succeeded in the ledger, every node runs ``release`` in the simulator, the
    simulator saw one joined media boot per node, the oracle found nothing. Returns the joined
    boots so far, the plan's waves (store ids) and the number of store runs."""
    from edgefleet.rollout.ledger import Ledger, RunStatus
    from edgefleet.state.db import create_state_engine

    engine = create_state_engine(state)
    try:
        ledger = Ledger(engine)
        rec = ledger.rollout(rollout_id)
        runs = ledger.runs(rollout_id)
        bad = [(r.store, r.status.value, r.reason) for r in runs if r.status is not RunStatus.succeeded]
        if rec.status.value != "succeeded" or bad:
            raise RuntimeError(f"rollout {rollout_id} is {rec.status.value} ({rec.reason}); not succeeded: {bad[:5]}")
        planned = sorted(runs, key=lambda r: (r.wave, r.earliest_start or rec.created_at, r.store))
        waves_plan = [[r.store for r in planned if r.wave == w.index] for w in ledger.waves(rollout_id)]
    finally:
        engine.dispose()
    report = sim.get("/sim/report")
    joined = int(report["boots"].get("media_joined", 0))
    if joined - joined_before != nodes:
        raise RuntimeError(f"the simulator saw {joined - joined_before} joined media boots, not {nodes}")
    if report["releases"] != {release: nodes}:
        raise RuntimeError(f"the simulator's nodes run {report['releases']}, not all {release}")
    if report["violations"]["total"] != 0:
        raise RuntimeError(f"the oracle found violations: {report['violations']['by_rule']}")
    return joined, waves_plan, len(runs)


# -- the benchmark -----------------------------------------------------------------------------------

@dataclass
class Measured:
    stores: int
    nodes: int
    wall_s: float
    cpu_s: float
    rss_mib: float
    lb_s: float
    waves: int
    sim_cpu_s: float
    extra: dict[str, Any]

    @property
    def ratio(self) -> float:
        return self.wall_s / self.lb_s

    @property
    def cpu_ms_per_node(self) -> float:
        return self.cpu_s / self.nodes * 1000


def rollout_world(stores: int, knobs: Knobs, *, flow: bool, work: Path, profile: Path | None = None
                  ) -> tuple[Measured, Measured | None]:
    """Set up a world of ``stores``, roll one release out through the engine, then (``flow``) a
    second one through the Prefect flow; both checked against the simulator."""
    from edgefleet.inventory.load import load_fleet

    inventory = make_inventory(work / "inventory", stores)
    home = work / "home"
    t0 = time.perf_counter()
    state = make_home(home, inventory, ["bench-a", "bench-b"])
    fleet = load_fleet(inventory)
    nodes_of = {s.id: len(s.nodes) for s in fleet.stores.values()}
    n_nodes = sum(nodes_of.values())
    print(f"rollout: {stores} stores / {n_nodes} nodes set up in {time.perf_counter() - t0:.1f} s", flush=True)
    sim = Simulator(inventory, home, knobs, work)
    results: list[Measured] = []
    try:
        joined = 0
        for phase, release in (("engine", "bench-a"), ("flow", "bench-b")):
            if phase == "flow" and not flow:
                break
            sim_cpu0 = sim.cpu_s()
            got = _run_child(phase, inventory, home, state, sim, release, knobs, work,
                             profile=profile if phase == "engine" else None)
            sim_cpu = sim.cpu_s() - sim_cpu0
            samples = [ln.split() for ln in (work / f"rss-{phase}-{release}.log").read_text().splitlines() if ln]
            if samples:
                peak = max(samples, key=lambda x: float(x[1]))
                got["rss_timeline"] = f"peak {peak[1]} MiB at {peak[0]} s ({peak[2]} threads); every 30 s: " + \
                    ", ".join(f"{x[0]}s {x[1]}" for x in samples[::30])
                print(f"rollout {phase}: RSS {got['rss_timeline']}", flush=True)
            joined, waves, n_runs = check_run(sim, state, got["rollout"], release, n_nodes, joined)
            lb, _per_wave = lower_bound([[nodes_of[s] for s in w] for w in waves], knobs)
            m = Measured(stores=n_runs, nodes=n_nodes, wall_s=got["wall_s"], cpu_s=got["cpu_s"],
                         rss_mib=got["rss_mib"], lb_s=lb, waves=len(waves), sim_cpu_s=sim_cpu, extra=got)
            print(f"rollout {phase}: wall {m.wall_s:.1f} s, lower bound {lb:.1f} s ({m.ratio:.3f}x), "
                  f"CPU {m.cpu_ms_per_node:.2f} ms/node, RSS {m.rss_mib:.0f} MiB, simulator CPU {sim_cpu:.1f} s, "
                  f"{len(waves)} waves", flush=True)
            results.append(m)
        sim_rss = sim.rss_mib()
        for m in results:
            m.extra["sim_rss_mib"] = sim_rss
    finally:
        sim.stop()
    return results[0], (results[1] if len(results) > 1 else None)


def run(stores: int = 3400, concurrency: int = 500, boot_real: float = 8.0, poll: float = 1.0, flow: bool = True,
        profile: str | None = None, result: str = "rollout") -> list[dict[str, object]]:
    knobs = Knobs(concurrency=concurrency, boot_real_s=boot_real, poll_s=poll)
    with workdir("bench-rollout-") as tmp:
        eng, flo = rollout_world(stores, knobs, flow=flow, work=tmp, profile=Path(profile) if profile else None)
    rows: list[dict[str, object]] = [
        {"measure": f"rollout of {eng.stores} stores / {eng.nodes} nodes, concurrency {concurrency}, boot "
                    f"{boot_real:g} s, poll {poll:g} s, {eng.waves} waves: engine wall (s) vs critical-path lower "
                    "bound (s)",
         "edgefleet": round(eng.wall_s, 1), "baseline": round(eng.lb_s, 1), "ratio": f"{eng.ratio:.3f}x",
         "goal": "<= 1.15x", "met": eng.ratio <= 1.15},
        {"measure": "orchestrator CPU per node, engine (ms; whole process: plan, ledger, seeds, Redfish, polling)",
         "edgefleet": round(eng.cpu_ms_per_node, 2), "goal": "<= 5 ms", "met": eng.cpu_ms_per_node <= 5},
        {"measure": "orchestrator peak RSS, engine (MiB)", "edgefleet": round(eng.rss_mib),
         "goal": "< 1024", "met": eng.rss_mib < 1024},
        {"measure": f"simulator CPU per node (ms; its own process), peak RSS {eng.extra['sim_rss_mib']:.0f} MiB",
         "edgefleet": round(eng.sim_cpu_s / eng.nodes * 1000, 2)},
    ]
    if flo is not None:
        overhead = flo.wall_s / eng.wall_s
        rows += [
            {"measure": f"rollout through the Prefect flow (s; embedded server up first, {flo.extra['warm_s']:.0f} s) "
                        "vs the plain engine (s)",
             "edgefleet": round(flo.wall_s, 1), "baseline": round(eng.wall_s, 1), "ratio": f"{overhead:.3f}x",
             "goal": "<= 1.2x", "met": overhead <= 1.2},
            {"measure": "flow: wall vs critical-path lower bound; orchestrator CPU per node (ms, flow process + "
                        f"embedded server {flo.extra['server_cpu_s']:.0f} s); peak RSS (MiB)",
             "edgefleet": f"{flo.ratio:.3f}x; {flo.cpu_ms_per_node:.2f} + "
                          f"{flo.extra['server_cpu_s'] / flo.nodes * 1000:.2f}; {flo.rss_mib:.0f}"},
        ]
    for r in rows:
        print("rollout:", r)
    write_result(result, rows, notes=(
        "One run, each figure against its baseline measured in the same run, on a 2-core machine shared with other "
        "work. Boots are simulated: 120 s scaled to the stated real boot time; maintenance windows all day."))
    return rows


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_rollout", description=__doc__.split("\n\n")[0])
    p.add_argument("--stores", type=int, default=3400)
    p.add_argument("--concurrency", type=int, default=500)
    p.add_argument("--boot-real", type=float, default=8.0, help="real seconds a simulated boot takes")
    p.add_argument("--poll", type=float, default=1.0, help="the engine's poll interval (s)")
    p.add_argument("--no-flow", action="store_true", help="skip the Prefect flow run")
    p.add_argument("--profile", help="write a pyinstrument profile of the engine run to this file")
    p.add_argument("--result", default="rollout",
                   help="the results file (bench/results/NAME.json) and table name, for runs with other knobs")
    p.add_argument("--phase", choices=("engine", "flow"), help=argparse.SUPPRESS)
    for name in ("inventory", "home", "state", "sim", "release"):
        p.add_argument(f"--{name}", help=argparse.SUPPRESS)
    p.add_argument("--canary", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--wave-soak-real", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--rss-log", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.phase:
        child(a)
        return
    run(a.stores, a.concurrency, a.boot_real, a.poll, flow=not a.no_flow, profile=a.profile, result=a.result)


if __name__ == "__main__":
    main(sys.argv[1:])
