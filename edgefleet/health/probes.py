"""Health probes of a store: its Kubernetes API and the inventory's custom HTTP probes.

Two halves, kept apart:

* pure: ``parse_nodes`` reads a ``/api/v1/nodes`` list, ``expectation_for_store`` says what a healthy
  store looks like after a rollout, ``evaluate_cluster`` and ``evaluate_probe`` give verdicts. No I/O,
  no clock; results are small frozen dataclasses.
* I/O: ``fetch_cluster`` (``/readyz`` and ``/api/v1/nodes``, with the cluster CA and a client
  certificate, as paths or PEM bytes), ``run_probe`` / ``run_probes`` (custom HTTP probes) and
  ``check_store`` (both). Every call has a deadline.

A probe that cannot be evaluated (the API unreachable, TLS refused, a 401, a body that is not a node
list) raises ``ProbeError``; a probe that was evaluated and failed is a verdict with problems. A custom
HTTP probe that cannot connect counts as failed: the service it watches is down.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from edgefleet.errors import ProbeError
from edgefleet.inventory.model import Probe, Role, Store

__all__ = [
    "CONTROL_PLANE_LABEL",
    "ClientCert",
    "ClusterAccess",
    "ClusterSnapshot",
    "ClusterVerdict",
    "Expectation",
    "NodeStatus",
    "ProbeResult",
    "StoreHealth",
    "check_store",
    "evaluate_cluster",
    "evaluate_probe",
    "expectation_for_store",
    "fetch_cluster",
    "parse_nodes",
    "run_probe",
    "run_probes",
]

CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"

PemSource = str | Path | bytes  # a file path, or the PEM itself


@dataclass(frozen=True, slots=True)
class ClientCert:
    """A client certificate and key, each a file path or PEM bytes."""

    cert: PemSource
    key: PemSource = field(repr=False)


@dataclass(frozen=True, slots=True)
class ClusterAccess:
    """How to reach a store's Kubernetes API: endpoint, the cluster CA (path or PEM bytes), and a
    client certificate or a bearer token."""

    endpoint: str
    ca: PemSource | None = None
    client_cert: ClientCert | None = None
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    name: str
    ready: bool
    ready_reason: str  # the Ready condition's reason and message, or why there is none
    os_image: str
    kubelet_version: str
    labels: tuple[tuple[str, str], ...] = ()

    def label(self, key: str) -> str | None:
        return next((v for k, v in self.labels if k == key), None)


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """What the Kubernetes API said, as read at one moment."""

    endpoint: str
    readyz_ok: bool
    readyz_detail: str
    nodes: tuple[NodeStatus, ...]


@dataclass(frozen=True, slots=True)
class Expectation:
    """A healthy store: these nodes present and Ready, on this version, with these roles."""

    nodes: tuple[str, ...]
    control_planes: tuple[str, ...] = ()
    kubelet_version: str | None = None  # "1.35.0" or "v1.35.0"
    os_image: str | None = None  # a substring of nodeInfo.osImage, e.g. "Talos (v1.9.2)" or "v1.9.2"
    labels: tuple[tuple[str, str], ...] = ()  # labels every expected node must carry


@dataclass(frozen=True, slots=True)
class ClusterVerdict:
    healthy: bool
    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    name: str
    url: str
    ok: bool
    status: int | None
    detail: str
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class StoreHealth:
    store: str
    cluster: ClusterVerdict
    probes: tuple[ProbeResult, ...]

    @property
    def healthy(self) -> bool:
        return self.cluster.healthy and all(p.ok for p in self.probes)

    @property
    def problems(self) -> tuple[str, ...]:
        return self.cluster.problems + tuple(f"probe {p.name}: {p.detail}" for p in self.probes if not p.ok)


# ---------------------------------------------------------------------------------------------
# Pure


def parse_nodes(body: Any) -> tuple[NodeStatus, ...]:
    """Nodes from a ``/api/v1/nodes`` NodeList. Raises ``ValueError`` when it is not one."""
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        raise ValueError("not a NodeList: no items list")
    out = []
    for item in body["items"]:
        if not isinstance(item, dict):
            raise ValueError("a NodeList item is not an object")
        meta = item.get("metadata") if isinstance(item.get("metadata"), dict) else {}
        status = item.get("status") if isinstance(item.get("status"), dict) else {}
        assert isinstance(meta, dict) and isinstance(status, dict)
        name = meta.get("name")
        if not isinstance(name, str):
            raise ValueError("a node without metadata.name")
        ready, reason = False, "no Ready condition reported"
        for cond in status.get("conditions") or []:
            if isinstance(cond, dict) and cond.get("type") == "Ready":
                ready = cond.get("status") == "True"
                reason = " ".join(str(cond[k]) for k in ("reason", "message") if cond.get(k)) or str(
                    cond.get("status"))
        info = status.get("nodeInfo") if isinstance(status.get("nodeInfo"), dict) else {}
        assert isinstance(info, dict)
        labels = meta.get("labels") if isinstance(meta.get("labels"), dict) else {}
        assert isinstance(labels, dict)
        out.append(NodeStatus(
            name=name, ready=ready, ready_reason=reason, os_image=str(info.get("osImage", "")),
            kubelet_version=str(info.get("kubeletVersion", "")),
            labels=tuple(sorted((str(k), str(v)) for k, v in labels.items()))))
    return tuple(out)


def expectation_for_store(store: Store, *, os_image: str | None = None, kubelet_version: str | None = None,
                          labels: Mapping[str, str] | None = None) -> Expectation:
    """Every inventory node present, control planes labelled, kubelet on the store's Kubernetes
    version (unless given), and ``os_image`` (the release's Talos version) when given."""
    return Expectation(
        nodes=tuple(n.name for n in store.nodes),
        control_planes=tuple(n.name for n in store.nodes if n.role is Role.controlplane),
        kubelet_version=kubelet_version or store.cluster.kubernetes_version,
        os_image=os_image, labels=tuple(sorted((labels or {}).items())))


def _v(version: str) -> str:
    return version.strip().removeprefix("v")


def evaluate_cluster(snapshot: ClusterSnapshot, expect: Expectation) -> ClusterVerdict:
    """The verdict on one snapshot: every problem found, in a stable order. Extra nodes are allowed."""
    problems: list[str] = []
    if not snapshot.readyz_ok:
        problems.append(f"API server not ready: {snapshot.readyz_detail}")
    by_name = {n.name: n for n in snapshot.nodes}
    for name in expect.nodes:
        node = by_name.get(name)
        if node is None:
            problems.append(f"node {name} is not registered")
            continue
        if not node.ready:
            problems.append(f"node {name} is NotReady: {node.ready_reason}")
        if expect.kubelet_version and _v(node.kubelet_version) != _v(expect.kubelet_version):
            problems.append(f"node {name} runs kubelet {node.kubelet_version or '(unknown)'}, expected "
                            f"v{_v(expect.kubelet_version)}")
        if expect.os_image and expect.os_image not in node.os_image:
            problems.append(f"node {name} runs {node.os_image or '(unknown OS)'!r}, expected {expect.os_image!r}")
        if name in expect.control_planes and node.label(CONTROL_PLANE_LABEL) is None:
            problems.append(f"node {name} should be a control plane but lacks the {CONTROL_PLANE_LABEL} label")
        for key, value in expect.labels:
            if node.label(key) != value:
                problems.append(f"node {name} has label {key}={node.label(key)!r}, expected {value!r}")
    return ClusterVerdict(healthy=not problems, problems=tuple(problems))


def evaluate_probe(probe: Probe, status: int | None, error: str | None, elapsed_s: float) -> ProbeResult:
    """A custom probe passes when it answered with the expected status."""
    if error is not None:
        return ProbeResult(probe.name, probe.url, False, status, error, elapsed_s)
    ok = status == probe.expect_status
    detail = f"HTTP {status}" + ("" if ok else f", expected {probe.expect_status}")
    return ProbeResult(probe.name, probe.url, ok, status, detail, elapsed_s)


# ---------------------------------------------------------------------------------------------
# I/O


def _pem_path(src: PemSource, tmp: Path, name: str) -> str:
    if isinstance(src, bytes):
        p = tmp / name
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(src)
        return str(p)
    return str(src)


def _ssl_context(access: ClusterAccess) -> ssl.SSLContext:
    try:
        if access.ca is None:
            ctx = ssl.create_default_context()
        elif isinstance(access.ca, bytes):
            ctx = ssl.create_default_context(cadata=access.ca.decode("ascii"))
        else:
            ctx = ssl.create_default_context(cafile=str(access.ca))
        if access.client_cert is not None:
            # ssl loads a key pair only from files: PEM bytes go through a private temporary
            # directory that is removed as soon as they are loaded.
            with tempfile.TemporaryDirectory(prefix="edgefleet-cert-") as d:
                cert = _pem_path(access.client_cert.cert, Path(d), "client.crt")
                key = _pem_path(access.client_cert.key, Path(d), "client.key")
                ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError, ValueError) as e:
        raise ProbeError(f"Kubernetes API {access.endpoint}: cannot load the cluster CA or client "
                         f"certificate: {e}") from None
    return ctx


