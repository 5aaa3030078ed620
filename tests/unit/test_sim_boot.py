"""The simulator's pure parts: seed facts from rendered seeds, the join verdict, scenarios, oracle rules."""

from __future__ import annotations

import base64
from datetime import UTC, date, datetime
from typing import Any

import pytest
import yaml

from edgefleet.errors import InputError
from edgefleet.inventory.model import Freeze, Node, Store
from edgefleet.secrets import ClusterSecrets, generate_secrets
from edgefleet.seeds.iso import render_seed_iso
from edgefleet.seeds.render import render_seed_files
from edgefleet.sim.boot import ReleaseFacts, SeedFacts, evaluate_join, machine_config_rejections, parse_seed_facts
from edgefleet.sim.media import iso_volume_label
from edgefleet.sim.oracle import (
    ControlPlaneDowns,
    NodeFacts,
    check_caps,
    check_concurrent_operations,
    check_control_planes,
    check_schedule,
    disruptive_boot_override,
)
from edgefleet.sim.scenario import Caps, Scenario, parse_scenario, update_scenario
from edgefleet.talos.config import ReleaseRef
from tests.helpers import TALOS_TESTDATA

RELEASE = ReleaseRef(name="r1", talos_version="v1.12.6", kubernetes_version="1.35.0",
                     installer_image="factory.talos.dev/installer/abc:v1.12.6")
FACTS = ReleaseFacts(sha256="0" * 64, release="r1", talos_version="v1.12.6", kubernetes_version="1.35.0",
                     kernel_args=("console=ttyS0", "talos.platform=nocloud"))


def store(vlan: int | None = None, bond: bool = False) -> Store:
    node: dict[str, object] = {"name": "s1-n1", "role": "controlplane", "mac": "02:ef:00:00:00:01",
                               "ip": "10.16.0.10"}
    if bond:
        node["bond"] = {"macs": ["02:ef:00:00:00:01", "02:ef:00:00:00:02"]}
    return Store.model_validate({
        "id": "s1", "name": "S1", "country": "DK", "region": "nordics", "timezone": "Europe/Copenhagen",
        "maintenance_windows": [{"days": ["daily"], "start": "22:00", "end": "05:00"}],
        "network": {"subnet": "10.16.0.0/24", "gateway": "10.16.0.1", "dns": ["10.0.0.53"], "vlan": vlan},
        "cluster": {"name": "s1"}, "nodes": [node]})


@pytest.fixture(scope="module")
def secrets() -> ClusterSecrets:
    return generate_secrets(datetime(2026, 1, 1, tzinfo=UTC))


def ca_of(secrets: ClusterSecrets) -> bytes:
    return base64.b64decode(secrets.certs.k8s.crt)


@pytest.mark.parametrize(("vlan", "bond"), [(None, False), (120, False), (None, True), (130, True)])
def test_rendered_seed_joins(secrets: ClusterSecrets, vlan: int | None, bond: bool) -> None:
    s = store(vlan, bond)
    files = render_seed_files(s, s.nodes[0], RELEASE, secrets)
    facts = parse_seed_facts(files.user_data, files.meta_data, files.network_config, sha256="x")
    assert facts.problems == ()
    assert facts.hostname == "s1-n1" and facts.instance_id
    assert facts.node_labels.get("edgefleet.io/release") == "r1"
    assert "02:ef:00:00:00:01" in facts.macs and "10.16.0.10" in facts.addresses
    verdict = evaluate_join(s.nodes[0], FACTS, facts, ca_of(secrets))
    assert verdict.joined, verdict.reason


def test_join_refusals(secrets: ClusterSecrets) -> None:
    s = store()
    node = s.nodes[0]
    files = render_seed_files(s, node, RELEASE, secrets)
    facts = parse_seed_facts(files.user_data, files.meta_data, files.network_config, sha256="x")
    no_nocloud = ReleaseFacts(sha256="0", release="r1", talos_version="v1.12.6", kubernetes_version="1.35.0",
                              kernel_args=("console=ttyS0", "talos.platform=metal"))
    assert "talos.platform=nocloud" in evaluate_join(node, no_nocloud, facts, ca_of(secrets)).reason
    assert "no NoCloud seed" in evaluate_join(node, FACTS, None, ca_of(secrets)).reason
    other = ca_of(generate_secrets(datetime(2026, 1, 1, tzinfo=UTC)))
    assert "not this store's Kubernetes CA" in evaluate_join(node, FACTS, facts, other).reason
    assert "unknown to the simulator: gone" in evaluate_join(node, FACTS, facts, None, store_ca_problem="gone").reason
    moved = Node.model_validate({**node.model_dump(), "ip": "10.16.0.99"})
    assert "do not include the node's 10.16.0.99" in evaluate_join(moved, FACTS, facts, ca_of(secrets)).reason
    swapped = Node.model_validate({**node.model_dump(), "mac": "02:ef:00:00:00:99"})
    assert "not the node's 02:ef:00:00:00:99" in evaluate_join(swapped, FACTS, facts, ca_of(secrets)).reason
    renamed = Node.model_validate({**node.model_dump(), "name": "s1-n7"})
    assert "names host 's1-n1'" in evaluate_join(renamed, FACTS, facts, ca_of(secrets)).reason


