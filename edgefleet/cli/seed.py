"""``edgefleet seed``: build the NoCloud seed ISOs of stores or nodes, and inspect a seed ISO.

``build`` takes the release by name from the release catalog, which is the source of truth for
its Talos version, Kubernetes version and installer image: a release that was never built (or
was revoked) is refused with exit 2 before anything is written. Every rendered document is
validated against the Talos machine-config schema: the one bundled with edgefleet by default,
or ``--talos-schema`` / ``EDGEFLEET_TALOS_SCHEMA`` for another Talos release; a patch that breaks
the schema stops the build (exit 2, nothing written). Secrets live in ``$EDGEFLEET_HOME/secrets``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from edgefleet.cli._common import (
    InventoryOpt,
    JsonOpt,
    console,
    edgefleet_home,
    err_console,
    existing_catalog,
    print_json,
)
from edgefleet.cli._limit import LimitOpt, alias_pattern, limit_stores
from edgefleet.errors import InputError
from edgefleet.outpaths import check_output_dir
from edgefleet.talos.config import ReleaseRef

app = typer.Typer(no_args_is_help=True, help="Build and inspect NoCloud seed ISOs (Talos machine configs).")


def release_ref(name: str) -> ReleaseRef:
    """The catalog's release ``name`` as a ``ReleaseRef``; ReleaseInputError (exit 2) if it was never
    built or was revoked."""
    return existing_catalog().require_rollable(name).ref()


@app.command()
def build(
    release: Annotated[str, typer.Option("--release", "-r", help="Release name from the catalog")],
    out: Annotated[Path, typer.Option("--out", help="Output directory: <out>/<store>/<node>.iso + index.json")],
    limit: LimitOpt = None,
    store: Annotated[list[str] | None, typer.Option("--store", help="Store id (repeat for several): an alias of "
                                                                    "--limit")] = None,
    all_stores: Annotated[bool, typer.Option("--all", help="Every store of the inventory: --limit all")] = False,
    node: Annotated[str | None, typer.Option("--node", help="Only this node")] = None,
    talos_schema: Annotated[Path | None, typer.Option(
        "--talos-schema", envvar="EDGEFLEET_TALOS_SCHEMA",
        help="Another Talos release's config.schema.json (default: the bundled one)")] = None,
    inventory: InventoryOpt = Path("inventory"),
    json_out: JsonOpt = False,
) -> None:
    """Build (incrementally) the seed ISOs of the stores --limit selects, or of one node."""
    from edgefleet.inventory.load import load_fleet
    from edgefleet.seeds.build import SeedEvent, build_seeds
    from edgefleet.talos.config import default_schema

    if limit is None and not store and not all_stores:
        raise InputError("give the stores: --limit PATTERN (e.g. -l country_dk, -l all), or --store ID / --all")
    check_output_dir(out, "--out")  # before anything is generated (secrets included)
    fleet = load_fleet(inventory)
    ids = limit_stores(fleet, limit, aliases={"--store": alias_pattern(store) if store else None,
                                              "--all": "all" if all_stores else None}) or []
    selected = [fleet.stores[s] for s in ids]
    ref = release_ref(release)
    schema = default_schema(talos_schema)
    total = sum(len(s.nodes) for s in selected) if node is None else 1
    done = 0

    def progress(ev: SeedEvent) -> None:
        nonlocal done
        done += 1
        if ev.action == "written" and total <= 50 and not json_out:
            err_console.print(f"wrote {ev.path}", markup=False)
        elif done % 1000 == 0:
            err_console.print(f"{done}/{total} nodes checked", markup=False)

    report = build_seeds(fleet, None if len(ids) == len(fleet.stores) else ids, node, ref,
                         edgefleet_home(), out, now=datetime.now(UTC), progress=progress, schema=schema)
    if json_out:
        print_json({"release": ref.name, "talos_version": ref.talos_version,
                    "kubernetes_version": ref.kubernetes_version, "installer_image": ref.installer_image,
                    "out": str(out), **report.as_dict()})
        return
    console.print(f"[green]ok[/green] {report.nodes} node(s) for release {ref.name} (Talos {ref.talos_version}, "
                  f"Kubernetes {ref.kubernetes_version}): {len(report.written)} written, {report.unchanged} "
                  f"unchanged, {report.skipped} up to date; secrets generated for {len(report.secrets_generated)} "
                  f"store(s) ({report.seconds:.2f} s)")


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="A seed ISO")],
    json_out: JsonOpt = False,
) -> None:
    """Print a seed ISO's label, sha256 and its three files."""
    from edgefleet.seeds.iso import read_seed_iso

    seed = read_seed_iso(path)
    files = {"user-data": seed.files.user_data, "meta-data": seed.files.meta_data,
             "network-config": seed.files.network_config}
    if json_out:
        print_json({"path": str(path), "label": seed.label, "sha256": seed.sha256,
                    "files": {k: v.decode("utf-8", "replace") for k, v in files.items()}})
        return
    console.print(f"{path}: label {seed.label}, sha256 {seed.sha256}", markup=False)
    for name, data in files.items():
        console.print(f"--- {name} ({len(data)} bytes)", markup=False)
        console.print(data.decode("utf-8", "replace").rstrip("\n"), markup=False, highlight=False, soft_wrap=True)


@app.command("nocloud-url")
def nocloud_url(
    store: Annotated[str, typer.Argument(help="Store id (a store with wipe_method: talos-api)")],
    node: Annotated[str | None, typer.Option("--node", help="Only this node (default: every node)")] = None,
    base_url: Annotated[str | None, typer.Option("--base-url", help="Seed server base URL the store's nodes reach "
                                                 "(default: the store's seed_url from the inventory)")] = None,
    inventory: InventoryOpt = Path("inventory"),
    json_out: JsonOpt = False,
) -> None:
    """Print each node's ``ds=nocloud-net;s=URL`` string: set it once, at a node's first install, as
    its SMBIOS serial number or a kernel argument of its boot assets. In-band reimages
    (``wipe_method: talos-api``) wipe the node and let it fetch its new seed from that URL, so the
    URL is stable: signed with the persistent key in the edgefleet home, which this creates on first
    use (deleting that key invalidates every such URL)."""
    from edgefleet.inventory.load import load_fleet
    from edgefleet.seeds.netseed import nocloud_datasource, nocloud_urls

    fleet = load_fleet(inventory)
    s = fleet.stores.get(store)
    if s is None:
        raise InputError(f"unknown store {store!r} in {inventory}")
    if node is not None and node not in {n.name for n in s.nodes}:
        raise InputError(f"store {store} has no node {node!r} (nodes: {', '.join(n.name for n in s.nodes)})")
    if s.seed_url is None and base_url is None:
        raise InputError(f"store {store} has no seed_url in the inventory: set it there (the address its nodes "
                         "reach the seed server under) or pass --base-url")
    home = edgefleet_home()
    home.mkdir(parents=True, exist_ok=True)
    urls = nocloud_urls(home, s, base_url or s.seed_url or "")
    rows = {name: nocloud_datasource(url) for name, url in urls.items() if node is None or name == node}
    if json_out:
        print_json({"store": store, "nodes": rows})
        return
    if s.wipe_method.value != "talos-api":
        err_console.print(f"note: store {store} is reimaged through its BMCs (wipe_method {s.wipe_method.value}); "
                          "these strings matter only for in-band (talos-api) reimages", markup=False)
    for name, ds in rows.items():
        console.print(f"{name}  {ds}", markup=False, soft_wrap=True)
