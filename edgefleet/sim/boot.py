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
* Talos refuses a machine config (``machine_config_rejections``) whose role and secrets disagree:
  a worker holding CA private keys (``machine.ca.key``, ``cluster.ca.key``, the etcd and aggregator
  CA keys, the service-account key), a control plane missing one of them (or its CA
  certificates), or a type other than ``controlplane``/``worker``; and the API server refuses to
  start with a malformed ``cluster.apiServer.admissionControl`` (the Pod Security plugin's
  configuration is checked as kube-apiserver checks it: version, kind, levels, level versions,
  exemptions);
* the node joins only when its machine config's ``cluster.ca.crt`` is the store's Kubernetes CA, its
  host name (``HostnameConfig``, else ``meta-data``) is the node's name, and the network config
  matches the node's MAC and carries its IP address.

Facts are small on purpose: 10,200 nodes may have media inserted at once.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import ip_interface
from typing import Any

from edgefleet.errors import YamlError
from edgefleet.inventory.model import Node
from edgefleet.safeyaml import parse_yaml_all
from edgefleet.talos.config import LABEL_RELEASE as RELEASE_LABEL  # the one definition: what configs write

__all__ = [
    "NOCLOUD_ARG",
    "RELEASE_LABEL",
    "JoinVerdict",
    "ReleaseFacts",
    "SeedFacts",
    "evaluate_join",
    "machine_config_rejections",
    "normalize_pem",
    "parse_seed_facts",
]

NOCLOUD_ARG = "talos.platform=nocloud"


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
    rejected: tuple[str, ...] = ()  # why Talos would refuse the machine config (machine_config_rejections)


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


# The private keys only a control plane holds, and the certificates beside them, by key path.
_CP_KEYS = (("machine", "ca", "key"), ("cluster", "ca", "key"), ("cluster", "aggregatorCA", "key"),
            ("cluster", "serviceAccount", "key"), ("cluster", "etcd", "ca", "key"))
_CP_CERTS = (("machine", "ca", "crt"), ("cluster", "ca", "crt"), ("cluster", "aggregatorCA", "crt"),
             ("cluster", "etcd", "ca", "crt"))
_MACHINE_TYPES = {"controlplane": True, "init": True, "worker": False}  # type -> control plane?
_PSA_API_VERSIONS = {f"pod-security.admission.config.k8s.io/{v}" for v in ("v1alpha1", "v1beta1", "v1")}
_PSA_LEVELS = {"privileged", "baseline", "restricted"}
_PSA_MODES = ("enforce", "audit", "warn")
_PSA_EXEMPTIONS = ("namespaces", "runtimeClasses", "usernames")
_K8S_VERSION = re.compile(r"^(latest|v1\.(0|[1-9][0-9]*))$")


