"""Health probes against real servers on 127.0.0.1: a Kubernetes-API-shaped HTTPS server that
requires a client certificate signed by the cluster CA (made with ``cryptography`` here), plain
HTTP servers for the inventory's custom probes, and a listener that never answers. The pure
verdict functions are tested alongside."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.server
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.errors import KubeApiError, KubeApiUnreachable, KubeCredentialsRefused, ProbeError
from edgefleet.health import (
    CONTROL_PLANE_LABEL,
    ClientCert,
    ClusterAccess,
    ClusterSnapshot,
    Expectation,
    check_store,
    evaluate_cluster,
    expectation_for_store,
    fetch_cluster,
    parse_nodes,
    run_probe,
    run_probes,
)
from edgefleet.inventory.model import Probe, Store

pytestmark = pytest.mark.clock  # certificates, tokens or TLS meet the real clock: run again under faketime

# -- certificates -------------------------------------------------------------------------------


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class Pki:
    ca: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes
    other_client_cert: bytes  # signed by a different CA
    other_client_key: bytes


def make_pki() -> Pki:
    now = dt.datetime.now(dt.UTC)

    def ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        k = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        c = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
             .not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                          content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False, encipher_only=False,
                                          decipher_only=False), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(k.public_key()), critical=False)
             .sign(k, hashes.SHA256()))
        return c, k

    def leaf(issuer: x509.Certificate, ikey: ec.EllipticCurvePrivateKey, cn: str,
             server: bool) -> tuple[bytes, bytes]:
        k = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(issuer.subject).public_key(k.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ikey.public_key()), critical=False)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                   else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                critical=False)
        return b.sign(ikey, hashes.SHA256()).public_bytes(serialization.Encoding.PEM), _key_pem(k)

    cluster_ca, cluster_key = ca("kubernetes")
    rogue_ca, rogue_key = ca("rogue")
    sc, sk = leaf(cluster_ca, cluster_key, "kube-apiserver", True)
    cc, ck = leaf(cluster_ca, cluster_key, "admin", False)
    oc, ok = leaf(rogue_ca, rogue_key, "admin", False)
    return Pki(cluster_ca.public_bytes(serialization.Encoding.PEM), sc, sk, cc, ck, oc, ok)


# -- servers ----------------------------------------------------------------------------------------


def node_json(name: str, *, ready: bool = True, kubelet: str = "v1.35.0", os_image: str = "Talos (v1.9.2)",
              cp: bool = False) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": name, "edgefleet.io/store": "dk-001"}
    if cp:
        labels[CONTROL_PLANE_LABEL] = ""
    return {"metadata": {"name": name, "labels": labels},
            "status": {"conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": "True" if ready else "False",
                 "reason": "KubeletReady" if ready else "KubeletNotReady",
                 "message": "kubelet is posting ready status" if ready else "container runtime network not ready"}],
                "nodeInfo": {"osImage": os_image, "kubeletVersion": kubelet}}}


@dataclass
class KubeState:
    readyz: tuple[int, str] = (200, "ok")
    nodes: list[dict[str, Any]] = field(default_factory=list)
    raw_nodes: bytes | None = None
    clients: list[str] = field(default_factory=list)


def serve_kube(pki: Pki, tmp: Path, state: KubeState) -> tuple[http.server.ThreadingHTTPServer, str]:
    (tmp / "ca.pem").write_bytes(pki.ca)
    (tmp / "srv.pem").write_bytes(pki.server_cert)
    (tmp / "srv.key").write_bytes(pki.server_key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp / "srv.pem", tmp / "srv.key")
    ctx.load_verify_locations(tmp / "ca.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED  # like kube-apiserver with client-certificate auth only

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            peer = self.connection.getpeercert()
            state.clients.append(str(dict(x[0] for x in peer["subject"]).get("commonName")))
            if self.path == "/readyz":
                code, text = state.readyz
                body, ctype = text.encode(), "text/plain"
            elif self.path == "/api/v1/nodes":
                code, ctype = 200, "application/json"
                body = state.raw_nodes if state.raw_nodes is not None else json.dumps(
                    {"kind": "NodeList", "apiVersion": "v1", "items": state.nodes}).encode()
            else:
                code, body, ctype = 404, b"{}", "application/json"
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class TlsServer(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def finish_request(self, request: Any, client_address: Any) -> None:
            # The handshake runs in the connection's own thread, with a timeout: a client that
            # stalls or aborts it cannot block the accept loop (and with it shutdown()).
            request.settimeout(5)
            self.RequestHandlerClass(ctx.wrap_socket(request, server_side=True), client_address,
                                     self)  # type: ignore[arg-type]

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # refused handshakes are the point of some tests

    srv = TlsServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    return srv, f"https://127.0.0.1:{srv.server_address[1]}"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.fixture
def kube(pki: Pki, tmp_path: Path) -> Iterator[tuple[str, KubeState]]:
    state = KubeState(nodes=[node_json("cp1", cp=True), node_json("cp2", cp=True), node_json("w1")])
    srv, url = serve_kube(pki, tmp_path, state)
    yield url, state
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def probe_server() -> Iterator[str]:
    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            code = int(self.path.strip("/").split("/")[0] or 200)
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A listener that accepts connections (kernel backlog) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


def store(probes: list[Probe] | None = None) -> Store:
    return Store.model_validate({
        "id": "dk-001", "name": "Store 1", "country": "DK", "region": "nordics", "timezone": "Europe/Copenhagen",
        "maintenance_windows": [{"days": ["sun"], "start": "02:00", "end": "05:00"}],
        "network": {"subnet": "192.0.2.0/24", "gateway": "192.0.2.1", "dns": ["192.0.2.1"]},
        "cluster": {"name": "dk-001", "kubernetes_version": "1.35.0"},
        "nodes": [{"name": n, "role": r, "mac": f"02:00:00:00:00:0{i}", "ip": f"192.0.2.{10 + i}"}
                  for i, (n, r) in enumerate([("cp1", "controlplane"), ("cp2", "controlplane"), ("w1", "worker")])],
        "probes": [p.model_dump() for p in probes or []]})


def run(coro: Any) -> Any:
    async def wrapped() -> Any:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(wrapped())


# -- Kubernetes API ---------------------------------------------------------------------------------


def test_healthy_store_with_client_cert_as_bytes(pki: Pki, kube: tuple[str, KubeState]) -> None:
    url, state = kube
    access = ClusterAccess(url, ca=pki.ca, client_cert=ClientCert(pki.client_cert, pki.client_key))
    snap = run(fetch_cluster(access, deadline_s=5))
    assert snap.readyz_ok and [n.name for n in snap.nodes] == ["cp1", "cp2", "w1"]
    verdict = evaluate_cluster(snap, expectation_for_store(store(), os_image="Talos (v1.9.2)"))
    assert verdict.healthy and verdict.problems == ()
    assert state.clients and set(state.clients) == {"admin"}


def test_client_cert_from_paths_and_unhealthy_cluster(pki: Pki, kube: tuple[str, KubeState],
                                                      tmp_path: Path) -> None:
    url, state = kube
    for name, data in [("ca.crt", pki.ca), ("c.crt", pki.client_cert), ("c.key", pki.client_key)]:
        (tmp_path / name).write_bytes(data)
    state.readyz = (500, "[-]etcd failed: reason withheld\nreadyz check failed")
    state.nodes = [node_json("cp1", cp=True, kubelet="v1.34.2"), node_json("w1", ready=False),
                   node_json("cp2", cp=False, os_image="Talos (v1.8.0)"), node_json("extra")]
    access = ClusterAccess(url, ca=tmp_path / "ca.crt", client_cert=ClientCert(str(tmp_path / "c.crt"),
                                                                            tmp_path / "c.key"))
    snap = run(fetch_cluster(access, deadline_s=5))
    verdict = evaluate_cluster(snap, expectation_for_store(store(), os_image="v1.9.2",
                                                           labels={"edgefleet.io/store": "dk-001"}))
    assert not verdict.healthy
    assert verdict.problems == (
        "API server not ready: HTTP 500: [-]etcd failed: reason withheld\nreadyz check failed",
        "node cp1 runs kubelet v1.34.2, expected v1.35.0",
        "node cp2 runs 'Talos (v1.8.0)', expected 'v1.9.2'",
        f"node cp2 should be a control plane but lacks the {CONTROL_PLANE_LABEL} label",
        "node w1 is NotReady: KubeletNotReady container runtime network not ready",
    )


def test_missing_node(pki: Pki, kube: tuple[str, KubeState]) -> None:
    url, state = kube
    state.nodes = state.nodes[:2]
    access = ClusterAccess(url, ca=pki.ca, client_cert=ClientCert(pki.client_cert, pki.client_key))
    health = run(check_store(store(), access, deadline_s=5))
    assert not health.healthy and health.problems == ("node w1 is not registered",)


@pytest.mark.parametrize("which", ["none", "rogue", "no-ca"])
def test_refused_tls_is_a_probe_error(pki: Pki, kube: tuple[str, KubeState], which: str) -> None:
    url, _ = kube
    access = {
        "none": ClusterAccess(url, ca=pki.ca),
        "rogue": ClusterAccess(url, ca=pki.ca, client_cert=ClientCert(pki.other_client_cert, pki.other_client_key)),
        "no-ca": ClusterAccess(url, client_cert=ClientCert(pki.client_cert, pki.client_key)),
    }[which]
    with pytest.raises(ProbeError, match=r"Kubernetes API https://127\.0\.0\.1:\d+: "):
        run(fetch_cluster(access, deadline_s=5))


def test_refusals_are_typed(pki: Pki, kube: tuple[str, KubeState]) -> None:
    """A client certificate of another CA is refused credentials (permanent), not an unreachable API;
    a server certificate the given CA does not sign is neither."""
    url, _ = kube
    rogue = ClusterAccess(url, ca=pki.ca, client_cert=ClientCert(pki.other_client_cert, pki.other_client_key))
    with pytest.raises(KubeCredentialsRefused, match="refused edgefleet's client certificate") as ei:
        run(fetch_cluster(rogue, deadline_s=5))
    assert not ei.value.transient
    with pytest.raises(KubeApiError, match="server certificate is not trusted") as ej:
        run(fetch_cluster(ClusterAccess(url, client_cert=ClientCert(pki.client_cert, pki.client_key)), deadline_s=5))
    assert not isinstance(ej.value, KubeCredentialsRefused | KubeApiUnreachable) and not ej.value.transient


def test_not_a_node_list_is_a_probe_error(pki: Pki, kube: tuple[str, KubeState]) -> None:
    url, state = kube
    access = ClusterAccess(url, ca=pki.ca, client_cert=ClientCert(pki.client_cert, pki.client_key))
    state.raw_nodes = b"{\"items\": [tru"
    with pytest.raises(ProbeError, match="not a node list"):
        run(fetch_cluster(access, deadline_s=5))
    state.raw_nodes = b"{\"kind\": \"Status\"}"
    with pytest.raises(ProbeError, match="no items list"):
        run(fetch_cluster(access, deadline_s=5))


def test_bad_key_material_is_a_probe_error(pki: Pki) -> None:
    access = ClusterAccess("https://127.0.0.1:1", ca=pki.ca, client_cert=ClientCert(pki.client_cert, b"junk"))
    with pytest.raises(ProbeError, match="cannot load"):
        run(fetch_cluster(access, deadline_s=2))


def test_hanging_api_ends_at_the_deadline(pki: Pki, silent_port: int) -> None:
    access = ClusterAccess(f"https://127.0.0.1:{silent_port}", ca=pki.ca,
                           client_cert=ClientCert(pki.client_cert, pki.client_key))
    t0 = time.monotonic()
    with pytest.raises(ProbeError, match=r"no answer within 0\.8 s|Timeout"):
        run(fetch_cluster(access, deadline_s=0.8))
    assert time.monotonic() - t0 < 2.0


# -- custom probes ----------------------------------------------------------------------------------


def test_custom_probes(probe_server: str, silent_port: int) -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    closed_port = free.getsockname()[1]
    free.close()
    probes = [Probe(name="pos", url=f"{probe_server}/200"),
              Probe(name="scale", url=f"{probe_server}/204", expect_status=204),
              Probe(name="kiosk", url=f"{probe_server}/503"),
              Probe(name="down", url=f"http://127.0.0.1:{closed_port}/"),
              Probe(name="stuck", url=f"http://127.0.0.1:{silent_port}/", timeout_s=0.5)]
    t0 = time.monotonic()
    results = run(run_probes(probes))
    assert time.monotonic() - t0 < 2.0
    by = {r.name: r for r in results}
    assert [r.name for r in results] == ["pos", "scale", "kiosk", "down", "stuck"]
    assert by["pos"].ok and by["scale"].ok and by["pos"].detail == "HTTP 200"
    assert not by["kiosk"].ok and by["kiosk"].detail == "HTTP 503, expected 200"
    assert not by["down"].ok and by["down"].status is None and "ConnectError" in by["down"].detail
    assert not by["stuck"].ok and by["stuck"].elapsed_s < 1.5
    single = run(run_probe(probes[0]))
    assert single.ok


def test_store_health_includes_probes(pki: Pki, kube: tuple[str, KubeState], probe_server: str) -> None:
    url, _ = kube
    s = store([Probe(name="pos", url=f"{probe_server}/200"), Probe(name="kiosk", url=f"{probe_server}/500")])
    access = ClusterAccess(url, ca=pki.ca, client_cert=ClientCert(pki.client_cert, pki.client_key))
    h = run(check_store(s, access, deadline_s=5))
    assert h.cluster.healthy and not h.healthy
    assert h.problems == ("probe kiosk: HTTP 500, expected 200",)


# -- pure ---------------------------------------------------------------------------------------------


def test_parse_nodes_tolerates_missing_parts() -> None:
    nodes = parse_nodes({"items": [{"metadata": {"name": "a"}}, {"metadata": {"name": "b", "labels": None},
                                                                 "status": {"conditions": [{"type": "Ready",
                                                                                            "status": "Unknown"}]}}]})
    assert [n.ready for n in nodes] == [False, False]
    assert nodes[0].ready_reason == "no Ready condition reported" and nodes[1].ready_reason == "Unknown"
    with pytest.raises(ValueError):
        parse_nodes({"items": [{"metadata": {}}]})
    with pytest.raises(ValueError):
        parse_nodes([])


def test_verdict_allows_extra_nodes_and_v_prefix() -> None:
    snap = ClusterSnapshot("https://x", True, "HTTP 200: ok",
                           parse_nodes({"items": [node_json("a", kubelet="v1.35.0"), node_json("z")]}))
    assert evaluate_cluster(snap, Expectation(nodes=("a",), kubelet_version="1.35.0")).healthy
    assert evaluate_cluster(snap, Expectation(nodes=("a",), kubelet_version="v1.35.0")).healthy
    assert not evaluate_cluster(snap, Expectation(nodes=("a", "b"))).healthy
