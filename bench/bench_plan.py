"""Plan: a rollout of a generated fleet with its maintenance windows (per country, local time),
freezes, a canary, percentage waves and concurrency caps (fleet, per region, per country). Goal:
3,400 stores in under 0.5 s. Baselines measured in the same run: the same plan with the global cap
only (what the region and country caps cost), and the plan of 10,000 stores (cost per store must
stay flat).

    python -m bench.bench_plan [--stores 3400] [--large 10000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from bench.common import timed, write_result
from edgefleet.inventory.generate import generate_fleet
from edgefleet.inventory.load import load_fleet
from edgefleet.inventory.model import Fleet
from edgefleet.rollout.plan import RolloutPlan, RolloutPolicy, plan_rollout

GOAL_S = 0.5
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
POLICY = RolloutPolicy(canary=10, waves=(50, "20%", "100%"), max_concurrent=500, max_per_region=200,
                       max_per_country=40)


def _fleet(stores: int, tmp: Path) -> Fleet:
    return load_fleet(generate_fleet(tmp / f"fleet-{stores}", stores, seed=1))


def _plan(fleet: Fleet, policy: RolloutPolicy) -> tuple[float, RolloutPlan]:
    secs, plan = timed(lambda: plan_rollout(fleet, "bench", policy, NOW), repeat=5)
    placed = len(plan.stores()) + len(plan.unschedulable)
    if placed != len(fleet.stores):
        raise AssertionError(f"the plan places {placed} of {len(fleet.stores)} stores")
    return secs, plan


def run(stores: int = 3400, large: int = 10000) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory() as tmp:
        fleet = _fleet(stores, Path(tmp))
        big = _fleet(large, Path(tmp))
    secs, plan = _plan(fleet, POLICY)
    loose, _ = _plan(fleet, replace(POLICY, max_per_region=None, max_per_country=None))
    big_secs, big_plan = _plan(big, POLICY)
    windows = sum(len(s.maintenance_windows) for s in fleet.stores.values())
    what = (f"{len(fleet.stores)} stores, {windows} windows in {len({s.timezone for s in fleet.stores.values()})} "
            f"time zones, {len(fleet.freezes)} freezes, canary {POLICY.canary}, waves "
            f"{'/'.join(str(w) for w in POLICY.waves)}, caps {POLICY.max_concurrent} / {POLICY.max_per_region} per "
            f"region / {POLICY.max_per_country} per country: {len(plan.waves)} waves, {len(plan.unschedulable)} "
            "unschedulable")
    per_store, big_per_store = secs / len(fleet.stores), big_secs / len(big.stores)
    rows: list[dict[str, object]] = [
        {"measure": f"plan {what} (s, median of 5) vs the same plan with the global cap only (s)",
         "edgefleet": round(secs, 3), "baseline": round(loose, 3), "ratio": f"{secs / loose:.2f}x",
         "goal": f"< {GOAL_S} s", "met": secs < GOAL_S},
        {"measure": f"plan {len(big.stores)} stores ({len(big_plan.waves)} waves): per store (ms) vs at "
                    f"{len(fleet.stores)} stores; whole plan {big_secs:.2f} s",
         "edgefleet": round(big_per_store * 1000, 4), "baseline": round(per_store * 1000, 4),
         "ratio": f"{big_per_store / per_store:.2f}x", "goal": "flat (<= 1.2x)",
         "met": big_per_store / per_store <= 1.2},
    ]
    for r in rows:
        print("plan:", r)
    write_result("plan", rows, notes="One run; each plan timed 5 times, median; the fleets are generated with "
                                     "seed 1 (windows per country, fleet freezes).")
    return rows


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_plan", description=__doc__.split("\n\n")[0])
    p.add_argument("--stores", type=int, default=3400)
    p.add_argument("--large", type=int, default=10000)
    a = p.parse_args(argv)
    run(a.stores, a.large)


if __name__ == "__main__":
    main(sys.argv[1:])
