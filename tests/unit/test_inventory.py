"""Inventory loading: the sample fleet, layering, and every validation rule (data-driven cases)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefleet.errors import InventoryError
from edgefleet.inventory.load import deep_merge, load_fleet, parse_yaml
from edgefleet.inventory.model import Role
from tests.helpers import SAMPLE_INVENTORY

CASES = yaml.safe_load((Path(__file__).parent.parent / "cases" / "inventory" / "errors.yml").read_text())


def test_sample_fleet_loads_and_has_the_promised_shape() -> None:
    fleet = load_fleet(SAMPLE_INVENTORY)
    assert 20 <= len(fleet.stores) <= 30
    assert len({s.country for s in fleet.stores.values()}) >= 6
    assert len({s.timezone for s in fleet.stores.values()}) >= 6
    sizes = {len(s.nodes) for s in fleet.stores.values()}
    assert {1, 3} <= sizes
    assert {f.name for f in fleet.freezes} >= {"black-friday", "christmas"}


def test_layering_fleet_group_store_node() -> None:
    fleet = load_fleet(SAMPLE_INVENTORY)
    us = fleet.store("us-002")
    # country_us group vars override the fleet default window; the canary ring overrides the country.
    assert us.ring == "canary"
    assert [(w.start.hour, w.end.hour) for w in us.maintenance_windows] == [(21, 6)]
    us1 = fleet.store("us-001")
    assert us1.timezone == "America/New_York"
    assert [(w.start.hour, w.end.hour, w.end.minute) for w in us1.maintenance_windows] == [(1, 5, 30)]
    # region vars merge into the network key by key: DNS from the region, subnet from the store.
    assert [str(d) for d in us1.network.dns] == ["10.0.2.53", "10.0.3.53"]
    assert str(us1.network.subnet) == "10.24.1.0/24"
    # node_defaults: fleet default disk, store override for ae-002.
    assert fleet.store("ae-001").nodes[0].install_disk == "/dev/sda"
    assert fleet.store("ae-002").nodes[0].install_disk == "/dev/nvme0n1"
    bmc = fleet.store("ae-001").nodes[0].bmc
    assert bmc is not None and bmc.credentials.password_env == "EDGEFLEET_BMC_PASSWORD"
    # talos patches accumulate: the fleet's, then the node's own stay on the node.
    dk = fleet.store("dk-002")
    assert len(dk.talos_patches) == 1
    assert dk.nodes[0].talos_patches and not dk.nodes[1].talos_patches
    # a store without workers has only control planes; us-003 has two workers
    assert [n.role for n in fleet.store("us-003").workers] == [Role.worker, Role.worker]


def test_deep_merge_rules() -> None:
    base = {"a": {"x": 1, "y": [1]}, "talos_patches": [{"p": 1}]}
    over = {"a": {"y": [2], "z": 3}, "talos_patches": [{"p": 2}]}
    assert deep_merge(base, over) == {"a": {"x": 1, "y": [2], "z": 3}, "talos_patches": [{"p": 1}, {"p": 2}]}
    assert base == {"a": {"x": 1, "y": [1]}, "talos_patches": [{"p": 1}]}  # inputs untouched


def test_parse_yaml_rejects_duplicate_keys_and_keeps_yaml_types() -> None:
    assert parse_yaml("a: 1\nb: [x, 2.5, true, null]\n") == {"a": 1, "b": ["x", 2.5, True, None]}
    with pytest.raises(Exception, match="twice"):
        parse_yaml("a: 1\na: 2\n")


def _write_case(root: Path, case: dict[str, Any]) -> Path:
    inv = root / "inv"
    (inv / "stores").mkdir(parents=True)
    (inv / "group_vars").mkdir()
    (inv / "fleet.yml").write_text(
        "fleet: {name: t}\n"
        "defaults:\n"
        "  maintenance_windows: [{days: [mon], start: '22:00', end: '04:00'}]\n"
        "  network: {dns: [10.0.0.53]}\n"
        "  node_defaults: {bmc: {credentials: {username: u, password_env: BMC_PW}}}\n"
    )
    (inv / "group_vars" / "country_dk.yml").write_text("timezone: Europe/Copenhagen\n")
    text: str = CASES["base_store"]
    for old, new in case.get("replace", {}).items():
        assert old in text, f"case {case['name']}: {old!r} not in the base store"
        text = text.replace(old, new)
    text += textwrap.indent(case.get("append", ""), "  ")
    (inv / "stores" / "case.yml").write_text(text)
    return inv


def test_base_store_of_the_cases_is_valid(tmp_path: Path) -> None:
    fleet = load_fleet(_write_case(tmp_path, {"name": "base"}))
    assert list(fleet.stores) == ["dk-100"]


@pytest.mark.parametrize("case", CASES["cases"], ids=[c["name"] for c in CASES["cases"]])
def test_inventory_error_case(tmp_path: Path, case: dict[str, Any]) -> None:
    inv = _write_case(tmp_path, case)
    if not case["expect"]:
        load_fleet(inv)
        return
    with pytest.raises(InventoryError) as ei:
        load_fleet(inv)
    problems = ei.value.problems
    for exp in case["expect"]:
        matches = [p for p in problems if exp["msg"] in p.message]
        assert matches, f"no problem containing {exp['msg']!r} in:\n{ei.value}"
        p = matches[0]
        assert p.file is not None and p.file.endswith(("case.yml", "fleet.yml"))
        for key in ("line", "node", "store", "field"):
            if key in exp:
                assert getattr(p, key) == exp[key], f"{key}: {p.render()}"
        if "hint" in exp:
            assert p.hint and exp["hint"] in p.hint, p.render()
        if "store" not in exp and "broken YAML" not in exp["msg"] and "twice" not in exp["msg"]:
            assert p.store == "dk-100", p.render()
    assert len(problems) >= len(case["expect"])


def test_problem_inherited_from_a_layer_points_at_that_layer(tmp_path: Path) -> None:
    inv = _write_case(tmp_path, {"name": "x"})
    (inv / "group_vars" / "country_dk.yml").write_text("timezone: Europe/Copenhagen\nnetwork:\n  dns: [not-an-ip]\n")
    with pytest.raises(InventoryError) as ei:
        load_fleet(inv)
    (p,) = ei.value.problems
    assert p.file is not None and p.file.endswith("group_vars/country_dk.yml") and p.line == 3
    assert p.field == "network.dns.0" and p.store == "dk-100"


def test_cluster_discovery_and_pod_security_at_every_layer(tmp_path: Path) -> None:
    inv = _write_case(tmp_path, {"name": "x"})
    assert load_fleet(inv).store("dk-100").cluster.pod_security == "baseline"  # talosctl gen config's
    assert load_fleet(inv).store("dk-100").cluster.discovery is True
    with (inv / "fleet.yml").open("a") as f:
        f.write("  cluster: {pod_security: restricted, discovery: false}\n")
    c = load_fleet(inv).store("dk-100").cluster
    assert (c.pod_security, c.discovery, c.name) == ("restricted", False, "dk-100")
    (inv / "group_vars" / "country_dk.yml").write_text("timezone: Europe/Copenhagen\n"
                                                       "cluster: {pod_security: privileged}\n")
    c = load_fleet(inv).store("dk-100").cluster
    assert (c.pod_security, c.discovery) == ("privileged", False)  # the group's level, the fleet's discovery
    store = inv / "stores" / "case.yml"
    store.write_text(store.read_text().replace("vip: 10.50.1.10", "vip: 10.50.1.10\n      discovery: true"))
    c = load_fleet(inv).store("dk-100").cluster
    assert (c.pod_security, c.discovery) == ("privileged", True)
    (inv / "group_vars" / "country_dk.yml").write_text("timezone: Europe/Copenhagen\n"
                                                       "cluster:\n  pod_security: lax\n")
    with pytest.raises(InventoryError) as ei:
        load_fleet(inv)
    (p,) = ei.value.problems
    assert p.file is not None and p.file.endswith("group_vars/country_dk.yml") and p.line == 3
    assert p.field == "cluster.pod_security" and p.store == "dk-100"
    assert "'privileged', 'baseline' or 'restricted'" in p.message


def test_missing_directory_and_missing_parts(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="does not exist"):
        load_fleet(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InventoryError) as ei:
        load_fleet(tmp_path / "empty")
    text = str(ei.value)
    assert "fleet.yml" in text and "no store files" in text


def test_bad_freeze_is_reported_with_its_line(tmp_path: Path) -> None:
    inv = _write_case(tmp_path, {"name": "x"})
    with (inv / "fleet.yml").open("a") as f:
        f.write("freezes:\n  - {name: xmas, start: 2026-12-24, end: 2026-12-20}\n")
    with pytest.raises(InventoryError) as ei:
        load_fleet(inv)
    (p,) = ei.value.problems
    assert "is before start" in p.message and p.line == 7


def test_generator_families_leave_the_ipv4_stores_unchanged(tmp_path: Path) -> None:
    """``ipv6_every`` turns some generated stores dual-stack and IPv6-only; the default output is
    all IPv4, and every store that stays IPv4 is the same as without the option."""
    from edgefleet.inventory.generate import plan_synthetic_fleet, write_inventory

    plain = plan_synthetic_fleet(40, 7)
    mixed = plan_synthetic_fleet(40, 7, ipv6_every=4)
    flat_plain = [s for sts in plain[2].values() for s in sts]
    flat_mixed = [s for sts in mixed[2].values() for s in sts]
    assert all(":" not in s["network"]["subnet"] and "ipv6" not in s["network"] for s in flat_plain)
    kept = [(a, b) for a, b in zip(flat_plain, flat_mixed, strict=True)
            if ":" not in b["network"]["subnet"] and "ipv6" not in b["network"]]
    assert len(kept) == 20 and all(a == b for a, b in kept)
    fleet = load_fleet(write_inventory(tmp_path / "inv", *mixed))
    by_family = {}
    for s in fleet.stores.values():
        by_family.setdefault(s.network.families, []).append(s)
    assert {k: len(v) for k, v in by_family.items()} == {(4,): 20, (4, 6): 10, (6,): 10}
    for s in by_family[(6,)]:
        assert all(n.ip.version == 6 for n in s.nodes) and s.pod_subnets == ["fd00:10:244::/56"]
        assert s.cluster.vip is None or s.endpoint.startswith("https://[fd00:e0:")
    for s in by_family[(4, 6)]:
        assert all(n.ipv6 is not None for n in s.nodes)
        assert s.service_subnets == ["10.96.0.0/12", "fd00:10:96::/112"]
