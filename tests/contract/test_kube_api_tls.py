"""The rollout's Kubernetes API reads over TLS, as production runs them (``StoreApi`` with no
simulator), against a stand-in API server on 127.0.0.1 (a starlette app under uvicorn behind a TLS
front that sends its alerts as kube-apiserver does) that requires client
certificates signed by the store's Kubernetes CA, from secrets made by edgefleet itself at the real
current time, and serves ``/readyz`` and ``/api/v1/nodes``.

The probes see Ready nodes with the right certificate; "credentials refused" (``KubeCredentialsRefused``)
for a 401 or 403 answer and for a certificate of another store's CA (refused in the handshake);
"unreachable" (``KubeApiUnreachable``) with nothing listening; the gates say which. One pooled
client per store per run: the key is loaded once, never written per poll (the temporary directory
is watched, nothing patched), and nothing is left behind when the run ends."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import ssl
import tempfile
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from edgefleet.errors import KubeApiError, KubeApiStatusError, KubeApiUnreachable, KubeCredentialsRefused
from edgefleet.health.probes import ClusterSnapshot, KeyLoader
from edgefleet.inventory.model import Store
from edgefleet.rollout.endpoints import Endpoints, StoreApi
from edgefleet.rollout.gates import evaluate_node, evaluate_store
from edgefleet.secrets import ensure_secrets
from edgefleet.talos.certs import mint_server_cert

pytestmark = [pytest.mark.clock, pytest.mark.slow]

STORE, OTHER, CLOSED = "dk-0001", "dk-0002", "dk-0003"


@dataclass
class ApiState:
    deny: int | None = None  # answer this status (401/403) instead
    requests: list[str] = field(default_factory=list)  # the path of each request that got through TLS


def _node(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"edgefleet.io/release": "v1"}},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                       "nodeInfo": {"osImage": "Talos (v1.12.6)", "kubeletVersion": "v1.35.0"}}}


def _app(state: ApiState) -> Starlette:
    async def readyz(request: Request) -> Response:
        state.requests.append(request.url.path)
        if state.deny:
            return JSONResponse({"kind": "Status", "code": state.deny}, status_code=state.deny)
        return PlainTextResponse("ok")

    async def nodes(request: Request) -> Response:
        state.requests.append(request.url.path)
        if state.deny:
            return JSONResponse({"kind": "Status", "reason": "Forbidden" if state.deny == 403 else "Unauthorized",
                                 "code": state.deny}, status_code=state.deny)
        return JSONResponse({"kind": "NodeList", "items": [_node(f"{STORE}-n1"), _node(f"{STORE}-n2")]})

    return Starlette(routes=[Route("/readyz", readyz), Route("/api/v1/nodes", nodes)])


def _k8s_ca(home: Path, store: str) -> tuple[bytes, bytes]:
    secrets = ensure_secrets(home, store, cluster_exists=False, now=datetime.now(UTC))
    return base64.b64decode(secrets.certs.k8s.crt), base64.b64decode(secrets.certs.k8s.key)


def _terminate_tls(listener: socket.socket, ctx: ssl.SSLContext, upstream: int) -> None:
    """Accept TLS connections on ``listener`` and pipe their plaintext to 127.0.0.1:``upstream``.

    Why not uvicorn's own TLS: asyncio's TLS server closes a connection whose client certificate it
    refuses without flushing its alert, so a client never learns why; kube-apiserver (Go crypto/tls)
    sends the alert, as Python's blocking ``ssl`` does here."""
    def pipe(src: Any, dst: Any) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def handle(conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            tls = ctx.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            conn.close()  # the alert was sent in the handshake
            return
        tls.settimeout(None)
        up = socket.create_connection(("127.0.0.1", upstream))
        threading.Thread(target=pipe, args=(up, tls), daemon=True).start()
        pipe(tls, up)

    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return  # closed: the stand-in is stopping
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


@asynccontextmanager
async def kube_api(home: Path, tmp: Path, state: ApiState, *, serving: str = STORE) -> AsyncIterator[str]:
    """The stand-in of store ``STORE``'s API: it trusts client certificates of ``STORE``'s Kubernetes
    CA only; its serving certificate is signed by the Kubernetes CA of ``serving`` (``STORE``'s own,
    or another store's: an endpoint that clients of that store trust, but that refuses them)."""
    ca_pem, _ = _k8s_ca(home, STORE)
    cert, key = mint_server_cert(*_k8s_ca(home, serving), ["127.0.0.1"], now=datetime.now(UTC))
    tmp = tmp / f"api-{serving}"
    tmp.mkdir()
    for name, data in (("ca.pem", ca_pem), ("srv.pem", cert), ("srv.key", key)):
        (tmp / name).write_bytes(data)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp / "srv.pem", tmp / "srv.key")
    ctx.load_verify_locations(tmp / "ca.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED  # like kube-apiserver with client-certificate auth only
    app_sock = socket.socket()
    app_sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(_app(state), log_level="error", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[app_sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=_terminate_tls, args=(listener, ctx, app_sock.getsockname()[1]), daemon=True).start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        server.should_exit = True
        await task
        app_sock.close()


def _store(sid: str) -> Store:
    return Store.model_validate({
        "id": sid, "name": f"Store {sid}", "country": "DK", "region": "nordics", "timezone": "Europe/Copenhagen",
        "maintenance_windows": [{"days": ["daily"], "start": "22:00", "end": "05:00"}],
        "network": {"subnet": "192.0.2.0/24", "gateway": "192.0.2.1", "dns": ["192.0.2.1"]},
        "cluster": {"name": sid, "kubernetes_version": "1.35.0"},
        "nodes": [{"name": f"{sid}-n{i}", "role": "controlplane" if i == 1 else "worker",
                   "mac": f"02:00:00:00:00:0{i}", "ip": f"192.0.2.{10 + i}"} for i in (1, 2)]})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listing(d: Path) -> list[tuple[str, int, int]]:
    """Everything under ``d``: relative path, mode, mtime (ns)."""
    out = []
    for root, dirs, files in os.walk(d):
        for name in dirs + files:
            p = Path(root) / name
            st = p.stat()
            out.append((str(p.relative_to(d)), st.st_mode & 0o777, st.st_mtime_ns))
    return sorted(out)


@pytest.fixture
def tmpdir_watched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The process's temporary directory, pointed at an empty directory this test can watch."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setenv("TMPDIR", str(d))
    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile caches the directory it found first
    assert tempfile.gettempdir() == str(d)
    return d


@pytest.mark.parametrize("in_memory", [True, False], ids=["memfd", "private-dir"])
def test_probes_over_tls_with_client_certificates(tmp_path: Path, tmpdir_watched: Path, in_memory: bool) -> None:
    if in_memory and not hasattr(os, "memfd_create"):
        pytest.skip("no memfd_create on this platform: the private directory is used instead")
    home = tmp_path / "home"
    home.mkdir()
    state = ApiState()

    async def main() -> None:
        async with kube_api(home, tmp_path, state) as url, \
                kube_api(home, tmp_path, state, serving=OTHER) as refusing_url:
            ep = Endpoints(k8s_urls={STORE: url, OTHER: refusing_url, CLOSED: f"https://127.0.0.1:{_closed_port()}"})
            ensure_secrets(home, CLOSED, cluster_exists=False, now=datetime.now(UTC))
            store, other, closed = _store(STORE), _store(OTHER), _store(CLOSED)
            assert _listing(tmpdir_watched) == []
            async with StoreApi(ep, home, deadline_s=5.0, keys=KeyLoader(in_memory=in_memory)) as api:
                # the right certificate: Ready nodes, /readyz ok
                snap = await api.snapshot(store, readyz=True)
                assert isinstance(snap, ClusterSnapshot), snap
                assert snap.readyz_ok and [(n.name, n.ready) for n in snap.nodes] == [
                    (f"{STORE}-n1", True), (f"{STORE}-n2", True)]
                assert evaluate_node(snap, f"{STORE}-n1", "v1", "v1.12.6").passed
                assert sorted(state.requests) == ["/api/v1/nodes", "/readyz"]

                # the key was loaded once: in memory nothing was ever written; otherwise one private
                # 0700 directory, empty (the pair unlinked once loaded), untouched by further polls
                after_first = _listing(tmpdir_watched)
                if in_memory:
                    assert after_first == []
                else:
                    assert len(after_first) == 1 and after_first[0][1] == 0o700, after_first
                for _ in range(20):
                    assert isinstance(await api.snapshot(store, readyz=False), ClusterSnapshot)
                assert _listing(tmpdir_watched) == after_first
                assert len(state.requests) == 22

                # 401 and 403: credentials refused (permanent), and the gates say so
                for status in (401, 403):
                    state.deny = status
                    got = await api.snapshot(store, readyz=False)
                    assert isinstance(got, KubeCredentialsRefused) and got.status == status, got
                    assert not got.transient and got.store == STORE and f"HTTP {status}" in str(got)
                    reason = evaluate_node(got, f"{STORE}-n1", "v1", None).why()
                    assert "refused edgefleet's credentials" in reason and "does not answer" not in reason
                state.deny = 500
                got = await api.snapshot(store, readyz=True)
                assert isinstance(got, KubeApiStatusError) and got.status == 500 and got.transient
                state.deny = None

                # a certificate of another CA: refused in the TLS handshake, credentials refused too
                served = len(state.requests)
                got = await api.snapshot(other, readyz=False)
                assert isinstance(got, KubeCredentialsRefused), got
                assert len(state.requests) == served  # no request got through
                v = evaluate_store(other, got, "v1", (), healthy_since=None, now=datetime.now(UTC),
                                   soak=timedelta(0))
                assert "refused edgefleet's credentials" in v.why()

                # nothing listening: unreachable (transient), "does not answer"
                got = await api.snapshot(closed, readyz=False)
                assert isinstance(got, KubeApiUnreachable) and got.transient, got
                assert "does not answer" in evaluate_node(got, f"{CLOSED}-n1", "v1", None).why()
                assert not isinstance(got, KubeCredentialsRefused)
            # the run is over: no key material, no directory left
            assert _listing(tmpdir_watched) == []

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_store_without_secrets_is_unreadable_not_unanswered(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "secrets").mkdir(parents=True)

    async def main() -> None:
        async with StoreApi(Endpoints(k8s_urls={STORE: "https://127.0.0.1:1"}), home) as api:
            got = await api.snapshot(_store(STORE))
            assert type(got) is KubeApiError and STORE in str(got)
            assert "cannot be read" in evaluate_node(got, f"{STORE}-n1", "v1", None).why()

    asyncio.run(main())
