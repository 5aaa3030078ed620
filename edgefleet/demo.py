"""`make demo`: the whole story on the sample fleet, on the embedded defaults: embedded Prefect (a
temporary API server), SQLite, and the local fleet simulator on 127.0.0.1. Nothing else is touched.

1. validate the sample inventory;
2. build releases v1, v2 and v3 with Packer (Prefect flow ``build_release``); promote v1, the base
   release, to stable explicitly (only a stable release reaches stores outside the canary stage);
3. start the fleet simulator (every BMC, Kubernetes API and Talos API of the 25 stores), its clock
   set to a Sunday evening outside the freezes and time running 3,600x faster;
4. provision every store on v1 (flow ``provision_store``, one run per store, eight at a time);
5. a week of release trains (``edgefleet.demo_trains``): v2 to the canaries on Monday night, a soak,
   ring 1 on Tuesday night, the rest on Wednesday night with one store rolled back by the engine;
   v2 promoted to stable by its canary stage; then a bad v3 halted at its canary stage and rolled
   back (``train abort --rollback``), v3 revoked;
6. print a summary and write ``out/report.html`` (both trains on its timeline).

Everything is written under ``out/`` (started afresh on every run). The flows run against a local
Prefect server that the demo starts first and stops at the end (``edgefleet.prefect_server``: a
health-checked start with room for a slow machine, not the embedded server's 20 s limit).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

from edgefleet import demo_trains
from edgefleet.cli import app
from edgefleet.errors import EdgefleetError, ServiceStartError
from edgefleet.prefect_server import local_prefect_server, start_timeout

OUT = Path("out/demo")
REPORT = Path("out/report.html")
TALOS_VERSION = "v1.12.6"
CLOCK = "2026-10-04T21:00:00+00:00"  # a Sunday evening: European windows open; the trains end weeks before Black Friday
TIME_SCALE = 3600.0  # a simulated hour per second
PROVISION_AT_ONCE = 8  # provision_store flow runs at a time
DEMO_PASSWORD = "demo-only-bmc-password"  # the simulated BMCs' password, from EDGEFLEET_BMC_PASSWORD
SIM_START_TIMEOUT_S = 120.0  # the simulator answers in 2-5 s; room for a loaded machine


def _step(title: str, *args: str, expect_failure: bool = False) -> None:
    """Run ``edgefleet ARGS`` in this process, as an operator would type it. ``expect_failure``: the
    story expects it to exit 1 (a train that halts or ends aborted says so with its exit code)."""
    print(f"\n=== {title}\n$ edgefleet {' '.join(args)}", flush=True)
    try:
        app(list(args), standalone_mode=False)
    except EdgefleetError as e:
        if expect_failure and e.exit_code == 1:
            print(f"(exit 1, as the story expects: {e})", flush=True)
            return
        print(f"demo step failed: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    except SystemExit as e:
        if e.code:
            raise


def _title(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def _load_flows(name: str) -> ModuleType:
    path = Path("flows") / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"edgefleet_demo_flows_{name}", path)
    if spec is None or spec.loader is None:
        raise EdgefleetError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _installer_image(extension: str) -> str:
    """The installer reference the Talos Image Factory would return for a schematic with this
    extension: its schematic id is the sha256 of the schematic document."""
    schematic = f"customization:\n  systemExtensions:\n    officialExtensions:\n      - {extension}\n"
    return f"factory.talos.dev/installer/{hashlib.sha256(schematic.encode()).hexdigest()}:{TALOS_VERSION}"


@contextmanager
def _simulator(home: Path) -> Iterator[str]:
    """``edgefleet sim serve`` in its own process, as BMCs are elsewhere in real life."""
    log = (OUT / "sim.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.cli", "sim", "serve", "-i", "inventory", "--home", str(home), "--port", "0",
         "--talos-port", "0", "--time-scale", str(TIME_SCALE), "--clock", CLOCK],
        stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + SIM_START_TIMEOUT_S
        url = ""
        while time.monotonic() < deadline and not url:
            line = proc.stdout.readline()
            if not line:
                raise ServiceStartError(f"the fleet simulator exited before it listened (log: {OUT / 'sim.log'})")
            m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            url = m.group(1) if m else ""
        if not url:
            raise ServiceStartError(f"the fleet simulator did not listen within {SIM_START_TIMEOUT_S:.0f} s "
                                    f"(log: {OUT / 'sim.log'}); the machine may be overloaded: retry")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _sim(url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    with httpx.Client(trust_env=False, timeout=10) as c:
        r = c.post(f"{url}{path}", json=body) if body is not None else c.get(f"{url}{path}")
        r.raise_for_status()
        return r.json()


def _check(state: Any, what: str) -> dict[str, Any]:
    if not state.is_completed():
        raise EdgefleetError(f"{what}: {state.message}")
    result: dict[str, Any] = state.result()
    return result


def main() -> None:
    try:
        _demo()
    except EdgefleetError as e:
        print(f"demo failed: {e}", file=sys.stderr, flush=True)
        raise SystemExit(e.exit_code) from None


def _demo() -> None:
    t0 = time.perf_counter()
    for p in (OUT, REPORT):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    OUT.mkdir(parents=True)
    home = (OUT / "home").resolve()
    state_url = f"sqlite:///{home / 'edgefleet.db'}"
    os.environ.update({"EDGEFLEET_HOME": str(home), "EDGEFLEET_STATE_URL": state_url,
                       "EDGEFLEET_BMC_PASSWORD": DEMO_PASSWORD, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                       "DO_NOT_TRACK": "1", "PREFECT_LOGGING_LEVEL": "WARNING",
                       # a loaded 2-core machine: the server's SQLite can stay locked past 5 retries
                       "PREFECT_CLIENT_MAX_RETRIES": "10"})
    # Prefect reads its settings when it is first imported: the server must be up and
    # PREFECT_API_URL set before then.
    assert "prefect" not in sys.modules, "nothing may import prefect before the demo's server is up"
    _title(f"start a local Prefect server on 127.0.0.1 (fresh database: 20-35 s here; waits up to "
           f"{start_timeout():.0f} s)")
    with local_prefect_server((OUT / "prefect").resolve()) as prefect:
        print(f"Prefect API {prefect.api_url}, healthy after {prefect.started_in_s:.0f} s "
              f"(log: {prefect.log})", flush=True)
        _story(t0, home, state_url)


def _story(t0: float, home: Path, state_url: str) -> None:
    """The demo's steps: inventory, three releases, the simulated fleet provisioned, a week of
    release trains, then the report and the summary."""
    _step("validate the sample inventory", "inventory", "validate", "inventory")
    _step("the fleet by country, region and ring", "inventory", "graph", "-i", "inventory")

    upstream = OUT / "upstream" / f"talos-{TALOS_VERSION}.iso"
    _step("a Talos-like upstream boot ISO (no network here: a real one comes from the Image Factory)",
          "release", "fake-upstream", "--talos-version", TALOS_VERSION, "--out", str(upstream))
    build = _load_flows("build_release")
    rollout_flows = _load_flows("rollout")
    _build_releases(build, upstream)

    # Real seconds: at 3,600x a node boots in 25 ms and 8 s are eight simulated hours.
    common = {"inventory": "inventory", "home": str(home), "state_url": state_url, "poll_s": 0.2,
              "node_timeout_s": 8.0, "gate_timeout_s": 10.0}
    with _simulator(home) as url:
        _title(f"fleet simulator on {url}: clock {CLOCK}, {TIME_SCALE:.0f}x")
        _provision_fleet(rollout_flows, url, common)
        from edgefleet.state.db import open_state

        engine = open_state(state_url)
        demo_trains.week_of_v2(_step, _title, _sim, url, engine)
        demo_trains.bad_release(_step, _title, _sim, url, engine)
        violations = _sim(url, "/sim/violations")
        sim_now = demo_trains.sim_now(_sim, url)

    _step("the release catalog after both trains", "release", "list")
    _step("the trains", "train", "list")
    _summary(t0, home, state_url, violations, sim_now)


def _build_releases(build: ModuleType, upstream: Path) -> None:
    """Releases v1, v2 and v3 built with Packer by the build_release flow, then the catalog."""
    from edgefleet.releases.upstream import sha256_file

    digest = sha256_file(upstream)
    for name, ext in (("v1", "siderolabs/iscsi-tools"), ("v2", "siderolabs/util-linux-tools"),
                      ("v3", "siderolabs/qemu-guest-agent")):
        _title(f"build release {name} with Packer (Prefect flow build_release on the local server)")
        rel = _check(build.build_release(name=name, talos_version=TALOS_VERSION, upstream_iso=str(upstream),
                                         upstream_sha256=digest, kernel_args=["talos.platform=nocloud"],
                                         extensions=[ext], installer_image=_installer_image(ext),
                                         return_state=True), f"build {name}")
        print(f"release {rel['name']}: {rel['sha256'][:16]}... {rel['size']} bytes", flush=True)
    # Only a stable release reaches stores outside the canary stage. v1 is the fleet's base release,
    # promoted here by hand (a release train promotes a release after its canary stage).
    note = "demo: the fleet's base release, promoted explicitly before provisioning"
    for to in ("canary", "stable"):
        _step(f"promote v1 to {to} explicitly: it is the base release every store is provisioned on",
              "release", "promote", "v1", "--to", to, "--note", note)
    _step("the release catalog", "release", "list")


def _provision_fleet(rollout_flows: ModuleType, url: str, common: dict[str, Any]) -> None:
    """Every store of the sample inventory provisioned on v1 (one provision_store flow run each)."""
    from edgefleet.inventory.load import load_fleet

    stores = sorted(load_fleet("inventory").stores)

    _title(f"provision all {len(stores)} stores on v1 (flow provision_store per store; waits for windows)")

    async def provision_all() -> list[Any]:
        # Bounded: two dozen flow runs created at the same instant can make the embedded
        # server's SQLite answer 503 (locked) past the client's retries.
        gate = asyncio.Semaphore(PROVISION_AT_ONCE)

        async def one(s: str) -> Any:
            async with gate:
                return await rollout_flows.provision_store(store=s, release="v1", sim_url=url,
                                                           return_state=True, **common)

        return list(await asyncio.gather(*(one(s) for s in stores)))

    for s, st in zip(stores, asyncio.run(provision_all()), strict=True):
        _check(st, f"provision {s}")
    print(f"{len(stores)} stores provisioned on v1; simulator clock now {_sim(url, '/sim/clock')['now']}",
          flush=True)


def _summary(t0: float, home: Path, state_url: str, violations: dict[str, Any], sim_now: datetime) -> None:
    """The HTML report, the stores per release and the simulator's violations; exit 1 unless the
    fleet ended as the story says (every store on v2 but the one the engine rolled back to v1, v2
    stable, v3 revoked) with no violation."""
    from edgefleet.releases.catalog import ReleaseCatalog
    from edgefleet.report import collect_report, render_report, write_report
    from edgefleet.state.db import open_state

    engine = open_state(state_url)
    write_report(REPORT, render_report(collect_report(engine, now=sim_now.astimezone(UTC))))
    on = demo_trains.stores_per_release(engine)
    _title("summary")
    print("stores per release: " + "; ".join(f"{r}: {len(s)} ({', '.join(s) if len(s) < 4 else '...'})"
                                             for r, s in on.items()), flush=True)
    print(f"simulator violations (safety and the trains' stage order and release state): {violations['total']}",
          flush=True)
    for v in violations["violations"][:10]:
        print(f"  {v['time']} {v['store']} {v['node']}: {v['rule']} ({v['operation']}): {v['detail']}", flush=True)
    print(f"report: {REPORT}; ledger: {home / 'edgefleet.db'}; simulator log: {OUT / 'sim.log'}", flush=True)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s", flush=True)
    end = demo_trains.expected_end()
    catalog = ReleaseCatalog(engine)
    states = {r: catalog.get(r).state.value for r in ("v1", "v2", "v3")}
    ok = (violations["total"] == 0 and on.get(end["base"]) == [end["rolled_back_store"]]
          and set(on) == {end["base"], end["release"]} and states == {"v1": "stable", "v2": "stable", "v3": "revoked"})
    if not ok:
        print(f"demo FAILED: expected every store on v2 but {end['rolled_back_store']} (on v1), v2 stable, v3 "
              f"revoked and no violation; releases: {states}", file=sys.stderr, flush=True)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
