"""Reimaging: Redfish reimage sequences per second through edgefleet's driver against the fleet
simulator holding a 3,400-store fleet (about 10,500 BMCs), at concurrency 500; the simulator's
memory; the orchestrator's CPU per sequence. The simulator runs as its own process (as in real
life the BMCs are elsewhere), so each side's CPU is measured apart."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.common import write_result
from edgefleet.inventory.generate import generate_fleet
from edgefleet.inventory.load import load_fleet
from edgefleet.redfish import BmcClients, connector_for_node
from edgefleet.redfish.driver import RedfishDriver, reimage_sequence
from edgefleet.releases.image import remaster
from edgefleet.releases.upstream import write_fake_upstream
from edgefleet.secrets import generate_secrets, store_secrets
from edgefleet.seeds.build import build_seeds
from edgefleet.seeds.server import SeedServer
from edgefleet.talos.config import ReleaseRef

PASSWORD = "bench-only-password"
NOW = datetime(2026, 11, 3, 22, 30, tzinfo=UTC)


def _rss_mib(pid: int) -> tuple[float, float]:
    text = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024  # type: ignore[union-attr]
    hwm = int(re.search(r"VmHWM:\s+(\d+)", text).group(1)) / 1024  # type: ignore[union-attr]
    return rss, hwm


def run(stores: int = 3400, sequences: int = 1000, concurrency: int = 500) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        fleet = load_fleet(generate_fleet(tmp / "inv", stores, seed=1))
        home = tmp / "home"
        shared = generate_secrets(NOW)
        for sid in fleet.stores:
            store_secrets(home, sid, shared)
        upstream = tmp / "upstream.iso"
        up_sha = write_fake_upstream(upstream, "v1.12.6")
        root = tmp / "serve"
        remaster(upstream, root / "release.iso", release="bench", talos_version="v1.12.6",
                 kubernetes_version="1.35.0", installer_image="ghcr.io/siderolabs/installer:v1.12.6",
                 extensions=(), kernel_args=["talos.platform=nocloud"], upstream_sha256=up_sha)
        nodes = [n for s in fleet.stores.values() for n in s.nodes][:sequences]
        store_of = {n.name: s for s in fleet.stores.values() for n in s.nodes}
        ref = ReleaseRef(name="bench", talos_version="v1.12.6", kubernetes_version="1.35.0",
                         installer_image="ghcr.io/siderolabs/installer:v1.12.6")
        build_seeds(fleet, sorted({store_of[n.name].id for n in nodes}), None, ref, home, root / "seeds", now=NOW)
        (tmp / "scenario.yml").write_text("boot_seconds: 60\nenforce_maintenance: false\n")
        env = {**os.environ, "EDGEFLEET_BMC_PASSWORD": PASSWORD}
        sim = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.cli", "sim", "serve", "-i", str(tmp / "inv"), "--port", "0",
             "--talos-port", "-1", "--time-scale", "100", "--home", str(home), "--scenario",
             str(tmp / "scenario.yml"), "--clock", NOW.isoformat()],
            stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert sim.stdout is not None
            t_start = time.perf_counter()
            line = sim.stdout.readline()
            sim_start_s = time.perf_counter() - t_start
            m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            if not m:
                raise RuntimeError(f"simulator did not start: {line!r}")
            base = f"http://127.0.0.1:{m.group(1)}"
            idle_rss, _ = _rss_mib(sim.pid)

            async def main() -> tuple[float, int, float, dict[str, int]]:
                async with SeedServer(root, token_ttl_s=3600) as srv, BmcClients() as clients:
                    sem = asyncio.Semaphore(concurrency)
                    ok = 0

                    async def one(node_name: str) -> None:
                        nonlocal ok
                        node = next(n for n in store_of[node_name].nodes if n.name == node_name)
                        async with sem:
                            conn = connector_for_node(node, clients, resolver=lambda n: f"{base}/bmc/{n.name}",
                                                      operation_id="bench", environ=env)
                            try:
                                drv = RedfishDriver(conn, poll_interval_s=0.2)
                                now = datetime.now(UTC)
                                await reimage_sequence(
                                    drv, srv.url_for("release.iso", node_name, now),
                                    srv.url_for(f"seeds/{store_of[node_name].id}/{node_name}.iso", node_name, now),
                                    power_deadline_s=60)
                                ok += 1
                            finally:
                                await conn.aclose()

                    cpu0 = time.process_time()
                    t0 = time.perf_counter()
                    await asyncio.gather(*(one(n.name) for n in nodes))
                    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
                async with httpx.AsyncClient(timeout=30, trust_env=False) as c:
                    requests = (await c.get(f"{base}/sim/report")).json()["requests"]
                return wall, ok, cpu, requests

            wall, ok, cpu, requests = asyncio.run(main())
            _rss, hwm = _rss_mib(sim.pid)
        finally:
            sim.terminate()
            sim.wait(timeout=30)
    rate = ok / wall
    bmc = {k: int(v) for k, v in requests.items() if k.startswith("bmc ")}
    rows = [
        {"measure": f"reimage sequences/s through the driver, concurrency {concurrency} ({ok}/{len(nodes)} ok)",
         "edgefleet": round(rate, 1), "baseline": f"{wall:.1f} s wall"},
        {"measure": "orchestrator CPU per reimage sequence (ms, driver + httpx + seed server)",
         "edgefleet": round(cpu / max(ok, 1) * 1000, 1)},
        {"measure": "BMC HTTP requests per reimage sequence ("
                    + ", ".join(f"{k.removeprefix('bmc ')} {v / max(ok, 1):.1f}" for k, v in sorted(bmc.items())) + ")",
         "edgefleet": round(sum(bmc.values()) / max(ok, 1), 1)},
        {"measure": f"simulator RSS holding {stores} stores / {fleet.node_count} BMCs (MiB): idle, peak",
         "edgefleet": f"{idle_rss:.0f}, {hwm:.0f}", "goal": "< 1024", "met": hwm < 1024},
        {"measure": "simulator start-up (s)", "edgefleet": round(sim_start_s, 1)},
        {"measure": "orchestrator peak RSS (MiB)",
         "edgefleet": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)},
    ]
    for r in rows:
        print("reimage:", r)
    write_result("reimage", rows)
    return rows


if __name__ == "__main__":
    run(*(int(a) for a in sys.argv[1:]))
