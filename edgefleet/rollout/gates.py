"""Gate verdicts: is a node, a store, a control-plane quorum, a wave good enough to go on?

Pure: observations (a ``ClusterSnapshot`` from the store's Kubernetes API, custom probe results,
etcd members from the Talos API, counts of store outcomes) and instants come in; a verdict comes
out. The executor decides what to do with it (wait, roll back, halt, pause).

Verdicts:

* ``passed``: go on;
* ``pending``: not yet (a node still booting); the caller waits, bounded by its own timeout;
* ``failed``: no, with reasons a person can act on.

Wave gate (the failure budget): more failures than the budget halts the rollout, exactly the
budget does not. Stores whose outcome could not be determined (``inconclusive``) pause the
rollout for a person only when they could tip the wave over its budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from edgefleet.errors import KubeApiError, KubeApiUnreachable, KubeCredentialsRefused
from edgefleet.health.cluster import ClusterSnapshot, ProbeResult, evaluate_cluster, expectation_for_store
from edgefleet.inventory.model import Node, Role, Store
from edgefleet.talos.config import LABEL_RELEASE as RELEASE_LABEL  # the one definition: what configs write

__all__ = [
    "RELEASE_LABEL",
    "NodeBefore",
    "Observed",
    "Verdict",
    "VerdictKind",
    "WaveDecision",
    "api_unread_reason",
    "evaluate_node",
    "evaluate_quorum",
    "evaluate_rollback_node",
    "evaluate_store",
    "evaluate_wave",
    "node_on_release",
    "repair_order",
]



class VerdictKind(StrEnum):
    passed = "passed"
    pending = "pending"
    soaking = "soaking"
    """Healthy, waiting out the store's soak time (a kind of pending)."""
    failed = "failed"


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: VerdictKind
    reasons: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.kind is VerdictKind.passed

    def why(self) -> str:
        return "; ".join(self.reasons) or self.kind.value


PASSED = Verdict(VerdictKind.passed)


@dataclass(frozen=True, slots=True)
class NodeBefore:
    """A node as observed before the operation touched it."""

    release: str | None
    ready: bool


# What the store's Kubernetes API said: a snapshot, or why it could not be read (None: unknown).
Observed = ClusterSnapshot | KubeApiError | None


def _pending(*reasons: str) -> Verdict:
    return Verdict(VerdictKind.pending, tuple(reasons))


def api_unread_reason(error: KubeApiError | None) -> str:
    """Why a gate could not look at the store (pure): credentials refused, no answer, or unreadable.
    The error's detail only: the store is the gate's, and its endpoint is not for the ledger."""
    if isinstance(error, KubeCredentialsRefused):
        return f"the store's Kubernetes API refused edgefleet's credentials ({error.detail})"
    if error is None:
        return "the store's Kubernetes API does not answer"
    if isinstance(error, KubeApiUnreachable):
        return f"the store's Kubernetes API does not answer ({error.detail})"
    return f"the store's Kubernetes API cannot be read ({error.detail})"


def node_on_release(snapshot: Observed, node: str, release: str, talos_version: str | None) -> bool:
    """Ready, labelled with ``release`` and (when given) running ``talos_version``: nothing to do."""
    return evaluate_node(snapshot, node, release, talos_version).passed


def evaluate_node(snapshot: Observed, node: str, release: str, talos_version: str | None) -> Verdict:
    """Node gate: the node is registered, Ready, labelled ``edgefleet.io/release=<release>`` and its
    OS image names ``talos_version``. No snapshot (an error, or None): the API could not be read
    (pending, saying why)."""
    if not isinstance(snapshot, ClusterSnapshot):
        return _pending(api_unread_reason(snapshot))
    st = next((n for n in snapshot.nodes if n.name == node), None)
    if st is None:
        return _pending(f"node {node} is not registered")
    reasons = []
    if st.label(RELEASE_LABEL) != release:
        reasons.append(f"node {node} has {RELEASE_LABEL}={st.label(RELEASE_LABEL)!r}, expected {release!r}")
    if talos_version and talos_version not in st.os_image:
        reasons.append(f"node {node} runs {st.os_image!r}, expected Talos {talos_version}")
    if not st.ready:
        reasons.append(f"node {node} is NotReady: {st.ready_reason}")
    return _pending(*reasons) if reasons else PASSED


def evaluate_rollback_node(snapshot: Observed, node: str, release: str, before: NodeBefore | None,
                           talos_version: str | None) -> Verdict:
    """A node brought back to ``release``: as ``evaluate_node``, except that a node which was not
    Ready before the operation touched it only has to be back on the release (label), not Ready."""
    v = evaluate_node(snapshot, node, release, talos_version)
    if v.passed or before is None or before.ready or not isinstance(snapshot, ClusterSnapshot):
        return v
    st = next((n for n in snapshot.nodes if n.name == node), None)
    if st is not None and st.label(RELEASE_LABEL) == release:
        return PASSED
    return v


