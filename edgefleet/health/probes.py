"""Health probes of a store: its Kubernetes API and the inventory's custom HTTP probes.

Three modules, kept apart:

* ``edgefleet.health.cluster`` (pure): snapshots, expectations and verdicts;
* ``edgefleet.health.kube`` (I/O): the Kubernetes client, the one module speaking to Kubernetes;
* here (I/O): ``run_probe`` / ``run_probes`` (custom HTTP probes) and ``check_store`` (both). A probe
  that was evaluated and failed is a verdict with problems. A custom HTTP probe that cannot connect
  counts as failed: the service it watches is down.

The names of the other two are re-exported here, where callers have always found them.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Sequence

import httpx

from edgefleet.health.cluster import (
    CONTROL_PLANE_LABEL,
    ClusterSnapshot,
    ClusterVerdict,
    Expectation,
    NodeStatus,
    ProbeResult,
    StoreHealth,
    evaluate_cluster,
    evaluate_probe,
    expectation_for_store,
    parse_nodes,
)
from edgefleet.health.kube import (
    ClientCert,
    ClusterAccess,
    KeyLoader,
    KubeApiClient,
    PemSource,
    check_status,
    classify_failure,
    fetch_cluster,
    parse_snapshot,
    read_snapshot,
)
from edgefleet.inventory.model import Probe, Store

__all__ = [
    "CONTROL_PLANE_LABEL",
    "ClientCert",
    "ClusterAccess",
    "ClusterSnapshot",
    "ClusterVerdict",
    "Expectation",
    "KeyLoader",
    "KubeApiClient",
    "NodeStatus",
    "PemSource",
    "ProbeResult",
    "StoreHealth",
    "check_status",
    "check_store",
    "classify_failure",
    "evaluate_cluster",
    "evaluate_probe",
    "expectation_for_store",
    "fetch_cluster",
    "parse_nodes",
    "parse_snapshot",
    "read_snapshot",
    "run_probe",
    "run_probes",
]


async def run_probe(probe: Probe, client: httpx.AsyncClient | None = None) -> ProbeResult:
    """One custom HTTP probe, bounded by its ``timeout_s``."""
    own = client is None
    c = client or httpx.AsyncClient(trust_env=False)
    t0 = time.monotonic()
    status: int | None = None
    error: str | None = None
    try:
        async with asyncio.timeout(probe.timeout_s):
            r = await c.get(probe.url, timeout=probe.timeout_s)
            status = r.status_code
    except TimeoutError:
        error = f"no answer within {probe.timeout_s:g} s"
    except (httpx.HTTPError, ssl.SSLError, OSError) as e:
        error = f"{type(e).__name__}: {e or 'no detail'}"
    finally:
        if own:
            await c.aclose()
    return evaluate_probe(probe, status, error, time.monotonic() - t0)


async def run_probes(probes: Sequence[Probe], *, verify: ssl.SSLContext | bool = True) -> tuple[ProbeResult, ...]:
    """All probes concurrently, in the given order."""
    if not probes:
        return ()
    async with httpx.AsyncClient(trust_env=False, verify=verify) as client:
        return tuple(await asyncio.gather(*(run_probe(p, client) for p in probes)))


async def check_store(store: Store, access: ClusterAccess, *, expect: Expectation | None = None,
                      deadline_s: float = 15.0) -> StoreHealth:
    """The store's health now: the cluster verdict (against ``expect``, default
    ``expectation_for_store(store)``) and its custom probes, fetched concurrently."""
    snapshot, probes = await asyncio.gather(fetch_cluster(access, deadline_s=deadline_s), run_probes(store.probes))
    verdict = evaluate_cluster(snapshot, expect or expectation_for_store(store))
    return StoreHealth(store=store.id, cluster=verdict, probes=probes)
