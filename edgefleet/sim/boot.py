"""What a simulated node learns from its boot media, and whether it can join its store's cluster.

Pure: the media were downloaded and read as ISOs elsewhere (``edgefleet.sim.media``); here their
contents become small facts (``ReleaseFacts``, ``SeedFacts``) and ``evaluate_join`` decides what
Talos would do with them, the way Talos does it:

* the boot image's kernel arguments must carry ``talos.platform=nocloud``, else the node never
  looks for its NoCloud seed (it waits in maintenance mode);
* the seed is a volume labelled ``cidata``/``CIDATA``; ``user-data`` is the machine config (a
  document starting with ``#cloud-config`` counts as no config), ``meta-data`` carries
  ``instance-id`` and ``local-hostname``, ``network-config`` is v1 or v2 (with or without a
  top-level ``network:`` key);
* the node joins only when its machine config's ``cluster.ca.crt`` is the store's Kubernetes CA, its
  host name (``HostnameConfig``, else ``meta-data``) is the node's name, and the network config
  matches the node's MAC and carries its IP address.

Facts are small on purpose: 10,200 nodes may have media inserted at once.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import ip_interface
from typing import Any

from edgefleet.errors import YamlError
from edgefleet.inventory.model import Node
from edgefleet.safeyaml import parse_yaml_all

__all__ = [
    "NOCLOUD_ARG",
    "RELEASE_LABEL",
    "JoinVerdict",
    "ReleaseFacts",
    "SeedFacts",
    "evaluate_join",
    "normalize_pem",
    "parse_seed_facts",
]

NOCLOUD_ARG = "talos.platform=nocloud"
RELEASE_LABEL = "edgefleet.io/release"


@dataclass(frozen=True, slots=True)
class ReleaseFacts:
    """A release boot image, as the node sees it at boot."""

    sha256: str
    release: str
    talos_version: str
    kubernetes_version: str
    kernel_args: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SeedFacts:
    """What a NoCloud seed tells a booting node. ``problems`` lists what could not be read."""

    sha256: str
    instance_id: str | None = None
    hostname: str | None = None
    ca_pem: bytes | None = None
    node_labels: Mapping[str, str] = field(default_factory=dict)
    macs: frozenset[str] = frozenset()
    addresses: frozenset[str] = frozenset()
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class JoinVerdict:
    joined: bool
    reason: str


def normalize_pem(data: bytes) -> bytes:
    """A PEM with line endings and surrounding blanks normalised, for comparison."""
    return b"\n".join(line.strip() for line in data.strip().splitlines() if line.strip())


def _yaml_docs(text: bytes, what: str, problems: list[str]) -> list[Any]:
    try:
        return [d for d in parse_yaml_all(text, source=what) if d is not None]
    except YamlError as e:
        problems.append(f"{what} is not valid YAML: {str(e).splitlines()[0]}")
        return []


def _mapping(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _machine_config(user_data: bytes, problems: list[str]) -> tuple[str | None, bytes | None, dict[str, str]]:
    """(hostname, CA PEM, node labels) from a multi-document Talos machine config."""
    if user_data.lstrip().startswith(b"#cloud-config"):
        problems.append("user-data is a #cloud-config document, not a Talos machine config")
        return None, None, {}
    docs = _yaml_docs(user_data, "user-data", problems)
    hostname: str | None = None
    ca: bytes | None = None
    labels: dict[str, str] = {}
    v1 = [d for d in docs if isinstance(d, dict) and d.get("version") == "v1alpha1"]
    if not v1:
        problems.append("user-data has no v1alpha1 machine config document")
    for d in v1[:1]:
        crt = _mapping(_mapping(d.get("cluster")).get("ca")).get("crt")
        if isinstance(crt, str):
            try:
                ca = base64.b64decode(crt, validate=True)
            except (binascii.Error, ValueError):
                problems.append("cluster.ca.crt is not base64")
        else:
            problems.append("the machine config has no cluster.ca.crt")
        machine = _mapping(d.get("machine"))
        raw_labels = _mapping(machine.get("nodeLabels"))
        labels = {str(k): "" if v is None else str(v) for k, v in raw_labels.items()}
        legacy = _mapping(machine.get("network")).get("hostname")
        if isinstance(legacy, str):
            hostname = legacy
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == "HostnameConfig" and isinstance(d.get("hostname"), str):
            hostname = d["hostname"]
    return hostname, ca, labels


def _walk_interfaces(cfg: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for section in ("ethernets", "bonds", "vlans", "bridges"):
        for iface in _mapping(cfg.get(section)).values():
            if isinstance(iface, dict):
                yield iface


def _network(network_config: bytes, problems: list[str]) -> tuple[frozenset[str], frozenset[str]]:
    docs = _yaml_docs(network_config, "network-config", problems)
    if not docs or not isinstance(docs[0], dict):
        if not problems or not problems[-1].startswith("network-config"):
            problems.append("network-config is empty or not a mapping")
        return frozenset(), frozenset()
    cfg: dict[str, Any] = docs[0]
    if isinstance(cfg.get("network"), dict):
        cfg = cfg["network"]
    macs: set[str] = set()
    addrs: set[str] = set()

    def add_addr(a: Any) -> None:
        if isinstance(a, str):
            try:
                addrs.add(str(ip_interface(a).ip))
            except ValueError:
                problems.append(f"network-config address {a!r} is not an IP address")

    version = cfg.get("version")
    if version == 2:
        for iface in _walk_interfaces(cfg):
            for mac in (_mapping(iface.get("match")).get("macaddress"), iface.get("macaddress")):
                if isinstance(mac, str):
                    macs.add(mac.lower())
            for a in iface.get("addresses") or []:
                add_addr(a)
    elif version == 1:
        for entry in cfg.get("config") or []:
            if not isinstance(entry, dict):
                continue
            if isinstance(entry.get("mac_address"), str):
                macs.add(entry["mac_address"].lower())
            for sub in entry.get("subnets") or []:
                if isinstance(sub, dict):
                    add_addr(sub.get("address"))
    else:
        problems.append(f"network-config version {version!r} is neither 1 nor 2")
    return frozenset(macs), frozenset(addrs)


def parse_seed_facts(user_data: bytes, meta_data: bytes, network_config: bytes, *, sha256: str) -> SeedFacts:
    """The facts of a seed's three files; never raises (problems are collected)."""
    problems: list[str] = []
    meta_docs = _yaml_docs(meta_data, "meta-data", problems)
    meta = _mapping(meta_docs[0]) if meta_docs else {}
    instance_id = meta.get("instance-id")
    meta_host = meta.get("local-hostname") or meta.get("hostname")
    hostname, ca, labels = _machine_config(user_data, problems)
    macs, addrs = _network(network_config, problems)
    return SeedFacts(sha256=sha256, instance_id=str(instance_id) if instance_id is not None else None,
                     hostname=hostname or (str(meta_host) if meta_host else None), ca_pem=ca,
                     node_labels=labels, macs=macs, addresses=addrs, problems=tuple(problems))