# --- what Talos refuses in a machine config -----------------------------------------------------------

CP_KEYS = ["machine.ca.key", "cluster.ca.key", "cluster.aggregatorCA.key", "cluster.serviceAccount.key",
           "cluster.etcd.ca.key"]


def store_with_worker(**cluster: object) -> Store:
    s = store()
    raw = s.model_dump(mode="json")
    raw["cluster"].update(cluster)
    raw["nodes"].append({"name": "s1-w1", "role": "worker", "mac": "02:ef:00:00:00:21", "ip": "10.16.0.21"})
    return Store.model_validate(raw)


def v1_of(s: Store, node: Node, secrets: ClusterSecrets) -> dict[str, Any]:
    doc: dict[str, Any] = next(yaml.safe_load_all(render_seed_files(s, node, RELEASE, secrets).user_data))
    return doc


def put(doc: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    *parents, last = dotted.split(".")
    d = doc
    for k in parents:
        d = d.setdefault(k, {})
    if value is None:
        d.pop(last, None)
    else:
        d[last] = value
    return doc


def seed_with(s: Store, node: Node, secrets: ClusterSecrets, v1: dict[str, Any]) -> SeedFacts:
    files = render_seed_files(s, node, RELEASE, secrets)
    rest = [d for d in yaml.safe_load_all(files.user_data) if d is not None and "kind" in d]
    user_data = yaml.safe_dump_all([v1, *rest]).encode()
    return parse_seed_facts(user_data, files.meta_data, files.network_config, sha256="x")


@pytest.mark.parametrize("cluster", [{}, {"discovery": False}, {"pod_security": "privileged"},
                                     {"pod_security": "restricted"}])
def test_edgefleet_configs_of_both_roles_are_accepted(secrets: ClusterSecrets, cluster: dict[str, object]) -> None:
    s = store_with_worker(**cluster)
    for node in s.nodes:
        assert machine_config_rejections(v1_of(s, node, secrets)) == [], node.role
        files = render_seed_files(s, node, RELEASE, secrets)
        facts = parse_seed_facts(files.user_data, files.meta_data, files.network_config, sha256="x")
        verdict = evaluate_join(node, FACTS, facts, ca_of(secrets))
        assert verdict.joined, verdict.reason


def test_talosctl_gen_config_output_is_accepted() -> None:
    for name in ("base-controlplane.yaml", "base-worker.yaml"):
        v1 = next(yaml.safe_load_all((TALOS_TESTDATA / "stability" / name).read_text()))
        assert machine_config_rejections(v1) == [], name


@pytest.mark.parametrize("key", CP_KEYS)
def test_a_worker_holding_a_ca_key_is_refused(secrets: ClusterSecrets, key: str) -> None:
    s = store_with_worker()
    worker = s.nodes[1]
    cp_value = v1_of(s, s.nodes[0], secrets)
    for k in key.split("."):
        cp_value = cp_value[k]
    v1 = put(v1_of(s, worker, secrets), key, cp_value)
    assert machine_config_rejections(v1) == [
        f"a worker's machine config holds {key}: CA private keys belong on control planes only (render the "
        "node's config as a worker)"]
    verdict = evaluate_join(worker, FACTS, seed_with(s, worker, secrets, v1), ca_of(secrets))
    assert not verdict.joined and verdict.reason.startswith("Talos refuses the machine config: a worker's")
    assert key in verdict.reason
    # upstream's empty key is no key
    assert machine_config_rejections(put(v1_of(s, worker, secrets), key, "")) == []


@pytest.mark.parametrize("key", [*CP_KEYS, "machine.ca.crt", "cluster.etcd.ca.crt"])
def test_a_control_plane_missing_a_ca_key_is_refused(secrets: ClusterSecrets, key: str) -> None:
    s = store_with_worker()
    cp = s.nodes[0]
    for broken in (None, "", base64.b64encode(b"not a pem").decode(), "%%%"):
        v1 = put(v1_of(s, cp, secrets), key, broken)
        [why] = machine_config_rejections(v1)
        assert why.startswith(f"a control plane's machine config lacks {key} "), why
    verdict = evaluate_join(cp, FACTS, seed_with(s, cp, secrets, put(v1_of(s, cp, secrets), key, None)),
                            ca_of(secrets))
    assert not verdict.joined and f"lacks {key}" in verdict.reason


def test_an_unknown_machine_type_is_refused(secrets: ClusterSecrets) -> None:
    s = store()
    assert machine_config_rejections(put(v1_of(s, s.nodes[0], secrets), "machine.type", "master")) == [
        "machine.type 'master' is neither controlplane nor worker"]
    assert machine_config_rejections({"version": "v1alpha1"}) == [
        "machine.type None is neither controlplane nor worker"]


def _psa(v1: dict[str, Any]) -> dict[str, Any]:
    cfg: dict[str, Any] = v1["cluster"]["apiServer"]["admissionControl"][0]["configuration"]
    return cfg


@pytest.mark.parametrize(("breaking", "message"), [
    (lambda v1: put(v1, "cluster.apiServer.admissionControl", {"name": "PodSecurity"}),
     "cluster.apiServer.admissionControl is not a list of admission plugins"),
    (lambda v1: v1["cluster"]["apiServer"]["admissionControl"][0].pop("name"),
     "cluster.apiServer.admissionControl.0 has no plugin name"),
    (lambda v1: _psa(v1)["defaults"].update(enforce="strict"),
     "cluster.apiServer.admissionControl.0.configuration.defaults.enforce is 'strict', not privileged, baseline or "
     "restricted"),
    (lambda v1: _psa(v1)["defaults"].update({"warn-version": "1.35"}),
     "defaults.warn-version is '1.35', not 'latest' or a version like v1.35"),
    (lambda v1: _psa(v1)["defaults"].update(deny="restricted"),
     "configuration.defaults has an unknown field 'deny'"),
    (lambda v1: _psa(v1).update(kind="PodSecurityPolicy"),
     "configuration is apiVersion 'pod-security.admission.config.k8s.io/v1alpha1' kind 'PodSecurityPolicy', not a "
     "PodSecurityConfiguration"),
    (lambda v1: _psa(v1)["exemptions"].update(namespaces="kube-system"),
     "configuration.exemptions.namespaces is not a list of names"),
    (lambda v1: _psa(v1)["exemptions"].update(groups=[]),
     "configuration.exemptions has an unknown field 'groups'"),
    (lambda v1: v1["cluster"]["apiServer"]["admissionControl"][0].update(configuration="enforce: baseline"),
     "cluster.apiServer.admissionControl.0.configuration is not a mapping"),
])
def test_malformed_admission_control_is_refused(secrets: ClusterSecrets, breaking: Any, message: str) -> None:
    s = store()
    v1 = v1_of(s, s.nodes[0], secrets)
    breaking(v1)
    why = machine_config_rejections(v1)
    assert len(why) == 1 and message in why[0], why
    verdict = evaluate_join(s.nodes[0], FACTS, seed_with(s, s.nodes[0], secrets, v1), ca_of(secrets))
    assert not verdict.joined and message in verdict.reason


def test_seed_problems_are_collected_not_raised() -> None:
    f = parse_seed_facts(b"#cloud-config\nusers: []\n", b"{", b"version: 3\n", sha256="x")
    assert any("#cloud-config" in p for p in f.problems)
    assert any("meta-data is not valid YAML" in p for p in f.problems)
    assert any("version 3" in p for p in f.problems)
    verdict = evaluate_join(store().nodes[0], FACTS, f, b"pem")
    assert not verdict.joined and verdict.reason.startswith("seed unusable")
    v1 = parse_seed_facts(b"version: v1alpha1\nmachine: {}\ncluster: {ca: {crt: '%%%'}}\n",
                          b"instance-id: i-1\nlocal-hostname: s1-n1\n",
                          b"network:\n  version: 1\n  config:\n  - type: physical\n    mac_address: 02:EF:00:00:00:01\n"
                          b"    subnets: [{type: static, address: 10.16.0.10/24}]\n", sha256="x")
    assert v1.hostname == "s1-n1" and v1.macs == {"02:ef:00:00:00:01"} and v1.addresses == {"10.16.0.10"}
    assert v1.problems == ("cluster.ca.crt is not base64",)


def test_iso_volume_label() -> None:
    from edgefleet.seeds.iso import SeedFiles

    image = render_seed_iso(SeedFiles(user_data=b"a", meta_data=b"b", network_config=b"c"))
    assert iso_volume_label(image) == "CIDATA"
    assert iso_volume_label(b"\x00" * 40000) is None and iso_volume_label(b"short") is None


# --- scenario ----------------------------------------------------------------------------------------

def test_scenario_parse_defaults_and_errors() -> None:
    assert parse_scenario(None) == Scenario()
    sc = parse_scenario({"seed": 3, "caps": {"global": 10, "per_region": 4}, "slow_boot": {"rate": 0.1}})
    assert sc.caps.global_ == 10 and sc.caps.per_region == 4 and sc.slow_boot.factor == 3.0
    assert sc.dump()["caps"]["global"] == 10
    with pytest.raises(InputError, match="bmc_error_rate"):
        parse_scenario({"bmc_error_rate": 1.5}, source="x.yml")
    with pytest.raises(InputError, match=r"x\.yml: .*typo"):
        parse_scenario({"typo": 1}, source="x.yml")
    with pytest.raises(InputError, match="mapping"):
        parse_scenario([1])
    with pytest.raises(InputError, match=r"less than or equal to 300"):
        parse_scenario({"bmc_timeout_seconds": 1000})
    up = update_scenario(sc, {"never_ready": ["a"]})
    assert up.never_ready == ["a"] and up.seed == 3 and up.caps.global_ == 10


# --- oracle ------------------------------------------------------------------------------------------

def test_oracle_schedule_rule() -> None:
    s = store()
    inside = datetime(2026, 11, 3, 22, 30, tzinfo=UTC)
    assert check_schedule(s, [], inside, "reset") == []
    out = check_schedule(s, [], datetime(2026, 11, 3, 12, 0, tzinfo=UTC), "reset")
    assert [f.rule for f in out] == ["outside_window"]
    day = date(2026, 11, 3)
    fr = Freeze(name="bf", start=day, end=day, reason="sale")
    assert [f.rule for f in check_schedule(s, [fr], inside, "reset")] == ["freeze"]
    other = Freeze(name="se", start=day, end=day, countries=["SE"])
    assert check_schedule(s, [other], inside, "reset") == []


def test_oracle_other_rules() -> None:
    assert check_control_planes("n1", []) == []
    assert check_control_planes("n1", ["n3", "n2"])[0].detail.endswith("n2, n3 are down")
    assert check_concurrent_operations(None, "s", {"n1": "A"}) == []
    assert check_concurrent_operations("A", "s", {"n1": "A"}) == []
    assert check_concurrent_operations("B", "s", {"n1": "A"})[0].rule == "concurrent_operations"
    caps = Caps.model_validate({"global": 2, "per_region": 1})
    assert check_caps(caps, 2, 1, 5, "r", "DK") == []
    assert [f.detail for f in check_caps(caps, 3, 2, 5, "r", "DK")] == [
        "3 nodes rebooting at once, global cap 2", "2 nodes rebooting at once in region r, cap 1"]
    assert check_caps(Caps(), 10_000, 10_000, 10_000, "r", "DK") == []


def test_control_plane_down_until_ready_again() -> None:
    up, booting = NodeFacts(True, "ok", media=False, booting=False), NodeFacts(False, "booting", True, True)
    with_media = NodeFacts(True, "ok", media=True, booting=False)
    not_ready = NodeFacts(False, "kubelet", media=True, booting=False)
    downs = ControlPlaneDowns()
    assert downs.disrupt("n1", "InsertMedia", up, {"n2": up, "n3": up}) == []
    # n1 is still Ready, media inserted, not rebooted: down
    assert downs.down("n1", with_media) == "n1 (InsertMedia; not Ready again since: ok)"
    [f] = downs.disrupt("n2", "InsertMedia", up, {"n1": with_media, "n3": up})
    assert f.rule == "control_planes_down" and "n1 (InsertMedia" in f.detail
    # n1's own next steps do not take it down again
    assert downs.disrupt("n1", "Reset", with_media, {"n2": up, "n3": up}) == []
    assert downs.down("n1", booting) is not None
    downs.booted("n1")
    assert downs.down("n1", not_ready) is not None  # booted, not Ready
    assert downs.down("n1", with_media) is None  # booted and Ready: up again, media or not
    # given up before the reset: no media, no boot, Ready
    assert downs.disrupt("n3", "PATCH", up, {"n1": up}) == []
    assert downs.down("n3", up) is None
    # a control plane that is not Ready is down without any request
    [f] = downs.disrupt("n1", "Reset", up, {"n4": not_ready})
    assert f.detail.endswith("n4 (not Ready: kubelet) is down")


def test_disruptive_boot_override() -> None:
    assert disruptive_boot_override("Cd", "Once") and disruptive_boot_override("Pxe", "Continuous")
    assert not disruptive_boot_override("Cd", "Disabled")
    assert not disruptive_boot_override("None", "Once") and not disruptive_boot_override("Hdd", "Continuous")
