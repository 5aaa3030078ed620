"""The simulated stores' workloads, for node drains: a few pods per node, one Deployment per
store spread over its schedulable nodes, guarded by a PodDisruptionBudget, and cordons.

What a drain meets in a real cluster, in little: ``cordon`` marks a node unschedulable
(``spec.unschedulable``); ``evict`` is the Eviction API's answer for one pod: 201 when the pod's
budget allows a disruption (the pod goes; its ReplicaSet starts a replacement at once on another
schedulable, Ready node of the store, when there is one), 429 "Cannot evict pod as it would violate
the pod's disruption budget." with the budget's cause when it does not (the API server's words),
404 for a pod that is gone. A budget's allowed disruptions are its healthy pods (on a Ready node)
minus ``minAvailable``, as the disruption controller computes them.

Per store: Deployment ``web`` with one replica per schedulable node (workers, or the control
planes of a store without workers), PDB ``web`` with ``minAvailable`` one less than the replicas
(``strict_pdbs`` in the scenario: all of them, so nothing may be evicted); a DaemonSet pod
``node-exporter`` on every node, which a drain leaves alone (as ``kubectl drain
--ignore-daemonsets``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Pod", "StoreWorkloads", "Workloads"]

NAMESPACE = "shop"


@dataclass(slots=True)
class Pod:
    name: str
    node: str
    app: str
    daemonset: bool = False

    def as_object(self) -> dict[str, Any]:
        owner = {"kind": "DaemonSet" if self.daemonset else "ReplicaSet", "name": self.app, "controller": True}
        return {"metadata": {"name": self.name, "namespace": NAMESPACE, "labels": {"app": self.app},
                             "ownerReferences": [owner]},
                "spec": {"nodeName": self.node}, "status": {"phase": "Running"}}


@dataclass(slots=True)
class StoreWorkloads:
    """One store's pods, its ``web`` budget and its cordoned nodes."""

    pods: dict[str, Pod]
    min_available: int
    cordoned: set[str] = field(default_factory=set)
    serial: int = 0

    def on(self, node: str) -> list[Pod]:
        return [p for p in self.pods.values() if p.node == node]


class Workloads:
    """Every store's workloads; ``ready(node)`` says whether a node is Ready (the simulator's view)."""

    def __init__(self, store_nodes: dict[str, Sequence[tuple[str, bool]]], strict: Collection[str],
                 ready: Callable[[str], bool]):
        self.ready = ready
        self.stores: dict[str, StoreWorkloads] = {}
        for sid, nodes in store_nodes.items():
            workers = [n for n, cp in nodes if not cp]
            hosts = workers or [n for n, _ in nodes]
            pods = {f"web-{i + 1}": Pod(f"web-{i + 1}", h, "web") for i, h in enumerate(hosts)}
            pods.update({f"node-exporter-{n}": Pod(f"node-exporter-{n}", n, "node-exporter", daemonset=True)
                         for n, _ in nodes})
            self.stores[sid] = StoreWorkloads(pods, len(hosts) if sid in strict else max(0, len(hosts) - 1),
                                              serial=len(hosts))

    def cordon(self, store: str, node: str, unschedulable: bool) -> None:
        w = self.stores[store]
        if unschedulable:
            w.cordoned.add(node)
        else:
            w.cordoned.discard(node)

    def pods(self, store: str, node: str | None = None) -> list[Pod]:
        w = self.stores[store]
        return [p for p in w.pods.values() if node is None or p.node == node]

    def evict(self, store: str, pod: str, nodes: Sequence[str]) -> tuple[int, dict[str, Any]]:
        """The Eviction API's status and Status body for ``pod`` (``nodes``: the store's nodes)."""
        w = self.stores[store]
        p = w.pods.get(pod)
        if p is None:
            return 404, _status(404, "NotFound", f'pods "{pod}" not found')
        if not p.daemonset:
            healthy = sum(1 for q in w.pods.values() if q.app == p.app and self.ready(q.node))
            if healthy - w.min_available <= 0:
                cause = {"reason": "DisruptionBudget",
                         "message": f"The disruption budget {p.app} needs {w.min_available} healthy pods and has "
                                    f"{healthy} currently"}
                body = _status(429, "TooManyRequests",
                               "Cannot evict pod as it would violate the pod's disruption budget.")
                body["details"] = {"causes": [cause]}
                return 429, body
        del w.pods[pod]
        if not p.daemonset:
            self._replace(w, p, nodes)
        return 201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}

    def _replace(self, w: StoreWorkloads, gone: Pod, nodes: Sequence[str]) -> None:
        spots = [n for n in nodes if n not in w.cordoned and n != gone.node and self.ready(n)]
        if not spots:
            return
        load = {n: len(w.on(n)) for n in spots}
        w.serial += 1
        name = f"{gone.app}-{w.serial}"
        w.pods[name] = Pod(name, min(spots, key=lambda n: (load[n], n)), gone.app)


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
