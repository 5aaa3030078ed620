"""The typed fleet model: what a store, a node, a window and a freeze are (windows, freezes and wall
times live in ``edgefleet.inventory.times`` and are re-exported here).

Pure: no file or network access here. ``edgefleet.inventory.load`` turns files into these objects;
everything else in edgefleet takes them as input. Models are frozen so a resolved fleet can be
shared between threads and tasks without copies.
"""

from __future__ import annotations

import re
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    IPvAnyAddress,
    IPvAnyNetwork,
    field_validator,
    model_validator,
)

from edgefleet.inventory.times import (
    FREEZE_YEARS,
    HHMM_RE,
    Freeze,
    MaintenanceWindow,
    StrictModel,
    Weekday,
    parse_wall_time,
)

__all__ = [
    "DEFAULT_POD_SUBNETS",
    "DEFAULT_SERVICE_SUBNETS",
    "FREEZE_YEARS",
    "HHMM_RE",
    "Bmc",
    "BmcTls",
    "Bond",
    "Cluster",
    "CredentialsRef",
    "Fleet",
    "Freeze",
    "Ipv6Config",
    "MaintenanceWindow",
    "Network",
    "Node",
    "Probe",
    "Role",
    "Store",
    "Weekday",
    "WipeMethod",
    "parse_wall_time",
    "url_host",
]

HOSTNAME_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
FINGERPRINT_RE = re.compile(r"^(sha256:)?[0-9a-f]{2}(:?[0-9a-f]{2}){31}$")
STORE_ID_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?$")

# Kubernetes pod and service CIDRs a store gets when its inventory gives none, per address family.
# IPv6: a /56 of pod addresses (a /64 per node, the controller manager's default node mask) and a
# /112 of service addresses (within the 20-bit limit older kube-apiservers put on service ranges).
DEFAULT_POD_SUBNETS = {4: "10.244.0.0/16", 6: "fd00:10:244::/56"}
DEFAULT_SERVICE_SUBNETS = {4: "10.96.0.0/12", 6: "fd00:10:96::/112"}


class _Model(StrictModel):
    """The base of the models below (``StrictModel``: unknown fields are errors, frozen)."""


class Role(StrEnum):
    controlplane = "controlplane"
    worker = "worker"


class WipeMethod(StrEnum):
    """How a node is wiped for reimaging."""

    bmc = "bmc"  # out of band: Redfish virtual media + one-time boot
    talos_api = "talos-api"  # in band: Talos Reset(wipe) and NoCloud network seed


