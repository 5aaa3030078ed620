"""Read-only views of the simulated fleet for the simulator's HTTP API (``edgefleet.sim.routes``)
and tests: one node's state, and the request counts per operation and per node."""

from __future__ import annotations

from typing import Any

from edgefleet.sim.fleet import NodeState, SimFleet

__all__ = ["node_request_counts", "node_view", "operation_request_counts"]


def node_view(sim: SimFleet, ns: NodeState) -> dict[str, Any]:
    ready, why = sim.readiness(ns)
    return {"store": ns.store.id, "role": ns.node.role.value, "power": ns.power, "booting": ns.booting,
            "release": ns.release, "talos_version": ns.talos_version, "kubelet_version": ns.kubelet_version,
            "ready": ready, "reason": why, "joined": ns.joined,
            "boot": {"target": ns.boot_target, "enabled": ns.boot_enabled},
            "media": {k: {"image": m.url, "sha256": m.sha256, "kind": m.kind} for k, m in ns.media.items()},
            "seed_instance_id": ns.seed_instance_id, "operation": ns.operation}


def node_request_counts(sim: SimFleet) -> dict[str, dict[str, int]]:
    """node -> request kind -> how many requests targeted that node (``SimFleet.node_requests``)."""
    out: dict[str, dict[str, int]] = {}
    for (node, kind), n in sorted(sim.node_requests.items()):
        out.setdefault(node, {})[kind] = n
    return out


def operation_request_counts(sim: SimFleet) -> dict[str, dict[str, int]]:
    """operation id -> store -> BMC requests that carried it (any method, faults included)."""
    out: dict[str, dict[str, int]] = {}
    for (op, store), n in sim.operation_requests.items():
        out.setdefault(op, {})[store] = n
    return out
