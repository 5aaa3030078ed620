"""Synthetic fleets: realistic, valid inventories of any size for benchmarks and the simulator.

Pure planning (``plan_synthetic_fleet``) is separate from writing (``write_inventory``). The same
seed gives the same fleet, byte for byte.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import yaml

from edgefleet.atomic import staging_dir

# 48 countries with a real IANA zone each (several for the large ones), grouped in regions.
COUNTRIES: list[tuple[str, str, str, list[str]]] = [
    ("DK", "Denmark", "nordics", ["Europe/Copenhagen"]),
    ("NO", "Norway", "nordics", ["Europe/Oslo"]),
    ("SE", "Sweden", "nordics", ["Europe/Stockholm"]),
    ("FI", "Finland", "nordics", ["Europe/Helsinki"]),
    ("IS", "Iceland", "nordics", ["Atlantic/Reykjavik"]),
    ("EE", "Estonia", "baltics", ["Europe/Tallinn"]),
    ("LV", "Latvia", "baltics", ["Europe/Riga"]),
    ("LT", "Lithuania", "baltics", ["Europe/Vilnius"]),
    ("DE", "Germany", "central", ["Europe/Berlin"]),
    ("AT", "Austria", "central", ["Europe/Vienna"]),
    ("CH", "Switzerland", "central", ["Europe/Zurich"]),
    ("PL", "Poland", "central", ["Europe/Warsaw"]),
    ("CZ", "Czechia", "central", ["Europe/Prague"]),
    ("SK", "Slovakia", "central", ["Europe/Bratislava"]),
    ("HU", "Hungary", "central", ["Europe/Budapest"]),
    ("NL", "Netherlands", "west", ["Europe/Amsterdam"]),
    ("BE", "Belgium", "west", ["Europe/Brussels"]),
    ("LU", "Luxembourg", "west", ["Europe/Luxembourg"]),
    ("FR", "France", "west", ["Europe/Paris"]),
    ("IE", "Ireland", "west", ["Europe/Dublin"]),
    ("GB", "United Kingdom", "west", ["Europe/London"]),
    ("ES", "Spain", "south", ["Europe/Madrid", "Atlantic/Canary"]),
    ("PT", "Portugal", "south", ["Europe/Lisbon"]),
    ("IT", "Italy", "south", ["Europe/Rome"]),
    ("GR", "Greece", "south", ["Europe/Athens"]),
    ("CY", "Cyprus", "south", ["Asia/Nicosia"]),
    ("MT", "Malta", "south", ["Europe/Malta"]),
    ("SI", "Slovenia", "balkans", ["Europe/Ljubljana"]),
    ("HR", "Croatia", "balkans", ["Europe/Zagreb"]),
    ("BA", "Bosnia and Herzegovina", "balkans", ["Europe/Sarajevo"]),
    ("RS", "Serbia", "balkans", ["Europe/Belgrade"]),
    ("ME", "Montenegro", "balkans", ["Europe/Podgorica"]),
    ("MK", "North Macedonia", "balkans", ["Europe/Skopje"]),
    ("AL", "Albania", "balkans", ["Europe/Tirane"]),
    ("XK", "Kosovo", "balkans", ["Europe/Belgrade"]),
    ("RO", "Romania", "east", ["Europe/Bucharest"]),
    ("BG", "Bulgaria", "east", ["Europe/Sofia"]),
    ("MD", "Moldova", "east", ["Europe/Chisinau"]),
    ("UA", "Ukraine", "east", ["Europe/Kyiv"]),
    ("GE", "Georgia", "east", ["Asia/Tbilisi"]),
    ("KZ", "Kazakhstan", "east", ["Asia/Almaty"]),
    ("TR", "Turkey", "east", ["Europe/Istanbul"]),
    ("CA", "Canada", "americas", ["America/Toronto", "America/Vancouver", "America/Edmonton", "America/Halifax"]),
    ("US", "United States", "americas",
     ["America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles"]),
    ("AE", "United Arab Emirates", "gulf", ["Asia/Dubai"]),
    ("QA", "Qatar", "gulf", ["Asia/Qatar"]),
    ("VN", "Vietnam", "asia", ["Asia/Ho_Chi_Minh"]),
    ("TH", "Thailand", "asia", ["Asia/Bangkok"]),
]
CITY_WORDS = ["north", "south", "east", "west", "centre", "harbour", "park", "mall", "river", "hill", "airport",
              "station", "market", "bridge", "gate", "field"]


def _mac(counter: int) -> str:
    # Locally administered unicast prefix 02:ef: room for 2^32 NICs.
    b = counter.to_bytes(4, "big")
    return "02:ef:" + ":".join(f"{x:02x}" for x in b)


def _subnet(index: int) -> IPv4Network:
    # 10.16.0.0/24 onward: 61,440 unique /24s before 10.255.255.0.
    n = 16 * 256 + index
    return IPv4Network(f"10.{n // 256}.{n % 256}.0/24")


def _subnet6(index: int) -> IPv6Network:
    # A unique ULA /64 per store: fd00:e0:<index high 16 bits>:<index low 16 bits>::/64.
    return IPv6Network(f"fd00:e0:{index >> 16:x}:{index & 0xFFFF:x}::/64")


def _family(index: int, ipv6_every: int) -> str:
    """Which stores leave IPv4-only: with ``ipv6_every`` N > 0, the last of every N stores is
    IPv6-only and the one before it dual-stack (N = 1: every store IPv6-only)."""
    if ipv6_every <= 0:
        return "ipv4"
    pos = index % ipv6_every
    if pos == ipv6_every - 1:
        return "ipv6"
    return "dual" if pos == ipv6_every - 2 else "ipv4"


def fleet_defaults() -> dict[str, Any]:
    return {
        "ring": "ring2",
        "maintenance_windows": [{"days": ["mon", "tue", "wed", "thu", "sun"], "start": "22:00", "end": "05:00"}],
        "network": {"dns": ["10.0.0.53", "10.0.1.53"], "ntp": ["time.cloudflare.com"]},
        "cluster": {"kubernetes_version": "1.35.0"},
        "node_defaults": {
            "install_disk": "/dev/sda",
            "bmc": {"credentials": {"username": "edgefleet", "password_env": "EDGEFLEET_BMC_PASSWORD"}},
        },
        "talos_patches": [{"machine": {"kubelet": {"extraArgs": {"rotate-server-certificates": "true"}}}}],
    }


def _synthetic_freezes() -> list[dict[str, str]]:
    return [
        {"name": "black-friday", "start": "2026-11-23", "end": "2026-11-30",
         "reason": "Black Friday week: no changes in stores"},
        {"name": "christmas", "start": "2026-12-14", "end": "2027-01-03", "reason": "Christmas trading"},
    ]


def _synthetic_group_vars(picked: list[tuple[str, str, str, list[str]]]) -> dict[str, dict[str, Any]]:
    """group_vars: each country's time zone, the canary ring's window, the Americas' DNS servers."""
    gv: dict[str, dict[str, Any]] = {}
    for cc, _name, _region, zones in picked:
        gv[f"country_{cc.lower()}"] = {"timezone": zones[0]}
    gv["ring_canary"] = {"maintenance_windows": [{"days": ["daily"], "start": "21:00", "end": "06:00"}]}
    gv["region_americas"] = {"network": {"dns": ["10.0.2.53", "10.0.3.53"]}}
    return gv


