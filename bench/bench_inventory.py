"""Inventory: load + validate 3,400 generated stores (about 10,500 nodes) with edgefleet, against
`ansible-inventory --list` on the same fleet exported as a static Ansible YAML inventory."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from bench.common import timed, write_result
from edgefleet.inventory.ansible import render_ansible_inventory, to_static_inventory
from edgefleet.inventory.generate import generate_fleet
from edgefleet.inventory.load import load_fleet

GOAL_S = 2.0


def run(stores: int = 3400) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory() as tmp:
        inv = generate_fleet(Path(tmp) / "inv", stores, seed=1)
        ours, fleet = timed(lambda: load_fleet(inv), repeat=3)
        static = Path(tmp) / "hosts.yml"
        static.write_text(yaml.dump(to_static_inventory(render_ansible_inventory(fleet)),
                                    Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False))
        bin_dir = Path(sys.executable).parent
        env = {**os.environ, "ANSIBLE_INVENTORY_ENABLED": "yaml", "ANSIBLE_LOCAL_TEMP": f"{tmp}/at",
               "ANSIBLE_HOME": f"{tmp}/ah"}

        def ansible() -> None:
            subprocess.run([str(bin_dir / "ansible-inventory"), "-i", str(static), "--list"], check=True,
                           stdout=subprocess.DEVNULL, env=env, timeout=600)

        theirs, _ = timed(ansible, repeat=1)
    row = {"measure": f"load+validate {len(fleet.stores)} stores / {fleet.node_count} nodes (s)",
           "edgefleet": round(ours, 3), "baseline": f"ansible-inventory --list {theirs:.2f}",
           "ratio": f"{theirs / ours:.1f}x faster", "goal": f"< {GOAL_S} s", "met": ours < GOAL_S}
    print(f"inventory: edgefleet {ours:.3f} s, ansible-inventory {theirs:.2f} s ({theirs / ours:.1f}x)")
    write_result("inventory", [row])
    return [row]


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 3400)
