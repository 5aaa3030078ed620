"""The in-band reimage of one node, for stores without a BMC (``wipe_method: talos-api``).

Talos has no SSH and such a store has no Redfish: the only way in is the Talos API. The sequence
(``reimage_in_band``), each step under one overall deadline:

1. **The node's state**: ``Version`` (the node must run Talos with its machine config: a node in
   maintenance mode or down is refused, there is nothing to reset in band); for a control plane,
   ``EtcdMemberList`` as the node sees it.
2. **The seed, before anything is wiped**: the node's nocloud-net URL (``seed_url``, the ``s=``
   value it was provisioned with; see ``edgefleet.seeds.netseed``) is fetched like the node will
   fetch it, and its ``meta-data`` must name this node. A wiped node whose seed cannot be fetched
   waits in maintenance mode, reachable by nothing but a person at the store, so this is checked
   first (``check_seed=False`` skips it when the orchestrator cannot reach the URL the node uses).
3. **Reset**: wipe STATE (machine config) and EPHEMERAL (etcd data, kubelet state, containers),
   then reboot. ``graceful`` (cordon and drain; a control plane leaves etcd first) for workers and
   for control planes with other etcd members; not graceful for the last etcd member (a 1-node
   store): etcd cannot be left by its only member, as Talos refuses a graceful reset there.

The readiness wait stays with the caller (the rollout engine): after the reset the node reboots,
fetches ``meta-data``, ``network-config`` and ``user-data`` from the seed URL, applies the machine
config and joins. When the result says ``needs_bootstrap`` (the node was the store's only etcd
member), the caller must send ``Bootstrap`` to it once it is up, or the cluster stays unformed.

Releases: an in-band reimage cannot swap the boot medium. What the node runs afterwards comes
from the machine config in the published seed, which ``edgefleet.talos.config`` renders from the
release: ``machine.install.image`` is the release's ``installer_image`` (from the release catalog;
its tag is the release's Talos version), ``machine.kubelet.image`` carries its Kubernetes version,
and ``machine.nodeLabels["edgefleet.io/release"]`` its name, which the health gates read. So the
seed to publish for a reimage to release R is the one built for R. The fleet simulator models
the node coming back on that installer image's release. On a real node the reset keeps the BOOT
partition, so confirm the Talos version with ``Version`` after the node has joined; if it is not
R's, the node needs a Talos upgrade to R's installer image, which this module does not issue.

Usage (the caller holds an ``os:admin`` client for the node's store)::

    async with client_for(home, store, node, TalosRole.admin) as c:
        res = await reimage_in_band(c, node, seed_url=nocloud_net_url(server, store, node, now),
                                    deadline_s=60)
    if res.needs_bootstrap: ...  # once the node answers again: c.bootstrap()
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx

from edgefleet.errors import NetworkSeedError, TalosRefused, TalosUnavailable, YamlError
from edgefleet.inventory.model import Node, Role
from edgefleet.safeyaml import parse_yaml
from edgefleet.seeds.netseed import fetch_nocloud_seed, nocloud_datasource, redact_seed_url
from edgefleet.talos.api import WIPE_LABELS, TalosClient

__all__ = ["InBandResult", "reimage_in_band"]


@dataclass(frozen=True, slots=True)
class InBandResult:
    """What ``reimage_in_band`` found and did. ``etcd_members`` are the members a control plane
    saw before its reset (empty for workers); ``seed_checked``: the seed was fetched first."""

    store: str
    node: str
    role: Role
    talos_version: str
    etcd_members: tuple[str, ...]
    graceful: bool
    wiped: tuple[str, ...]
    needs_bootstrap: bool
    seed_checked: bool
    seed_url: str  # redacted: without its token
    seconds: float


async def reimage_in_band(client: TalosClient, node: Node, *, seed_url: str, deadline_s: float,
                          check_seed: bool = True, http: httpx.AsyncClient | None = None) -> InBandResult:
    """Wipe ``node`` through the Talos API so it boots from its network seed (module docstring).

    ``client``: an ``os:admin`` client of the node's store (``client_for``), which may dial the node
    or another endpoint (the node is named in the call). ``seed_url``: the node's nocloud-net
    ``s=`` URL. ``deadline_s``: for the whole sequence. ``http``: the client for the seed check
    (default: a fresh one without proxies).

    Raises ``TalosUnavailable`` (node down or in maintenance mode, deadline passed: transient),
    ``TalosAccessDenied`` (not an admin certificate, another store's CA), ``TalosRefused``,
    ``NetworkSeedError`` (the seed cannot be fetched or is another node's; nothing was wiped)."""
    if deadline_s <= 0:
        raise ValueError("deadline_s must be positive")
    nocloud_datasource(seed_url)  # the same checks as for the string the node was provisioned with
    started = time.monotonic()
    target = str(node.ip)
    try:
        async with asyncio.timeout(deadline_s):
            version = await client.version(node=target)
            members: tuple[str, ...] = ()
            if node.role is Role.controlplane:
                try:
                    members = tuple(m.hostname for m in await client.etcd_members(node=target))
                except TalosRefused:
                    members = ()  # etcd not running on it: the cluster is not formed (or it has not joined)
            if check_seed:
                await _check_seed(node, seed_url, http, max(0.1, deadline_s - (time.monotonic() - started)))
            member = node.name in members
            last = node.role is Role.controlplane and not (set(members) - {node.name})
            graceful = node.role is Role.worker or (member and not last)
            await client.reset(graceful=graceful, reboot=True, wipe_labels=WIPE_LABELS, node=target)
    except TimeoutError:
        raise TalosUnavailable(f"the in-band reimage did not complete within {deadline_s:g} s; nothing is known "
                               "about whether the Reset reached the node: check its state before retrying",
                               store=client.store, node=node.name, operation="Reset") from None
    return InBandResult(store=client.store, node=node.name, role=node.role, talos_version=version.tag,
                        etcd_members=members, graceful=graceful, wiped=WIPE_LABELS,
                        needs_bootstrap=node.role is Role.controlplane and last, seed_checked=check_seed,
                        seed_url=redact_seed_url(seed_url), seconds=time.monotonic() - started)


async def _check_seed(node: Node, seed_url: str, http: httpx.AsyncClient | None, timeout_s: float) -> None:
    own = http is None
    client = http or httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(min(10.0, timeout_s)))
    try:
        files = await fetch_nocloud_seed(seed_url, client=client, timeout_s=timeout_s)
    finally:
        if own:
            await client.aclose()
    try:
        meta = parse_yaml(files.meta_data, source="meta-data")
    except YamlError:
        meta = None
    host = meta.get("local-hostname") if isinstance(meta, dict) else None
    if host != node.name:
        raise NetworkSeedError(f"node {node.name}: the seed at {redact_seed_url(seed_url)} is for host {host!r}; "
                               "publish this node's own seed before wiping it (nothing was wiped)")
    if not files.user_data.strip():
        raise NetworkSeedError(f"node {node.name}: the seed at {redact_seed_url(seed_url)} has an empty user-data "
                               "(no machine config); nothing was wiped")
