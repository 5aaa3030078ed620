"""Where a rollout reaches each node's BMC, each store's Kubernetes API and the nodes' Talos API,
and which clock it runs on.

Two sources:

* the inventory (production): BMCs at ``node.bmc.url``, the Kubernetes API at the store's cluster
  endpoint (``https://<vip or first control plane>:6443``) with the store's Kubernetes CA and an
  admin client certificate minted from its secrets, the Talos API on each node (port 50000) with
  the store's OS CA; the clock is the wall clock;
* a running fleet simulator (``from_simulator``): its ``/sim/endpoints`` lists the BMC and
  Kubernetes URLs (plain http on 127.0.0.1) and, when it serves the Talos API, that endpoint and
  the CA to trust; the clock is the simulator's (``/sim/clock``), extrapolated locally with its
  time scale and re-read now and then. Nodes of ``wipe_method: talos-api`` stores learn their
  nocloud-net seed URL from the simulator's registration (``register_netseeds``: ``POST
  /sim/netseed``), where a real node reads it from its SMBIOS serial or kernel command line.

``StoreApi`` reads a store's ``/readyz`` and node list (``edgefleet.health.kube``, which reads again
after a transient failure within the read's deadline): through one shared pooled client for plain
http endpoints (thousands of stores polled), through one ``health.kube.KubeApiClient`` per store
per run otherwise (TLS with a reader client certificate minted from the store's secrets, its
context built once; on Linux the key never touches a disk, elsewhere it is written once per store
per run into a private 0700 directory that the end of the run removes). Failures come back typed
(``KubeApiError``), so a gate can say "credentials refused" rather than "does not answer".
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from edgefleet.errors import EdgefleetError, InputError, KubeApiError, ProbeError
from edgefleet.health.cluster import ClusterSnapshot
from edgefleet.health.kube import (
    ClientCert,
    ClusterAccess,
    KeyLoader,
    KubeApiClient,
    classify_failure,
    read_snapshot,
)
from edgefleet.inventory.model import BmcTls, Fleet, Node, Probe, Role, Store, url_host
from edgefleet.redfish.connector import BmcClients, PooledClient, Timeouts, bmc_base_url

__all__ = ["Endpoints", "SimClock", "StoreApi", "TalosAccess", "from_inventory", "from_simulator"]

RENEW_BEFORE = timedelta(hours=1)  # a store's client certificate is minted anew this long before it expires


@dataclass(frozen=True, slots=True)
class TalosAccess:
    """A Talos API endpoint that proxies to every node (the simulator), and the CA it presents."""

    endpoint: str
    ca_pem: bytes
    server_name: str = "127.0.0.1"


class SimClock:
    """The simulator's clock: read from ``/sim/clock`` (``await sync()``), then extrapolated locally
    with its time scale until the next sync.

    A reading is ``samples`` round trips, NTP-style: each answer is taken to hold the clock at the
    midpoint of its round trip, and the fastest round trip wins. At the simulator's time scales a
    slow answer matters: at 3600x, 1.5 s spent waiting for ``/sim/clock`` on a loaded machine
    would put our clock an hour and a half behind the simulator's, and window checks would let a
    step through long after the window shut. ``uncertainty`` is what remains: half the best round
    trip, in simulated time."""

    def __init__(self, url: str, *, samples: int = 5):
        self.url = url.rstrip("/") + "/sim/clock"
        self.samples = max(1, samples)
        self.scale = 1.0
        self.uncertainty = timedelta(0)
        self._base = datetime.now(UTC)
        self._mono = time.monotonic()

    async def sync(self) -> None:
        best: tuple[float, float, datetime, float] | None = None  # (round trip, midpoint, clock, scale)
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=10) as c:
                for _ in range(self.samples):
                    sent = time.monotonic()
                    data = (await c.get(self.url)).json()
                    got = time.monotonic()
                    base = datetime.fromisoformat(str(data["now"]).replace("Z", "+00:00")).astimezone(UTC)
                    scale = float(data["time_scale"])
                    if best is None or got - sent < best[0]:
                        best = (got - sent, (sent + got) / 2, base, scale)
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            raise ProbeError(f"cannot read the simulator's clock at {self.url}: {e}") from None
        assert best is not None
        rtt, self._mono, self._base, self.scale = best
        self.uncertainty = timedelta(seconds=rtt / 2 * self.scale)

    def __call__(self) -> datetime:
        return self._base + timedelta(seconds=(time.monotonic() - self._mono) * self.scale)


def _wall_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class Endpoints:
    bmc_urls: dict[str, str] = field(default_factory=dict)  # node -> BMC base URL (empty: the inventory's)
    k8s_urls: dict[str, str] = field(default_factory=dict)  # store -> Kubernetes API base URL
    talos: TalosAccess | None = None  # None: dial each node directly (production)
    talos_enabled: bool = True
    clock: Callable[[], datetime] = _wall_clock
    time_scale: float = 1.0  # simulated seconds per real second
    simulator: str | None = None
    probes_url: str | None = None  # the simulator's stand-in for stores' custom probes

    def probes(self, store: Store) -> list[Probe]:
        """The store's custom probes as this run must call them. Against a simulator every probe is
        answered by the simulator: a run in simulation never sends a request to an inventory
        address (they are real stores' addresses)."""
        if self.simulator is None:
            return list(store.probes)
        if self.probes_url is None:
            raise ProbeError(f"the simulator at {self.simulator} does not serve custom probes; store {store.id} "
                             "has some: use a newer simulator")
        return [p.model_copy(update={"url": f"{self.probes_url}/{store.id}/{p.name}"}) for p in store.probes]

    def bmc(self, node: Node) -> str:
        url = self.bmc_urls.get(node.name)
        if url:
            return url
        self._not_simulated(f"node {node.name}'s BMC")
        return bmc_base_url(node)

    def k8s(self, store: Store) -> str:
        url = self.k8s_urls.get(store.id)
        if url:
            return url
        self._not_simulated(f"store {store.id}'s Kubernetes API")
        if store.cluster.endpoint:
            return store.cluster.endpoint.rstrip("/")
        cp = next((n for n in store.nodes if n.role is Role.controlplane), store.nodes[0])
        return f"https://{url_host(store.cluster.vip or cp.ip)}:6443"

    def _not_simulated(self, what: str) -> None:
        """In simulation, never fall back to an inventory address: those are real stores."""
        if self.simulator is not None:
            raise ProbeError(f"the simulator at {self.simulator} does not serve {what}; refusing to use the "
                             "inventory's address in a simulated run")

    def real_seconds(self, sim_seconds: float) -> float:
        return sim_seconds / self.time_scale

    async def register_netseeds(self, urls: dict[str, str]) -> None:
        """Tell the simulator the nocloud-net URLs of nodes (node name -> ``s=`` URL), as a real
        node's serial number or kernel command line would hold them. Nothing to do for real nodes
        (their URL was fixed when they were provisioned); ``ProbeError`` when the simulator refuses."""
        if self.simulator is None or not urls:
            return
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=10) as c:
                r = await c.post(f"{self.simulator}/sim/netseed", content=json.dumps(urls))
        except httpx.HTTPError as e:
            raise ProbeError(f"cannot register nocloud-net URLs with the simulator at {self.simulator}: {e}") from None
        if r.status_code != 200:
            raise ProbeError(f"the simulator at {self.simulator} refused the nocloud-net URLs of "
                             f"{', '.join(sorted(urls))}: HTTP {r.status_code}: {r.text[:300]}")

    async def resync(self) -> None:
        """Read the simulator's clock again (after it jumped); nothing for the wall clock."""
        if isinstance(self.clock, SimClock):
            await self.clock.sync()
            self.time_scale = self.clock.scale


