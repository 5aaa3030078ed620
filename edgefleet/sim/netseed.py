"""Network seeds (``ds=nocloud-net``) in the fleet simulator: a node of a ``wipe_method: talos-api``
store, wiped by a Talos API ``Reset``, fetches its NoCloud seed over HTTP when it boots again.

How the simulator knows a node's URL: by registration. A real node reads ``ds=nocloud-net;s=URL/``
from its SMBIOS serial number or kernel command line, written when it was provisioned; the URL
carries a per-node token of the seed server that only the orchestrator can mint
(``edgefleet.seeds.netseed.nocloud_net_url``), so an inventory template cannot hold it. The
orchestrator (or a test) therefore registers each node's URL, as provisioning would write it::

    POST /sim/netseed   {"<node>": "http://127.0.0.1:PORT/<token>/nocloud/<store>/<node>/", ...}
                        (a value may also be the whole "ds=nocloud-net;s=URL" string; null forgets)
    GET  /sim/netseed   {"nodes": {"<node>": "<URL without its token>"}}

or in process ``register(sim, {...})``. Registration checks what ``InsertMedia`` checks: the
node exists, its store's ``wipe_method`` is ``talos-api``, and the URL is ``http(s)://127.0.0.1``
(the simulator talks to nothing else) and ends with ``/``. Refusals raise ``InputError`` (HTTP
400 with the message).

The fetch (``install`` hooks it into ``SimTalosBackend``): when a wiped node has booted again
and no seed media is attached, it GETs ``meta-data``, ``network-config`` and ``user-data`` from
its URL (``fetch_nocloud_seed``, on the simulator's media HTTP client). A failed fetch (an expired
or wrong token: 403, nothing published: 404, no answer) leaves it in maintenance mode with the
server's reason in its state and in a ``seed_read`` event (``joined: false``); registering a URL
again for such a waiting node makes it fetch again (the operator fixed its serial and rebooted
it). A fetched seed goes through ``evaluate_join`` as a media seed does, and the node comes back
on the release its machine config names: ``nodeLabels["edgefleet.io/release"]``, the Talos
version from the tag of ``machine.install.image`` and the Kubernetes version from
``machine.kubelet.image`` (an in-band reimage reinstalls from the installer image; it cannot
swap the boot medium).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from edgefleet.errors import EdgefleetError, InputError, YamlError
from edgefleet.inventory.model import WipeMethod
from edgefleet.safeyaml import parse_yaml_all
from edgefleet.seeds.netseed import fetch_nocloud_seed, parse_nocloud_datasource, redact_seed_url
from edgefleet.sim.boot import NOCLOUD_ARG, RELEASE_LABEL, ReleaseFacts, evaluate_join, parse_seed_facts
from edgefleet.sim.fleet import NodeState, SimFleet
from edgefleet.sim.media import ALLOWED_HOSTS
from edgefleet.sim.talos_wiring import SimTalosBackend

__all__ = ["FETCH_DEADLINE_S", "NetSeedFetcher", "ReleaseFromConfig", "install", "register", "registered",
           "release_from_config"]

FETCH_DEADLINE_S = 30.0


# --- registration ----------------------------------------------------------------------------------


def _url_of(node: str, value: str) -> str:
    url = parse_nocloud_datasource(value) if value.startswith("ds=") else value
    if url is None:
        raise InputError(f"node {node}: {value!r} has no ds=nocloud-net;s=URL")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname not in ALLOWED_HOSTS:
        raise InputError(f"node {node}: seed URL {redact_seed_url(url)!r} is refused: the simulator only fetches "
                         "http(s)://127.0.0.1 URLs")
    if not url.endswith("/"):
        raise InputError(f"node {node}: seed URL {redact_seed_url(url)!r} must end with '/' (nocloud-net appends "
                         "meta-data, user-data, network-config)")
    return url


def register(sim: SimFleet, urls: Mapping[str, str | None]) -> list[str]:
    """Set (a URL or a ``ds=`` string) or forget (None) the nocloud-net URL of nodes; all or nothing.
    Returns the nodes that are waiting for their seed and will fetch it again now."""
    if not isinstance(urls, Mapping):
        raise InputError('send a JSON object {"<node>": "<nocloud-net URL>" or null, ...}')
    checked: dict[str, str | None] = {}
    for node, value in urls.items():
        ns = sim.nodes.get(node)
        if ns is None:
            raise InputError(f"no simulated node {node!r}")
        if value is None:
            checked[node] = None
            continue
        if not isinstance(value, str):
            raise InputError(f"node {node}: the URL must be a string, got {type(value).__name__}")
        if ns.store.wipe_method is not WipeMethod.talos_api:
            raise InputError(f"node {node}: store {ns.store.id} has wipe_method {ns.store.wipe_method.value}; its "
                             "nodes read seeds from virtual media. Set wipe_method: talos-api in the inventory for "
                             "network seeds")
        checked[node] = _url_of(node, value)
    again: list[str] = []
    for node, url in checked.items():
        if url is None:
            sim.net_seed_urls.pop(node, None)
            continue
        sim.net_seed_urls[node] = url
        sim.event("netseed_registered", node=sim.nodes[node], detail={"url": redact_seed_url(url)})
        if sim.net_seed_retry(sim.nodes[node]):
            again.append(node)
    return again


def registered(sim: SimFleet) -> dict[str, str]:
    """Node -> its registered URL, redacted (for ``GET /sim/netseed``)."""
    return {n: redact_seed_url(u) for n, u in sorted(sim.net_seed_urls.items())}


# --- what the machine config names -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReleaseFromConfig:
    release: str | None
    talos_version: str | None
    kubernetes_version: str | None


def _tag(image: Any) -> str | None:
    if not isinstance(image, str) or ":" not in image.rsplit("/", 1)[-1]:
        return None
    return image.rsplit(":", 1)[1].split("@", 1)[0] or None


def release_from_config(user_data: bytes) -> ReleaseFromConfig:
    """The release a Talos machine config installs: the release label, the installer image's tag
    (Talos version) and the kubelet image's tag (Kubernetes version). Missing parts are None."""
    try:
        docs = parse_yaml_all(user_data, source="user-data")
    except YamlError:
        return ReleaseFromConfig(None, None, None)
    v1 = next((d for d in docs if isinstance(d, dict) and d.get("version") == "v1alpha1"), None)
    machine = v1.get("machine") if isinstance(v1, dict) else None
    if not isinstance(machine, dict):
        return ReleaseFromConfig(None, None, None)
    labels = machine.get("nodeLabels")
    release = labels.get(RELEASE_LABEL) if isinstance(labels, dict) else None
    install = machine.get("install")
    kubelet = machine.get("kubelet")
    return ReleaseFromConfig(str(release) if release is not None else None,
                             _tag(install.get("image")) if isinstance(install, dict) else None,
                             _tag(kubelet.get("image")) if isinstance(kubelet, dict) else None)


