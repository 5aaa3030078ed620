"""Talos machine configs: every generated document validates against the Talos 1.12 schema; the
contents by role; strategic merge patches (data-driven cases in tests/cases/talos_patches)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefleet.errors import ConfigRenderError, ReleaseInputError
from edgefleet.inventory.generate import plan_synthetic_fleet, write_inventory
from edgefleet.inventory.load import load_fleet
from edgefleet.inventory.model import Fleet, Store
from edgefleet.secrets import ClusterSecrets, generate_secrets
from edgefleet.talos.config import (
    LABEL_RELEASE,
    LABEL_STORE,
    ReleaseRef,
    TalosSchema,
    bundled_schema_path,
    render_machine_config,
    render_machine_documents,
    strategic_merge,
)
from tests.helpers import REPO, SAMPLE_INVENTORY

CASES = REPO / "tests" / "cases" / "talos_patches" / "cases.yml"
NOW = datetime(2026, 11, 25, tzinfo=UTC)
RELEASE = ReleaseRef(name="talos-v1.12.6-r1", talos_version="v1.12.6", kubernetes_version="1.35.0",
                     installer_image="registry.example/edge/installer:v1.12.6-r1")


@pytest.fixture(scope="module")
def schema() -> TalosSchema:
    return TalosSchema.load(bundled_schema_path())


@pytest.fixture(scope="module")
def secrets() -> ClusterSecrets:
    return generate_secrets(NOW)


def make_store(**over: Any) -> Store:
    """A 3-control-plane store (plus ``workers`` workers) on 10.40.1.0/24, VIP .10."""
    workers = over.pop("workers", 0)
    nodes = [{"name": f"s-040-n{i + 1}", "role": "controlplane" if i < 3 else "worker",
              "mac": f"02:00:00:00:40:{i + 1:02x}", "ip": f"10.40.1.{11 + i}"} for i in range(3 + workers)]
    raw: dict[str, Any] = {
        "id": "s-040", "name": "Store 40", "country": "DK", "region": "nordics", "timezone": "Europe/Copenhagen",
        "maintenance_windows": [{"days": ["sun"], "start": "22:00", "end": "04:00"}],
        "network": {"subnet": "10.40.1.0/24", "gateway": "10.40.1.1", "dns": ["10.0.0.53"],
                    "ntp": ["ntp1.example"]},
        "cluster": {"name": "s-040", "vip": "10.40.1.10"},
        "nodes": nodes, "wipe_method": "talos-api",
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(raw.get(k), dict):
            raw[k] = {**raw[k], **v}
        else:
            raw[k] = v
    return Store.model_validate(raw)


def docs_of(data: bytes) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(data) if d is not None]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d.get("kind", "v1alpha1"): d for d in docs}


def assert_fleet_validates(fleet: Fleet, schema: TalosSchema, secrets: ClusterSecrets) -> int:
    """Render every node and validate every document on its own (no shape cache): returns the count."""
    checked = 0
    for store in fleet.stores.values():
        for node in store.nodes:
            for doc in docs_of(render_machine_config(store, node, RELEASE, secrets)):
                assert schema.problems(doc) == [], (store.id, node.name, doc.get("kind"))
                checked += 1
    return checked


def test_every_document_of_the_sample_fleet_validates(schema: TalosSchema, secrets: ClusterSecrets) -> None:
    fleet = load_fleet(SAMPLE_INVENTORY)
    kinds = set()
    for store in fleet.stores.values():
        for node in store.nodes:
            kinds |= set(by_kind(docs_of(render_machine_config(store, node, RELEASE, secrets))))
    assert {"v1alpha1", "HostnameConfig", "ResolverConfig", "TimeSyncConfig", "LinkAliasConfig",
            "Layer2VIPConfig"} <= kinds
    assert assert_fleet_validates(fleet, schema, secrets) > 5 * fleet.node_count


@pytest.mark.parametrize("ipv6_every", [0, 3])
def test_every_document_of_a_generated_fleet_validates(tmp_path: Path, schema: TalosSchema,
                                                       secrets: ClusterSecrets, ipv6_every: int) -> None:
    fleet_yml, group_vars, stores = plan_synthetic_fleet(96, 1, ipv6_every=ipv6_every)
    # The generator's own patches, plus a typed document patch.
    fleet_yml["defaults"]["talos_patches"].append(
        {"apiVersion": "v1alpha1", "kind": "TimeSyncConfig", "bootTimeout": "2m"})
    fleet = load_fleet(write_inventory(tmp_path / "inv", fleet_yml, group_vars, stores))
    sizes = {len(s.nodes) for s in fleet.stores.values()}
    assert {1, 3, 5} <= sizes and any(s.network.vlan for s in fleet.stores.values())
    families = {s.network.families for s in fleet.stores.values()}
    assert families == ({(4,), (4, 6), (6,)} if ipv6_every else {(4,)})
    assert assert_fleet_validates(fleet, schema, secrets) > 5 * fleet.node_count


V6_NETWORK = {"subnet": "fd00:40:1::/64", "gateway": "fd00:40:1::1", "dns": ["fd00:40::53"]}


def family_store(family: str, **over: Any) -> Store:
    """``make_store`` as an IPv4-only, dual-stack (with an IPv6 VIP) or IPv6-only store."""
    extra = over.pop("cluster_extra", {})
    base = make_store(workers=over.pop("workers", 0))
    nodes = [n.model_dump(mode="json") for n in base.nodes]
    if family == "ipv4":
        return make_store(nodes=nodes, cluster=extra, **over)
    if family == "dual":
        for i, n in enumerate(nodes):
            n["ipv6"] = f"fd00:40:1::{11 + i:x}"
        return make_store(nodes=nodes, network={"ipv6": {"subnet": V6_NETWORK["subnet"],
                                                         "gateway": V6_NETWORK["gateway"]},
                                                "dns": ["10.0.0.53", "fd00:40::53"]},
                          cluster={"vip6": "fd00:40:1::a", **extra}, **over)
    for i, n in enumerate(nodes):
        n["ip"] = f"fd00:40:1::{11 + i:x}"
    return make_store(nodes=nodes, network=V6_NETWORK, cluster={"vip": "fd00:40:1::a", **extra}, **over)


@pytest.mark.parametrize(("family", "pods", "services", "endpoint", "subnets", "vips"), [
    ("ipv4", ["10.244.0.0/16"], ["10.96.0.0/12"], "https://10.40.1.10:6443", ["10.40.1.0/24"], ["10.40.1.10"]),
    ("dual", ["10.244.0.0/16", "fd00:10:244::/56"], ["10.96.0.0/12", "fd00:10:96::/112"],
     "https://10.40.1.10:6443", ["10.40.1.0/24", "fd00:40:1::/64"], ["10.40.1.10", "fd00:40:1::a"]),
    ("ipv6", ["fd00:10:244::/56"], ["fd00:10:96::/112"], "https://[fd00:40:1::a]:6443", ["fd00:40:1::/64"],
     ["fd00:40:1::a"]),
])
def test_address_families_of_the_machine_config(family: str, pods: list[str], services: list[str], endpoint: str,
                                                subnets: list[str], vips: list[str], secrets: ClusterSecrets,
                                                schema: TalosSchema) -> None:
    """Pod and service subnets, kubelet node IP and etcd subnets, the endpoint, SANs and VIPs follow
    the store's families (IPv4 first on a dual-stack store); every document matches the schema."""
    store = family_store(family, workers=1)
    cp, worker = store.nodes[0], store.nodes[3]
    docs = by_kind(docs_of(render_machine_config(store, cp, RELEASE, secrets)))
    m, c = docs["v1alpha1"]["machine"], docs["v1alpha1"]["cluster"]
    assert c["network"]["podSubnets"] == pods and c["network"]["serviceSubnets"] == services
    assert c["controlPlane"]["endpoint"] == endpoint
    assert m["kubelet"]["nodeIP"]["validSubnets"] == subnets
    assert c["etcd"]["advertisedSubnets"] == subnets[:1]
    assert m["certSANs"] == [str(a) for a in (cp.ip, cp.ipv6) if a is not None]
    assert c["apiServer"]["certSANs"] == vips
    all_docs = docs_of(render_machine_config(store, cp, RELEASE, secrets))
    assert [d["name"] for d in all_docs if d.get("kind") == "Layer2VIPConfig"] == vips
    for node in (cp, worker):
        for doc in docs_of(render_machine_config(store, node, RELEASE, secrets)):
            assert schema.problems(doc) == [], (family, node.name, doc)
    wdocs = docs_of(render_machine_config(store, worker, RELEASE, secrets))
    assert not [d for d in wdocs if d.get("kind") == "Layer2VIPConfig"]
    assert by_kind(wdocs)["v1alpha1"]["cluster"]["controlPlane"]["endpoint"] == endpoint