def _address_text(v: Any) -> Any:
    """IP addresses and networks are written as text. YAML 1.1 reads some unquoted IPv6 addresses
    (``2001:0:0:0:0:0:0:1``) as sexagesimal integers, and pydantic would take an integer as an
    address: refuse numbers instead of guessing."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        raise ValueError(f"YAML read this address as the number {v}: quote it (\"2001:db8::1\") or write "
                         "it with '::'")
    return v


class CredentialsRef(_Model):
    """Where the BMC password lives. Never the secret itself."""

    username: str = Field(min_length=1)
    password_env: str | None = None
    password_file: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_inline(cls, v: Any) -> Any:
        if isinstance(v, dict) and "password" in v:
            raise ValueError(
                "an inline 'password' is not allowed: reference it with password_env (an environment "
                "variable name) or password_file (a file path)"
            )
        return v

    @model_validator(mode="after")
    def _exactly_one(self) -> CredentialsRef:
        if (self.password_env is None) == (self.password_file is None):
            raise ValueError("give exactly one of password_env or password_file")
        if self.password_env is not None and not ENV_NAME_RE.match(self.password_env):
            raise ValueError(f"password_env {self.password_env!r} is not a valid environment variable name")
        return self


class BmcTls(_Model):
    """How to trust a BMC's certificate: a CA bundle, a pinned sha256 fingerprint, or (explicitly,
    logged at use) not at all."""

    ca_file: str | None = None
    fingerprint: str | None = None
    insecure: bool = False

    @field_validator("fingerprint")
    @classmethod
    def _fp(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip().lower()
        if not FINGERPRINT_RE.match(v):
            raise ValueError(
                "fingerprint must be a sha256 digest: 64 hex digits, colons allowed, 'sha256:' prefix optional"
            )
        return v.removeprefix("sha256:").replace(":", "")


class Bmc(_Model):
    url: str
    credentials: CredentialsRef
    tls: BmcTls = Field(default_factory=BmcTls)
    vendor: str | None = None  # selects entries in the Redfish quirks table
    allow_http: bool = False

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+(/\S*)?$", v):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v.rstrip("/")


class Bond(_Model):
    """Bond the node's NICs (given by MAC). The node's ``mac`` must be one of them."""

    macs: list[str] = Field(min_length=2)
    mode: Literal["active-backup", "802.3ad", "balance-rr", "balance-xor", "balance-alb", "balance-tlb"] = (
        "active-backup"
    )

    @field_validator("macs", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return [m.lower() if isinstance(m, str) else m for m in v] if isinstance(v, list) else v


class Node(_Model):
    name: str
    role: Role
    mac: str
    ip: IPvAnyAddress  # in the family of the store's network.subnet (IPv6 on an IPv6-only store)
    ipv6: IPv6Address | None = None  # a dual-stack store's second address (network.ipv6)
    install_disk: str = "/dev/sda"
    bmc: Bmc | None = None
    bond: Bond | None = None
    talos_patches: list[dict[str, Any]] = Field(default_factory=list)

    _addresses = field_validator("ip", "ipv6", mode="before")(_address_text)

    @field_validator("mac", mode="before")
    @classmethod
    def _mac(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip().lower().replace("-", ":")
            if not MAC_RE.match(v):
                raise ValueError(f"{v!r} is not a MAC address like 02:00:5e:10:00:01")
        return v

    @field_validator("name")
    @classmethod
    def _hostname(cls, v: str) -> str:
        if len(v) > 63 or not HOSTNAME_LABEL.match(v):
            raise ValueError(
                f"{v!r} is not an RFC 1123 host name label (lower-case letters, digits and '-', "
                "at most 63, not starting or ending with '-')"
            )
        return v

    @field_validator("install_disk")
    @classmethod
    def _disk(cls, v: str) -> str:
        if not v.startswith("/dev/"):
            raise ValueError(f"{v!r} is not a device path under /dev/")
        return v


def _strict_network(v: Any) -> Any:
    _address_text(v)
    if isinstance(v, str):
        try:
            ip_network(v, strict=True)
        except ValueError as e:
            raise ValueError(f"{v!r} is not an IPv4 or IPv6 network with host bits clear ({e})") from None
    return v


class Ipv6Config(_Model):
    """The IPv6 side of a dual-stack store (whose ``network.subnet`` is IPv4)."""

    subnet: IPv6Network
    gateway: IPv6Address

    _strict_subnet = field_validator("subnet", mode="before")(_strict_network)
    _addresses = field_validator("gateway", mode="before")(_address_text)


class Network(_Model):
    """A store's LAN. ``subnet``/``gateway`` are its first address family: IPv4 for an IPv4-only
    store, IPv6 for an IPv6-only one. ``ipv6`` adds the IPv6 side of a dual-stack store (IPv4
    first, as Kubernetes and Talos order dual-stack families); the families' consistency (gateway,
    nodes, VIPs, DNS, pod and service subnets) is checked with the store."""

    subnet: IPvAnyNetwork
    gateway: IPvAnyAddress
    dns: list[Annotated[IPvAnyAddress, BeforeValidator(_address_text)]] = Field(min_length=1)
    ntp: list[str] = Field(default_factory=list)
    vlan: int | None = Field(default=None, ge=1, le=4094)
    mtu: int | None = Field(default=None, ge=1280, le=9216)
    ipv6: Ipv6Config | None = None

    _strict_subnet = field_validator("subnet", mode="before")(_strict_network)
    _addresses = field_validator("gateway", mode="before")(_address_text)

    @property
    def families(self) -> tuple[int, ...]:
        """The store's IP versions, first family first: ``(4,)``, ``(6,)`` or ``(4, 6)``."""
        first = self.subnet.version
        return (first, 6) if self.ipv6 is not None and first == 4 else (first,)

    @property
    def subnets(self) -> list[IPv4Network | IPv6Network]:
        """The store's subnets, first family first."""
        return [self.subnet] + ([self.ipv6.subnet] if self.ipv6 is not None and self.subnet.version == 4 else [])


class Cluster(_Model):
    name: str
    vip: IPvAnyAddress | None = None  # in network.subnet's family
    vip6: IPv6Address | None = None  # a dual-stack store's IPv6 VIP, in network.ipv6.subnet
    endpoint: str | None = None  # default: https://<vip or first control plane>:6443, IPv6 in brackets
    kubernetes_version: str = "1.35.0"
    # None: one CIDR per store family (DEFAULT_POD_SUBNETS, DEFAULT_SERVICE_SUBNETS); see Store.
    pod_subnets: list[str] | None = None
    service_subnets: list[str] | None = None
    allow_scheduling_on_control_planes: bool | None = None  # default: true when there are no workers
    discovery: bool = True  # Talos cluster discovery (the discovery service; Kubernetes registry off)
    # The Pod Security level the API server enforces; audit and warn stay at restricted.
    pod_security: Literal["privileged", "baseline", "restricted"] = "baseline"

    _addresses = field_validator("vip", "vip6", mode="before")(_address_text)

    @field_validator("pod_subnets", "service_subnets", mode="before")
    @classmethod
    def _cidrs(cls, v: Any) -> Any:
        if isinstance(v, list):
            for x in v:
                if not isinstance(x, str):
                    raise ValueError(f"{x!r} is not a CIDR string like 10.244.0.0/16 or fd00:10:244::/56")
                _strict_network(x)
            if not v:
                raise ValueError("give at least one CIDR, or leave the field out for the store's default")
        return v


