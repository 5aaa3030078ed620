"""`make bench`: run every benchmark, write bench/results/*.json and bench/results/table.md."""

from __future__ import annotations

import sys
from collections.abc import Callable

from bench import (
    bench_ansible,
    bench_inventory,
    bench_plan,
    bench_reimage,
    bench_rollout,
    bench_scale,
    bench_schedule,
    bench_seeds,
    bench_train,
)
from bench.common import render_table

BENCHES: dict[str, Callable[[], object]] = {
    "inventory": bench_inventory.run,
    "plan": bench_plan.run,
    "seeds": bench_seeds.run,
    "reimage": bench_reimage.run,
    "schedule": bench_schedule.run,
    "rollout": bench_rollout.run,
    # The same fleet with boots (and polls) less compressed: one run's single core is not the limit.
    "rollout-boot30": lambda: bench_rollout.run(boot_real=30.0, poll=3.75, flow=False, result="rollout-boot30"),
    "ansible": bench_ansible.run,
    "scale": bench_scale.run,
    # A release train in the stores' real windows over a simulated fortnight (python -m bench.bench_train).
    "train": bench_train.run,
}


def main(names: list[str]) -> None:
    for name, fn in BENCHES.items():
        if names and name not in names:
            continue
        fn()
    print(render_table())


if __name__ == "__main__":
    main(sys.argv[1:])