async def fetch_cluster(access: ClusterAccess, *, deadline_s: float = 15.0) -> ClusterSnapshot:
    """Read ``/readyz`` and ``/api/v1/nodes``. Raises ``ProbeError`` when the API cannot be
    evaluated (unreachable, TLS or auth refused, not a node list, past the deadline)."""
    base = access.endpoint.rstrip("/")
    headers = {"Accept": "application/json"}
    if access.token:
        headers["Authorization"] = f"Bearer {access.token}"
    timeout = httpx.Timeout(min(5.0, deadline_s), read=deadline_s)
    ctx = _ssl_context(access)
    try:
        async with asyncio.timeout(deadline_s), httpx.AsyncClient(
                verify=ctx, timeout=timeout, trust_env=False, headers=headers) as client:
            readyz, nodes = await asyncio.gather(client.get(f"{base}/readyz"), client.get(f"{base}/api/v1/nodes"))
    except TimeoutError:
        raise ProbeError(f"Kubernetes API {base}: no answer within {deadline_s:g} s") from None
    except (httpx.HTTPError, ssl.SSLError, OSError) as e:
        # ssl.SSLError: a TLS alert after the handshake (a refused client certificate under TLS 1.3)
        # surfaces on the first read, unmapped by httpcore.
        raise ProbeError(f"Kubernetes API {base}: {type(e).__name__}: {e or 'no detail'}") from None
    if nodes.status_code in (401, 403):
        raise ProbeError(f"Kubernetes API {base}: HTTP {nodes.status_code} on /api/v1/nodes; check the "
                         "client certificate (or token) for this store")
    if nodes.status_code != 200:
        raise ProbeError(f"Kubernetes API {base}: HTTP {nodes.status_code} on /api/v1/nodes: "
                         f"{nodes.text[:200]}")
    try:
        parsed = parse_nodes(json.loads(nodes.content))
    except ValueError as e:
        raise ProbeError(f"Kubernetes API {base}: /api/v1/nodes is not a node list ({e})") from None
    text = readyz.text.strip()
    return ClusterSnapshot(endpoint=base, readyz_ok=readyz.status_code == 200 and text == "ok",
                           readyz_detail=f"HTTP {readyz.status_code}: {text[:300]}", nodes=parsed)