def _at(doc: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    v: Any = doc
    for k in path:
        v = v.get(k) if isinstance(v, dict) else None
    return v


def _is_pem(value: Any, label: bytes) -> bool:
    """Is ``value`` base64 of a PEM block whose label ends with ``label`` (``PRIVATE KEY`` covers
    Talos's ``ED25519 PRIVATE KEY``, ``EC PRIVATE KEY``, ``RSA PRIVATE KEY``)?"""
    if not isinstance(value, str) or not value:
        return False
    try:
        pem = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    head = pem.lstrip().split(b"\n", 1)[0].strip()
    return head.startswith(b"-----BEGIN ") and head.endswith(label + b"-----")


def _pod_security_rejections(config: Any, where: str) -> list[str]:
    if not isinstance(config, dict):
        return [f"{where}.configuration is not a mapping"]
    out = []
    if config.get("apiVersion") not in _PSA_API_VERSIONS or config.get("kind") != "PodSecurityConfiguration":
        out.append(f"{where}.configuration is apiVersion {config.get('apiVersion')!r} kind {config.get('kind')!r}, "
                   "not a PodSecurityConfiguration of pod-security.admission.config.k8s.io/v1 (or v1beta1, v1alpha1)")
    for k in config:
        if k not in ("apiVersion", "kind", "defaults", "exemptions"):
            out.append(f"{where}.configuration has an unknown field {k!r}")
    defaults = config.get("defaults", {})
    if not isinstance(defaults, dict):
        out.append(f"{where}.configuration.defaults is not a mapping")
        defaults = {}
    for k, v in defaults.items():
        mode, _, version = str(k).partition("-")
        if mode not in _PSA_MODES or version not in ("", "version"):
            out.append(f"{where}.configuration.defaults has an unknown field {k!r}")
        elif not version and v not in _PSA_LEVELS:
            out.append(f"{where}.configuration.defaults.{k} is {v!r}, not privileged, baseline or restricted")
        elif version and not (isinstance(v, str) and _K8S_VERSION.match(v)):
            out.append(f"{where}.configuration.defaults.{k} is {v!r}, not 'latest' or a version like v1.35")
    exemptions = config.get("exemptions", {})
    if not isinstance(exemptions, dict):
        out.append(f"{where}.configuration.exemptions is not a mapping")
        exemptions = {}
    for k, v in exemptions.items():
        if k not in _PSA_EXEMPTIONS:
            out.append(f"{where}.configuration.exemptions has an unknown field {k!r}")
        elif v is not None and not (isinstance(v, list) and all(isinstance(x, str) and x for x in v)):
            out.append(f"{where}.configuration.exemptions.{k} is not a list of names")
    return out


def machine_config_rejections(config: Mapping[str, Any]) -> list[str]:
    """Why Talos would refuse this v1alpha1 machine config (the checks in the module docstring);
    empty when it would accept it."""
    out: list[str] = []
    mtype = _at(config, ("machine", "type"))
    if mtype not in _MACHINE_TYPES:
        return [f"machine.type {mtype!r} is neither controlplane nor worker"]
    dotted = ".".join
    if _MACHINE_TYPES[mtype]:
        missing = [dotted(p) for p in _CP_KEYS if not _is_pem(_at(config, p), b"PRIVATE KEY")]
        missing += [dotted(p) for p in _CP_CERTS if not _is_pem(_at(config, p), b"CERTIFICATE")]
        if missing:
            out.append(f"a control plane's machine config lacks {', '.join(missing)} (or they are not base64 PEM): "
                       "it cannot issue certificates or run etcd and the API server")
    else:
        held = [dotted(p) for p in _CP_KEYS if _at(config, p) not in (None, "")]
        if held:
            out.append(f"a worker's machine config holds {', '.join(held)}: CA private keys belong on control "
                       "planes only (render the node's config as a worker)")
    admission = _at(config, ("cluster", "apiServer", "admissionControl"))
    if admission is not None:
        if not isinstance(admission, list):
            out.append("cluster.apiServer.admissionControl is not a list of admission plugins")
            admission = []
        for i, plugin in enumerate(admission):
            where = f"cluster.apiServer.admissionControl.{i}"
            if not isinstance(plugin, dict) or not isinstance(plugin.get("name"), str) or not plugin["name"]:
                out.append(f"{where} has no plugin name")
            elif plugin["name"] == "PodSecurity":
                out.extend(_pod_security_rejections(plugin.get("configuration"), where))
            elif not isinstance(plugin.get("configuration", {}), dict):
                out.append(f"{where}.configuration is not a mapping")
    return out


def _machine_config(user_data: bytes, problems: list[str],
                    rejected: list[str]) -> tuple[str | None, bytes | None, dict[str, str]]:
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
        rejected.extend(machine_config_rejections(d))
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
    rejected: list[str] = []
    hostname, ca, labels = _machine_config(user_data, problems, rejected)
    macs, addrs = _network(network_config, problems)
    return SeedFacts(sha256=sha256, instance_id=str(instance_id) if instance_id is not None else None,
                     hostname=hostname or (str(meta_host) if meta_host else None), ca_pem=ca,
                     node_labels=labels, macs=macs, addresses=addrs, problems=tuple(problems),
                     rejected=tuple(rejected))


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
    if seed.rejected:
        return JoinVerdict(False, "Talos refuses the machine config: " + "; ".join(seed.rejected))
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
