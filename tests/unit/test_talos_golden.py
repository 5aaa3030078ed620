"""edgefleet's machine configs against what ``talosctl gen config`` writes for Talos 1.12.

The upstream stability files (``tests/data/talos-v1.12.6/stability/``) and edgefleet's rendering
of an equivalent node (store cluster ``base``, as theirs) are normalised (secrets, the node's
addresses and names, versions), flattened to key paths and compared. Every difference must be
listed, with the same values, in ``nocloud/talos-differences.yml``; ``nocloud/README.md`` carries
that list as a table (checked here too), so a new difference fails until it is explained.

Key paths: the document (``v1alpha1`` for the Config, else its kind, plus ``[name]`` for named
documents), then dotted keys (``["a.b"]`` for a key holding a dot). A key present on one side
only is one difference (its whole value); lists of scalars compare whole; lists of mappings
compare item by item (``.0``, ``.1``), or whole when their lengths differ.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from edgefleet.inventory.model import Role, Store
from edgefleet.secrets import ClusterSecrets, generate_secrets
from edgefleet.talos.config import ReleaseRef, TalosSchema, bundled_schema_path, render_machine_config
from tests.helpers import REPO, TALOS_TESTDATA

GOLDEN = TALOS_TESTDATA / "stability"
DIFFERENCES = REPO / "nocloud" / "talos-differences.yml"
README = REPO / "nocloud" / "README.md"
TABLE_BEGIN = "<!-- talos-differences: begin (generated from talos-differences.yml; checked by tests) -->"
TABLE_END = "<!-- talos-differences: end -->"
ABSENT = "(absent)"
ROLES = {Role.controlplane: "base-controlplane.yaml", Role.worker: "base-worker.yaml"}

RELEASE = ReleaseRef(name="talos-v1.12.6-r1", talos_version="v1.12.6", kubernetes_version="1.35.0",
                     installer_image="registry.example/edge/installer:v1.12.6-r1")

# Secret values, by key path, replaced by a marker when set (an empty string stays empty).
SECRET_PATHS = re.compile(
    r"^v1alpha1\.(machine\.token|machine\.ca\.(crt|key)|cluster\.(id|secret|token|secretboxEncryptionSecret"
    r"|ca\.(crt|key)|aggregatorCA\.(crt|key)|serviceAccount\.key|etcd\.ca\.(crt|key)))$")
KUBERNETES_IMAGE = re.compile(r"^(?P<repo>(ghcr\.io/siderolabs|registry\.k8s\.io)/[a-z-]+):v\d+\.\d+\.\d+$")


def base_store() -> Store:
    """Three control planes behind a VIP and a worker; the cluster named ``base``, like upstream's."""
    nodes = [{"name": f"base-cp{i + 1}", "role": "controlplane", "mac": f"02:00:00:00:05:{i + 1:02x}",
              "ip": f"10.5.0.{11 + i}"} for i in range(3)]
    nodes.append({"name": "base-w1", "role": "worker", "mac": "02:00:00:00:05:21", "ip": "10.5.0.21"})
    return Store.model_validate({
        "id": "s-base", "name": "Base", "country": "DK", "region": "nordics", "timezone": "Europe/Copenhagen",
        "maintenance_windows": [{"days": ["sun"], "start": "22:00", "end": "04:00"}],
        "network": {"subnet": "10.5.0.0/24", "gateway": "10.5.0.1", "dns": ["10.0.0.53"], "ntp": ["ntp1.example"]},
        "cluster": {"name": "base", "vip": "10.5.0.10"}, "nodes": nodes})


@pytest.fixture(scope="module")
def secrets() -> ClusterSecrets:
    return generate_secrets(datetime.now(UTC))


# --- normalise, flatten, compare -------------------------------------------------------------------


def doc_key(doc: dict[str, Any]) -> str:
    kind = str(doc.get("kind", "v1alpha1"))
    return f"{kind}[{doc['name']}]" if "name" in doc else kind


def key_path(prefix: str, key: Any) -> str:
    k = str(key)
    return f"{prefix}[{json.dumps(k)}]" if "." in k or "[" in k else f"{prefix}.{k}"


