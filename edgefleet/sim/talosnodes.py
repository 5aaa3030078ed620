"""What the simulated Talos API asks of a node, and a complete answer over a fleet.

``TalosNodeBackend`` is the node state ``edgefleet.sim.talosapi``'s servicer reads and changes
(up, configured, etcd data, resets, reboots); ``NodeFault`` is how a backend says a call fails
(a gRPC status and a message). ``MemoryNodes`` is a backend over a fleet and its secrets, for
tests and for the simulator without its BMC model (``edgefleet.sim.talos_wiring`` adapts that).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc

from edgefleet.errors import EdgefleetError
from edgefleet.inventory.model import Fleet, Role

__all__ = ["MemoryNodes", "NodeFault", "TalosNodeBackend", "etcd_may_remove"]


def etcd_may_remove(roster: Mapping[str, bool], member: str) -> bool:
    """Whether etcd lets ``member`` be removed from a cluster whose members are ``roster`` (name ->
    up): etcd's strict reconfiguration check (``IsReadyToRemoveVotingMember``) wants the members
    left behind to still have a started quorum. So the last member cannot go, nor a healthy one of
    three while another is down; a member that is down can always go while the others are up."""
    rest = [up for name, up in roster.items() if name != member]
    return sum(rest) >= len(rest) // 2 + 1


class NodeFault(EdgefleetError):
    """A node refuses a call; ``code`` is the gRPC status the node answers with."""

    def __init__(self, code: grpc.StatusCode, message: str):
        self.code = code
        super().__init__(message)


class TalosNodeBackend(Protocol):
    """The node state the Talos API servicer reads and changes. Node arguments are node names."""

    def os_ca_pems(self) -> Mapping[str, bytes]:
        """Store id -> its OS CA certificate PEM, for every store that has secrets."""

    def ca_generation(self) -> int:
        """Changes whenever ``os_ca_pems`` would return something new."""

    def resolve(self, store_id: str, target: str) -> str | None:
        """The name of the store's node that ``target`` (a name or an address) designates."""

    def store_of(self, node: str) -> str: ...

    def is_control_plane(self, node: str) -> bool: ...

    def check_up(self, node: str) -> None:
        """Raise ``NodeFault`` (UNAVAILABLE) unless the node runs Talos with its machine config."""

    def version(self, node: str) -> tuple[str, str]:
        """(Talos version tag, platform name)."""

    def has_etcd_data(self, node: str) -> bool: ...

    def bootstrap(self, node: str) -> None: ...

    def etcd_members(self, store_id: str) -> Sequence[str]:
        """The store's control planes that are etcd members and up, in a stable order."""

    def etcd_roster(self, store_id: str) -> Mapping[str, bool]:
        """Every registered etcd member of the store (also those down): name -> up."""

    def etcd_remove(self, store_id: str, member: str) -> None:
        """Drop ``member`` from the store's etcd cluster (its data, if the node is up, is void)."""

    def note_call(self, node: str, method: str) -> None:
        """Count a Talos API call that targeted ``node`` (the oracle's per-node request counts)."""

    def address(self, node: str) -> str: ...

    def reset(self, node: str, *, graceful: bool, reboot: bool, wipe: frozenset[str]) -> None: ...

    def reboot(self, node: str) -> None: ...


# --- a backend over a fleet ------------------------------------------------------------------------


@dataclass(slots=True)
class _NodeFacts:
    name: str
    store: str
    address: str
    control_plane: bool
    up: bool = True
    configured: bool = True  # has a machine config (else: maintenance mode)
    etcd: bool = False  # has etcd data (is a member)
    boots: int = 0


