"""``edgefleet inventory``: validate, show, graph, export to Ansible, generate synthetic fleets."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from edgefleet.cli._common import InventoryOpt, JsonOpt, console, print_json
from edgefleet.cli._limit import LimitOpt, limit_stores
from edgefleet.inventory.load import load_fleet

app = typer.Typer(no_args_is_help=True, help="Validate, inspect, export and generate fleet inventories.")


@app.command()
def validate(path: Annotated[Path | None, typer.Argument(help="Inventory directory")] = None,
             inventory: InventoryOpt = Path("inventory"), json_out: JsonOpt = False) -> None:
    """Load and validate an inventory; print every problem (exit 2) or a summary (exit 0)."""
    import time

    t0 = time.perf_counter()
    fleet = load_fleet(path or inventory)
    dt = time.perf_counter() - t0
    countries = sorted({s.country for s in fleet.stores.values()})
    zones = sorted({s.timezone for s in fleet.stores.values()})
    summary = {"fleet": fleet.name, "stores": len(fleet.stores), "nodes": fleet.node_count,
               "countries": len(countries), "time_zones": len(zones), "freezes": len(fleet.freezes),
               "seconds": round(dt, 3)}
    if json_out:
        print_json(summary)
    else:
        console.print(f"[green]ok[/green] {fleet.name}: {summary['stores']} stores, {summary['nodes']} nodes, "
                      f"{len(countries)} countries, {len(zones)} time zones, {len(fleet.freezes)} freezes "
                      f"({dt:.2f} s)")


@app.command()
def show(store: Annotated[str, typer.Argument(help="Store id")], inventory: InventoryOpt = Path("inventory"),
         json_out: JsonOpt = False) -> None:
    """Show one store as resolved from all layers."""
    fleet = load_fleet(inventory)
    s = fleet.store(store)
    if json_out:
        print_json(s.model_dump(mode="json"))
        return
    console.print(f"[bold]{s.id}[/bold] {s.name}  ({s.country}, region {s.region}, ring {s.ring}"
                  f"{', canary' if s.canary else ''})")
    console.print(f"time zone {s.timezone}; windows: " + "; ".join(
        f"{','.join(d.value for d in w.days)} {w.start:%H:%M}-{w.end:%H:%M}" for w in s.maintenance_windows))
    n = s.network
    console.print(f"network {n.subnet} gw {n.gateway} dns {', '.join(map(str, n.dns))}"
                  + (f" vlan {n.vlan}" if n.vlan else "") + (f" ipv6 {n.ipv6.subnet}" if n.ipv6 else ""))
    # escape(): a bracketed IPv6 host ("https://[fd00::10]:6443") is not console markup.
    console.print(f"cluster {s.cluster.name} endpoint {escape(s.endpoint)} kubernetes {s.cluster.kubernetes_version}; "
                  f"wipe via {s.wipe_method.value}; groups {', '.join(s.all_groups)}")
    t = Table("node", "role", "mac", "ip", "disk", "bmc")
    for node in s.nodes:
        addresses = " ".join(str(a) for a in (node.ip, node.ipv6) if a is not None)
        t.add_row(node.name, node.role.value, node.mac, addresses, node.install_disk,
                  escape(node.bmc.url) if node.bmc else "-")
    console.print(t)
    if s.probes:
        console.print("probes: " + ", ".join(f"{p.name} {escape(p.url)} -> {p.expect_status}" for p in s.probes))
    if s.talos_patches or any(node.talos_patches for node in s.nodes):
        console.print(f"talos patches: {len(s.talos_patches)} store-level, "
                      f"{sum(len(node.talos_patches) for node in s.nodes)} node-level")


@app.command()
def graph(inventory: InventoryOpt = Path("inventory"), limit: LimitOpt = None, json_out: JsonOpt = False) -> None:
    """The fleet (or the stores --limit selects) as a tree: country -> region -> ring -> stores."""
    fleet = load_fleet(inventory)
    chosen = limit_stores(fleet, limit)
    stores = [fleet.stores[s] for s in chosen] if chosen is not None else list(fleet.stores.values())
    nested: dict[str, dict[str, dict[str, list[str]]]] = {}
    for s in stores:
        label = f"{s.id} ({len(s.nodes)} node{'s' if len(s.nodes) != 1 else ''}{', canary' if s.canary else ''})"
        nested.setdefault(s.country, {}).setdefault(s.region, {}).setdefault(s.ring, []).append(label)
    if json_out:
        print_json(nested)
        return
    tree = Tree(f"[bold]{fleet.name}[/bold]: {len(stores)} stores, {sum(len(s.nodes) for s in stores)} nodes"
                + (f" (--limit {escape(limit)})" if limit is not None else ""))
    for country in sorted(nested):
        ct = tree.add(f"[cyan]{country}[/cyan]")
        for region in sorted(nested[country]):
            rt = ct.add(f"region {region}")
            for ring in sorted(nested[country][region]):
                gt = rt.add(f"ring {ring}")
                for label in nested[country][region][ring]:
                    gt.add(label)
    console.print(tree)


@app.command()
def ansible(inventory: InventoryOpt = Path("inventory"),
            list_: Annotated[bool, typer.Option("--list", help="Whole inventory (Ansible's --list protocol)")] = True,
            host: Annotated[str | None, typer.Option("--host", help="One host's vars")] = None,
            static_yaml: Annotated[bool, typer.Option("--yaml", help="A static YAML inventory instead")] = False,
            ) -> None:
    """Print the fleet as an Ansible dynamic inventory (the script protocol: --list / --host),
    or with --yaml as a static YAML inventory file."""
    from edgefleet.inventory.ansible import render_ansible_inventory, to_static_inventory

    fleet = load_fleet(inventory)
    data = render_ansible_inventory(fleet)
    if static_yaml:
        import yaml

        sys.stdout.write(yaml.dump(to_static_inventory(data), Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper),
                                   sort_keys=False, default_flow_style=False))
        return
    out: Any = data["_meta"]["hostvars"].get(host, {}) if host else data
    sys.stdout.write(json.dumps(out, separators=(",", ":")) + "\n")


@app.command()
def generate(stores: Annotated[int, typer.Option("--stores", min=1, max=100_000, help="How many stores")],
             out: Annotated[Path, typer.Option("--out", help="New inventory directory (must not exist)")],
             seed: Annotated[int, typer.Option("--seed", help="Random seed: same seed, same fleet")] = 1,
             countries: Annotated[int, typer.Option("--countries", min=1, max=48)] = 48) -> None:
    """Write a realistic synthetic fleet (real IANA zones, 1/3/5-node stores, unique subnets)."""
    from edgefleet.inventory.generate import generate_fleet
    from edgefleet.outpaths import check_output_dir

    check_output_dir(out, "--out")  # the writer refuses a directory that is not empty
    path = generate_fleet(out, stores, seed, countries)
    fleet = load_fleet(path)
    console.print(f"wrote {path}: {len(fleet.stores)} stores, {fleet.node_count} nodes")