def from_inventory(fleet: Fleet) -> Endpoints:
    """Production endpoints: everything from the inventory, the wall clock."""
    del fleet  # every address comes from the Node/Store objects themselves
    return Endpoints()


async def from_simulator(url: str) -> Endpoints:
    """Endpoints of a running fleet simulator at ``url`` (``http://127.0.0.1:PORT``)."""
    base = url.rstrip("/")
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=30) as c:
            data = (await c.get(f"{base}/sim/endpoints")).json()
        clock = SimClock(base)
        await clock.sync()
    except (httpx.HTTPError, ValueError, ProbeError) as e:
        raise InputError(f"--sim {url}: no fleet simulator answers there ({e}); start one with "
                         "`edgefleet sim serve`") from None
    talos = None
    t = data.get("talos") if isinstance(data, dict) else None
    if isinstance(t, dict) and t.get("endpoint") and t.get("ca_pem"):
        talos = TalosAccess(str(t["endpoint"]), str(t["ca_pem"]).encode())
    probes = data.get("probes") if isinstance(data.get("probes"), str) else None
    return Endpoints(bmc_urls=dict(data.get("nodes", {})), k8s_urls=dict(data.get("stores", {})), talos=talos,
                     talos_enabled=talos is not None, clock=clock, time_scale=clock.scale, simulator=base,
                     probes_url=probes)


class StoreApi:
    """Reads stores' Kubernetes APIs (see the module docstring). Use as an async context manager:
    leaving it closes every client and removes any key material the run had to put on disk.

    ``snapshot`` returns the ``ClusterSnapshot``, or the typed ``KubeApiError`` saying why the API
    could not be read (unreachable, credentials refused, another status): the gates report which."""

    def __init__(self, endpoints: Endpoints, home: Path, *, deadline_s: float = 10.0,
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
