"""Talos 1.12 machine configs for edgefleet's nodes, and the patches the inventory layers add.

Pure: a node's config is a function of its store, the node, the release and the store's cluster
secrets. The output is a multi-document YAML (what ``talosctl gen config`` would give for the
node, plus the documents 1.12 splits out of ``v1alpha1``):

* ``v1alpha1`` Config: machine type, trustd token, Talos API CA (key on control planes only),
  kubelet image, install disk + the release's installer image, ``edgefleet.io/*`` node labels;
  cluster identity, endpoint (an IPv6 host in brackets), pod and service subnets (one per store
  address family, IPv4 first on a dual-stack store), bootstrap token, Kubernetes CAs (keys on
  control planes); kubelet node IP and etcd advertised subnets from the store's subnets; cluster
  discovery (``cluster.discovery``), Pod Security admission (``cluster.pod_security`` enforced)
  and the audit policy on control planes. Everything else ``talosctl gen config`` writes for 1.12
  is there too; each deliberate difference from it is listed, with its reason, in
  ``nocloud/talos-differences.yml``, which a test checks against the upstream files.
* ``HostnameConfig`` (static, the node's name), ``ResolverConfig`` (DNS), ``TimeSyncConfig``
  (NTP, when the store has servers), ``LinkAliasConfig`` (``edge0``: the node's NIC, by MAC, so
  other documents need not guess a kernel interface name), ``Layer2VIPConfig`` (the store VIP,
  and a dual-stack store's IPv6 VIP, control planes only). Addresses and routes come from the
  NoCloud network-config, not from here.

Patches (``store.talos_patches`` then ``node.talos_patches``) merge like ``talosctl
--config-patch`` strategic merge patches: mappings merge key by key, lists append (except
``cluster.network.podSubnets`` / ``serviceSubnets``, which are replaced, as in Talos), scalars
replace, ``key: {$patch: delete}`` removes a key. A patch with ``apiVersion``/``kind`` addresses
that document (by kind, and by ``name`` for named documents): it merges into it, creates it when
absent, or removes it with a top-level ``$patch: delete``.

With a ``TalosSchema`` (the ``config.schema.json`` of the Talos release), every rendered
document is validated against its own ``$defs`` entry; a violation is a ``ConfigRenderError``
naming the store, the node, the document and the schema path. The schema of
``BUNDLED_SCHEMA_VERSION`` ships with the package (``edgefleet/data/talos``) and is the default;
``EDGEFLEET_TALOS_SCHEMA`` names another release's ``config.schema.json`` (``default_schema``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edgefleet.errors import ConfigRenderError, ReleaseInputError, ToolMissing
from edgefleet.inventory.model import Node, Role, Store
from edgefleet.secrets import ClusterSecrets

__all__ = [
    "AUDIT_POLICY",
    "BUNDLED_SCHEMA_VERSION",
    "LABEL_RELEASE",
    "LABEL_STORE",
    "LINK_ALIAS",
    "ReleaseRef",
    "TalosSchema",
    "apply_patches",
    "bundled_schema_path",
    "cluster_discovery",
    "default_schema",
    "pod_security_admission",
    "render_machine_config",
    "render_machine_documents",
    "strategic_merge",
    "vip_link",
]

LABEL_RELEASE = "edgefleet.io/release"
LABEL_STORE = "edgefleet.io/store"
LINK_ALIAS = "edge0"  # LinkAliasConfig name of a node's single NIC
BOND_NAME = "bond0"
KUBEPRISM_PORT = 7445
# cluster.apiServer.auditPolicy as talosctl gen config writes it: every request logged at Metadata level.
AUDIT_POLICY: dict[str, Any] = {"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "rules": [{"level": "Metadata"}]}
# Lists that a strategic merge replaces instead of appending to (Talos's own exceptions).
REPLACED_LISTS = frozenset({("cluster", "network", "podSubnets"), ("cluster", "network", "serviceSubnets")})
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")
_VERSION = re.compile(r"^v?\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$")
_NAMED_KINDS_KEY = "name"


@dataclass(frozen=True, slots=True)
class ReleaseRef:
    """What a node runs: a release name (a Kubernetes label value), the Talos and Kubernetes
    versions and the installer image the node installs to disk."""

    name: str
    talos_version: str
    kubernetes_version: str
    installer_image: str

    def __post_init__(self) -> None:
        if not _LABEL_VALUE.match(self.name):
            raise ReleaseInputError(
                f"release name {self.name!r} is not usable as a Kubernetes label value (at most 63 letters, "
                "digits, '-', '_', '.', starting and ending with a letter or digit)")
        for field, v in (("talos_version", self.talos_version), ("kubernetes_version", self.kubernetes_version)):
            if not _VERSION.match(v):
                raise ReleaseInputError(f"release {self.name}: {field} {v!r} is not a version like v1.12.6")
        if not self.installer_image or any(c.isspace() for c in self.installer_image):
            raise ReleaseInputError(f"release {self.name}: installer image {self.installer_image!r} is not an "
                                    "image reference")


def _v(version: str) -> str:
    return version if version.startswith("v") else f"v{version}"


def vip_link(store: Store, node: Node) -> str:
    """The link carrying the store subnet, as Talos names it once the NoCloud network-config
    is applied: the VLAN, else the bond, else the NIC's alias."""
    base = BOND_NAME if node.bond is not None else LINK_ALIAS
    return f"{base}.{store.network.vlan}" if store.network.vlan is not None else base


