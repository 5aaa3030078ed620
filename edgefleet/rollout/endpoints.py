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

``StoreApi`` (the store Kubernetes API reader) lives in ``edgefleet.health.storeapi`` and is
re-exported here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx

from edgefleet.errors import InputError, ProbeError
from edgefleet.health.storeapi import StoreApi
from edgefleet.inventory.model import Fleet, Node, Probe, Role, Store, url_host
from edgefleet.redfish.connector import bmc_base_url

__all__ = ["Endpoints", "SimClockClient", "StoreApi", "TalosAccess", "from_inventory", "from_simulator"]


@dataclass(frozen=True, slots=True)
class TalosAccess:
    """A Talos API endpoint that proxies to every node (the simulator), and the CA it presents."""

    endpoint: str
    ca_pem: bytes
    server_name: str = "127.0.0.1"


class SimClockClient:
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

    @property
    def clock_uncertainty(self) -> timedelta:
        """How far ``clock`` may be off the store's own (a simulator's clock read over HTTP); none
        for the wall clock."""
        return self.clock.uncertainty if isinstance(self.clock, SimClockClient) else timedelta(0)

    async def resync(self) -> None:
        """Read the simulator's clock again (after it jumped); nothing for the wall clock."""
        if isinstance(self.clock, SimClockClient):
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
        clock = SimClockClient(base)
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