@dataclass
class MemoryNodes:
    """A ``TalosNodeBackend`` over a fleet: every node up and configured, clusters formed or not.

    ``os_cas``: store id -> OS CA PEM (``MemoryNodes.from_home`` reads them from the secrets).
    ``formed``: the stores whose control planes all hold etcd data at start. A reset node with a
    STATE wipe comes back configured when ``seeded`` (its seed is attached), else it stays in
    maintenance mode; ``reboot=False`` leaves it down (halted)."""

    fleet: Fleet
    os_cas: dict[str, bytes]
    formed: frozenset[str] = frozenset()
    seeded: bool = True
    talos_version: str = "v1.12.0"
    nodes: dict[str, _NodeFacts] = field(default_factory=dict)
    calls: dict[tuple[str, str], int] = field(default_factory=dict)
    _gen: int = 0

    def __post_init__(self) -> None:
        for s in self.fleet.stores.values():
            for n in s.nodes:
                cp = n.role is Role.controlplane
                self.nodes[n.name] = _NodeFacts(n.name, s.id, str(n.ip), cp, etcd=cp and s.id in self.formed)

    @classmethod
    def from_home(cls, fleet: Fleet, home: Path, **kw: Any) -> MemoryNodes:
        from cryptography.hazmat.primitives import serialization

        from edgefleet.secrets import load_secrets
        from edgefleet.talos.certs import load_ca

        cas: dict[str, bytes] = {}
        for sid in fleet.stores:
            try:
                cert, _ = load_ca(load_secrets(home, sid).certs.os, store_id=sid, which="os")
            except EdgefleetError:
                continue
            cas[sid] = cert.public_bytes(serialization.Encoding.PEM)
        return cls(fleet, cas, **kw)

    def os_ca_pems(self) -> Mapping[str, bytes]:
        return self.os_cas

    def ca_generation(self) -> int:
        return self._gen

    def add_ca(self, store_id: str, pem: bytes) -> None:
        self.os_cas[store_id] = pem
        self._gen += 1

    def resolve(self, store_id: str, target: str) -> str | None:
        f = self.nodes.get(target)
        if f is not None:
            return f.name if f.store == store_id else None
        store = self.fleet.stores.get(store_id)
        if store is None:
            return None
        return next((n.name for n in store.nodes if str(n.ip) == target), None)

    def store_of(self, node: str) -> str:
        return self.nodes[node].store

    def is_control_plane(self, node: str) -> bool:
        return self.nodes[node].control_plane

    def check_up(self, node: str) -> None:
        f = self.nodes[node]
        if not f.up:
            raise NodeFault(grpc.StatusCode.UNAVAILABLE, f"node {node} is down: connection refused")
        if not f.configured:
            raise NodeFault(grpc.StatusCode.UNAVAILABLE, f"node {node} is in maintenance mode (no machine config)")

    def version(self, node: str) -> tuple[str, str]:
        return self.talos_version, "nocloud"

    def has_etcd_data(self, node: str) -> bool:
        return self.nodes[node].etcd

    def bootstrap(self, node: str) -> None:
        self.nodes[node].etcd = True

    def etcd_members(self, store_id: str) -> Sequence[str]:
        return [f.name for f in self.nodes.values()
                if f.store == store_id and f.control_plane and f.etcd and f.up and f.configured]

    def etcd_roster(self, store_id: str) -> Mapping[str, bool]:
        return {f.name: f.up and f.configured for f in self.nodes.values()
                if f.store == store_id and f.control_plane and f.etcd}

    def etcd_remove(self, store_id: str, member: str) -> None:
        self.nodes[member].etcd = False

    def note_call(self, node: str, method: str) -> None:
        self.calls[node, method] = self.calls.get((node, method), 0) + 1

    def address(self, node: str) -> str:
        return self.nodes[node].address

    def reset(self, node: str, *, graceful: bool, reboot: bool, wipe: frozenset[str]) -> None:
        f = self.nodes[node]
        if not wipe or "STATE" in wipe:
            f.etcd = False
            f.configured = False
        elif "EPHEMERAL" in wipe:
            f.etcd = False  # etcd data lives on EPHEMERAL
        f.up = reboot
        if reboot:
            self._boot(f)

    def reboot(self, node: str) -> None:
        self._boot(self.nodes[node])

    def _boot(self, f: _NodeFacts) -> None:
        f.boots += 1
        if not f.configured and self.seeded:
            f.configured = True  # read its NoCloud seed again
        if f.control_plane and f.configured and not f.etcd and any(
                o.etcd and o.up for o in self.nodes.values() if o.store == f.store and o is not f):
            f.etcd = True  # joins the existing etcd cluster
