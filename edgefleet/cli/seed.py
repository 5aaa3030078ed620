"""``edgefleet seed``: build the NoCloud seed ISOs of stores or nodes, and inspect a seed ISO.

``build`` takes the release by name. Until the release catalog resolves names, the versions come
from options, with defaults read from the name:

* ``--talos-version``: default, the first ``X.Y.Z`` in the name (``talos-v1.12.6-r3`` -> v1.12.6);
* ``--kubernetes-version``: default, ``k8s-X.Y.Z`` in the name, else the selected stores'
  ``cluster.kubernetes_version`` (they must agree);
* ``--installer-image``: default, the vanilla ``ghcr.io/siderolabs/installer:<talos version>``.

``--talos-schema`` (or ``EDGEFLEET_TALOS_SCHEMA``): the Talos release's ``config.schema.json``;
with it every rendered document is validated, so a patch that breaks the schema stops the build
(exit 2, nothing written). Secrets live in ``$EDGEFLEET_HOME/secrets``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from edgefleet.cli._common import InventoryOpt, JsonOpt, console, edgefleet_home, err_console, print_json
from edgefleet.errors import InputError
from edgefleet.inventory.model import Store
from edgefleet.talos.config import ReleaseRef

app = typer.Typer(no_args_is_help=True, help="Build and inspect NoCloud seed ISOs (Talos machine configs).")

_TALOS_IN_NAME = re.compile(r"(?<![\d.])v?(\d+\.\d+\.\d+)")
_K8S_IN_NAME = re.compile(r"(?:k8s|kubernetes)[-_]?v?(\d+\.\d+\.\d+)")
VANILLA_INSTALLER = "ghcr.io/siderolabs/installer"


def resolve_release(name: str, stores: Sequence[Store], *, talos_version: str | None = None,
                    kubernetes_version: str | None = None, installer_image: str | None = None) -> ReleaseRef:
    """A ``ReleaseRef`` from a release name and options (see the module docstring)."""
    if talos_version is None:
        m = _TALOS_IN_NAME.search(_K8S_IN_NAME.sub("", name))
        if m is None:
            raise InputError(f"release {name!r}: no Talos version in its name; give --talos-version")
        talos_version = f"v{m.group(1)}"
    talos_version = talos_version if talos_version.startswith("v") else f"v{talos_version}"
    if kubernetes_version is None:
        m = _K8S_IN_NAME.search(name)
        if m is not None:
            kubernetes_version = m.group(1)
        else:
            found = sorted({s.cluster.kubernetes_version for s in stores})
            if len(found) != 1:
                raise InputError(f"the selected stores run different Kubernetes versions ({', '.join(found)}); "
                                 "give --kubernetes-version")
            kubernetes_version = found[0]
    image = installer_image or f"{VANILLA_INSTALLER}:{talos_version}"
    return ReleaseRef(name=name, talos_version=talos_version, kubernetes_version=kubernetes_version,
                      installer_image=image)


@app.command()
def build(
    release: Annotated[str, typer.Option("--release", help="Release name (a Kubernetes label value)")],
    out: Annotated[Path, typer.Option("--out", help="Output directory: <out>/<store>/<node>.iso + index.json")],
    store: Annotated[list[str] | None, typer.Option("--store", help="Store id (repeat for several)")] = None,
    all_stores: Annotated[bool, typer.Option("--all", help="Every store of the inventory")] = False,
    node: Annotated[str | None, typer.Option("--node", help="Only this node")] = None,
    talos_version: Annotated[str | None, typer.Option("--talos-version", help="Default: from the name")] = None,
    kubernetes_version: Annotated[str | None, typer.Option(
        "--kubernetes-version", help="Default: k8s-X.Y.Z in the name, else the stores' cluster version")] = None,
    installer_image: Annotated[str | None, typer.Option(
        "--installer-image", help=f"Default: {VANILLA_INSTALLER}:<talos version>")] = None,
    talos_schema: Annotated[Path | None, typer.Option(
        "--talos-schema", envvar="EDGEFLEET_TALOS_SCHEMA",
        help="Talos config.schema.json: validate every document (recommended)")] = None,
    inventory: InventoryOpt = Path("inventory"),
    json_out: JsonOpt = False,
) -> None:
    """Build (incrementally) the seed ISOs of the given stores, or of one node."""
    from edgefleet.inventory.load import load_fleet
    from edgefleet.seeds.build import SeedEvent, build_seeds
    from edgefleet.talos.config import TalosSchema

    if bool(store) == all_stores:
        raise InputError("give either --store ID (one or more) or --all")
    fleet = load_fleet(inventory)
    selected = list(fleet.stores.values()) if all_stores else [fleet.store(s) for s in dict.fromkeys(store or [])]
    ref = resolve_release(release, selected, talos_version=talos_version, kubernetes_version=kubernetes_version,
                          installer_image=installer_image)
    schema = TalosSchema.load(talos_schema) if talos_schema is not None else None
    if schema is None and any(s.talos_patches or any(n.talos_patches for n in s.nodes) for s in selected):
        err_console.print("note: talos_patches are merged but not checked against the Talos schema "
                          "(give --talos-schema or EDGEFLEET_TALOS_SCHEMA)")
    total = sum(len(s.nodes) for s in selected) if node is None else 1
    done = 0

    def progress(ev: SeedEvent) -> None:
        nonlocal done
        done += 1
        if ev.action == "written" and total <= 50 and not json_out:
            err_console.print(f"wrote {ev.path}", markup=False)
        elif done % 1000 == 0:
            err_console.print(f"{done}/{total} nodes checked", markup=False)

    report = build_seeds(fleet, None if all_stores else list(dict.fromkeys(store or [])), node, ref,
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
    from edgefleet.rollout.executor import nocloud_urls
    from edgefleet.seeds.netseed import nocloud_datasource

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