def normalise(value: Any, path: str, subst: dict[str, str]) -> Any:
    """Secrets become ``<secret>``; the node's own values (addresses, names, MAC, release) their
    ``<role>`` names; Kubernetes image tags ``<kubernetes-version>``."""
    if isinstance(value, dict):
        return {k: normalise(v, key_path(path, k), subst) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise(v, path, subst) for v in value]
    if isinstance(value, str):
        if SECRET_PATHS.match(path):
            return "<secret>" if value else value
        m = KUBERNETES_IMAGE.match(value)
        if m:
            return f"{m['repo']}:<kubernetes-version>"
        if path == "v1alpha1.cluster.controlPlane.endpoint":
            return re.sub(r"^https://[^:/]+:", "https://<endpoint>:", value)
        if value in subst:
            return subst[value]
        for old, new in subst.items():
            if old.startswith("02:"):  # a MAC inside a CEL selector
                value = value.replace(old, new)
        return value
    return value


def load_documents(text: str | bytes, subst: dict[str, str]) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    out: dict[str, Any] = {}
    for d in docs:
        key = doc_key(normalise(d, "", subst) if "name" in d else d)
        assert key not in out, f"two documents {key}"
        out[key] = normalise(d, "v1alpha1" if "kind" not in d else key, subst)
    return out


