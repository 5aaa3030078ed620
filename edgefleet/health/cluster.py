"""What a healthy store looks like and whether a snapshot of its Kubernetes API shows one. Pure: no
I/O, no clock; results are small frozen dataclasses.

``PodRef`` and ``Eviction`` are a drain's view of a node's pods and of the Eviction API's answers
(``edgefleet.day2.drain`` decides, ``edgefleet.health.drainapi`` asks). ``parse_nodes`` reads a
``/api/v1/nodes`` list, ``expectation_for_store`` says what a healthy store looks like after a
rollout, ``evaluate_cluster`` and ``evaluate_probe`` give verdicts. The Kubernetes client that
produces snapshots is ``edgefleet.health.kube``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgefleet.inventory.model import Probe, Role, Store

__all__ = [
    "CONTROL_PLANE_LABEL",
    "ClusterSnapshot",
    "ClusterVerdict",
    "Eviction",
    "Expectation",
    "NodeStatus",
    "PodRef",
    "ProbeResult",
    "StoreHealth",
    "evaluate_cluster",
    "evaluate_probe",
    "expectation_for_store",
    "parse_nodes",
]

CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"


@dataclass(frozen=True, slots=True)
class NodeStatus:
    name: str
    ready: bool
    ready_reason: str  # the Ready condition's reason and message, or why there is none
    os_image: str
    kubelet_version: str
    labels: tuple[tuple[str, str], ...] = ()

    def label(self, key: str) -> str | None:
        return next((v for k, v in self.labels if k == key), None)


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """What the Kubernetes API said, as read at one moment."""

    endpoint: str
    readyz_ok: bool
    readyz_detail: str
    nodes: tuple[NodeStatus, ...]


@dataclass(frozen=True, slots=True)
class Expectation:
    """A healthy store: these nodes present and Ready, on this version, with these roles."""

    nodes: tuple[str, ...]
    control_planes: tuple[str, ...] = ()
    kubelet_version: str | None = None  # "1.35.0" or "v1.35.0"
    os_image: str | None = None  # a substring of nodeInfo.osImage, e.g. "Talos (v1.9.2)" or "v1.9.2"
    labels: tuple[tuple[str, str], ...] = ()  # labels every expected node must carry


@dataclass(frozen=True, slots=True)
class ClusterVerdict:
    healthy: bool
    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    name: str
    url: str
    ok: bool
    status: int | None
    detail: str
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class StoreHealth:
    store: str
    cluster: ClusterVerdict
    probes: tuple[ProbeResult, ...]

    @property
    def healthy(self) -> bool:
        return self.cluster.healthy and all(p.ok for p in self.probes)

    @property
    def problems(self) -> tuple[str, ...]:
        return self.cluster.problems + tuple(f"probe {p.name}: {p.detail}" for p in self.probes if not p.ok)


def parse_nodes(body: Any) -> tuple[NodeStatus, ...]:
    """Nodes from a ``/api/v1/nodes`` NodeList. Raises ``ValueError`` when it is not one."""
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        raise ValueError("not a NodeList: no items list")
    out = []
    for item in body["items"]:
        if not isinstance(item, dict):
            raise ValueError("a NodeList item is not an object")
        meta = item.get("metadata") if isinstance(item.get("metadata"), dict) else {}
        status = item.get("status") if isinstance(item.get("status"), dict) else {}
        assert isinstance(meta, dict) and isinstance(status, dict)
        name = meta.get("name")
        if not isinstance(name, str):
            raise ValueError("a node without metadata.name")
        ready, reason = False, "no Ready condition reported"
        for cond in status.get("conditions") or []:
            if isinstance(cond, dict) and cond.get("type") == "Ready":
                ready = cond.get("status") == "True"
                reason = " ".join(str(cond[k]) for k in ("reason", "message") if cond.get(k)) or str(
                    cond.get("status"))
        info = status.get("nodeInfo") if isinstance(status.get("nodeInfo"), dict) else {}
        assert isinstance(info, dict)
        labels = meta.get("labels") if isinstance(meta.get("labels"), dict) else {}
        assert isinstance(labels, dict)
        out.append(NodeStatus(
            name=name, ready=ready, ready_reason=reason, os_image=str(info.get("osImage", "")),
            kubelet_version=str(info.get("kubeletVersion", "")),
            labels=tuple(sorted((str(k), str(v)) for k, v in labels.items()))))
    return tuple(out)


def expectation_for_store(store: Store, *, os_image: str | None = None, kubelet_version: str | None = None,
                          labels: Mapping[str, str] | None = None) -> Expectation:
    """Every inventory node present, control planes labelled, kubelet on the store's Kubernetes
    version (unless given), and ``os_image`` (the release's Talos version) when given."""
    return Expectation(
        nodes=tuple(n.name for n in store.nodes),
        control_planes=tuple(n.name for n in store.nodes if n.role is Role.controlplane),
        kubelet_version=kubelet_version or store.cluster.kubernetes_version,
        os_image=os_image, labels=tuple(sorted((labels or {}).items())))


def _v(version: str) -> str:
    return version.strip().removeprefix("v")


def evaluate_cluster(snapshot: ClusterSnapshot, expect: Expectation) -> ClusterVerdict:
    """The verdict on one snapshot: every problem found, in a stable order. Extra nodes are allowed."""
    problems: list[str] = []
    if not snapshot.readyz_ok:
        problems.append(f"API server not ready: {snapshot.readyz_detail}")
    by_name = {n.name: n for n in snapshot.nodes}
    for name in expect.nodes:
        node = by_name.get(name)
        if node is None:
            problems.append(f"node {name} is not registered")
            continue
        if not node.ready:
            problems.append(f"node {name} is NotReady: {node.ready_reason}")
        if expect.kubelet_version and _v(node.kubelet_version) != _v(expect.kubelet_version):
            problems.append(f"node {name} runs kubelet {node.kubelet_version or '(unknown)'}, expected "
                            f"v{_v(expect.kubelet_version)}")
        if expect.os_image and expect.os_image not in node.os_image:
            problems.append(f"node {name} runs {node.os_image or '(unknown OS)'!r}, expected {expect.os_image!r}")
        if name in expect.control_planes and node.label(CONTROL_PLANE_LABEL) is None:
            problems.append(f"node {name} should be a control plane but lacks the {CONTROL_PLANE_LABEL} label")
        for key, value in expect.labels:
            if node.label(key) != value:
                problems.append(f"node {name} has label {key}={node.label(key)!r}, expected {value!r}")
    return ClusterVerdict(healthy=not problems, problems=tuple(problems))


def evaluate_probe(probe: Probe, status: int | None, error: str | None, elapsed_s: float) -> ProbeResult:
    """A custom probe passes when it answered with the expected status."""
    if error is not None:
        return ProbeResult(probe.name, probe.url, False, status, error, elapsed_s)
    ok = status == probe.expect_status
    detail = f"HTTP {status}" + ("" if ok else f", expected {probe.expect_status}")
    return ProbeResult(probe.name, probe.url, ok, status, detail, elapsed_s)


@dataclass(frozen=True, slots=True)
class PodRef:
    namespace: str
    name: str
    daemonset: bool = False


@dataclass(frozen=True, slots=True)
class Eviction:
    """The Eviction API's answer: ``status`` 201/200 (evicted), 404 (gone), 429 (a budget forbids
    it now: ``budget`` and ``message`` say which and why)."""

    status: int
    message: str = ""
    budget: str = ""

    @property
    def done(self) -> bool:
        return self.status in (200, 201, 404)