def _healthy_member(snapshot: ClusterSnapshot, name: str, etcd_members: Sequence[str] | None) -> str | None:
    """None when control plane ``name`` is a healthy etcd member (Ready in Kubernetes and, when the
    Talos API was asked, listed as a member that is up); else why not."""
    st = next((n for n in snapshot.nodes if n.name == name), None)
    if st is None or not st.ready:
        return f"control plane {name} is not Ready" + (f" ({st.ready_reason})" if st else "")
    if etcd_members is not None and name not in etcd_members:
        return f"control plane {name} is not an etcd member"
    return None


def evaluate_quorum(store: Store, snapshot: Observed, node: str,
                    etcd_members: Sequence[str] | None) -> Verdict:
    """May control plane ``node`` go down now? In etcd membership health: a control plane is
    healthy when it is Ready in Kubernetes and (when the Talos API was asked, ``etcd_members`` not
    None) a member that is up. A control plane that is not healthy is already down: reimaging it
    takes no member away, so it may go at once (an already-down control plane never blocks its own
    repair). A healthy one goes down only while every other control plane is healthy, so the store
    never loses a second member while one is away."""
    others = [n.name for n in store.nodes if n.role is Role.controlplane and n.name != node]
    if not others:
        return PASSED  # a single control plane: the store is down during its reimage by design
    if not isinstance(snapshot, ClusterSnapshot):
        return _pending(api_unread_reason(snapshot))
    if _healthy_member(snapshot, node, etcd_members) is not None:
        return PASSED  # already down: its repair takes nothing away
    reasons = [why for o in others if (why := _healthy_member(snapshot, o, etcd_members)) is not None]
    return _pending(*reasons) if reasons else PASSED


def repair_order(store: Store, snapshot: Observed, release: str) -> list[Node]:
    """The order in which to bring ``store``'s nodes to ``release``: first the nodes that are not
    Ready (down already: a broken control plane left for later would hold every healthy one behind
    the quorum gate), then those Ready on another release, then the rest; control planes before
    workers within each group, inventory order otherwise. Unread API: inventory order with control
    planes first."""
    by_name = {n.name: n for n in snapshot.nodes} if isinstance(snapshot, ClusterSnapshot) else {}

    def tier(n: Node) -> int:
        if not by_name:
            return 0
        st = by_name.get(n.name)
        if st is None or not st.ready:
            return 0
        return 1 if st.label(RELEASE_LABEL) != release else 2

    index = {n.name: i for i, n in enumerate(store.nodes)}
    return sorted(store.nodes, key=lambda n: (tier(n), n.role is not Role.controlplane, index[n.name]))


def evaluate_store(store: Store, snapshot: Observed, release: str, probes: Sequence[ProbeResult], *,
                   healthy_since: datetime | None, now: datetime, soak: timedelta,
                   before: Mapping[str, NodeBefore] | None = None) -> Verdict:
    """Store gate: ``/readyz`` ok, every node Ready on ``release`` (nodes that were not Ready before
    the operation, when ``before`` is given, need only be on the release), the custom probes pass,
    and the store has been healthy for ``soak`` (``healthy_since``: when it was first seen healthy)."""
    if not isinstance(snapshot, ClusterSnapshot):
        return _pending(api_unread_reason(snapshot))
    excused = {n for n, b in (before or {}).items() if not b.ready}
    if excused:  # judged as if Ready: everything else about them must still hold
        snapshot = replace(snapshot, nodes=tuple(replace(n, ready=True) if n.name in excused else n
                                                 for n in snapshot.nodes))
    verdict = evaluate_cluster(snapshot, expectation_for_store(store, labels={RELEASE_LABEL: release}))
    reasons = list(verdict.problems)
    reasons += [f"probe {p.name}: {p.detail}" for p in probes if not p.ok]
    if reasons:
        return _pending(*reasons)
    if healthy_since is None or now - healthy_since < soak:
        left = soak - (now - healthy_since) if healthy_since else soak
        return Verdict(VerdictKind.soaking, (f"soaking: healthy for less than {soak} ({left} left)",))
    return PASSED


class WaveDecision(StrEnum):
    proceed = "proceed"
    halt = "halt"
    pause = "pause"


def evaluate_wave(failed: int, inconclusive: int, budget: int) -> tuple[WaveDecision, str]:
    """The wave gate: ``failed`` > ``budget`` halts; ``failed`` == ``budget`` goes on; inconclusive
    stores that could push the failures past the budget pause for a person's decision."""
    if failed > budget:
        return WaveDecision.halt, f"{failed} stores failed, more than the wave's failure budget of {budget}"
    if inconclusive and failed + inconclusive > budget:
        return WaveDecision.pause, (f"{inconclusive} store(s) inconclusive with {failed} failed (budget {budget}): "
                                    "approve to go on or reject to halt")
    return WaveDecision.proceed, f"{failed} failed, within the failure budget of {budget}"