def evaluate_join(node: Node, release: ReleaseFacts, seed: SeedFacts | None, store_ca_pem: bytes | None,
                  *, store_ca_problem: str = "") -> JoinVerdict:
    """Would ``node`` booted from ``release`` with ``seed`` join its store's cluster?"""
    if NOCLOUD_ARG not in release.kernel_args:
        return JoinVerdict(False, f"boot image {release.release} lacks kernel argument {NOCLOUD_ARG}: the node "
                                  "never looks for its NoCloud seed and waits in maintenance mode")
    if seed is None:
        return JoinVerdict(False, "no NoCloud seed (a cidata volume) is attached: the node waits in maintenance "
                                  "mode")
    if seed.problems:
        return JoinVerdict(False, "seed unusable: " + "; ".join(seed.problems))
    if store_ca_pem is None:
        return JoinVerdict(False, f"the store's cluster CA is unknown to the simulator: {store_ca_problem}")
    if seed.ca_pem is None or normalize_pem(seed.ca_pem) != normalize_pem(store_ca_pem):
        return JoinVerdict(False, "the machine config's cluster.ca.crt is not this store's Kubernetes CA: the "
                                  "kubelet cannot join the cluster")
    if seed.hostname != node.name:
        return JoinVerdict(False, f"the seed names host {seed.hostname!r}, not {node.name!r}")
    if node.mac not in seed.macs:
        return JoinVerdict(False, f"network-config matches MACs {sorted(seed.macs)}, not the node's {node.mac}: "
                                  "no link comes up")
    if str(node.ip) not in seed.addresses:
        return JoinVerdict(False, f"network-config addresses {sorted(seed.addresses)} do not include the node's "
                                  f"{node.ip}")
    return JoinVerdict(True, f"joined on release {release.release}")
