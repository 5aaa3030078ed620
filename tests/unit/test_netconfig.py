"""NoCloud network-config v2 and meta-data for a node (cloud-init's own renderer checks them in
tests/contract/test_seed_build.py)."""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.errors import ConfigRenderError
from edgefleet.inventory.model import Store
from edgefleet.secrets import ClusterSecrets, generate_secrets
from edgefleet.seeds.render import instance_id, render_meta_data, render_network_config, render_seed_files
from edgefleet.talos.config import ReleaseRef
from tests.helpers import TALOS_TESTDATA

TESTDATA = TALOS_TESTDATA / "nocloud-testdata"
RELEASE = ReleaseRef(name="r1", talos_version="v1.12.6", kubernetes_version="1.35.0",
                     installer_image="ghcr.io/siderolabs/installer:v1.12.6")


def store(network: dict[str, Any] | None = None, node: dict[str, Any] | None = None) -> Store:
    return Store.model_validate({
        "id": "de-001", "name": "Hamburg", "country": "DE", "region": "central", "timezone": "Europe/Berlin",
        "maintenance_windows": [{"days": ["sun"], "start": "22:00", "end": "04:00"}],
        "network": {"subnet": "10.30.1.0/24", "gateway": "10.30.1.1", "dns": ["10.0.0.53", "10.0.1.53"],
                    **(network or {})},
        "cluster": {"name": "de-001"},
        "nodes": [{"name": "de-001-n1", "role": "controlplane", "mac": "02:ef:00:00:00:01", "ip": "10.30.1.11",
                   **(node or {})}],
        "wipe_method": "talos-api",
    })


def netcfg(s: Store) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(render_network_config(s, s.nodes[0]))
    return data


BOND = {"bond": {"macs": ["02:ef:00:00:00:01", "02:ef:00:00:00:02"], "mode": "802.3ad"}}
IPV6 = {"ipv6": {"subnet": "fd00:30:1::/64", "gateway": "fd00:30:1::1"}}


def test_plain_node_matches_its_mac_with_a_static_address() -> None:
    assert netcfg(store()) == {
        "version": 2,
        "ethernets": {"edge0": {
            "match": {"macaddress": "02:ef:00:00:00:01"},
            "dhcp4": False, "dhcp6": False,
            "addresses": ["10.30.1.11/24"],
            "routes": [{"to": "0.0.0.0/0", "via": "10.30.1.1"}],
            "nameservers": {"addresses": ["10.0.0.53", "10.0.1.53"]},
        }},
    }


def test_vlan_carries_the_addresses_on_top_of_the_nic() -> None:
    doc = netcfg(store({"vlan": 120, "mtu": 9000}))
    assert doc["ethernets"]["edge0"] == {"match": {"macaddress": "02:ef:00:00:00:01"}, "mtu": 9000,
                                         "dhcp4": False, "dhcp6": False}
    vlan = doc["vlans"]["edge0.120"]
    assert vlan["id"] == 120 and vlan["link"] == "edge0" and vlan["mtu"] == 9000
    assert vlan["addresses"] == ["10.30.1.11/24"]
    assert vlan["routes"] == [{"to": "0.0.0.0/0", "via": "10.30.1.1"}]


def test_bond_of_the_nodes_nics() -> None:
    doc = netcfg(store(node=BOND))
    assert doc["ethernets"] == {
        "edge0": {"match": {"macaddress": "02:ef:00:00:00:01"}, "dhcp4": False, "dhcp6": False},
        "edge1": {"match": {"macaddress": "02:ef:00:00:00:02"}, "dhcp4": False, "dhcp6": False},
    }
    bond = doc["bonds"]["bond0"]
    assert bond["interfaces"] == ["edge0", "edge1"]
    assert bond["macaddress"] == "02:ef:00:00:00:01"
    assert bond["parameters"] == {"mode": "802.3ad", "mii-monitor-interval": 100}
    assert bond["addresses"] == ["10.30.1.11/24"]
    assert "vlans" not in doc


def test_bond_with_vlan() -> None:
    doc = netcfg(store({"vlan": 7}, BOND))
    assert "addresses" not in doc["bonds"]["bond0"]
    assert doc["vlans"]["bond0.7"]["link"] == "bond0"
    assert doc["vlans"]["bond0.7"]["addresses"] == ["10.30.1.11/24"]


