"""Seeds: NoCloud seed ISOs for a generated 3,400-store fleet (about 10,500 nodes), cold and re-run
with nothing changed, side by side with `cloud-localds` (Debian cloud-image-utils) on the same
content for a sample. Secrets are generated once per store in real life (RSA-4096 dominates): they
are measured separately on a sample, spread over processes, and the seed runs reuse one secrets set
for every store (rendering cost does not depend on the key material)."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from bench.common import write_result
from edgefleet.inventory.generate import generate_fleet
from edgefleet.inventory.load import load_fleet
from edgefleet.secrets import generate_secrets, store_secrets
from edgefleet.seeds.build import build_seeds
from edgefleet.seeds.iso import render_seed_iso, write_seed_iso, write_seed_isos
from edgefleet.seeds.render import render_seed_files
from edgefleet.talos.config import ReleaseRef

NOW = datetime(2026, 11, 3, tzinfo=UTC)
RELEASE = ReleaseRef(name="v2", talos_version="v1.12.6", kubernetes_version="1.35.0",
                     installer_image="ghcr.io/siderolabs/installer:v1.12.6")


def _one_secret(_: int) -> float:
    t0 = time.perf_counter()
    generate_secrets(NOW)
    return time.perf_counter() - t0


def run(stores: int = 3400, sample: int = 20) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        fleet = load_fleet(generate_fleet(tmp / "inv", stores, seed=1))
        with ProcessPoolExecutor(2) as pool:
            t0 = time.perf_counter()
            per_store = list(pool.map(_one_secret, range(8)))
            wall = time.perf_counter() - t0
        rows.append({"measure": "cluster secrets per store (s, RSA-4096 dominates; 2 processes)",
                     "edgefleet": round(statistics.median(per_store), 3),
                     "baseline": f"{stores} stores ~ {wall / 8 * stores / 60:.0f} min once, on 2 cores"})
        home = tmp / "home"
        shared = generate_secrets(NOW)
        for sid in fleet.stores:
            store_secrets(home, sid, shared)
        out = tmp / "seeds"
        t0 = time.perf_counter()
        cold = build_seeds(fleet, None, None, RELEASE, home, out, now=NOW)
        cold_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = build_seeds(fleet, None, None, RELEASE, home, out, now=NOW)
        warm_s = time.perf_counter() - t0
        assert len(cold.written) == fleet.node_count and len(warm.written) == 0
        # Per ISO, same content: ours (render + atomic durable write) against cloud-localds.
        pairs = [(s, n) for s in list(fleet.stores.values())[:sample] for n in s.nodes][:sample]
        files = [render_seed_files(s, n, RELEASE, shared) for s, n in pairs]
        single: list[float] = []
        for i, f in enumerate(files):
            t0 = time.perf_counter()
            write_seed_iso(tmp / "ours1" / f"{i}.iso", f)
            single.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        write_seed_isos([(tmp / "ours" / f"{i}.iso", f) for i, f in enumerate(files)])
        batch_per_iso = (time.perf_counter() - t0) / len(files)
        render_only: list[float] = []
        for f in files:
            t0 = time.perf_counter()
            render_seed_iso(f)
            render_only.append(time.perf_counter() - t0)
        localds = shutil.which("cloud-localds")
        theirs: list[float] = []
        if localds:
            for i, f in enumerate(files):
                d = tmp / "cl" / str(i)
                d.mkdir(parents=True)
                (d / "user-data").write_bytes(f.user_data)
                (d / "meta-data").write_bytes(f.meta_data)
                (d / "network-config").write_bytes(f.network_config)
                t0 = time.perf_counter()
                subprocess.run([localds, "-N", str(d / "network-config"), str(d / "seed.iso"), str(d / "user-data"),
                                str(d / "meta-data")], check=True, capture_output=True)
                theirs.append(time.perf_counter() - t0)
    per_node_ms = cold_s / fleet.node_count * 1000
    rows.append({"measure": f"cold build, {fleet.node_count} nodes (s; render + validate + write, per node ms)",
                 "edgefleet": f"{cold_s:.1f} ({per_node_ms:.2f} ms/node)", "baseline": "-"})
    rows.append({"measure": "unchanged fleet re-check (s)", "edgefleet": round(warm_s, 2), "goal": "< 2 s",
                 "met": warm_s < 2})
    if theirs:
        o, r, t = batch_per_iso, statistics.median(render_only), statistics.median(theirs)
        one = statistics.median(single)
        rows.append({"measure": f"per seed ISO, same content, {len(theirs)} ISOs (ms): render + durable atomic write",
                     "edgefleet": round(o * 1000, 2), "baseline": f"cloud-localds {t * 1000:.1f} (median)",
                     "ratio": f"{t / o:.0f}x", "goal": ">= 20x", "met": t / o >= 20})
        rows.append({"measure": "a single seed ISO on its own (ms): render + fsync + rename + fsync dir",
                     "edgefleet": round(one * 1000, 2), "baseline": f"cloud-localds {t * 1000:.1f}",
                     "ratio": f"{t / one:.0f}x"})
        rows.append({"measure": "one seed ISO in memory (ms), no disk", "edgefleet": round(r * 1000, 3),
                     "baseline": f"cloud-localds {t * 1000:.1f}", "ratio": f"{t / r:.0f}x"})
    for r_ in rows:
        print("seeds:", r_)
    write_result("seeds", rows, notes=f"{stores} stores; secrets reused across stores for the seed runs")
    return rows


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 3400)