def differences(upstream: Any, ours: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    """(path, upstream value or ABSENT, ours or ABSENT) for every key-level difference."""
    if isinstance(upstream, dict) and isinstance(ours, dict):
        for k in list(upstream) + [k for k in ours if k not in upstream]:
            p = key_path(path, k) if path else str(k)
            if k not in ours:
                yield p, upstream[k], ABSENT
            elif k not in upstream:
                yield p, ABSENT, ours[k]
            else:
                yield from differences(upstream[k], ours[k], p)
    elif (isinstance(upstream, list) and isinstance(ours, list) and len(upstream) == len(ours)
          and any(isinstance(x, dict) for x in upstream + ours)):
        for i, (u, o) in enumerate(zip(upstream, ours, strict=True)):
            yield from differences(u, o, f"{path}.{i}")
    elif upstream != ours or type(upstream) is not type(ours):
        yield path, upstream, ours


def substitutions(store: Store, role: Role) -> dict[str, str]:
    node = next(n for n in store.nodes if n.role is role)
    subst = {str(node.ip): "<node-ip>", node.name: "<node-name>", node.mac: "<node-mac>",
             str(store.network.subnet): "<store-subnet>", store.id: "<store-id>", RELEASE.name: "<release>",
             RELEASE.installer_image: "<installer-image>"}
    if store.cluster.vip is not None:
        subst[str(store.cluster.vip)] = "<vip>"
    for i, a in enumerate(store.network.dns):
        subst[str(a)] = f"<dns-{i + 1}>"
    for i, s in enumerate(store.network.ntp):
        subst[s] = f"<ntp-{i + 1}>"
    return subst


def observed_differences(store: Store, role: Role, secrets: ClusterSecrets) -> list[tuple[str, Any, Any]]:
    subst = substitutions(store, role)
    node = next(n for n in store.nodes if n.role is role)
    upstream = load_documents((GOLDEN / ROLES[role]).read_text(), {})
    ours = load_documents(render_machine_config(store, node, RELEASE, secrets), subst)
    return list(differences(upstream, ours, ""))


def documented() -> list[dict[str, Any]]:
    data = yaml.safe_load(DIFFERENCES.read_text())
    entries: list[dict[str, Any]] = data["differences"]
    return entries


def check(observed: list[tuple[str, Any, Any]], role: Role, entries: list[dict[str, Any]]) -> list[str]:
    """What is wrong: undocumented differences, documented ones with other values, stale entries."""
    wrong = []
    mine = {e["path"]: e for e in entries if role.value in e["roles"]}
    for path, up, ours in observed:
        e = mine.pop(path, None)
        if e is None:
            wrong.append(f"{role.value}: {path}: upstream {up!r}, edgefleet {ours!r} is not documented in "
                         f"{DIFFERENCES.name}: add it with the reason, or remove the difference")
        elif (e["upstream"], e["edgefleet"]) != (up, ours):
            wrong.append(f"{role.value}: {path}: documented as upstream {e['upstream']!r}, edgefleet "
                         f"{e['edgefleet']!r}, but now upstream {up!r}, edgefleet {ours!r}")
    wrong.extend(f"{role.value}: {p}: documented in {DIFFERENCES.name} but no longer a difference; remove it"
                 for p in mine)
    return wrong


# --- the table in nocloud/README.md --------------------------------------------------------------


def cell(v: Any) -> str:
    if v == ABSENT:
        return "absent"
    text = json.dumps(v, separators=(", ", ": "))
    return "`" + text.replace("|", "\\|") + "`"


def render_table(entries: list[dict[str, Any]]) -> str:
    rows = ["| key path | nodes | upstream | edgefleet | why |", "|---|---|---|---|---|"]
    for e in entries:
        roles = "both" if set(e["roles"]) == {"controlplane", "worker"} else ", ".join(e["roles"])
        why = " ".join(str(e["why"]).split()).replace("|", "\\|")
        rows.append(f"| `{e['path']}` | {roles} | {cell(e['upstream'])} | {cell(e['edgefleet'])} | {why} |")
    return "\n".join(rows)


# --- tests -----------------------------------------------------------------------------------------


def test_the_upstream_files_are_what_talos_validates_as_its_own() -> None:
    """The vendored files are Talos 1.12 configs (sanity: the schema accepts them, but ``persist``,
    which the published schema leaves out)."""
    schema = TalosSchema.load(bundled_schema_path())
    for name in ROLES.values():
        for d in yaml.safe_load_all((GOLDEN / name).read_text()):
            problems = schema.problems(d)
            assert all("'persist'" in p for p in problems), (name, problems)


@pytest.mark.parametrize("role", list(ROLES), ids=[r.value for r in ROLES])
def test_every_difference_from_talosctl_gen_config_is_documented(role: Role, secrets: ClusterSecrets) -> None:
    wrong = check(observed_differences(base_store(), role, secrets), role, documented())
    assert not wrong, "\n".join(wrong)


def test_the_check_names_an_undocumented_difference(secrets: ClusterSecrets) -> None:
    """Dropping any one documented entry makes the comparison fail, naming its key path."""
    entries = documented()
    for role in ROLES:
        observed = observed_differences(base_store(), role, secrets)
        assert check(observed, role, entries) == []
        for i, e in enumerate(entries):
            if role.value not in e["roles"]:
                continue
            wrong = check(observed, role, entries[:i] + entries[i + 1:])
            assert wrong and e["path"] in wrong[0] and "is not documented" in wrong[0], (e["path"], wrong)
    # and a new difference is caught with both values
    changed = [*observed_differences(base_store(), Role.worker, secrets), ("v1alpha1.machine.x", ABSENT, 1)]
    assert check(changed, Role.worker, entries) == [
        f"worker: v1alpha1.machine.x: upstream '{ABSENT}', edgefleet 1 is not documented in {DIFFERENCES.name}: "
        "add it with the reason, or remove the difference"]


def test_the_readme_table_is_the_documented_list() -> None:
    text = README.read_text()
    assert TABLE_BEGIN in text and TABLE_END in text, f"{README} lacks the differences table markers"
    table = text.split(TABLE_BEGIN, 1)[1].split(TABLE_END, 1)[0].strip()
    expected = render_table(documented())
    assert table == expected, f"nocloud/README.md's table differs from {DIFFERENCES.name}; it should read:\n" \
                              f"{expected}"


def test_each_documented_entry_gives_a_reason_and_known_roles() -> None:
    paths = set()
    for e in documented():
        assert set(e) == {"path", "roles", "upstream", "edgefleet", "why"}, e
        assert e["roles"] and set(e["roles"]) <= {"controlplane", "worker"}, e
        assert len(str(e["why"]).split()) >= 4, e
        assert e["path"] not in paths, f"{e['path']} listed twice"
        paths.add(e["path"])