def pod_security_admission(enforce: str) -> list[dict[str, Any]]:
    """``cluster.apiServer.admissionControl`` as ``talosctl gen config`` writes it, enforcing
    ``enforce``. Audit and warn stay at ``restricted`` whatever is enforced (as upstream, where
    ``baseline`` is enforced): violations of the strictest profile are always logged and shown to
    clients, so a store that relaxes enforcement still sees what it lets through."""
    return [{
        "name": "PodSecurity",
        "configuration": {
            "apiVersion": "pod-security.admission.config.k8s.io/v1alpha1",
            "defaults": {"audit": "restricted", "audit-version": "latest", "enforce": enforce,
                         "enforce-version": "latest", "warn": "restricted", "warn-version": "latest"},
            "exemptions": {"namespaces": ["kube-system"], "runtimeClasses": [], "usernames": []},
            "kind": "PodSecurityConfiguration",
        },
    }]


def cluster_discovery(enabled: bool) -> dict[str, Any]:
    """``cluster.discovery``: upstream's default (on, through the discovery service, with the
    Kubernetes registry disabled, as ``talosctl gen config`` writes it), or explicitly off."""
    if not enabled:
        return {"enabled": False}
    return {"enabled": True, "registries": {"kubernetes": {"disabled": True}, "service": {}}}


def render_machine_documents(store: Store, node: Node, release: ReleaseRef,
                             secrets: ClusterSecrets) -> list[dict[str, Any]]:
    """The node's config documents before patches: fresh objects, safe to mutate."""
    cp = node.role is Role.controlplane
    net = store.network
    docs: list[dict[str, Any]] = [
        {"version": "v1alpha1", "debug": False, "machine": _machine_section(store, node, release, secrets),
         "cluster": _cluster_section(store, node, release, secrets)},
        {"apiVersion": "v1alpha1", "kind": "HostnameConfig", "hostname": node.name, "auto": "off"},
        {"apiVersion": "v1alpha1", "kind": "ResolverConfig",
         "nameservers": [{"address": str(a)} for a in net.dns]},
    ]
    if net.ntp:
        docs.append({"apiVersion": "v1alpha1", "kind": "TimeSyncConfig", "ntp": {"servers": list(net.ntp)}})
    if node.bond is None:
        docs.append({"apiVersion": "v1alpha1", "kind": "LinkAliasConfig", "name": LINK_ALIAS,
                     "selector": {"match": f'mac(link.permanent_addr) == "{node.mac}"'}})
    if cp:
        # One document per VIP (a dual-stack store may float an IPv4 and an IPv6 one on the same link).
        docs.extend({"apiVersion": "v1alpha1", "kind": "Layer2VIPConfig", "name": str(vip),
                     "link": vip_link(store, node)} for vip in store.vips)
    return docs


