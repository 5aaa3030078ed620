"""Reads stores' Kubernetes APIs for a rollout's gates (the Kubernetes adapter's side of a run).

``StoreApi`` reads a store's ``/readyz`` and node list (``edgefleet.health.kube``, which reads again
after a transient failure within the read's deadline): through one shared pooled client for plain
http endpoints (thousands of stores polled), through one ``health.kube.KubeApiClient`` per store
per run otherwise (TLS with a reader client certificate minted from the store's secrets, its
context built once; on Linux the key never touches a disk, elsewhere it is written once per store
per run into a private 0700 directory that the end of the run removes). Failures come back typed
(``KubeApiError``), so a gate can say "credentials refused" rather than "does not answer".
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import httpx

from edgefleet.errors import EdgefleetError, KubeApiError
from edgefleet.health.cluster import ClusterSnapshot
from edgefleet.health.kube import (
    ClientCert,
    ClusterAccess,
    KeyLoader,
    KubeApiClient,
    classify_failure,
    read_snapshot,
)
from edgefleet.inventory.model import BmcTls, Store
from edgefleet.redfish.connector import BmcClients, PooledClient, Timeouts

__all__ = ["RENEW_BEFORE", "KubeUrls", "StoreApi"]

RENEW_BEFORE = timedelta(hours=1)  # a store's client certificate is minted anew this long before it expires


class KubeUrls(Protocol):
    """Where each store's Kubernetes API is (``edgefleet.rollout.endpoints.Endpoints``)."""

    def k8s(self, store: Store) -> str: ...


class StoreApi:
    """Reads stores' Kubernetes APIs (see the module docstring). Use as an async context manager:
    leaving it closes every client and removes any key material the run had to put on disk.

    ``snapshot`` returns the ``ClusterSnapshot``, or the typed ``KubeApiError`` saying why the API
    could not be read (unreachable, credentials refused, another status): the gates report which."""

    def __init__(self, endpoints: KubeUrls, home: Path, *, deadline_s: float = 10.0,
                 keys: KeyLoader | None = None):
        self.endpoints = endpoints
        self.home = home
        self.deadline_s = deadline_s
        # One small keep-alive pool per store (the BMC clients' pools, keyed by store id): one
        # shared pool of hundreds of connections costs a scan of all of them on every request.
        t = Timeouts(connect_s=deadline_s, read_s=deadline_s, write_s=deadline_s, pool_s=deadline_s)
        self._pools = BmcClients(t, httpx.Limits(max_connections=1000, max_keepalive_connections=512,
                                                  keepalive_expiry=30.0))
        client = self._pools.for_tls(BmcTls())
        assert isinstance(client, PooledClient)
        self._client = client
        self._keys = keys or KeyLoader()
        self._tls: dict[str, tuple[KubeApiClient, datetime]] = {}  # store -> its client, when to mint anew

    async def __aenter__(self) -> StoreApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            clients, self._tls = [c for c, _ in self._tls.values()], {}
            for c in clients:
                await c.aclose()
            await self._pools.aclose()
        finally:
            self._keys.close()

    async def _get(self, store: Store, url: str) -> httpx.Response:
        return await self._client.send_direct("GET", url, {}, None, None, f"k8s:{store.id}")

    async def _tls_client(self, store: Store, url: str) -> KubeApiClient:
        """The store's client for this run: its certificate minted and its TLS context built once,
        again only when the certificate nears its expiry (a run may outlast it)."""
        now = datetime.now(UTC)
        got = self._tls.get(store.id)
        if got is not None and now < got[1]:
            return got[0]
        from edgefleet.secrets import load_secrets
        from edgefleet.talos.certs import CLIENT_VALIDITY, mint_kube_client_cert

        secrets = load_secrets(self.home, store.id)
        # A reader certificate: the gates only read nodes and /readyz.
        cert = mint_kube_client_cert(secrets, admin=False, now=now, user="edgefleet-rollout", store_id=store.id)
        access = ClusterAccess(url, ca=cert.ca_pem, client_cert=ClientCert(cert.cert_pem, cert.key_pem))
        client = KubeApiClient(access, keys=self._keys, store=store.id, deadline_s=self.deadline_s)
        if got is not None:
            await got[0].aclose()
        self._tls[store.id] = (client, now + CLIENT_VALIDITY - RENEW_BEFORE)
        return client

    async def snapshot(self, store: Store, *, readyz: bool = True) -> ClusterSnapshot | KubeApiError:
        """The store's API now, or why it cannot be read (the caller waits, and says why).
        ``readyz=False`` skips ``/readyz`` (node polls need only the node list; the snapshot then
        says ``readyz_detail="not read"`` and must not feed a store gate)."""
        url = ""
        try:
            url = self.endpoints.k8s(store)
            if url.startswith("https://"):
                return await (await self._tls_client(store, url)).snapshot(readyz=readyz)
            return await read_snapshot(lambda u: self._get(store, u), url, store=store.id, readyz=readyz,
                                       deadline_s=self.deadline_s)
        except KubeApiError as e:
            return e
        except EdgefleetError as e:  # no address for the store, its secrets unreadable
            return KubeApiError(str(e), endpoint=url, store=store.id)
        except (httpx.HTTPError, OSError) as e:
            return classify_failure(e, endpoint=url, store=store.id, deadline_s=self.deadline_s)
