"""Hypothesis feeds Talos config patches (the inventory's ``talos_patches``, on a store and on a
node) through ``edgefleet seed build``, which checks them against the bundled Talos schema: a patch either
gives seeds, or exit 2 with a message naming the store, the node or the inventory file and
``talos_patches``, and then nothing is written (no output directory, no new secrets). Never a
traceback, never exit 1."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edgefleet.secrets import generate_secrets, store_secrets
from edgefleet.talos.config import LABEL_RELEASE
from tests.helpers import record_release
from tests.unit.test_release_fuzz import run_cli

FLEET = {"fleet": {"name": "fuzz"},
         "defaults": {"maintenance_windows": [{"days": ["daily"], "start": "22:00", "end": "04:00"}],
                      "network": {"dns": ["10.0.0.53"]}}}
STORE: dict[str, Any] = {
    "id": "dk-100", "name": "Test", "country": "DK", "region": "nordics", "timezone": "Europe/Copenhagen",
    "network": {"subnet": "10.50.1.0/24", "gateway": "10.50.1.1"}, "cluster": {"name": "dk-100"},
    "wipe_method": "talos-api",
    "nodes": [{"name": "dk-100-n1", "role": "controlplane", "mac": "02:aa:00:00:00:01", "ip": "10.50.1.11"},
              {"name": "dk-100-n2", "role": "worker", "mac": "02:aa:00:00:00:02", "ip": "10.50.1.12"}],
}

KEYS = ["machine", "cluster", "version", "kind", "apiVersion", "name", "$patch", "network", "install", "nodeLabels",
        "kubelet", "extraArgs", "hostname", "interfaces", "disk", "features", "sysctls", "nameservers", "image",
        "controlPlane", "endpoint", "token", LABEL_RELEASE, "edgefleet.io/store", "HostnameConfig", "v1alpha1"]
leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False),
                 st.text(max_size=12), st.sampled_from(["delete", "replace", "v1alpha1", "HostnameConfig", "eth0",
                                                        "/dev/sda", "10.50.1.300", "r1", "", "v2"]))
value = st.recursive(leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), inner, max_size=3),
    st.just({"$patch": "delete"})), max_leaves=10)
patch = st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), value, min_size=1, max_size=3),
    st.fixed_dictionaries({"machine": st.dictionaries(st.sampled_from(KEYS), value, max_size=3)}),
    st.fixed_dictionaries({"apiVersion": st.sampled_from(["v1alpha1", "v1", ""]),
                           "kind": st.sampled_from(["HostnameConfig", "ExtensionServiceConfig", "Nope"])},
                          optional={"name": leaf, "$patch": st.just("delete"), "auto": leaf, "hostname": leaf}))
# mostly well-typed lists of patches (which reach the merge and the schema), sometimes not even that
patches = st.one_of(st.lists(patch, min_size=1, max_size=3), st.lists(patch, min_size=1, max_size=3),
                    st.lists(st.one_of(patch, leaf), max_size=3), leaf)


class Secrets(bytes):
    """A store's secrets file; never shown in a failure report."""

    def __repr__(self) -> str:
        return "<secrets of dk-100>"


@pytest.fixture(scope="module")
def secrets_file(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    home = tmp_path_factory.mktemp("secrets-home")
    return Secrets(store_secrets(home, "dk-100", generate_secrets(datetime.now(UTC))).read_bytes())


def _world(secrets: bytes, store_patches: Any, node_patches: Any) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="edgefleet-patch-fuzz-"))
    try:
        (root / "inventory" / "stores").mkdir(parents=True)
        (root / "inventory" / "fleet.yml").write_text(yaml.safe_dump(FLEET))
        store = {**STORE, "nodes": [dict(n) for n in STORE["nodes"]]}
        if store_patches is not None:
            store["talos_patches"] = store_patches
        if node_patches is not None:
            store["nodes"][1]["talos_patches"] = node_patches
        (root / "inventory" / "stores" / "dk.yml").write_text(yaml.safe_dump({"stores": [store]}))
        record_release(root / "home", "talos-v1.12.6")
        (root / "home" / "secrets").mkdir(parents=True, mode=0o700)
        (root / "home" / "secrets" / "dk-100.yaml").write_bytes(secrets)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(store_patches=st.one_of(st.none(), patches), node_patches=st.one_of(st.none(), patches))
def test_patches_give_seeds_or_a_located_error_and_nothing_written(secrets_file: bytes, store_patches: Any,
                                                                   node_patches: Any) -> None:
    for root in _world(secrets_file, store_patches, node_patches):
        home, out = root / "home", root / "home" / "seeds-out"
        args = ["seed", "build", "--release", "talos-v1.12.6", "--store", "dk-100", "--out", str(out),
                "--inventory", str(root / "inventory")]
        code, text = run_cli(args, home)
        event(f"exit {code}: {'inventory' if 'inventory has' in text else 'config' if code else 'seeds'}")
        assert "Traceback" not in text
        assert code in (0, 2), (store_patches, node_patches, text)
        if code == 0:
            assert sorted(p.name for p in (out / "dk-100").glob("*.iso")) == ["dk-100-n1.iso", "dk-100-n2.iso"]
            continue
        assert "talos_patches" in text, text
        assert "dk-100" in text or "stores/dk.yml" in text, text
        assert not out.exists(), sorted(out.rglob("*"))
        assert sorted(p.name for p in (home / "secrets").iterdir()) == ["dk-100.yaml"]
        assert (home / "secrets" / "dk-100.yaml").read_bytes() == secrets_file


def test_a_patch_that_breaks_the_schema_or_the_labels_is_refused(secrets_file: bytes) -> None:
    """Two fixed cases, so that the property above is known to meet both outcomes."""
    cases = [({"machine": {"nodeLabels": {LABEL_RELEASE: "other"}}}, "edgefleet manages"),
             ({"machine": {"install": {"disk": 7}}}, "talos_patches"), (7, "talos_patches")]
    for bad, why in cases:
        for root in _world(secrets_file, [bad], None):
            code, text = run_cli(["seed", "build", "--release", "talos-v1.12.6", "--store", "dk-100", "--out",
                                  str(root / "home" / "o"), "--inventory", str(root / "inventory")], root / "home")
            assert code == 2 and why in text and not (root / "home" / "o").exists(), text
    for root in _world(secrets_file, [{"machine": {"sysctls": {"net.core.somaxconn": "65535"}}}], None):
        code, text = run_cli(["seed", "build", "--release", "talos-v1.12.6", "--store", "dk-100", "--out",
                              str(root / "home" / "o"), "--inventory", str(root / "inventory")], root / "home")
        assert code == 0, text