def _machine_section(store: Store, node: Node, release: ReleaseRef, secrets: ClusterSecrets) -> dict[str, Any]:
    """The v1alpha1 document's ``machine``."""
    cp = node.role is Role.controlplane
    k8s = _v(release.kubernetes_version)
    certs = secrets.certs
    net = store.network
    # The node's families: its ip is in network.subnet's (IPv4 or, IPv6-only, IPv6); a dual-stack
    # node adds its ipv6. kubelet picks one node IP per family from these subnets.
    subnets = [str(net.subnet)]
    if node.ipv6 is not None and net.ipv6 is not None and net.subnet.version == 4:
        subnets.append(str(net.ipv6.subnet))
    sans = [str(node.ip)] + ([str(node.ipv6)] if node.ipv6 is not None else [])
    labels: dict[str, str] = {LABEL_RELEASE: release.name, LABEL_STORE: store.id}
    if cp:
        labels["node.kubernetes.io/exclude-from-external-load-balancers"] = ""
    return {
        "type": node.role.value,
        "token": secrets.trustdinfo.token,
        "ca": {"crt": certs.os.crt, "key": certs.os.key} if cp else {"crt": certs.os.crt},
        "certSANs": sans,
        "kubelet": {
            "image": f"ghcr.io/siderolabs/kubelet:{k8s}",
            "defaultRuntimeSeccompProfileEnabled": True,
            "disableManifestsDirectory": True,
            "nodeIP": {"validSubnets": list(subnets)},
        },
        "network": {},
        "install": {"disk": node.install_disk, "image": release.installer_image, "wipe": False,
                    "grubUseUKICmdline": True},
        "features": {
            "diskQuotaSupport": True,
            "kubePrism": {"enabled": True, "port": KUBEPRISM_PORT},
            "hostDNS": {"enabled": True, "forwardKubeDNSToHost": True},
        },
        "nodeLabels": labels,
    }


def _cluster_section(store: Store, node: Node, release: ReleaseRef, secrets: ClusterSecrets) -> dict[str, Any]:
    """The v1alpha1 document's ``cluster``: a control plane's carries the cluster's keys."""
    cp = node.role is Role.controlplane
    k8s = _v(release.kubernetes_version)
    certs = secrets.certs
    net = store.network
    allow = store.cluster.allow_scheduling_on_control_planes
    if allow is None:
        allow = not store.workers
    cluster: dict[str, Any] = {
        "id": secrets.cluster.id,
        "secret": secrets.cluster.secret,
        "controlPlane": {"endpoint": store.endpoint},
        "clusterName": store.cluster.name,
        "network": {"dnsDomain": "cluster.local", "podSubnets": store.pod_subnets,
                    "serviceSubnets": store.service_subnets},
        "token": secrets.secrets.bootstraptoken,
    }
    if cp:
        api_sans = [str(v) for v in store.vips]
        cluster.update({
            "secretboxEncryptionSecret": secrets.secrets.secretboxencryptionsecret,
            "ca": {"crt": certs.k8s.crt, "key": certs.k8s.key},
            "aggregatorCA": {"crt": certs.k8saggregator.crt, "key": certs.k8saggregator.key},
            "serviceAccount": {"key": certs.k8sserviceaccount.key},
            "apiServer": {"image": f"registry.k8s.io/kube-apiserver:{k8s}", "certSANs": api_sans,
                          "admissionControl": pod_security_admission(store.cluster.pod_security),
                          "auditPolicy": _clone(AUDIT_POLICY)},
            "controllerManager": {"image": f"registry.k8s.io/kube-controller-manager:{k8s}"},
            "proxy": {"image": f"registry.k8s.io/kube-proxy:{k8s}"},
            "scheduler": {"image": f"registry.k8s.io/kube-scheduler:{k8s}"},
            "discovery": cluster_discovery(store.cluster.discovery),
            "etcd": {"ca": {"crt": certs.etcd.crt, "key": certs.etcd.key},
                     # The VIP is on the same subnet: advertise only the node's own address.
                     "advertisedSubnets": [str(net.subnet)]},
            "allowSchedulingOnControlPlanes": allow,
        })
    else:
        cluster["ca"] = {"crt": certs.k8s.crt}
        cluster["discovery"] = cluster_discovery(store.cluster.discovery)
    return cluster