def test_dual_stack_network_with_a_node_lacking_ipv6_keeps_an_ipv4_cluster(secrets: ClusterSecrets) -> None:
    """Inventories written before dual-stack clusters (network.ipv6, not every node's ipv6) keep
    their IPv4 pod and service subnets; the nodes that have ipv6 still get both addresses."""
    dual = family_store("dual")
    nodes = [n.model_dump(mode="json") for n in dual.nodes]
    nodes[2]["ipv6"] = None
    store = make_store(nodes=nodes, network=dual.network.model_dump(mode="json"))
    assert store.cluster_families == (4,) and dual.cluster_families == (4, 6)
    c = by_kind(docs_of(render_machine_config(store, store.nodes[0], RELEASE, secrets)))["v1alpha1"]["cluster"]
    assert c["network"]["podSubnets"] == ["10.244.0.0/16"] and c["network"]["serviceSubnets"] == ["10.96.0.0/12"]


def test_inventory_pod_and_service_subnets_win_over_the_family_defaults(secrets: ClusterSecrets) -> None:
    store = family_store("ipv6", cluster_extra={"pod_subnets": ["fd00:99::/56"], "service_subnets": ["fd00:98::/112"]})
    c = by_kind(docs_of(render_machine_config(store, store.nodes[0], RELEASE, secrets)))["v1alpha1"]["cluster"]
    assert c["network"] == {"dnsDomain": "cluster.local", "podSubnets": ["fd00:99::/56"],
                            "serviceSubnets": ["fd00:98::/112"]}


