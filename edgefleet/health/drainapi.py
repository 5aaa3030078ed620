"""The Kubernetes adapter's side of a drain: its calls over HTTP (``DrainApi`` of
``edgefleet.day2.drain``): cordon with a merge patch of ``spec.unschedulable``, the node's pods by
field selector, and the Eviction API (policy/v1 ``Eviction`` posted to the pod's ``eviction``
subresource).

``open_drain_api`` connects to a store's API as the rollout's reads do: plain http for the fleet
simulator, TLS with a short-lived ``system:masters`` client certificate minted from the store's
secrets otherwise (a drain writes: cordon and evict need more than the gates' reader).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from edgefleet.errors import KubeApiError
from edgefleet.health.cluster import Eviction, PodRef
from edgefleet.health.kube import ClientCert, ClusterAccess, KeyLoader, check_status, classify_failure, tls_context

__all__ = ["HttpDrainApi", "open_drain_api"]

_BUDGET = re.compile(r"disruption budget (\S+)")


class HttpDrainApi:
    """``DrainApi`` over one store's Kubernetes API at ``base`` (``.../k8s/<store>`` or the API server)."""

    def __init__(self, client: httpx.AsyncClient, base: str, *, store: str):
        self.client = client
        self.base = base.rstrip("/")
        self.store = store

    async def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        url = f"{self.base}{path}"
        try:
            return await self.client.request(method, url, **kw)
        except (httpx.HTTPError, OSError) as e:
            raise classify_failure(e, endpoint=self.base, store=self.store, deadline_s=30.0) from None

    async def cordon(self, node: str) -> None:
        path = f"/api/v1/nodes/{node}"
        r = await self._send("PATCH", path, json={"spec": {"unschedulable": True}},
                             headers={"Content-Type": "application/merge-patch+json"})
        check_status(r, path, endpoint=self.base, store=self.store)

    async def pods_on(self, node: str) -> list[PodRef]:
        path = "/api/v1/pods"
        r = await self._send("GET", path, params={"fieldSelector": f"spec.nodeName={node}"})
        check_status(r, path, endpoint=self.base, store=self.store)
        try:
            items = r.json()["items"]
            return [PodRef(i["metadata"]["namespace"], i["metadata"]["name"],
                           any(o.get("kind") == "DaemonSet" for o in i["metadata"].get("ownerReferences") or ()))
                    for i in items]
        except (ValueError, KeyError, TypeError) as e:
            raise KubeApiError(f"the pods of node {node} are not a PodList: {e}", endpoint=self.base,
                               store=self.store) from None

    async def evict(self, pod: PodRef) -> Eviction:
        path = f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/eviction"
        body = {"apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": pod.name, "namespace": pod.namespace}}
        r = await self._send("POST", path, json=body)
        if r.status_code in (200, 201, 404):
            return Eviction(r.status_code)
        if r.status_code != 429:
            check_status(r, path, endpoint=self.base, store=self.store)
            return Eviction(r.status_code, r.text[:200])
        return _refusal(r)


def _refusal(r: httpx.Response) -> Eviction:
    try:
        data = r.json()
        causes = (data.get("details") or {}).get("causes") or []
        why = "; ".join(str(c.get("message", "")) for c in causes if isinstance(c, dict))
        message = str(data.get("message", "")) + (f" ({why})" if why else "")
    except (ValueError, AttributeError):
        why, message = "", r.text[:200]
    m = _BUDGET.search(why)
    return Eviction(429, message, m.group(1) if m else "")


@contextlib.asynccontextmanager
async def open_drain_api(url: str, home: Path, store: str, *, timeout_s: float = 15.0
                         ) -> AsyncIterator[HttpDrainApi]:
    """A ``HttpDrainApi`` for ``store``'s API at ``url`` for the block (module docstring)."""
    timeout = httpx.Timeout(timeout_s)
    if not url.startswith("https://"):
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as c:
            yield HttpDrainApi(c, url, store=store)
        return
    from edgefleet.secrets import load_secrets
    from edgefleet.talos.certs import mint_kube_client_cert

    cert = mint_kube_client_cert(load_secrets(home, store), admin=True, now=datetime.now(UTC),
                                 user="edgefleet-drain", store_id=store)
    keys = KeyLoader()
    try:
        ctx = tls_context(ClusterAccess(url, ca=cert.ca_pem, client_cert=ClientCert(cert.cert_pem, cert.key_pem)),
                          keys)
        async with httpx.AsyncClient(verify=ctx, timeout=timeout, trust_env=False) as c:
            yield HttpDrainApi(c, url, store=store)
    finally:
        keys.close()