# --- strategic merge -------------------------------------------------------------------------------


def _clone(v: Any) -> Any:
    """Copy JSON-like data (patches are shared between nodes and must never be aliased)."""
    if isinstance(v, dict):
        return {k: _clone(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clone(x) for x in v]
    return v


def _is_delete(v: Any) -> bool:
    return isinstance(v, dict) and v.get("$patch") == "delete"


def _strip(v: Any, path: tuple[str, ...], fail: Callable[[str], ConfigRenderError]) -> Any:
    """A patch value inserted where the config has nothing: copied, directives checked."""
    if isinstance(v, dict):
        if "$patch" in v:
            raise fail(f"'$patch' at {'.'.join(path) or '<document>'}: only '$patch: delete' of an existing key "
                       f"is supported here")
        return {k: _strip(x, (*path, str(k)), fail) for k, x in v.items()}
    if isinstance(v, list):
        return [_strip(x, path, fail) for x in v]
    return v


def _merge_into(base: dict[str, Any], patch: Mapping[str, Any], path: tuple[str, ...],
                fail: Callable[[str], ConfigRenderError]) -> None:
    for k, pv in patch.items():
        here = (*path, str(k))
        if k == "$patch":
            raise fail(f"'$patch: {pv}' at {'.'.join(path) or '<document>'}: only '$patch: delete' "
                       "is supported, on the key to remove")
        if _is_delete(pv):
            if len(pv) != 1:
                raise fail(f"'$patch: delete' at {'.'.join(here)} must be the only key of its mapping")
            base.pop(k, None)
            continue
        bv = base.get(k)
        if isinstance(pv, dict) and isinstance(bv, dict):
            _merge_into(bv, pv, here, fail)
        elif isinstance(pv, list) and isinstance(bv, list) and here not in REPLACED_LISTS:
            bv.extend(_strip(x, here, fail) for x in pv)
        else:
            base[k] = _strip(pv, here, fail)


def strategic_merge(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``patch`` merged in (neither is modified)."""
    out = _clone(dict(base))
    _merge_into(out, patch, (), lambda m: ConfigRenderError(m))
    return out  # type: ignore[no-any-return]


def _doc_key(doc: Mapping[str, Any]) -> tuple[str, str, str | None]:
    if "kind" not in doc:
        return ("v1alpha1", "", None)
    name = doc.get(_NAMED_KINDS_KEY)
    return (str(doc.get("apiVersion", "")), str(doc["kind"]), None if name is None else str(name))


def apply_patches(docs: list[dict[str, Any]], patches: Sequence[Mapping[str, Any]], *, store_id: str,
                  node_name: str, first_index: int = 0,
                  layer: Callable[[int], str] | None = None) -> list[dict[str, Any]]:
    """Apply strategic merge patches in order, in place on ``docs`` (which is returned)."""
    for i, patch in enumerate(patches):
        where = layer(i) if layer else f"patch {first_index + i + 1}"

        def fail(msg: str, where: str = where) -> ConfigRenderError:
            return ConfigRenderError(f"store {store_id} node {node_name}: talos_patches {where}: {msg}")

        if not isinstance(patch, Mapping):
            raise fail(f"a patch must be a mapping, not {type(patch).__name__}")
        if "kind" in patch and not patch.get("apiVersion"):
            raise fail(f"a patch for document kind {patch['kind']!r} needs its apiVersion (e.g. v1alpha1)")
        key = _doc_key(patch)
        if key[0] == "v1alpha1" and key[1] == "" and patch.get("version", "v1alpha1") != "v1alpha1":
            raise fail(f"version {patch.get('version')!r}: only v1alpha1 configs are supported")
        targets = [d for d in docs if _doc_key(d)[:2] == key[:2] and (key[2] is None or _doc_key(d)[2] == key[2])]
        if patch.get("$patch") == "delete":
            if not targets:
                raise fail(f"'$patch: delete' of document {key[1] or 'v1alpha1'}"
                           f"{' ' + key[2] if key[2] else ''}, which the config does not have")
            docs[:] = [d for d in docs if not any(d is t for t in targets)]
            continue
        body = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind")}
        if not targets:
            new: dict[str, Any] = {"apiVersion": patch["apiVersion"], "kind": patch["kind"]} if key[1] else {}
            _merge_into(new, body, (), fail)
            docs.append(new)
            continue
        for t in targets:
            _merge_into(t, body, (), fail)
    return docs


# --- schema ----------------------------------------------------------------------------------------

BUNDLED_SCHEMA_VERSION = "v1.12.6"  # the Talos release whose config.schema.json ships in edgefleet/data/talos
SCHEMA_ENV = "EDGEFLEET_TALOS_SCHEMA"


def bundled_schema_path() -> Path:
    """The ``config.schema.json`` of ``BUNDLED_SCHEMA_VERSION`` that ships with the package."""
    return Path(__file__).resolve().parent.parent / "data" / "talos" / f"config.schema-{BUNDLED_SCHEMA_VERSION}.json"


_loaded: dict[Path, TalosSchema] = {}


def default_schema(path: Path | None = None, environ: Mapping[str, str] = os.environ) -> TalosSchema:
    """The schema every seed build validates against: ``path``, else ``$EDGEFLEET_TALOS_SCHEMA``,
    else the bundled one. Loaded once per process and path (its validators and verdicts are reused)."""
    from_env = path is None and bool(environ.get(SCHEMA_ENV))
    chosen = path or (Path(environ[SCHEMA_ENV]) if from_env else bundled_schema_path())
    key = chosen.resolve()
    if key not in _loaded:
        try:
            _loaded[key] = TalosSchema.load(chosen)
        except ConfigRenderError as e:
            if not from_env:
                raise
            raise ConfigRenderError(f"{e} (from {SCHEMA_ENV}; unset it to use the bundled Talos "
                                    f"{BUNDLED_SCHEMA_VERSION} schema)") from None
    return _loaded[key]


class TalosSchema:
    """A Talos ``config.schema.json`` (draft 2020-12): validates each document against its own
    ``$defs`` entry. Needs the ``jsonschema`` package."""

    def __init__(self, schema: Mapping[str, Any], *, source: str = "") -> None:
        self.source = source
        self._defs: dict[str, Any] = dict(schema.get("$defs", {}))
        if "v1alpha1.Config" not in self._defs:
            raise ConfigRenderError(f"{source or 'schema'}: not a Talos config schema (no v1alpha1.Config)")
        self._by_kind: dict[tuple[str, str], str] = {}
        for name, d in self._defs.items():
            props = d.get("properties", {}) if isinstance(d, dict) else {}
            kinds = props.get("kind", {}).get("enum", [])
            versions = props.get("apiVersion", {}).get("enum", [])
            for kind in kinds:
                for ver in versions:
                    self._by_kind[(ver, kind)] = name
        self._validators: dict[str, Any] = {}
        self._valid_shapes: set[str] = set()

    @classmethod
    def load(cls, path: Path) -> TalosSchema:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigRenderError(f"cannot read Talos config schema {path}: {e}") from None
        return cls(data, source=str(path))

    def def_name(self, doc: Mapping[str, Any]) -> str | None:
        if "kind" not in doc:
            return "v1alpha1.Config"
        return self._by_kind.get((str(doc.get("apiVersion")), str(doc.get("kind"))))

    def _validator(self, name: str) -> Any:
        v = self._validators.get(name)
        if v is None:
            try:
                from jsonschema import Draft202012Validator
            except ImportError:
                raise ToolMissing("validating Talos configs needs the Python package jsonschema "
                                  "(pip install jsonschema)") from None
            v = Draft202012Validator({"$defs": self._defs, "$ref": f"#/$defs/{name}"})
            self._validators[name] = v
        return v

    def problems(self, doc: Mapping[str, Any]) -> list[str]:
        """Every violation in one document, as ``<document> at <path>: <message>``."""
        label = str(doc.get("kind", "v1alpha1 Config"))
        name = self.def_name(doc)
        if name is None:
            return [f"document kind {doc.get('kind')!r} (apiVersion {doc.get('apiVersion')!r}) is not a Talos "
                    "config document kind"]
        out = []
        for err in sorted(self._validator(name).iter_errors(doc), key=lambda e: list(e.absolute_path)):
            path = ".".join(str(p) for p in err.absolute_path) or "<top>"
            out.append(f"{label} at {path}: {err.message}")
        return out


def _where(i: int, n_store: int) -> str:
    return f"store layer #{i + 1}" if i < n_store else f"node layer #{i - n_store + 1}"


def render_machine_config(store: Store, node: Node, release: ReleaseRef, secrets: ClusterSecrets, *,
                          schema: TalosSchema | None = None) -> bytes:
    """The node's machine config (multi-document YAML), patched and, with ``schema``, validated."""
    docs = render_machine_documents(store, node, release, secrets)
    patches = [*store.talos_patches, *node.talos_patches]
    n_store = len(store.talos_patches)
    apply_patches(docs, patches, store_id=store.id, node_name=node.name,
                  layer=lambda i: _where(i, n_store))
    docs.sort(key=lambda d: 0 if "kind" not in d else 1)  # v1alpha1 first, the others in order
    v1 = next((d for d in docs if "kind" not in d), None)
    if v1 is None:
        raise ConfigRenderError(f"store {store.id} node {node.name}: a patch removed the v1alpha1 config")
    machine = v1.get("machine", {})
    if not isinstance(machine, dict):
        raise ConfigRenderError(f"store {store.id} node {node.name}: talos_patches made machine a "
                                f"{type(machine).__name__} ({machine!r:.40}), not a mapping; fix that patch")
    labels = machine.get("nodeLabels", {})
    if not isinstance(labels, dict) or labels.get(LABEL_RELEASE) != release.name or \
            labels.get(LABEL_STORE) != store.id:
        raise ConfigRenderError(f"store {store.id} node {node.name}: talos_patches changed machine.nodeLabels "
                                f"{LABEL_RELEASE} / {LABEL_STORE}, which edgefleet manages; remove that patch")
    if schema is not None:
        # Validation costs about 2 ms a node; the verdict is the same for every node whose documents
        # come from the same patches onto the same base shape (role, document kinds): our own
        # values (addresses, names, keys) are valid by construction, which the tests check.
        shape = json.dumps([node.role.value, [_doc_key(d)[1] for d in docs], store.cluster.endpoint,
                            store.talos_patches, node.talos_patches], sort_keys=True, default=str)
        if shape in schema._valid_shapes:
            return dump_documents(docs)
        problems = [p for d in docs for p in schema.problems(d)]
        if not problems:
            schema._valid_shapes.add(shape)
        else:
            raise ConfigRenderError(
                f"store {store.id} node {node.name}: the machine config does not match the Talos schema "
                f"(check talos_patches): " + "; ".join(problems[:5])
                + (f"; and {len(problems) - 5} more" if len(problems) > 5 else ""))
    return dump_documents(docs)


_Dumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def dump_documents(docs: Sequence[Mapping[str, Any]]) -> bytes:
    return yaml.dump_all([dict(d) for d in docs], Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                         width=1 << 16, explicit_start=False).encode("utf-8")