def test_dual_stack() -> None:
    doc = netcfg(store({**IPV6, "dns": ["10.0.0.53", "fd00::53"]}, {"ipv6": "fd00:30:1::b"}))
    eth = doc["ethernets"]["edge0"]
    assert eth["addresses"] == ["10.30.1.11/24", "fd00:30:1::b/64"]
    # IPv6 default route as gateway6: cloud-init 22.4 turns a "to: ::/0" route into ::/64.
    assert eth["gateway6"] == "fd00:30:1::1"
    assert eth["routes"] == [{"to": "0.0.0.0/0", "via": "10.30.1.1"}]
    assert eth["nameservers"]["addresses"] == ["10.0.0.53", "fd00::53"]


V6ONLY = {"subnet": "fd00:30:1::/64", "gateway": "fd00:30:1::1", "dns": ["fd00:30::53"]}


def test_ipv6_only() -> None:
    doc = netcfg(store(V6ONLY, {"ip": "fd00:30:1::11"}))
    assert doc["ethernets"]["edge0"] == {
        "match": {"macaddress": "02:ef:00:00:00:01"},
        "dhcp4": False, "dhcp6": False,
        "addresses": ["fd00:30:1::11/64"],
        # the default route as gateway6 (see test_dual_stack), and no IPv4 route at all
        "gateway6": "fd00:30:1::1",
        "nameservers": {"addresses": ["fd00:30::53"]},
    }


def test_ipv6_only_on_a_vlan_of_a_bond() -> None:
    doc = netcfg(store({**V6ONLY, "vlan": 7, "mtu": 9000}, {"ip": "fd00:30:1::11", **BOND}))
    assert "addresses" not in doc["bonds"]["bond0"]
    vlan = doc["vlans"]["bond0.7"]
    assert vlan["addresses"] == ["fd00:30:1::11/64"] and vlan["gateway6"] == "fd00:30:1::1"
    assert "routes" not in vlan and vlan["mtu"] == 9000


@settings(max_examples=150, deadline=None)
@given(prefix=st.integers(min_value=48, max_value=126), net_bits=st.integers(min_value=0, max_value=2**48 - 1),
       host=st.integers(min_value=1, max_value=2**62), v6only=st.booleans())
def test_any_ipv6_subnet_renders_the_node_address_and_gateway(prefix: int, net_bits: int, host: int,
                                                              v6only: bool) -> None:
    """Whatever the IPv6 prefix, the node's address is written with the subnet's length, the
    default route is gateway6, and an IPv4 route appears exactly when the store has IPv4."""
    net = ipaddress.IPv6Network(((0xFD00 << 112) | (net_bits << 64), 128)).supernet(new_prefix=prefix)
    size = net.num_addresses
    ip = net.network_address + 2 + host % (size - 2)
    gateway = net.network_address + 1
    if v6only:
        s = store({"subnet": str(net), "gateway": str(gateway), "dns": ["fd00::53"]}, {"ip": str(ip)})
    else:
        s = store({"ipv6": {"subnet": str(net), "gateway": str(gateway)}}, {"ipv6": str(ip)})
    eth = netcfg(s)["ethernets"]["edge0"]
    assert eth["addresses"][-1] == f"{ip}/{prefix}"
    assert eth["gateway6"] == str(gateway)
    assert ("routes" in eth) is (not v6only)
    assert all(ipaddress.ip_interface(a).network.prefixlen in (24, prefix) for a in eth["addresses"])


def _vocabulary(doc: dict[str, Any]) -> set[str]:
    """Dotted key paths below the interface level, interface names and list positions folded."""
    out: set[str] = set()

    def walk(v: Any, prefix: str) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                out.add(f"{prefix}{k}")
                walk(x, f"{prefix}{k}.")
        elif isinstance(v, list):
            for x in v:
                walk(x, prefix)

    doc = doc.get("network", doc)
    for section in ("ethernets", "bonds", "vlans"):
        for iface in (doc.get(section) or {}).values():
            walk(iface, "")
    return out


