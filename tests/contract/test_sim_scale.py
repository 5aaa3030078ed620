"""The simulator at fleet size: 3,400 stores (about 10,500 BMCs) from ``edgefleet inventory generate``,
served by ``edgefleet sim serve`` in its own process, stays under 1 GiB RSS while every BMC is
read and 500 nodes download a real release image and their seeds at concurrency 100."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from edgefleet.releases.image import remaster
from edgefleet.releases.upstream import write_fake_upstream
from edgefleet.seeds.iso import SeedFiles, write_seed_iso
from edgefleet.seeds.server import SeedServer

STORES = 3400
GIB = 1024**3


def _rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def _start_sim(inventory: Path, home: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-c", "from edgefleet.cli.sim import app; app()", "serve", "--inventory", str(inventory),
           "--port", "0", "--home", str(home), "--time-scale", "1000", "--clock", "2026-11-03T23:30:00Z"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the server prints its URL once it listens
    if "listening on" not in line:
        proc.kill()
        raise AssertionError(f"simulator did not start: {line}{proc.stderr.read() if proc.stderr else ''}")
    return proc, line.split("listening on ")[1].split()[0]


@pytest.mark.slow
def test_3400_stores_under_1_gib(tmp_path: Path) -> None:
    inv = tmp_path / "inventory"
    gen = subprocess.run([str(Path(sys.executable).parent / "edgefleet"), "inventory", "generate", "--stores",
                          str(STORES), "--out", str(inv)], capture_output=True, text=True, timeout=300)
    assert gen.returncode == 0, gen.stderr
    www = tmp_path / "www"
    (www / "releases").mkdir(parents=True)
    sha = write_fake_upstream(tmp_path / "up.iso", "v1.12.6")
    remaster(tmp_path / "up.iso", www / "releases" / "r1.iso", release="r1", talos_version="v1.12.6",
             kubernetes_version="1.35.0", installer_image="factory.talos.dev/installer/x:v1.12.6", extensions=[],
             kernel_args=["talos.platform=nocloud"], upstream_sha256=sha)
    write_seed_iso(www / "seed.iso", SeedFiles(user_data=b"#cloud-config\n", meta_data=b"instance-id: x\n",
                                               network_config=b"version: 2\n"))
    env = {**os.environ, "EDGEFLEET_BMC_PASSWORD": "pw"}
    t0 = time.monotonic()
    proc, url = _start_sim(inv, tmp_path / "home", env)
    start_s = time.monotonic() - t0
    figures: dict[str, float] = {"start_s": round(start_s, 1)}
    try:
        rss0, _ = _rss(proc.pid)
        figures["rss_idle_mib"] = rss0 // 2**20

        async def load() -> None:
            seeds = SeedServer(www)
            await seeds.start()
            limits = httpx.Limits(max_connections=100)
            async with httpx.AsyncClient(auth=("edgefleet", "pw"), timeout=60, limits=limits, trust_env=False) as c:
                ep = (await c.get(f"{url}/sim/endpoints")).json()
                nodes = list(ep["nodes"])
                assert len(ep["stores"]) == STORES and len(nodes) > 3 * STORES
                sem = asyncio.Semaphore(100)

                async def read(n: str) -> None:
                    async with sem:
                        r = await c.get(f"{ep['nodes'][n]}/redfish/v1/Systems/1")
                        assert r.status_code == 200 and r.json()["PowerState"] == "On"

                t = time.monotonic()
                await asyncio.gather(*(read(n) for n in nodes))
                figures["get_per_s"] = round(len(nodes) / (time.monotonic() - t))

                async def insert(n: str) -> None:
                    async with sem:
                        now = datetime.now(UTC)
                        for slot, rel in (("Cd", "releases/r1.iso"), ("Usb", "seed.iso")):
                            r = await c.post(f"{ep['nodes'][n]}/redfish/v1/Managers/1/VirtualMedia/{slot}/Actions/"
                                             "VirtualMedia.InsertMedia", json={"Image": seeds.url_for(rel, n, now)})
                            assert r.status_code == 204, r.text

                picked = nodes[:: len(nodes) // 500][:500]
                t = time.monotonic()
                await asyncio.gather(*(insert(n) for n in picked))
                figures["inserts_per_s"] = round(2 * len(picked) / (time.monotonic() - t))
                report = (await c.get(f"{url}/sim/report")).json()
                assert report["media"]["downloads"] == 2 * len(picked)
                assert report["media"]["release_images_cached"] == 1
                assert report["media"]["images_parsed"] == 1 + len(picked)  # the image once, each seed once
            await seeds.stop()

        asyncio.run(load())
        rss, hwm = _rss(proc.pid)
        figures["rss_mib"], figures["peak_rss_mib"] = rss // 2**20, hwm // 2**20
        print(f"\nsimulator at {STORES} stores: {figures}")
        assert hwm < GIB, figures
    finally:
        proc.terminate()
        proc.wait(timeout=30)
