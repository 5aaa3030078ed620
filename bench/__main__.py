"""`make bench`: run every benchmark, write bench/results/*.json and bench/results/table.md."""

from __future__ import annotations

import sys

from bench import (
    bench_ansible,
    bench_inventory,
    bench_reimage,
    bench_rollout,
    bench_scale,
    bench_schedule,
    bench_seeds,
)
from bench.common import render_table

BENCHES = {
    "inventory": bench_inventory.run,
    "seeds": bench_seeds.run,
    "reimage": bench_reimage.run,
    "schedule": bench_schedule.run,
    "rollout": bench_rollout.run,
    "ansible": bench_ansible.run,
    "scale": bench_scale.run,
}


def main(names: list[str]) -> None:
    for name, fn in BENCHES.items():
        if names and name not in names:
            continue
        fn()
    print(render_table())


if __name__ == "__main__":
    main(sys.argv[1:])
