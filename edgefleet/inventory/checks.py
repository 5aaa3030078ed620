"""The rules inside one store that the field types alone cannot express: address families, subnets,
gateways, DNS, pod/service CIDRs, control-plane count, node addresses, bonds, BMCs and VIPs.

Pure: ``check_store`` reports each finding through ``add`` (message, field, key path inside the
store, node, hint); ``edgefleet.inventory.load`` turns them into problems with file and line.
"""

from __future__ import annotations

import functools
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Protocol
from zoneinfo import available_timezones

from edgefleet.inventory.model import Store

__all__ = ["AddProblem", "check_store"]

_STACK = {(4,): "IPv4-only", (6,): "IPv6-only", (4, 6): "dual-stack"}

_Address = IPv4Address | IPv6Address


class AddProblem(Protocol):
    def __call__(self, msg: str, fld: str, sub: tuple[str | int, ...] = (), node: str | None = None,
                 hint: str | None = None) -> None: ...


@functools.lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def check_store(s: Store, add: AddProblem) -> None:
    """Report every rule of one store that ``s`` breaks through ``add``."""
    if s.timezone not in _zones():
        add(f"unknown IANA time zone {s.timezone!r}", "timezone", ("timezone",), hint="e.g. Europe/Copenhagen")
    _check_network(s, add)
    _check_cluster_subnets(s, add)
    cps = len(s.control_planes)
    if cps not in (1, 3, 5):
        add(f"{cps} control planes: etcd needs 1, 3 or 5", "nodes",
            ("nodes",), hint="make 1, 3 or 5 nodes role: controlplane")
    taken = _check_nodes(s, add)
    _check_vips(s, add, taken, cps)


def _check_network(s: Store, add: AddProblem) -> None:
    network = s.network
    net = network.subnet
    families = network.families
    kind = _STACK[families]
    if network.ipv6 is not None and net.version == 6:
        add(f"network.ipv6 is the IPv6 side of a dual-stack store, but subnet {net} is already IPv6",
            "network.ipv6", ("network", "ipv6"),
            hint="an IPv6-only store gives its IPv6 subnet and gateway as network.subnet and network.gateway "
                 "and no network.ipv6; a dual-stack store has an IPv4 subnet plus network.ipv6")
    if network.gateway.version != net.version:
        add(f"gateway {network.gateway} is IPv{network.gateway.version} but subnet {net} is IPv{net.version}",
            "network.gateway", ("network", "gateway"), hint=f"give the subnet's IPv{net.version} gateway")
    elif network.gateway not in net:
        add(f"gateway {network.gateway} is outside subnet {net}", "network.gateway", ("network", "gateway"))
    if network.ipv6 is not None and network.ipv6.gateway not in network.ipv6.subnet:
        add(f"gateway {network.ipv6.gateway} is outside subnet {network.ipv6.subnet}", "network.ipv6.gateway",
            ("network", "ipv6", "gateway"))
    for j, dns in enumerate(network.dns):
        if dns.version not in families:
            add(f"DNS server {dns} is IPv{dns.version}, which this {kind} store cannot reach",
                f"network.dns.{j}", ("network", "dns", j),
                hint=f"give {' or '.join(f'IPv{f}' for f in families)} DNS servers for this store "
                     "(a list replaces the one it inherits)")


def _check_cluster_subnets(s: Store, add: AddProblem) -> None:
    families = s.network.families
    kind = _STACK[families]
    for fld, given in (("pod_subnets", s.cluster.pod_subnets), ("service_subnets", s.cluster.service_subnets)):
        seen_families: set[int] = set()
        for j, cidr in enumerate(given or ()):
            version = ip_network(cidr).version
            sub = ("cluster", fld, j)
            if version not in families:
                add(f"{fld} {cidr} is IPv{version}, but the store network is {kind}", f"cluster.{fld}.{j}", sub,
                    hint=f"give one CIDR per store family ({' then '.join(f'IPv{f}' for f in families)}) "
                         f"or leave cluster.{fld} out for the defaults")
            elif version in seen_families:
                add(f"{fld} has two IPv{version} CIDRs: Kubernetes takes one per family", f"cluster.{fld}.{j}", sub)
            elif version == 6 and families == (4, 6):
                for i, n in enumerate(s.nodes):
                    if n.ipv6 is None:
                        add(f"has no ipv6, but {fld} makes the cluster dual-stack ({cidr})", f"nodes.{i}.ipv6",
                            ("nodes", i), n.name, hint="give every node of a dual-stack cluster its ipv6 address")
                        break
            seen_families.add(version)


def _check_nodes(s: Store, add: AddProblem) -> dict[_Address, str]:
    """The per-node rules; returns the addresses taken (gateways and nodes) and by whom."""
    network = s.network
    taken: dict[_Address, str] = {network.gateway: "the gateway"}
    if network.ipv6 is not None:
        taken[network.ipv6.gateway] = "the IPv6 gateway"
    for i, n in enumerate(s.nodes):
        where = ("nodes", i)
        _check_node_ip(s, add, i, taken)
        if n.ipv6 is not None:
            _check_node_ipv6(s, add, i, taken)
        if n.bond is not None and n.mac not in n.bond.macs:
            add(f"mac {n.mac} is not one of the bond's macs", f"nodes.{i}.bond", (*where, "bond"), n.name)
        if n.bmc is None:
            if s.wipe_method == "bmc":
                add("has no bmc, but the store's wipe_method is bmc", f"nodes.{i}.bmc", where, n.name,
                    hint="give the node a bmc (or node_defaults.bmc), or set wipe_method: talos-api")
        elif n.bmc.url.startswith("http://") and not n.bmc.allow_http:
            add(f"BMC URL {n.bmc.url} is plain http", f"nodes.{i}.bmc.url", (*where, "bmc", "url"), n.name,
                hint="use https, or set bmc.allow_http: true for this store explicitly")
    return taken