def test_only_fields_that_talos_own_nocloud_inputs_use() -> None:
    theirs: set[str] = set()
    for f in sorted(TESTDATA.glob("in-v2-*.yaml")):
        theirs |= _vocabulary(yaml.safe_load(f.read_text()))
    ours: set[str] = set()
    for s in (store(), store({"vlan": 9, "mtu": 1500}, BOND),
              store({**IPV6, "vlan": 3}, {"ipv6": "fd00:30:1::b"}), store(V6ONLY, {"ip": "fd00:30:1::11"})):
        ours |= _vocabulary(netcfg(s))
    assert ours <= theirs, ours - theirs
    # And the default route is written the way Talos's own example does (not "to: default").
    sample = yaml.safe_load((TESTDATA / "in-v2-nocloud.yaml").read_text())
    assert {"to": "0.0.0.0/0"}.items() <= sample["ethernets"]["eth1"]["routes"][0].items()


def test_meta_data_keys_match_talos_nocloud_metadata() -> None:
    s = store()
    meta = yaml.safe_load(render_meta_data(s.nodes[0], b"u", b"n"))
    assert meta == {"instance-id": instance_id(b"u", b"n"), "local-hostname": "de-001-n1"}
    theirs = yaml.safe_load((TESTDATA / "metadata-nocloud.yaml").read_text())
    assert set(meta) == set(theirs)


def test_instance_id_changes_exactly_when_the_configuration_changes() -> None:
    base = instance_id(b"machine: a\n", b"version: 2\n")
    assert re.fullmatch(r"[0-9a-f]{40}", base)
    assert instance_id(b"machine: a\n", b"version: 2\n") == base
    assert instance_id(b"machine: b\n", b"version: 2\n") != base
    assert instance_id(b"machine: a\n", b"version: 2\n# x\n") != base
    # Moving bytes across the boundary is a different seed, not the same concatenation.
    assert instance_id(b"ab", b"c") != instance_id(b"a", b"bc")


@pytest.fixture(scope="module")
def secrets() -> ClusterSecrets:
    return generate_secrets(datetime(2026, 11, 25, tzinfo=UTC))


def test_seed_files_tie_meta_data_to_content(secrets: ClusterSecrets) -> None:
    s = store()
    files = render_seed_files(s, s.nodes[0], RELEASE, secrets)
    assert files == render_seed_files(s, s.nodes[0], RELEASE, secrets)  # deterministic
    meta = yaml.safe_load(files.meta_data)
    assert meta["instance-id"] == instance_id(files.user_data, files.network_config)
    assert files.user_data.startswith(b"version: v1alpha1\n")
    changed = store({"dns": ["10.0.0.54"]})
    other = render_seed_files(changed, changed.nodes[0], RELEASE, secrets)
    assert other.network_config != files.network_config
    assert yaml.safe_load(other.meta_data)["instance-id"] != meta["instance-id"]
    relabelled = render_seed_files(s, s.nodes[0], ReleaseRef("r2", "v1.12.6", "1.35.0", RELEASE.installer_image),
                                   secrets)
    assert relabelled.network_config == files.network_config
    assert yaml.safe_load(relabelled.meta_data)["instance-id"] != meta["instance-id"]


@pytest.mark.parametrize(("network", "node", "message"), [
    ({}, {"ip": "10.30.2.11"}, r"ip 10\.30\.2\.11 is not a host address of the store subnet 10\.30\.1\.0/24"),
    ({}, {"ip": "10.30.1.255"}, "not a host address"),
    ({}, {"ipv6": "fd00::1"}, "has ipv6 .* but the store has no network.ipv6 subnet"),
    (V6ONLY, {"ip": "10.30.1.11"}, r"ip 10\.30\.1\.11 is not a host address of the store subnet fd00:30:1::/64"),
    (V6ONLY, {"ip": "fd00:30:1::"}, "not a host address"),
    (V6ONLY, {"ip": "fd00:30:1::11", "ipv6": "fd00:30:1::12"}, "an IPv6-only store's node gives its address as ip"),
    (IPV6, {"ipv6": "fd00:99::1"}, r"ipv6 fd00:99::1 is outside fd00:30:1::/64"),
    ({}, {"bond": {"macs": ["02:ef:00:00:00:07", "02:ef:00:00:00:08"]}}, "mac 02:ef:00:00:00:01 is not one of"),
])
def test_bad_addressing_names_store_and_node(network: dict[str, Any], node: dict[str, Any], message: str) -> None:
    s = store(network, node)
    with pytest.raises(ConfigRenderError, match=f"store de-001 node de-001-n1: .*{message}"):
        render_network_config(s, s.nodes[0])