@pytest.mark.parametrize("variant", ["bond", "bond-vlan", "ipv6-mtu", "no-vip-single", "workers"])
def test_network_variants_validate(variant: str, schema: TalosSchema, secrets: ClusterSecrets) -> None:
    over: dict[str, Any] = {}
    store = make_store(workers=2 if variant == "workers" else 0)
    nodes = [n.model_dump() for n in store.nodes]
    if variant.startswith("bond"):
        nodes[0]["bond"] = {"macs": [nodes[0]["mac"], "02:00:00:00:41:01"], "mode": "802.3ad"}
        if variant == "bond-vlan":
            over["network"] = {"vlan": 120}
    elif variant == "ipv6-mtu":
        over["network"] = {"mtu": 9000, "ipv6": {"subnet": "fd00:40::/64", "gateway": "fd00:40::1"},
                           "dns": ["10.0.0.53", "fd00::53"]}
        for i, n in enumerate(nodes):
            n["ipv6"] = f"fd00:40::{11 + i}"
    elif variant == "no-vip-single":
        nodes = nodes[:1]
        over["cluster"] = {"vip": None}
    store = make_store(nodes=nodes, **over)
    for node in store.nodes:
        docs = docs_of(render_machine_config(store, node, RELEASE, secrets))
        for doc in docs:
            assert schema.problems(doc) == [], (variant, node.name, doc)