# --- fetching on boot ------------------------------------------------------------------------------


class NetSeedFetcher:
    """Fetches wiped nodes' seeds for a ``SimTalosBackend`` (see the module docstring)."""

    def __init__(self, sim: SimFleet, backend: SimTalosBackend, *, deadline_s: float = FETCH_DEADLINE_S):
        self.sim = sim
        self.backend = backend
        self.deadline_s = deadline_s
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def waiting(self, ns: NodeState) -> bool:
        """Wiped, booted, not joined and not fetching: waiting in maintenance mode for its seed."""
        return (ns.name in self.backend.wiped and not ns.booting and not ns.joined
                and ns.name not in self._tasks)

    def retry(self, ns: NodeState) -> bool:
        """A node waiting for its seed fetches it again (from its newly registered URL)."""
        if not self.waiting(ns) or self.sim.net_seed_urls.get(ns.name) is None:
            return False
        self.start(ns)
        return True

    def on_boot(self, ns: NodeState) -> bool:
        """The backend's hook for a wiped node that booted without seed media: True when the node
        has a registered URL (a fetch starts), False to let the backend report it waiting."""
        if self.sim.net_seed_urls.get(ns.name) is None:
            return False
        self.start(ns)
        return True

    def start(self, ns: NodeState) -> None:
        url = self.sim.net_seed_urls[ns.name]
        ns.reason = f"fetching its NoCloud seed from {redact_seed_url(url)}"
        old = self._tasks.pop(ns.name, None)
        if old is not None:
            old.cancel()
        task = asyncio.get_running_loop().create_task(self._fetch(ns, url, ns.boot_gen))
        self._tasks[ns.name] = task
        task.add_done_callback(lambda t: self._tasks.pop(ns.name, None) if self._tasks.get(ns.name) is t else None)

    async def _fetch(self, ns: NodeState, url: str, boot_gen: int) -> None:
        shown = redact_seed_url(url)
        try:
            files = await fetch_nocloud_seed(url, client=self.sim.fetcher.client, timeout_s=self.deadline_s)
        except EdgefleetError as e:
            if self._current(ns, boot_gen):
                self._done(ns, shown, False, f"wiped: cannot fetch its NoCloud seed, waiting in maintenance mode: {e}")
            return
        if not self._current(ns, boot_gen):
            return
        digest = hashlib.sha256(files.user_data + files.meta_data + files.network_config).hexdigest()
        seed = parse_seed_facts(files.user_data, files.meta_data, files.network_config, sha256=digest)
        named = release_from_config(files.user_data)
        release = ReleaseFacts(sha256="", release=named.release or ns.release,
                               talos_version=named.talos_version or ns.talos_version,
                               kubernetes_version=(named.kubernetes_version or ns.kubelet_version).lstrip("v"),
                               kernel_args=(NOCLOUD_ARG,))
        ca = self.sim.store_ca(ns.store.id)
        verdict = evaluate_join(ns.node, release, seed, ca if isinstance(ca, bytes) else None,
                                store_ca_problem=ca if isinstance(ca, str) else "")
        if verdict.joined:
            ns.release = release.release
            ns.talos_version = release.talos_version
            ns.kubelet_version = "v" + release.kubernetes_version
            ns.seed_instance_id = seed.instance_id
            ns.labels = dict(seed.node_labels)
        self._done(ns, shown, verdict.joined, verdict.reason, release=release.release)

    def _current(self, ns: NodeState, boot_gen: int) -> bool:
        """Still the same boot of a node waiting for its seed (not reset or reimaged meanwhile)."""
        return ns.boot_gen == boot_gen and not ns.booting and ns.name in self.backend.wiped

    def _done(self, ns: NodeState, url: str, joined: bool, reason: str, *, release: str | None = None) -> None:
        ns.joined, ns.reason = joined, reason
        ns.generation += 1
        if joined:
            self.backend.seed_read(ns)
            self.sim.came_up(ns, release, ns.operation)  # installed from the config's installer image
        self.sim.event("seed_read", node=ns, detail={"source": "network", "url": url, "joined": joined,
                                                     "reason": reason, "release": release})

    async def aclose(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self.backend.network_seed == self.on_boot:
            self.backend.network_seed = None
            self.sim.net_seed_retry = lambda _ns: False


def install(sim: SimFleet, backend: SimTalosBackend) -> NetSeedFetcher:
    """Make ``backend``'s wiped nodes fetch their seeds over the network (``aclose`` it at the end)."""
    fetcher = NetSeedFetcher(sim, backend)
    backend.network_seed = fetcher.on_boot
    sim.net_seed_retry = fetcher.retry
    return fetcher
