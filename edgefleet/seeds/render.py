"""What goes on a node's NoCloud seed: ``network-config`` (v2), ``meta-data``, ``user-data``.

Pure. ``user-data`` is the node's Talos machine config (``edgefleet.talos.config``).

``network-config`` is netplan-style version 2, without the top-level ``network:`` key (both Talos
and cloud-init accept that form): the node's NIC matched by MAC (or a bond of its NICs), static
addresses (the store subnet's family: IPv4, IPv6, or both on a dual-stack node), the IPv4 default
route written as ``to: 0.0.0.0/0`` (Talos also takes ``to: default``, but cloud-init's renderers
other than netplan reject it), the IPv6 one as ``gateway6`` (cloud-init 22.4 turns ``to: ::/0``
into a route to ``::/64``; both readers take ``gateway6``), DNS servers, MTU,
and the store VLAN on top when the store has one. Interface keys (``edge0``, ``edge1``,
``bond0``, ``edge0.<vlan>``) are ids, not kernel names: Talos maps ``ethernets`` to the real
link by MAC, and names bonds and VLANs after their keys (``edgefleet.talos.config.vip_link``
relies on that).

``meta-data`` carries ``instance-id``, a digest of user-data and network-config (so it changes
exactly when the seed's configuration changes, which is what tells cloud-init a new instance
is to be set up) and ``local-hostname``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import yaml

from edgefleet.errors import ConfigRenderError
from edgefleet.inventory.model import Node, Store
from edgefleet.secrets import ClusterSecrets
from edgefleet.talos.config import BOND_NAME, LINK_ALIAS, ReleaseRef, TalosSchema, render_machine_config

__all__ = ["SeedFiles", "instance_id", "render_meta_data", "render_network_config", "render_seed_files"]

BOND_MII_MONITOR_MS = 100
_Dumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@dataclass(frozen=True)
class SeedFiles:
    """The three NoCloud files, as the bytes that go on the ISO."""

    user_data: bytes
    meta_data: bytes
    network_config: bytes


def _dump(data: Any) -> bytes:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1 << 16).encode("utf-8")


def _check(store: Store, node: Node) -> None:
    """Addressing rules the seed depends on (the inventory loader checks them too; a Store built
    in code may not have gone through it)."""
    net = store.network
    reserved = {net.subnet.network_address} if net.subnet.prefixlen < net.subnet.max_prefixlen - 1 else set()
    if net.subnet.version == 4 and reserved:
        reserved.add(net.subnet.broadcast_address)
    if node.ip not in net.subnet or node.ip in reserved:
        raise ConfigRenderError(f"store {store.id} node {node.name}: ip {node.ip} is not a host address of the "
                                f"store subnet {net.subnet} (network.subnet / nodes[].ip)")
    if net.gateway.version != net.subnet.version:
        raise ConfigRenderError(f"store {store.id}: gateway {net.gateway} is not in the family of subnet "
                                f"{net.subnet} (network.gateway)")
    if node.ipv6 is not None:
        if net.ipv6 is None or net.subnet.version == 6:
            raise ConfigRenderError(f"store {store.id} node {node.name}: node has ipv6 {node.ipv6} but the store "
                                    "has no network.ipv6 subnet (an IPv6-only store's node gives its address as ip)")
        if node.ipv6 not in net.ipv6.subnet:
            raise ConfigRenderError(f"store {store.id} node {node.name}: ipv6 {node.ipv6} is outside "
                                    f"{net.ipv6.subnet}")
    if node.bond is not None and node.mac not in node.bond.macs:
        raise ConfigRenderError(f"store {store.id} node {node.name}: mac {node.mac} is not one of the bond's "
                                "macs (nodes[].bond.macs)")


def render_network_config(store: Store, node: Node) -> bytes:
    """The node's NoCloud network-config (v2)."""
    _check(store, node)
    net = store.network
    addresses = [f"{node.ip}/{net.subnet.prefixlen}"]
    l3: dict[str, Any] = {"dhcp4": False, "dhcp6": False, "addresses": addresses}
    gateway6 = net.gateway if net.gateway.version == 6 else None
    if node.ipv6 is not None and net.ipv6 is not None:
        addresses.append(f"{node.ipv6}/{net.ipv6.subnet.prefixlen}")
        gateway6 = net.ipv6.gateway
    if gateway6 is not None:
        # Not a route "to: ::/0": cloud-init 22.4 (Debian 12) renders that as a route to ::/64 for
        # networkd and ENI alike. gateway6 is read correctly by cloud-init and by Talos.
        l3["gateway6"] = str(gateway6)
    if net.gateway.version == 4:
        l3["routes"] = [{"to": "0.0.0.0/0", "via": str(net.gateway)}]
    l3["nameservers"] = {"addresses": [str(a) for a in net.dns]}
    if net.mtu is not None:
        l3 = {"mtu": net.mtu, **l3}
    mtu: dict[str, Any] = {"mtu": net.mtu} if net.mtu is not None else {}
    no_dhcp = {"dhcp4": False, "dhcp6": False}

    doc: dict[str, Any] = {"version": 2, "ethernets": {}}
    if node.bond is None:
        parent = LINK_ALIAS
        carrier = {"match": {"macaddress": node.mac}}
        doc["ethernets"][parent] = {**carrier, **(l3 if net.vlan is None else {**mtu, **no_dhcp})}
    else:
        parent = BOND_NAME
        members = []
        for i, mac in enumerate(node.bond.macs):
            key = f"edge{i}"
            members.append(key)
            doc["ethernets"][key] = {"match": {"macaddress": mac}, **mtu, **no_dhcp}
        bond: dict[str, Any] = {
            "interfaces": members,
            "macaddress": node.mac,
            "parameters": {"mode": node.bond.mode, "mii-monitor-interval": BOND_MII_MONITOR_MS},
        }
        doc["bonds"] = {parent: {**bond, **(l3 if net.vlan is None else {**mtu, **no_dhcp})}}
    if net.vlan is not None:
        doc["vlans"] = {f"{parent}.{net.vlan}": {"id": net.vlan, "link": parent, **l3}}
    return _dump(doc)


def instance_id(user_data: bytes, network_config: bytes) -> str:
    """A digest of the seed's configuration: changes exactly when user-data or network-config do."""
    h = hashlib.sha256()
    for part in (user_data, network_config):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:40]


def render_meta_data(node: Node, user_data: bytes, network_config: bytes) -> bytes:
    return _dump({"instance-id": instance_id(user_data, network_config), "local-hostname": node.name})


def render_seed_files(store: Store, node: Node, release: ReleaseRef, secrets: ClusterSecrets, *,
                      schema: TalosSchema | None = None) -> SeedFiles:
    """The three files of the node's seed."""
    network_config = render_network_config(store, node)
    user_data = render_machine_config(store, node, release, secrets, schema=schema)
    return SeedFiles(user_data=user_data, meta_data=render_meta_data(node, user_data, network_config),
                     network_config=network_config)

