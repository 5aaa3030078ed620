"""What a day-2 node operation will do, decided before anything is touched (pure).

``plan_node_op`` reads the node from the inventory and refuses (``NodeOperationRefused``, exit 2,
nothing done) what can be known to be wrong from the inventory alone:

* ``add``: the node must be a worker of the store (control planes join by growing the store);
* ``replace``: its MAC (and its BMC address) must not be another node's anywhere in the fleet;
* ``remove``: not the store's last control plane (that is a decommission).

What depends on the store as it is now is decided when it runs: ``member_may_go`` is etcd's own
rule (the members left must still have a started quorum), judged from the members the Talos API
lists and which of them are Ready in Kubernetes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from edgefleet.errors import NodeOperationRefused
from edgefleet.inventory.model import Fleet, Node, Role, Store

__all__ = ["NodeOp", "NodeOpKind", "member_may_go", "plan_node_op", "quorum_problem"]


class NodeOpKind(Enum):
    add = "add"
    replace = "replace"
    remove = "remove"


@dataclass(frozen=True, slots=True)
class NodeOp:
    """One node operation: its store and node (from the inventory) and its steps, in order."""

    kind: NodeOpKind
    store: Store
    node: Node
    steps: tuple[str, ...]

    @property
    def control_plane(self) -> bool:
        return self.node.role is Role.controlplane


def _where(fleet: Fleet, store: Store) -> str:
    return f"{fleet.source or 'the inventory'}: store {store.id}"


def plan_node_op(fleet: Fleet, kind: NodeOpKind, store_id: str, node_name: str) -> NodeOp:
    """The operation ``kind`` on node ``node_name`` of store ``store_id`` (module docstring)."""
    store = fleet.stores.get(store_id)
    if store is None:
        raise NodeOperationRefused(f"no store {store_id!r} in {fleet.source or 'the inventory'}")
    node = next((n for n in store.nodes if n.name == node_name), None)
    if node is None:
        have = ", ".join(n.name for n in store.nodes)
        raise NodeOperationRefused(f"{_where(fleet, store)} has no node {node_name!r} (it has {have}); "
                                   + ("add it to the store's nodes first" if kind is not NodeOpKind.remove else
                                      "a node is removed while the inventory still lists it"))
    cps = [n for n in store.nodes if n.role is Role.controlplane]
    if kind is NodeOpKind.add:
        if node.role is Role.controlplane:
            raise NodeOperationRefused(f"{_where(fleet, store)}: node {node_name} is a control plane; "
                                       "`node add` adds workers (control planes join by growing the store)")
        steps = ("window open", f"seed {node_name}", f"boot {node_name} from its BMC with the release and its seed",
                 f"{node_name} Ready on the store's release")
    elif kind is NodeOpKind.replace:
        _check_unique_hardware(fleet, store, node)
        steps = ("window open",
                 *((f"remove {node_name}'s old etcd member through a healthy other control plane",)
                   if node.role is Role.controlplane else ()),
                 f"seed {node_name}", f"boot the new {node_name} ({node.mac}) from its BMC with its seed",
                 f"{node_name} Ready on the store's release")
    else:
        if node.role is Role.controlplane and len(cps) == 1:
            raise NodeOperationRefused(f"{_where(fleet, store)}: node {node_name} is the store's last control "
                                       "plane; removing it ends the cluster: decommission the store instead")
        steps = ("window open",
                 *(("etcd quorum holds without it",) if node.role is Role.controlplane else ()),
                 f"drain {node_name} (cordon, evictions respecting PodDisruptionBudgets)",
                 *((f"{node_name} leaves etcd",) if node.role is Role.controlplane else ()),
                 f"Talos Reset of {node_name} (wipe, power off)",
                 f"then delete {node_name} from the inventory")
    return NodeOp(kind, store, node, steps)


def _check_unique_hardware(fleet: Fleet, store: Store, node: Node) -> None:
    for other_store in fleet.stores.values():
        for other in other_store.nodes:
            if other.name == node.name:
                continue
            if other.mac == node.mac:
                raise NodeOperationRefused(
                    f"{_where(fleet, store)}, node {node.name}: mac {node.mac} is already node {other.name}'s "
                    f"(store {other_store.id}); give the replacement its own MAC in the inventory")
            if node.bmc is not None and other.bmc is not None and other.bmc.url == node.bmc.url:
                raise NodeOperationRefused(
                    f"{_where(fleet, store)}, node {node.name}: bmc.url {node.bmc.url} is already node "
                    f"{other.name}'s (store {other_store.id}); give the replacement its own BMC address")


def member_may_go(roster: Mapping[str, bool], member: str) -> bool:
    """etcd's strict reconfiguration rule: after ``member`` goes, the members left (``roster``:
    name -> up) must still have a started quorum."""
    rest = [up for name, up in roster.items() if name != member]
    return sum(rest) >= len(rest) // 2 + 1


def quorum_problem(store: Store, roster: Mapping[str, bool], member: str) -> str | None:
    """Why ``member`` may not leave ``store``'s etcd now (None: it may)."""
    if member_may_go(roster, member):
        return None
    down = sorted(n for n, up in roster.items() if not up and n != member)
    return (f"store {store.id}: etcd would lose quorum without {member}: members "
            f"{', '.join(sorted(roster))}" + (f", of which {', '.join(down)} down" if down else "")
            + "; wait until every other control plane is healthy (or repair the one that is down first)")