def test_control_plane_contents(secrets: ClusterSecrets) -> None:
    store = make_store(workers=2)
    docs = by_kind(docs_of(render_machine_config(store, store.nodes[0], RELEASE, secrets)))
    m, c = docs["v1alpha1"]["machine"], docs["v1alpha1"]["cluster"]
    assert m["type"] == "controlplane"
    assert m["token"] == secrets.trustdinfo.token
    assert m["ca"] == {"crt": secrets.certs.os.crt, "key": secrets.certs.os.key}
    assert m["install"] == {"disk": "/dev/sda", "image": RELEASE.installer_image, "wipe": False,
                            "grubUseUKICmdline": True}
    assert m["kubelet"]["image"] == "ghcr.io/siderolabs/kubelet:v1.35.0"
    assert m["nodeLabels"][LABEL_RELEASE] == RELEASE.name and m["nodeLabels"][LABEL_STORE] == "s-040"
    assert "10.40.1.11" in m["certSANs"]
    assert c["id"] == secrets.cluster.id and c["secret"] == secrets.cluster.secret
    assert c["clusterName"] == "s-040"
    assert c["controlPlane"]["endpoint"] == "https://10.40.1.10:6443"
    assert c["token"] == secrets.secrets.bootstraptoken
    assert c["secretboxEncryptionSecret"] == secrets.secrets.secretboxencryptionsecret
    assert c["ca"] == {"crt": secrets.certs.k8s.crt, "key": secrets.certs.k8s.key}
    assert c["aggregatorCA"] == {"crt": secrets.certs.k8saggregator.crt, "key": secrets.certs.k8saggregator.key}
    assert c["serviceAccount"] == {"key": secrets.certs.k8sserviceaccount.key}
    assert c["etcd"]["ca"] == {"crt": secrets.certs.etcd.crt, "key": secrets.certs.etcd.key}
    assert c["network"]["podSubnets"] == ["10.244.0.0/16"]
    assert c["allowSchedulingOnControlPlanes"] is False  # the store has workers
    assert docs["HostnameConfig"] == {"apiVersion": "v1alpha1", "kind": "HostnameConfig",
                                      "hostname": "s-040-n1", "auto": "off"}
    assert docs["Layer2VIPConfig"]["name"] == "10.40.1.10" and docs["Layer2VIPConfig"]["link"] == "edge0"
    assert docs["LinkAliasConfig"]["name"] == "edge0"
    assert '"02:00:00:00:40:01"' in docs["LinkAliasConfig"]["selector"]["match"]
    assert docs["ResolverConfig"]["nameservers"] == [{"address": "10.0.0.53"}]
    assert docs["TimeSyncConfig"]["ntp"]["servers"] == ["ntp1.example"]


def test_worker_gets_no_ca_keys_no_etcd_no_vip(secrets: ClusterSecrets) -> None:
    store = make_store(workers=2)
    worker = store.nodes[3]
    text = render_machine_config(store, worker, RELEASE, secrets)
    docs = by_kind(docs_of(text))
    m, c = docs["v1alpha1"]["machine"], docs["v1alpha1"]["cluster"]
    assert m["type"] == "worker"
    assert m["ca"] == {"crt": secrets.certs.os.crt}
    assert c["ca"] == {"crt": secrets.certs.k8s.crt}
    for absent in ("etcd", "aggregatorCA", "serviceAccount", "secretboxEncryptionSecret", "apiServer"):
        assert absent not in c
    assert "Layer2VIPConfig" not in docs
    for secret_key in (secrets.certs.os.key, secrets.certs.k8s.key, secrets.certs.etcd.key,
                       secrets.certs.k8sserviceaccount.key, secrets.certs.k8saggregator.key):
        assert secret_key.encode() not in text
    assert m["nodeLabels"] == {LABEL_RELEASE: RELEASE.name, LABEL_STORE: "s-040"}


@pytest.mark.parametrize("level", ["privileged", "baseline", "restricted"])
def test_pod_security_level_is_enforced_and_audit_warn_stay_restricted(level: str, schema: TalosSchema,
                                                                      secrets: ClusterSecrets) -> None:
    store = make_store(workers=1, cluster={"pod_security": level})
    cp = docs_of(render_machine_config(store, store.nodes[0], RELEASE, secrets, schema=schema))[0]
    [plugin] = cp["cluster"]["apiServer"]["admissionControl"]
    assert plugin["name"] == "PodSecurity"
    assert plugin["configuration"]["defaults"] == {
        "audit": "restricted", "audit-version": "latest", "enforce": level, "enforce-version": "latest",
        "warn": "restricted", "warn-version": "latest"}
    assert plugin["configuration"]["exemptions"]["namespaces"] == ["kube-system"]
    worker = docs_of(render_machine_config(store, store.nodes[3], RELEASE, secrets, schema=schema))[0]
    assert "apiServer" not in worker["cluster"]  # admission is the API server's, on control planes only


def test_pod_security_defaults_to_baseline_as_talosctl_gen_config(secrets: ClusterSecrets) -> None:
    store = make_store()
    cp = docs_of(render_machine_config(store, store.nodes[0], RELEASE, secrets))[0]
    assert cp["cluster"]["apiServer"]["admissionControl"][0]["configuration"]["defaults"]["enforce"] == "baseline"
    assert cp["cluster"]["apiServer"]["auditPolicy"]["rules"] == [{"level": "Metadata"}]