def _check_node_ip(s: Store, add: AddProblem, i: int, taken: dict[_Address, str]) -> None:
    n, net = s.nodes[i], s.network.subnet
    sub = ("nodes", i, "ip")
    if n.ip.version != net.version:
        add(f"ip {n.ip} is IPv{n.ip.version}, but the store network {net} is {_STACK[s.network.families]}",
            f"nodes.{i}.ip", sub, n.name,
            hint="a node's ip is in the family of network.subnet; a dual-stack node's IPv6 address goes in ipv6")
    elif n.ip not in net:
        add(f"ip {n.ip} is outside subnet {net}", f"nodes.{i}.ip", sub, n.name)
    elif not _is_host(n.ip, net):
        add(f"ip {n.ip} is the subnet's {_reserved_name(net)} address", f"nodes.{i}.ip", sub, n.name)
    if n.ip in taken:
        add(f"ip {n.ip} is already {taken[n.ip]}", f"nodes.{i}.ip", sub, n.name)
    taken.setdefault(n.ip, f"node {n.name}'s")


def _check_node_ipv6(s: Store, add: AddProblem, i: int, taken: dict[_Address, str]) -> None:
    n, network = s.nodes[i], s.network
    assert n.ipv6 is not None
    sub = ("nodes", i, "ipv6")
    if network.ipv6 is None or network.subnet.version == 6:
        add(f"has ipv6 but the store network is {_STACK[network.families]} (no network.ipv6 subnet)",
            f"nodes.{i}.ipv6", sub, n.name,
            hint="on an IPv6-only store the node's address is its ip; a dual-stack store needs network.ipv6")
    elif n.ipv6 not in network.ipv6.subnet:
        add(f"ipv6 {n.ipv6} is outside {network.ipv6.subnet}", f"nodes.{i}.ipv6", sub, n.name)
    elif not _is_host(n.ipv6, network.ipv6.subnet):
        add(f"ipv6 {n.ipv6} is the subnet's {_reserved_name(network.ipv6.subnet)} address",
            f"nodes.{i}.ipv6", sub, n.name)
    if n.ipv6 in taken:
        add(f"ipv6 {n.ipv6} is already {taken[n.ipv6]}", f"nodes.{i}.ipv6", sub, n.name)
    taken.setdefault(n.ipv6, f"node {n.name}'s")


def _check_vips(s: Store, add: AddProblem, taken: dict[_Address, str], cps: int) -> None:
    network = s.network
    net = network.subnet
    families = network.families
    kind = _STACK[families]
    if s.cluster.vip is not None:
        vip = s.cluster.vip
        if vip.version != net.version:
            add(f"vip {vip} is IPv{vip.version}, but the store network {net} is {kind}", "cluster.vip",
                ("cluster", "vip"), hint=f"the VIP is in network.subnet's family (IPv{net.version})"
                + ("; a dual-stack store's IPv6 VIP goes in cluster.vip6" if families == (4, 6) else ""))
        elif vip not in net:
            add(f"vip {vip} is outside subnet {net}", "cluster.vip", ("cluster", "vip"))
        elif vip in taken:
            add(f"vip {vip} is {taken[vip]} address", "cluster.vip", ("cluster", "vip"),
                hint="the VIP floats between control planes: pick a free address")
        taken.setdefault(vip, "the VIP's")
    elif cps > 1:
        add("a store with several control planes needs a cluster.vip", "cluster.vip", ("cluster",))
    if s.cluster.vip6 is not None:
        vip6 = s.cluster.vip6
        if network.ipv6 is None or net.version == 6:
            add(f"vip6 is the IPv6 VIP of a dual-stack store, but the store network is {kind}", "cluster.vip6",
                ("cluster", "vip6"), hint="an IPv6-only store gives its VIP as cluster.vip")
        elif s.cluster.vip is None:
            add("vip6 without vip: a dual-stack store's first VIP is IPv4", "cluster.vip6", ("cluster", "vip6"),
                hint="give cluster.vip too")
        elif vip6 not in network.ipv6.subnet:
            add(f"vip6 {vip6} is outside subnet {network.ipv6.subnet}", "cluster.vip6", ("cluster", "vip6"))
        elif vip6 in taken:
            add(f"vip6 {vip6} is {taken[vip6]} address", "cluster.vip6", ("cluster", "vip6"),
                hint="the VIP floats between control planes: pick a free address")


def _is_host(ip: _Address, net: IPv4Network | IPv6Network) -> bool:
    """Whether ``ip`` (inside ``net``) may be a host's address: not the IPv4 network or broadcast
    address, not the IPv6 subnet-router anycast address (IPv6 has no broadcast). A /31, /32, /127
    or /128 has no such reserved addresses."""
    if net.prefixlen >= net.max_prefixlen - 1:
        return True
    if net.version == 4:
        return ip not in (net.network_address, net.broadcast_address)
    return ip != net.network_address


def _reserved_name(net: IPv4Network | IPv6Network) -> str:
    return "network or broadcast" if net.version == 4 else "subnet-router anycast"