async def run_probe(probe: Probe, client: httpx.AsyncClient | None = None) -> ProbeResult:
    """One custom HTTP probe, bounded by its ``timeout_s``."""
    own = client is None
    c = client or httpx.AsyncClient(trust_env=False)
    t0 = time.monotonic()
    status: int | None = None
    error: str | None = None
    try:
        async with asyncio.timeout(probe.timeout_s):
            r = await c.get(probe.url, timeout=probe.timeout_s)
            status = r.status_code
    except TimeoutError:
        error = f"no answer within {probe.timeout_s:g} s"
    except (httpx.HTTPError, ssl.SSLError, OSError) as e:
        error = f"{type(e).__name__}: {e or 'no detail'}"
    finally:
        if own:
            await c.aclose()
    return evaluate_probe(probe, status, error, time.monotonic() - t0)


async def run_probes(probes: Sequence[Probe], *, verify: ssl.SSLContext | bool = True) -> tuple[ProbeResult, ...]:
    """All probes concurrently, in the given order."""
    if not probes:
        return ()
    async with httpx.AsyncClient(trust_env=False, verify=verify) as client:
        return tuple(await asyncio.gather(*(run_probe(p, client) for p in probes)))


async def check_store(store: Store, access: ClusterAccess, *, expect: Expectation | None = None,
                      deadline_s: float = 15.0) -> StoreHealth:
    """The store's health now: the cluster verdict (against ``expect``, default
    ``expectation_for_store(store)``) and its custom probes, fetched concurrently."""
    snapshot, probes = await asyncio.gather(fetch_cluster(access, deadline_s=deadline_s), run_probes(store.probes))
    verdict = evaluate_cluster(snapshot, expect or expectation_for_store(store))
    return StoreHealth(store=store.id, cluster=verdict, probes=probes)
