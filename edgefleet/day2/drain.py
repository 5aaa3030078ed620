"""Drain a Kubernetes node: cordon it, then evict its pods through the Eviction API, as ``kubectl
drain --ignore-daemonsets`` does, respecting PodDisruptionBudgets as the API answers them.

The Kubernetes calls go through ``DrainApi`` (``edgefleet.health.drainapi.HttpDrainApi`` speaks HTTP);
this module decides. An eviction the API refuses with 429 (a disruption budget allows no
disruption now) is asked again after a bounded backoff (``DrainPolicy``): the budget recovers when
the evicted pods' replacements become Ready elsewhere. When the attempts are spent, ``DrainBlocked``
names the pod, its budget and the API's words, and the node stays cordoned (nothing else was
changed: a person decides). Pods owned by a DaemonSet are left (they would come back at once),
as are pods already gone (404). ``drain_node`` is used by node removal and by decommissioning.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from edgefleet.errors import DrainBlocked
from edgefleet.health.cluster import Eviction, PodRef

__all__ = ["DrainApi", "DrainPolicy", "DrainReport", "drain_node"]


class DrainApi(Protocol):
    """The Kubernetes calls a drain makes on one store's API."""

    async def cordon(self, node: str) -> None: ...

    async def pods_on(self, node: str) -> list[PodRef]: ...

    async def evict(self, pod: PodRef) -> Eviction: ...


@dataclass(frozen=True, slots=True)
class DrainPolicy:
    """How long an eviction a budget refuses is asked again: ``attempts`` tries per pod, waiting
    ``backoff_s`` doubled each time up to ``backoff_max_s``."""

    attempts: int = 6
    backoff_s: float = 1.0
    backoff_max_s: float = 15.0

    def waits(self) -> list[float]:
        return [min(self.backoff_s * 2**i, self.backoff_max_s) for i in range(max(0, self.attempts - 1))]


@dataclass(slots=True)
class DrainReport:
    """What a drain did: pods evicted, DaemonSet pods left, 429s met on the way."""

    node: str
    evicted: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    refusals: int = 0


async def drain_node(api: DrainApi, store: str, node: str, *, policy: DrainPolicy = DrainPolicy(),
                     sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> DrainReport:
    """Cordon ``node`` of ``store`` and evict its pods (module docstring); ``DrainBlocked`` when a
    disruption budget keeps refusing a pod's eviction after ``policy``'s attempts."""
    report = DrainReport(node)
    await api.cordon(node)
    for pod in await api.pods_on(node):
        if pod.daemonset:
            report.left.append(f"{pod.namespace}/{pod.name}")
            continue
        await _evict(api, store, node, pod, policy, sleep, report)
        report.evicted.append(f"{pod.namespace}/{pod.name}")
    still = [p for p in await api.pods_on(node) if not p.daemonset]
    if still:
        names = ", ".join(f"{p.namespace}/{p.name}" for p in still)
        raise DrainBlocked(f"store {store}: node {node} still runs {names} after its drain (new pods scheduled "
                           "on it although it is cordoned?); drain it again, or find what places them there")
    return report


async def _evict(api: DrainApi, store: str, node: str, pod: PodRef, policy: DrainPolicy,
                 sleep: Callable[[float], Awaitable[None]], report: DrainReport) -> None:
    waits = policy.waits()
    for attempt in range(len(waits) + 1):
        got = await api.evict(pod)
        if got.done:
            return
        if got.status != 429:
            raise DrainBlocked(f"store {store}: evicting pod {pod.namespace}/{pod.name} from node {node} answered "
                               f"{got.status}: {got.message}", pod=pod.name)
        report.refusals += 1
        if attempt < len(waits):
            await sleep(waits[attempt])
    budget = f"disruption budget {got.budget}" if got.budget else "its disruption budget"
    raise DrainBlocked(
        f"store {store}: node {node} cannot be drained: pod {pod.namespace}/{pod.name} may not be evicted: "
        f"{got.message} ({budget}, refused {policy.attempts} times over "
        f"{sum(waits):.0f} s). The node stays cordoned and nothing else was changed: scale the workload up or "
        f"relax the budget, then run the command again (`kubectl uncordon {node}` to give up)",
        pod=pod.name, budget=got.budget)
