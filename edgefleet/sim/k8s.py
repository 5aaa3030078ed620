"""The simulated stores' Kubernetes API: ``/k8s/<store>/readyz`` and ``/k8s/<store>/api/v1/nodes``.

A store's API is up while one of its control planes is powered on, booted and joined (and the
store is not offline in the scenario); otherwise every path answers 503, as a load balancer in
front of a dead API server would (connection refused cannot be simulated per store on one port).
Node writes and drains: ``PATCH .../nodes/NAME`` (a merge patch; ``spec.unschedulable`` is what
it changes: cordon), ``GET .../pods?fieldSelector=spec.nodeName=NAME`` and ``POST
.../namespaces/NS/pods/NAME/eviction`` (the Eviction API, PodDisruptionBudgets as
``edgefleet.sim.workloads`` keeps them). The NodeList has the real shape (``metadata.name``/
``labels``, ``status.conditions`` with the ``Ready`` condition, ``status.addresses``,
``status.nodeInfo.osImage``/``kubeletVersion``). Nodes
stay listed while down, NotReady, as a real cluster keeps their Node objects. Client
certificates are not checked.
"""

from __future__ import annotations

import uuid
from typing import Any

from edgefleet.sim.fleet import NodeState, SimFleet

__all__ = ["node_list", "node_object", "pod_list", "readyz"]

_UUID_NS = uuid.UUID("0b7f8c52-31a4-4b1e-8a4e-6a8f3f2d9c11")


def node_object(sim: SimFleet, ns: NodeState, now: str) -> dict[str, Any]:
    ready, why = sim.readiness(ns)
    return {
        "metadata": {"name": ns.name, "uid": str(uuid.uuid5(_UUID_NS, ns.name)), "labels": ns.node_labels(),
                     "resourceVersion": str(ns.generation)},
        "spec": {"unschedulable": True} if ns.name in sim.workloads.stores[ns.store.id].cordoned else {},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                            "reason": "KubeletReady" if ready else "KubeletNotReady", "message": why,
                            "lastHeartbeatTime": now}],
            "addresses": [{"type": "InternalIP", "address": str(ns.node.ip)},
                          {"type": "Hostname", "address": ns.name}],
            "nodeInfo": {"osImage": f"Talos ({ns.talos_version})", "kubeletVersion": ns.kubelet_version,
                         "operatingSystem": "linux", "architecture": "amd64",
                         "containerRuntimeVersion": "containerd://2.1.5", "kernelVersion": "6.18.0-talos"},
        },
    }


def node_list(sim: SimFleet, store_id: str) -> dict[str, Any]:
    now = sim.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
    items = [node_object(sim, ns, now) for ns in sim.store_nodes[store_id]]
    version = sum(ns.generation for ns in sim.store_nodes[store_id])
    return {"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": str(version)}, "items": items}


def readyz(sim: SimFleet, store_id: str) -> tuple[int, str]:
    if sim.store_up(store_id):
        return 200, "ok"
    why = "store offline" if store_id in sim.offline else "no control plane is up"
    return 503, f"[-]etcd failed: {why}\nreadyz check failed\n"


def pod_list(sim: SimFleet, store_id: str, node: str | None) -> dict[str, Any]:
    items = [p.as_object() for p in sim.workloads.pods(store_id, node)]
    return {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": str(sim.event_seq)},
            "items": items}
