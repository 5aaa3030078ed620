"""Scale curve: the whole rollout of ``bench.bench_rollout`` through the engine at 100, 1,000,
3,400 and 10,000 stores (same concurrency, boot time and poll interval), each in a fresh world
with its own simulator. Per size: wall against the plan's critical-path lower bound, the
orchestrator's CPU per store and per node, peak RSS. The cost per store must stay flat: each
size's CPU per store is compared with the smallest size's, measured in the same run.

    python -m bench.bench_scale [--sizes 100,1000,3400,10000] [--concurrency 500] [--boot-real 8] [--merge]

``--merge`` keeps the rows of sizes not run this time from bench/results/scale.json (each row still
compared with the smallest size of its own run, which its text names), so one long size can be
measured again on its own: ``--sizes 100,10000 --merge``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from bench.bench_rollout import Knobs, Measured, rollout_world, workdir
from bench.common import RESULTS, write_result

SIZES = (100, 1000, 3400, 10000)


def _rows(got: list[Measured], concurrency: int, boot_real: float, started: str) -> list[dict[str, object]]:
    base = got[0]
    base_per_store = base.cpu_s / base.stores
    rows: list[dict[str, object]] = []
    for m in got:
        per_store = m.cpu_s / m.stores
        rows.append({
            "stores": m.stores,
            "measure": f"{m.stores} stores / {m.nodes} nodes, {m.waves} waves, concurrency {concurrency}, boot "
                       f"{boot_real:g} s: CPU per store (ms) vs at {base.stores} stores in the same run "
                       f"(started {started}); per node (ms); wall / lower bound ({m.wall_s:.0f} s / {m.lb_s:.0f} s); "
                       "peak RSS (MiB)",
            "edgefleet": f"{per_store * 1000:.1f}; {m.cpu_ms_per_node:.2f}; {m.ratio:.3f}x; {m.rss_mib:.0f}",
            "baseline": f"{base_per_store * 1000:.1f}",
            "ratio": f"{per_store / base_per_store:.2f}x",
            "goal": "flat (<= 1.2x); wall <= 1.15x; RSS < 1024",
            "met": per_store / base_per_store <= 1.2 and m.ratio <= 1.15 and m.rss_mib < 1024,
        })
    return rows


def _stores_of(row: dict[str, object]) -> int:
    stores = row.get("stores")
    if not isinstance(stores, int):
        raise ValueError(f"{RESULTS / 'scale.json'}: a row without its store count: {row.get('measure')!r}")
    return stores


def merged(kept: list[dict[str, object]], new: list[dict[str, object]]) -> list[dict[str, object]]:
    """``kept`` rows whose size was not run again, with ``new`` ones, by size (pure)."""
    sizes = {_stores_of(r) for r in new}
    return sorted([r for r in kept if _stores_of(r) not in sizes] + new, key=_stores_of)


def run(sizes: tuple[int, ...] = SIZES, concurrency: int = 500, boot_real: float = 8.0, poll: float = 1.0,
        merge: bool = False) -> list[dict[str, object]]:
    kept: list[dict[str, object]] = []
    previous = RESULTS / "scale.json"
    if merge and previous.exists():
        kept = json.loads(previous.read_text())["rows"]
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    knobs = Knobs(concurrency=concurrency, boot_real_s=boot_real, poll_s=poll)
    got: list[Measured] = []
    rows: list[dict[str, object]] = []
    for n in sizes:
        with workdir(f"bench-scale-{n}-") as tmp:
            m, _ = rollout_world(n, knobs, flow=False, work=tmp)
        got.append(m)
        print(f"scale: {n} stores: wall {m.wall_s:.1f} s / lower bound {m.lb_s:.1f} s = {m.ratio:.3f}x, "
              f"{m.cpu_s / m.stores * 1000:.1f} ms CPU per store, {m.cpu_ms_per_node:.2f} per node, "
              f"RSS {m.rss_mib:.0f} MiB", flush=True)
        rows = merged(kept, _rows(got, concurrency, boot_real, started))
        # Written after every size: a long run cut short still leaves the sizes it finished.
        write_result("scale", rows, notes=(
            "Each size in its own world and simulator, one after the other in one run (each row names its run), "
            "on a 2-core machine shared with other work. Per-store CPU includes fixed costs (inventory load, "
            "plan, ledger set-up) that the small sizes spread over fewer stores."))
    for r in rows:
        print("scale:", r)
    return rows


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    p.add_argument("--concurrency", type=int, default=500)
    p.add_argument("--boot-real", type=float, default=8.0)
    p.add_argument("--poll", type=float, default=1.0)
    p.add_argument("--merge", action="store_true", help="keep the rows of other sizes from the last results")
    a = p.parse_args(argv)
    run(tuple(int(s) for s in a.sizes.split(",")), a.concurrency, a.boot_real, a.poll, a.merge)


if __name__ == "__main__":
    main(sys.argv[1:])