@pytest.mark.parametrize(("enabled", "expected"), [
    (True, {"enabled": True, "registries": {"kubernetes": {"disabled": True}, "service": {}}}),
    (False, {"enabled": False}),
])
def test_cluster_discovery_on_both_roles(enabled: bool, expected: dict[str, Any], schema: TalosSchema,
                                         secrets: ClusterSecrets) -> None:
    store = make_store(workers=1, cluster={"discovery": enabled})
    for node in (store.nodes[0], store.nodes[3]):
        v1 = docs_of(render_machine_config(store, node, RELEASE, secrets, schema=schema))[0]
        assert v1["cluster"]["discovery"] == expected, node.role


def test_generator_defaults_on_both_roles(secrets: ClusterSecrets) -> None:
    store = make_store(workers=1)
    for node in (store.nodes[0], store.nodes[3]):
        v1 = docs_of(render_machine_config(store, node, RELEASE, secrets))[0]
        assert v1["debug"] is False and v1["machine"]["network"] == {}
        assert v1["machine"]["install"]["grubUseUKICmdline"] is True
        assert v1["cluster"]["discovery"]["enabled"] is True


@pytest.mark.parametrize(("field", "value", "message"), [
    ("pod_security", "strict", "'privileged', 'baseline' or 'restricted'"),
    ("pod_security", "Baseline", "'privileged', 'baseline' or 'restricted'"),
    ("discovery", "sometimes", "valid boolean"),
])
def test_cluster_knobs_are_validated(field: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_store(cluster={field: value})


def test_scheduling_on_control_planes(secrets: ClusterSecrets) -> None:
    def allow(store: Store) -> Any:
        return by_kind(docs_of(render_machine_config(store, store.nodes[0], RELEASE, secrets)))[
            "v1alpha1"]["cluster"]["allowSchedulingOnControlPlanes"]

    assert allow(make_store()) is True  # no workers
    assert allow(make_store(workers=2)) is False
    assert allow(make_store(workers=2, cluster={"allow_scheduling_on_control_planes": True})) is True


@pytest.mark.parametrize(("bond", "vlan", "link", "alias"), [
    (False, None, "edge0", True), (False, 120, "edge0.120", True), (True, None, "bond0", False),
    (True, 7, "bond0.7", False)])
def test_vip_link_follows_the_network_config_names(bond: bool, vlan: int | None, link: str, alias: bool,
                                                   secrets: ClusterSecrets) -> None:
    nodes = [n.model_dump() for n in make_store().nodes]
    if bond:
        nodes[0]["bond"] = {"macs": [nodes[0]["mac"], "02:00:00:00:41:01"]}
    store = make_store(nodes=nodes, network={"vlan": vlan})
    docs = by_kind(render_machine_documents(store, store.nodes[0], RELEASE, secrets))
    assert docs["Layer2VIPConfig"]["link"] == link
    assert ("LinkAliasConfig" in docs) is alias


def _load_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = yaml.safe_load(CASES.read_text())
    return cases


def _lookup(docs: list[dict[str, Any]], ref: str) -> Any:
    kind, _, path = ref.partition(":")
    matches = [d for d in docs if d.get("kind", "v1alpha1") == kind]
    if not matches:
        raise KeyError(ref)
    cur: Any = matches[0]
    for part in path.split("."):
        cur = cur[int(part)] if isinstance(cur, list) else cur[part]
    return cur


@pytest.mark.parametrize("case", _load_cases(), ids=lambda c: c["name"])
def test_patch_case(case: dict[str, Any], schema: TalosSchema, secrets: ClusterSecrets) -> None:
    base = make_store()
    nodes = [n.model_dump() for n in base.nodes]
    nodes[0]["talos_patches"] = case.get("node", [])
    store = make_store(nodes=nodes, talos_patches=case.get("store", []))
    node = store.nodes[0]
    if "error" in case:
        with pytest.raises(ConfigRenderError, match=case["error"]):
            render_machine_config(store, node, RELEASE, secrets, schema=schema)
        return
    docs = docs_of(render_machine_config(store, node, RELEASE, secrets, schema=schema))
    for ref, value in case.get("expect", {}).items():
        assert _lookup(docs, ref) == value, ref
    for ref in case.get("absent", []):
        with pytest.raises(KeyError):
            _lookup(docs, ref)
    for doc in docs:
        assert schema.problems(doc) == []


def test_patches_are_not_mutated_and_output_is_deterministic(secrets: ClusterSecrets) -> None:
    patches = [{"machine": {"certSANs": ["a.example"], "sysctls": {"x": "1"}}},
               {"apiVersion": "v1alpha1", "kind": "TimeSyncConfig", "ntp": {"servers": ["n2"]}}]
    store = make_store(talos_patches=patches)
    before = copy.deepcopy(store.talos_patches)
    outs = {render_machine_config(store, n, RELEASE, secrets) for n in store.nodes[:1] * 3}
    assert len(outs) == 1
    assert store.talos_patches == before
    by_kind(docs_of(next(iter(outs))))  # parses


def test_schema_verdicts_are_not_shared_across_different_node_patches(schema: TalosSchema,
                                                                      secrets: ClusterSecrets) -> None:
    nodes = [n.model_dump() for n in make_store().nodes]
    nodes[2]["talos_patches"] = [{"machine": {"install": {"wipe": "no"}}}]
    store = make_store(nodes=nodes)
    render_machine_config(store, store.nodes[0], RELEASE, secrets, schema=schema)
    render_machine_config(store, store.nodes[1], RELEASE, secrets, schema=schema)
    with pytest.raises(ConfigRenderError, match=r"node s-040-n3: .*machine\.install\.wipe"):
        render_machine_config(store, store.nodes[2], RELEASE, secrets, schema=schema)


def test_strategic_merge_leaves_its_inputs_alone() -> None:
    base = {"a": {"b": [1]}, "c": 1}
    patch = {"a": {"b": [2], "d": {"e": 1}}, "c": {"$patch": "delete"}}
    assert strategic_merge(base, patch) == {"a": {"b": [1, 2], "d": {"e": 1}}}
    assert base == {"a": {"b": [1]}, "c": 1}
    assert patch == {"a": {"b": [2], "d": {"e": 1}}, "c": {"$patch": "delete"}}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"name": "bad name!"}, "not usable as a Kubernetes label value"),
    ({"talos_version": "latest"}, "talos_version 'latest' is not a version"),
    ({"kubernetes_version": "1.35"}, "kubernetes_version '1.35' is not a version"),
    ({"installer_image": "a b"}, "installer image"),
])
def test_release_ref_is_checked(kwargs: dict[str, str], message: str) -> None:
    args = {"name": "r1", "talos_version": "v1.12.6", "kubernetes_version": "1.35.0",
            "installer_image": "ghcr.io/siderolabs/installer:v1.12.6", **kwargs}
    with pytest.raises(ReleaseInputError, match=message):
        ReleaseRef(**args)


