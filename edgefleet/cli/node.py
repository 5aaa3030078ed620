"""``edgefleet node add|replace|remove STORE NODE``: day-2 operations on one node of a running
store (``edgefleet.day2``), each recorded in the ledger and run inside the store's maintenance
window, touching no other node.

The node is read from the inventory: ``add`` and ``replace`` need it listed as it must become (a
new worker; the replacement's MAC and BMC under the same name), ``remove`` needs it still listed
(its address, role and BMC are what reach it); delete it from the inventory afterwards.
``--dry-run`` prints the steps and changes nothing. Destructive ones (replace, remove) ask first on
a terminal; elsewhere they need ``--yes``. Exit codes: 0 done, 1 the operation failed (a closed
window, quorum at risk, a drain a disruption budget blocks), 2 bad input (nothing done).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgefleet.cli._common import App, InventoryOpt, JsonOpt, console, edgefleet_home, print_json
from edgefleet.cli.rollout import SimOpt, _endpoints, _engine, _finish, _fleet, _operator
from edgefleet.errors import InputError

if TYPE_CHECKING:
    from edgefleet.day2.plan import NodeOp, NodeOpKind
    from edgefleet.inventory.model import Fleet
    from edgefleet.rollout.ledger import RolloutRecord

app = App(help="Day-2 operations on one node of a running store: add a worker, replace a node, remove a node.")

StoreArg = Annotated[str, typer.Argument(metavar="STORE", help="Store id", show_default=False)]
NodeArg = Annotated[str, typer.Argument(metavar="NODE", help="Node name, as the inventory lists it",
                                        show_default=False)]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Show the steps; change nothing")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation")]
NodeTimeoutOpt = Annotated[float, typer.Option("--node-timeout", min=0.1, help="Seconds the node may take to be "
                                                                               "Ready after its boot")]


def _plan(inventory: Path, kind: NodeOpKind, store: str, node: str) -> tuple[NodeOp, Fleet]:
    from edgefleet.day2.plan import plan_node_op

    fleet = _fleet(inventory)
    return plan_node_op(fleet, kind, store, node), fleet


def _show_plan(op: NodeOp, json_out: bool) -> None:
    if json_out:
        print_json({"operation": f"node {op.kind.value}", "store": op.store.id, "node": op.node.name,
                    "role": op.node.role.value, "steps": list(op.steps), "dry_run": True})
        return
    console.print(f"node {op.kind.value} {op.store.id} {op.node.name} ({op.node.role.value}), dry run:",
                  markup=False)
    for i, step in enumerate(op.steps, 1):
        console.print(f"  {i}. {step}", markup=False)


def _confirm(op: NodeOp, yes: bool) -> None:
    what = f"{op.kind.value} node {op.node.name} of store {op.store.id} (1 store, 1 node)"
    if yes:
        return
    if not sys.stdin.isatty():
        raise InputError(f"refusing to {what} without confirmation: not on a terminal; add --yes")
    typer.confirm(f"{what[0].upper()}{what[1:]}?", abort=True)


def _run(kind: NodeOpKind, store: str, node: str, inventory: Path, sim: str | None, dry_run: bool, yes: bool,
         json_out: bool, node_timeout: float = 1800.0) -> None:
    from edgefleet.day2.nodes import NodeOpRun, run_join, run_remove
    from edgefleet.day2.plan import NodeOpKind
    from edgefleet.rollout.settings import EngineSettings

    op, fleet = _plan(inventory, kind, store, node)
    if dry_run:
        _show_plan(op, json_out)
        return
    if kind is not NodeOpKind.add:
        _confirm(op, yes)
    engine = _engine()

    async def main() -> RolloutRecord:
        run = NodeOpRun(fleet, edgefleet_home(), engine, await _endpoints(fleet, sim), op, operator=_operator())
        if kind is NodeOpKind.remove:
            return await run_remove(run)
        return await run_join(run, settings=EngineSettings(node_ready_timeout_s=node_timeout))

    _finish(engine, asyncio.run(main()), json_out)


@app.command()
def add(store: StoreArg, node: NodeArg, inventory: InventoryOpt = Path("inventory"), dry_run: DryRunOpt = False,
        node_timeout: NodeTimeoutOpt = 1800.0, sim: SimOpt = None, json_out: JsonOpt = False) -> None:
    """Add the worker NODE (new in the inventory) to the running STORE: its seed is built, it boots
    from its BMC with the store's release and joins; no other node is reimaged.

    Examples:

      edgefleet node add dk-001 dk-001-w3 --dry-run
      edgefleet node add dk-001 dk-001-w3"""
    from edgefleet.day2.plan import NodeOpKind

    _run(NodeOpKind.add, store, node, inventory, sim, dry_run, True, json_out, node_timeout)


@app.command()
def replace(store: StoreArg, node: NodeArg, inventory: InventoryOpt = Path("inventory"), dry_run: DryRunOpt = False,
            yes: YesOpt = False, node_timeout: NodeTimeoutOpt = 1800.0, sim: SimOpt = None,
            json_out: JsonOpt = False) -> None:
    """Install replacement hardware as NODE of STORE (the inventory gives its new MAC and BMC under
    the same name). For a control plane the dead machine's etcd member is removed first, through a
    healthy control plane; a MAC or BMC already used by another node is refused (exit 2).

    Examples:

      edgefleet node replace dk-001 dk-001-n2 --dry-run
      edgefleet node replace dk-001 dk-001-n2 --yes"""
    from edgefleet.day2.plan import NodeOpKind

    _run(NodeOpKind.replace, store, node, inventory, sim, dry_run, yes, json_out, node_timeout)


@app.command()
def remove(store: StoreArg, node: NodeArg, inventory: InventoryOpt = Path("inventory"), dry_run: DryRunOpt = False,
           yes: YesOpt = False, sim: SimOpt = None, json_out: JsonOpt = False) -> None:
    """Take NODE out of STORE: drain it (cordon, evictions respecting PodDisruptionBudgets), a
    control plane leaves etcd (refused when the store would lose quorum, or for its last control
    plane), then Talos Reset wipes it and it stays off. Delete it from the inventory afterwards.

    Examples:

      edgefleet node remove dk-001 dk-001-w2 --dry-run
      edgefleet node remove dk-001 dk-001-w2 --yes"""
    from edgefleet.day2.plan import NodeOpKind

    _run(NodeOpKind.remove, store, node, inventory, sim, dry_run, yes, json_out)
