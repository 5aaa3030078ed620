"""The simulator's nodes behind its Talos API: a ``TalosNodeBackend`` over ``SimFleet`` and its start
function is ``edgefleet.sim.talos_serve.running_talos_api``.

What it adds to the simulator's node state:

* etcd membership per store (``members``). At start every joined control plane is a member (the
  clusters exist). A control plane that boots from release media was reinstalled: it loses its
  etcd data and, once joined, becomes a member again only if another member of its store is up
  (etcd join); otherwise the store stays UNFORMED until one control plane gets ``Bootstrap``.
  ``formed(store)`` says whether a store has an up member: the Kubernetes API should answer
  only then (see ``install``).
* ``Reset`` through the Talos API: the node goes down through ``SimFleet.reset`` (events, oracle
  rules and caps apply as for a BMC reset), loses its membership, and with STATE wiped it has no
  machine config: when it has booted again (from disk) it reads its NoCloud seed from the
  attached seed media (``evaluate_join`` decides as for a media boot). Without seed media, a node
  with a registered nocloud-net URL fetches its seed over HTTP (``edgefleet.sim.netseed``, hooked in
  through ``network_seed`` by ``edgefleet.sim.talos_serve.running_talos_api``); otherwise it stays in maintenance mode.

The backend follows boots through the simulator's event log (``boot_done`` events), synced on
every Talos API call and every ``SYNC_SECONDS`` by the task ``edgefleet.sim.talos_serve.running_talos_api`` starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import grpc

from edgefleet.errors import EdgefleetError
from edgefleet.sim.boot import NOCLOUD_ARG, ReleaseFacts, evaluate_join
from edgefleet.sim.fleet import POWER_ON, NodeState, SimFleet
from edgefleet.sim.talosapi import NodeFault

__all__ = ["SYNC_SECONDS", "SimTalosBackend", "install"]

log = logging.getLogger("edgefleet.sim.talos")
SYNC_SECONDS = 0.2
_WIPED = "wiped by a Talos API Reset: waiting for its NoCloud seed"


class SimTalosBackend:
    """``TalosNodeBackend`` over the simulator's ``NodeState`` objects."""

    def __init__(self, sim: SimFleet):
        self.sim = sim
        self.members: dict[str, set[str]] = {
            sid: {ns.name for ns in nodes if ns.is_control_plane and ns.joined}
            for sid, nodes in sim.store_nodes.items()}
        # the dead machines' members, still registered (scenario ``replaced_nodes``), per store
        self.stale: dict[str, set[str]] = {sid: set() for sid in sim.store_nodes}
        for name in sim.scenario.replaced_nodes:
            ns = sim.nodes[name]
            if ns.is_control_plane:
                self.members[ns.store.id].add(name)
                self.stale[ns.store.id].add(name)
        self.wiped: set[str] = set()
        # edgefleet.sim.netseed: called for a wiped node that booted without seed media; True when
        # it fetches the node's seed over the network (and calls ``seed_read`` once it joined).
        self.network_seed: Callable[[NodeState], bool] | None = None
        self._seen = sim.event_seq
        self._cas: dict[str, bytes] = {}
        self._gen = 0
        self._secrets_mtime: float | None = None
        self._load_cas()

    # -- CAs from the simulator's home -------------------------------------------------------------

    def _load_cas(self) -> None:
        home = self.sim.home
        if home is None:
            return
        from cryptography.hazmat.primitives import serialization

        from edgefleet.secrets import load_secrets
        from edgefleet.talos.certs import load_ca

        try:
            self._secrets_mtime = (home / "secrets").stat().st_mtime
        except OSError:
            return
        added = 0
        for sid in self.sim.store_nodes:
            if sid in self._cas:
                continue
            try:
                cert, _ = load_ca(load_secrets(home, sid).certs.os, store_id=sid, which="os")
            except EdgefleetError:
                continue
            self._cas[sid] = cert.public_bytes(serialization.Encoding.PEM)
            added += 1
        if added:
            self._gen += 1

    def os_ca_pems(self) -> Mapping[str, bytes]:
        return self._cas

    def ca_generation(self) -> int:
        if self.sim.home is not None:
            try:
                mtime: float | None = (self.sim.home / "secrets").stat().st_mtime
            except OSError:
                mtime = None
            if mtime != self._secrets_mtime:
                self._load_cas()
        return self._gen

    # -- lookups ------------------------------------------------------------------------------------

    def _ns(self, node: str) -> NodeState:
        return self.sim.nodes[node]

    def resolve(self, store_id: str, target: str) -> str | None:
        ns = self.sim.nodes.get(target)
        if ns is not None:
            return ns.name if ns.store.id == store_id else None
        return next((n.name for n in self.sim.store_nodes.get(store_id, ()) if str(n.node.ip) == target), None)

    def store_of(self, node: str) -> str:
        return self._ns(node).store.id

    def is_control_plane(self, node: str) -> bool:
        return self._ns(node).is_control_plane

    def address(self, node: str) -> str:
        return str(self._ns(node).node.ip)

    def _up(self, ns: NodeState) -> bool:
        return ns.store.id not in self.sim.offline and ns.power == POWER_ON and not ns.booting and ns.joined

    def check_up(self, node: str) -> None:
        self.sync()
        ns = self._ns(node)
        if ns.store.id in self.sim.offline:
            raise NodeFault(grpc.StatusCode.UNAVAILABLE, f"store {ns.store.id} is offline (simulated)")
        if ns.power != POWER_ON:
            raise NodeFault(grpc.StatusCode.UNAVAILABLE, f"node {node} is powered off: connection refused")
        if ns.booting:
            raise NodeFault(grpc.StatusCode.UNAVAILABLE, f"node {node} is booting: connection refused")
        if not ns.joined:
            raise NodeFault(grpc.StatusCode.UNAVAILABLE, f"node {node} is in maintenance mode ({ns.reason})")

    def version(self, node: str) -> tuple[str, str]:
        return self._ns(node).talos_version, "nocloud"

    # -- etcd -------------------------------------------------------------------------------------

    def has_etcd_data(self, node: str) -> bool:
        self.sync()
        return node in self.members[self.store_of(node)]

    def bootstrap(self, node: str) -> None:
        ns = self._ns(node)
        self.members[ns.store.id].add(node)
        self.sim.event("talos_bootstrap", node=ns, operation=ns.operation)

    def etcd_members(self, store_id: str) -> Sequence[str]:
        self.sync()
        return sorted(m for m in self.members[store_id] if self._up(self._ns(m)))

    def etcd_roster(self, store_id: str) -> Mapping[str, bool]:
        self.sync()
        return {m: self._up(self._ns(m)) for m in sorted(self.members[store_id])}

    def etcd_remove(self, store_id: str, member: str) -> None:
        self.members[store_id].discard(member)
        self.stale[store_id].discard(member)
        self.sim.event("etcd_member_removed", node=self._ns(member))

    def note_call(self, node: str, method: str) -> None:
        self.sim.node_requests[(node, f"talos {method}")] += 1

    def formed(self, store_id: str) -> bool:
        """Whether the store's etcd has a member that is up (the Kubernetes API can serve)."""
        self.sync()
        return any(self._up(self._ns(m)) for m in self.members.get(store_id, ()))

    # -- actions ------------------------------------------------------------------------------------

    def reset(self, node: str, *, graceful: bool, reboot: bool, wipe: frozenset[str]) -> None:
        ns = self._ns(node)
        self.sim.event("talos_reset", node=ns, operation=ns.operation,
                       detail={"graceful": graceful, "reboot": reboot, "wipe": sorted(wipe) or ["ALL"]})
        self.sim.reset(ns, "ForceRestart" if reboot else "ForceOff", ns.operation)
        self.members[ns.store.id].discard(node)  # etcd data lives on EPHEMERAL; STATE holds the config
        if not wipe or "STATE" in wipe:
            ns.joined = False
            ns.reason = _WIPED
            self.wiped.add(node)

    def reboot(self, node: str) -> None:
        ns = self._ns(node)
        self.sim.reset(ns, "ForceRestart", ns.operation)

    # -- following boots ----------------------------------------------------------------------------

    def sync(self) -> None:
        """Apply the boots finished since the last sync (from the simulator's event log)."""
        if self.sim.event_seq == self._seen:
            return
        fresh = []
        for e in reversed(self.sim.events):
            if e["seq"] <= self._seen:
                break
            if e["kind"] == "boot_done":
                fresh.append(e)
        self._seen = self.sim.event_seq
        for e in reversed(fresh):
            ns = self.sim.nodes.get(e["node"] or "")
            if ns is not None:
                self._booted(ns, e["detail"] or {})

    def _booted(self, ns: NodeState, detail: Mapping[str, object]) -> None:
        store = ns.store.id
        if detail.get("source") == "media":
            if ns.name in self.stale[store] and ns.joined:
                self.sim.record_finding(ns, "stale_etcd_member",
                                        f"{ns.name} joined etcd while the dead machine's member {ns.name} was still "
                                        "registered: remove it first (EtcdRemoveMemberByID from a healthy control "
                                        "plane)")
                self.stale[store].discard(ns.name)
            self.members[store].discard(ns.name)  # reinstalled: empty etcd data directory
            self.wiped.discard(ns.name)
        elif ns.name in self.wiped:
            self._read_seed(ns)
        if ns.is_control_plane and ns.joined and ns.name not in self.members[store] and any(
                self._up(self._ns(m)) for m in self.members[store]):
            self.members[store].add(ns.name)  # joins the running etcd cluster

    def _read_seed(self, ns: NodeState) -> None:
        seed = next((m.seed for m in ns.media.values() if m.seed is not None), None)
        if seed is None:
            if self.network_seed is not None and self.network_seed(ns):
                return
            ns.reason = _WIPED + " (no seed media attached and no nocloud-net URL registered)"
            return
        self.wiped.discard(ns.name)
        ca = self.sim.store_ca(ns.store.id)
        release = ReleaseFacts(sha256="", release=ns.release, talos_version=ns.talos_version,
                               kubernetes_version=ns.kubelet_version.lstrip("v"), kernel_args=(NOCLOUD_ARG,))
        verdict = evaluate_join(ns.node, release, seed, ca if isinstance(ca, bytes) else None,
                                store_ca_problem=ca if isinstance(ca, str) else "")
        ns.joined, ns.reason = verdict.joined, verdict.reason
        if verdict.joined:
            ns.labels = dict(seed.node_labels)
            self.sim.came_up(ns, None, ns.operation)  # on the release it had: the reset kept BOOT
        ns.generation += 1
        self.sim.event("seed_read", node=ns, detail={"joined": verdict.joined, "reason": verdict.reason})

    def seed_read(self, ns: NodeState) -> None:
        """A wiped node joined with a seed read outside its boot (over the network): it no longer
        waits, and a control plane joins the running etcd cluster if there is one."""
        self.wiped.discard(ns.name)
        store = ns.store.id
        if ns.is_control_plane and ns.joined and ns.name not in self.members[store] and any(
                self._up(self._ns(m)) for m in self.members[store]):
            self.members[store].add(ns.name)


def install(sim: SimFleet, backend: SimTalosBackend) -> None:
    """Make the simulator ask ``backend.formed`` before serving a store's Kubernetes API (used by
    ``SimFleet.store_up`` once it consults ``sim.cluster_formed``)."""
    sim.cluster_formed = backend.formed