class Probe(_Model):
    name: str
    url: str
    expect_status: int = Field(default=200, ge=100, le=599)
    timeout_s: float = Field(default=5.0, gt=0, le=120)


class Store(_Model):
    """A store after layering: fleet defaults, then its groups' vars, then its own file."""

    id: str
    name: str
    country: str
    region: str
    timezone: str
    ring: str = "ring1"
    canary: bool = False
    groups: list[str] = Field(default_factory=list)  # extra named groups, besides country/region/ring
    maintenance_windows: list[MaintenanceWindow] = Field(min_length=1)
    network: Network
    cluster: Cluster
    nodes: list[Node] = Field(min_length=1)
    probes: list[Probe] = Field(default_factory=list)
    talos_patches: list[dict[str, Any]] = Field(default_factory=list)  # fleet -> group -> store, in order
    wipe_method: WipeMethod = WipeMethod.bmc
    seed_url: str | None = None  # for wipe_method talos-api: where nodes fetch their NoCloud seed

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not STORE_ID_RE.match(v):
            raise ValueError(f"{v!r}: store ids are lower-case letters, digits and '-' (at most 42)")
        return v

    @field_validator("country")
    @classmethod
    def _country(cls, v: str) -> str:
        if not re.match(r"^[A-Z]{2}$", v):
            raise ValueError(f"{v!r} is not an ISO 3166-1 alpha-2 country code like DK")
        return v

    @property
    def control_planes(self) -> list[Node]:
        return [n for n in self.nodes if n.role is Role.controlplane]

    @property
    def workers(self) -> list[Node]:
        return [n for n in self.nodes if n.role is Role.worker]

    @property
    def endpoint(self) -> str:
        if self.cluster.endpoint:
            return self.cluster.endpoint
        host = self.cluster.vip or self.control_planes[0].ip
        return f"https://{url_host(host)}:6443"

    @property
    def cluster_families(self) -> tuple[int, ...]:
        """The families Kubernetes runs with by default: the network's, except that a dual-stack
        network runs an IPv4 cluster until every node has its ``ipv6`` (a dual-stack cluster needs
        a node IP of each family on every node; inventories from before IPv6 support stay as they were)."""
        families = self.network.families
        if families == (4, 6) and any(n.ipv6 is None for n in self.nodes):
            return (4,)
        return families

    @property
    def pod_subnets(self) -> list[str]:
        """The Kubernetes pod CIDRs: the inventory's, else one per cluster family (first family first)."""
        if self.cluster.pod_subnets is not None:
            return list(self.cluster.pod_subnets)
        return [DEFAULT_POD_SUBNETS[f] for f in self.cluster_families]

    @property
    def service_subnets(self) -> list[str]:
        """The Kubernetes service CIDRs: the inventory's, else one per cluster family."""
        if self.cluster.service_subnets is not None:
            return list(self.cluster.service_subnets)
        return [DEFAULT_SERVICE_SUBNETS[f] for f in self.cluster_families]

    @property
    def vips(self) -> list[IPv4Address | IPv6Address]:
        """The store's VIPs: ``cluster.vip`` then, on a dual-stack store, ``cluster.vip6``."""
        return [v for v in (self.cluster.vip, self.cluster.vip6) if v is not None]

    @property
    def all_groups(self) -> list[str]:
        """Every group the store is in, in layering order (lowest precedence first)."""
        out = [f"country_{self.country.lower()}", f"region_{self.region}", f"ring_{self.ring}"]
        if self.canary:
            out.append("canary")
        out.extend(g for g in self.groups if g not in out)
        return out


def url_host(address: IPv4Address | IPv6Address | str) -> str:
    """``address`` as the host part of a URL or ``host:port``: an IPv6 address in brackets."""
    text = str(address)
    try:
        return f"[{text}]" if ip_address(text).version == 6 else text
    except ValueError:
        return text  # a host name


class Fleet(_Model):
    name: str
    stores: dict[str, Store]
    freezes: list[Freeze] = Field(default_factory=list)
    source: str = ""  # the inventory directory it was loaded from

    def store(self, store_id: str) -> Store:
        try:
            return self.stores[store_id]
        except KeyError:
            from edgefleet.errors import InputError

            raise InputError(f"no store {store_id!r} in inventory {self.source or '<memory>'}") from None

    @property
    def node_count(self) -> int:
        return sum(len(s.nodes) for s in self.stores.values())

    def groups(self) -> dict[str, list[str]]:
        """Group name -> store ids, for every group any store is in."""
        out: dict[str, list[str]] = {}
        for s in self.stores.values():
            for g in s.all_groups:
                out.setdefault(g, []).append(s.id)
        return out