def _add_synthetic_nodes(st: dict[str, Any], size: int, family: str, hosts: list[IPv4Address],
                         v6: list[IPv6Address], mac: int) -> int:
    """The store's ``size`` nodes (three control planes first) and its cluster (a VIP when it has
    more than one node), addressed by IP family; returns the last MAC counter used."""
    sid = st["id"]
    nodes = []
    for k in range(size):
        mac += 1
        role = "controlplane" if k < 3 else "worker"
        node: dict[str, Any] = {
            "name": f"{sid}-n{k + 1}",
            "role": role,
            "mac": _mac(mac),
            "ip": str(v6[10 + k] if family == "ipv6" else hosts[10 + k]),
            "bmc": {"url": f"https://[{v6[100 + k]}]" if family == "ipv6" else f"https://{hosts[100 + k]}"},
        }
        if family == "dual":
            node["ipv6"] = str(v6[10 + k])
        nodes.append(node)
    st["cluster"] = {"name": sid}
    if size > 1:
        st["cluster"]["vip"] = str(v6[9] if family == "ipv6" else hosts[9])
        if family == "dual":
            st["cluster"]["vip6"] = str(v6[9])
    st["nodes"] = nodes
    return mac


def plan_synthetic_fleet(stores: int, seed: int, *, countries: int = 48, freezes: bool = True,
                         ipv6_every: int = 0) -> tuple[dict[str, Any], dict[str, dict[str, Any]],
                                                       dict[str, list[dict[str, Any]]]]:
    """Return (fleet.yml, group_vars by group, store lists by country code). Pure and deterministic.
    ``ipv6_every`` (default 0: every store IPv4-only) makes some stores dual-stack and IPv6-only
    (see ``_family``); the random choices, and so every other store, stay the same."""
    rng = random.Random(seed)
    picked = COUNTRIES[: max(1, min(countries, len(COUNTRIES)))]
    fleet: dict[str, Any] = {
        "fleet": {"name": f"synthetic-{stores}-s{seed}"},
        "defaults": fleet_defaults(),
        "freezes": _synthetic_freezes() if freezes else [],
    }
    gv = _synthetic_group_vars(picked)
    by_country: dict[str, list[dict[str, Any]]] = {}
    mac = 0
    n_canary = max(1, stores // 100)
    for i in range(stores):
        cc, cname, region, zones = picked[i % len(picked)]
        seq = i // len(picked) + 1
        sid = f"{cc.lower()}-{seq:04d}"
        net = _subnet(i)
        hosts = list(net.hosts())
        r = rng.random()
        size = 1 if r < 0.05 else (5 if r > 0.9 else 3)
        ring = "canary" if i < n_canary else ("ring1" if rng.random() < 0.1 else "ring2")
        st: dict[str, Any] = {
            "id": sid,
            "name": f"{cname} {rng.choice(CITY_WORDS)} {seq}",
            "country": cc,
            "region": region,
        }
        if len(zones) > 1:
            st["timezone"] = zones[seq % len(zones)]
        if ring != "ring2":
            st["ring"] = ring
        start_h = rng.choice([21, 22, 23, 0, 1])
        if rng.random() < 0.3:
            st["maintenance_windows"] = [
                {"days": ["mon", "tue", "wed", "thu", "fri"], "start": f"{start_h:02d}:00",
                 "end": f"{(start_h + rng.choice([4, 5, 6])) % 24:02d}:00"},
                {"days": ["sun"], "start": "19:00", "end": "07:00"},
            ]
        family = _family(i, ipv6_every)
        net6 = _subnet6(i)
        v6 = [net6.network_address + k for k in range(256)]  # ::1 gateway, ::9 VIP, ::a.. nodes
        if family == "ipv6":
            st["network"] = {"subnet": str(net6), "gateway": str(v6[1]), "dns": ["fd00:e0::53"]}
        else:
            st["network"] = {"subnet": str(net), "gateway": str(hosts[0])}
        if family == "dual":
            st["network"]["ipv6"] = {"subnet": str(net6), "gateway": str(v6[1])}
        if rng.random() < 0.1:
            st["network"]["vlan"] = 100 + rng.randrange(50)
        mac = _add_synthetic_nodes(st, size, family, hosts, v6, mac)
        by_country.setdefault(cc.lower(), []).append(st)
    return fleet, gv, by_country


def _dump(data: Any) -> str:
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return str(yaml.dump(data, Dumper=dumper, sort_keys=False, default_flow_style=False, width=120))


def write_inventory(out: str | os.PathLike[str], fleet: Mapping[str, Any], group_vars: Mapping[str, Mapping[str, Any]],
                    stores_by_file: Mapping[str, list[dict[str, Any]]]) -> Path:
    """Write an inventory directory atomically: built in a temp dir beside ``out``, then renamed."""
    target = Path(out)
    if target.exists() and any(target.iterdir()):
        from edgefleet.errors import InputError

        raise InputError(f"{target} exists and is not empty: refusing to overwrite an inventory")
    with staging_dir(target) as tmp:  # renamed over an empty target, removed on failure
        (tmp / "fleet.yml").write_text(_dump(dict(fleet)))
        (tmp / "group_vars").mkdir()
        for g, v in group_vars.items():
            (tmp / "group_vars" / f"{g}.yml").write_text(_dump(dict(v)))
        (tmp / "stores").mkdir()
        for name, sts in stores_by_file.items():
            (tmp / "stores" / f"{name}.yml").write_text(_dump({"stores": sts}))
    return target


def generate_fleet(out: str | os.PathLike[str], stores: int, seed: int, countries: int = 48, *,
                   ipv6_every: int = 0) -> Path:
    fleet, gv, by_country = plan_synthetic_fleet(stores, seed, countries=countries, ipv6_every=ipv6_every)
    return write_inventory(out, fleet, gv, by_country)