def test_schema_file_must_be_a_talos_schema(tmp_path: Path) -> None:
    bad = tmp_path / "s.json"
    bad.write_text('{"$defs": {}}')
    with pytest.raises(ConfigRenderError, match="not a Talos config schema"):
        TalosSchema.load(bad)
    with pytest.raises(ConfigRenderError, match="cannot read Talos config schema"):
        TalosSchema.load(tmp_path / "missing.json")


def test_the_bundled_schema_is_the_default_and_the_environment_may_name_another(tmp_path: Path) -> None:
    from edgefleet.errors import ConfigRenderError
    from edgefleet.talos.config import BUNDLED_SCHEMA_VERSION, default_schema

    assert BUNDLED_SCHEMA_VERSION in bundled_schema_path().name and bundled_schema_path().is_file()
    bundled = default_schema(environ={})
    assert bundled.source == str(bundled_schema_path()) and default_schema(environ={}) is bundled
    other = tmp_path / "config.schema.json"
    other.write_bytes(bundled_schema_path().read_bytes())
    assert default_schema(environ={"EDGEFLEET_TALOS_SCHEMA": str(other)}).source == str(other)
    with pytest.raises(ConfigRenderError, match="EDGEFLEET_TALOS_SCHEMA; unset it"):
        default_schema(environ={"EDGEFLEET_TALOS_SCHEMA": str(tmp_path / "missing.json")})
