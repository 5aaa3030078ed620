"""The Kubernetes client: the one module that speaks to a store's Kubernetes API.

``KubeApiClient`` (one store's API over TLS: a pooled client whose TLS context, with the cluster CA
and a client certificate as paths or PEM bytes, is built once; ``KeyLoader`` loads PEM keys without
writing them to disk on Linux), ``read_snapshot`` (the same read over a caller's plain-http client:
the fleet simulator's APIs, polled by thousands) and ``fetch_cluster`` (one read with a client of its
own). Every call has a deadline.

Reads are idempotent: a transient failure (no answer, 429, 5xx) is read again, with backoff, as
``READ_RETRY`` allows within the read's deadline (``edgefleet.retry``); a refused certificate or a
body that is not a node list is raised at once.

A Kubernetes API that cannot be evaluated raises a typed ``KubeApiError`` (a ``ProbeError``):
``KubeApiUnreachable`` (no connection, no answer in time: transient), ``KubeCredentialsRefused``
(HTTP 401/403 or a TLS alert refusing the client certificate: permanent), ``KubeApiStatusError``
(another status), or ``KubeApiError`` itself (its certificate not trusted, not a node list).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

from edgefleet.errors import KubeApiError, KubeApiStatusError, KubeApiUnreachable, KubeCredentialsRefused
from edgefleet.health.cluster import ClusterSnapshot, parse_nodes
from edgefleet.retry import RetryPolicy, retrying

__all__ = [
    "READ_RETRY",
    "ClientCert",
    "ClusterAccess",
    "KeyLoader",
    "KubeApiClient",
    "PemSource",
    "check_status",
    "classify_failure",
    "fetch_cluster",
    "parse_snapshot",
    "read_snapshot",
    "tls_context",
]

PemSource = str | Path | bytes  # a file path, or the PEM itself

# A node-list read: 3 tries, 0.05 s then 0.1 s apart, none started after the read's deadline. Short
# on purpose: callers poll (a store whose only control plane reboots answers 503 for minutes), and
# a try that succeeds ends the read, so the spacing bounds how late a poll sees the API come back.
READ_RETRY = RetryPolicy(attempts=3, backoff_s=0.05, backoff_max_s=0.2)


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


class KeyLoader:
    """Loads client certificates and keys given as PEM bytes into ``ssl.SSLContext``s, which read
    them only from files.

    On Linux, through anonymous memory files (``memfd_create``, read back as ``/proc/self/fd/N``):
    the key is never written to any filesystem. Elsewhere (or ``in_memory=False``), through one
    private directory (mode 0700) made on first use: each pair is written once, loaded and unlinked
    at once; ``close()`` removes the directory. One loader per run: a pair is loaded once per store
    per run (``KubeApiClient`` keeps its context), never per poll."""

    def __init__(self, *, in_memory: bool | None = None):
        self.in_memory = hasattr(os, "memfd_create") if in_memory is None else in_memory
        self._dir: Path | None = None
        self._count = 0

    @property
    def directory(self) -> Path | None:
        """The private directory, once made (never in memory mode)."""
        return self._dir

    def load(self, ctxs: Sequence[ssl.SSLContext], cert: PemSource, key: PemSource) -> None:
        """``load_cert_chain`` of ``cert`` and ``key`` (file paths or PEM bytes) into each of ``ctxs``."""
        if not isinstance(cert, bytes) and not isinstance(key, bytes):
            for ctx in ctxs:
                ctx.load_cert_chain(str(cert), str(key))
            return
        if self.in_memory:
            try:
                self._load_from_memory(ctxs, cert, key)
                return
            except OSError:
                self.in_memory = False  # no memfd here (an old kernel, a sandbox): the directory then
        self._load_from_directory(ctxs, cert, key)

    def _load_from_memory(self, ctxs: Sequence[ssl.SSLContext], cert: PemSource, key: PemSource) -> None:
        fds: list[int] = []
        try:
            paths = []
            for src in (cert, key):
                if not isinstance(src, bytes):
                    paths.append(str(src))
                    continue
                fd = os.memfd_create("edgefleet-client-pem", os.MFD_CLOEXEC)
                fds.append(fd)
                view = memoryview(src)
                while view:
                    view = view[os.write(fd, view):]
                paths.append(f"/proc/self/fd/{fd}")
            for ctx in ctxs:
                ctx.load_cert_chain(paths[0], paths[1])
        finally:
            for fd in fds:
                os.close(fd)

    def _load_from_directory(self, ctxs: Sequence[ssl.SSLContext], cert: PemSource, key: PemSource) -> None:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="edgefleet-keys-"))  # mode 0700
        self._count += 1
        written: list[Path] = []
        try:
            paths = []
            for src, name in ((cert, "client.crt"), (key, "client.key")):
                if not isinstance(src, bytes):
                    paths.append(str(src))
                    continue
                p = self._dir / f"{self._count}-{name}"
                fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                written.append(p)
                with os.fdopen(fd, "wb") as f:
                    f.write(src)
                paths.append(str(p))
            for ctx in ctxs:
                ctx.load_cert_chain(paths[0], paths[1])
        finally:
            for p in written:
                p.unlink(missing_ok=True)

    def close(self) -> None:
        d, self._dir = self._dir, None
        if d is not None:
            shutil.rmtree(d, ignore_errors=True)


def _ssl_contexts(access: ClusterAccess, keys: KeyLoader) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """The client's context and its diagnostic twin (TLS 1.2 at most, see ``KubeApiClient``)."""
    def context() -> ssl.SSLContext:
        if access.ca is None:
            return ssl.create_default_context()
        if isinstance(access.ca, bytes):
            return ssl.create_default_context(cadata=access.ca.decode("ascii"))
        return ssl.create_default_context(cafile=str(access.ca))

    try:
        ctx, diag = context(), context()
        diag.maximum_version = ssl.TLSVersion.TLSv1_2
        if access.client_cert is not None:
            keys.load((ctx, diag), access.client_cert.cert, access.client_cert.key)
    except (OSError, ssl.SSLError, ValueError) as e:
        raise KubeApiError(f"cannot load the cluster CA or client certificate: {e}",
                           endpoint=access.endpoint.rstrip("/")) from None
    return ctx, diag


def tls_context(access: ClusterAccess, keys: KeyLoader) -> ssl.SSLContext:
    """The TLS context for ``access`` (its CA, its client certificate): for other clients of a
    store's API than ``KubeApiClient`` (a drain's writes)."""
    return _ssl_contexts(access, keys)[0]


# OpenSSL reasons of a TLS alert by which a server refuses the client certificate (TLS 1.3 sends it
# after the handshake: it surfaces on the first read).
_REFUSED_ALERTS = ("ALERT_CERTIFICATE_REQUIRED", "ALERT_UNKNOWN_CA", "ALERT_BAD_CERTIFICATE",
                   "ALERT_CERTIFICATE_EXPIRED", "ALERT_CERTIFICATE_REVOKED", "ALERT_CERTIFICATE_UNKNOWN",
                   "ALERT_UNSUPPORTED_CERTIFICATE", "ALERT_ACCESS_DENIED")


def _chain(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and cur not in out and len(out) < 10:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def classify_failure(e: BaseException, *, endpoint: str, store: str = "", deadline_s: float) -> KubeApiError:
    """The typed error for an exception raised while reading a Kubernetes API (see ``KubeApiError``)."""
    if isinstance(e, KubeApiError):
        return e
    text = " ".join(f"{type(x).__name__}: {x}" for x in _chain(e))
    upper = text.upper()
    if any(a in upper for a in _REFUSED_ALERTS):
        return KubeCredentialsRefused(
            f"the TLS handshake refused edgefleet's client certificate ({text[:300]}); the API server does "
            "not trust the store's Kubernetes CA it was minted from: check that the store's secrets are its "
            "cluster's", endpoint=endpoint, store=store)
    if "CERTIFICATE_VERIFY_FAILED" in upper:
        return KubeApiError(f"the API's server certificate is not trusted ({text[:300]}): it is not signed by the "
                            "store's Kubernetes CA (wrong endpoint, or secrets of another cluster)",
                            endpoint=endpoint, store=store)
    if isinstance(e, TimeoutError | httpx.TimeoutException):
        return KubeApiUnreachable(f"no answer within {deadline_s:g} s", endpoint=endpoint, store=store)
    detail = next((f"{type(x).__name__}: {x}" for x in _chain(e) if str(x)), f"{type(e).__name__}: no detail")
    return KubeApiUnreachable(detail, endpoint=endpoint, store=store)


def check_status(response: httpx.Response, path: str, *, endpoint: str, store: str = "") -> None:
    """Raise the typed error for an answer other than 200 on ``path``."""
    code = response.status_code
    if code == 200:
        return
    body = response.text[:200].strip()
    if code in (401, 403):
        raise KubeCredentialsRefused(
            f"HTTP {code} on {path}: the API refused edgefleet's credentials ({body or 'no detail'}); "
            + ("check that the client certificate is signed by the cluster's CA" if code == 401 else
               "bind the client certificate's group (its subject organization) to a role that may list nodes, "
               "e.g. the view ClusterRole"), endpoint=endpoint, store=store, status=code)
    raise KubeApiStatusError(f"HTTP {code} on {path}: {body}", endpoint=endpoint, store=store, status=code,
                             transient=code == 429 or code >= 500)


def parse_snapshot(endpoint: str, nodes: httpx.Response, readyz: httpx.Response | None, *,
                   store: str = "") -> ClusterSnapshot:
    """A snapshot from the answers to ``/api/v1/nodes`` and (when read) ``/readyz``; typed errors for
    refused credentials, other statuses and a body that is not a node list."""
    check_status(nodes, "/api/v1/nodes", endpoint=endpoint, store=store)
    if readyz is not None and readyz.status_code in (401, 403):
        check_status(readyz, "/readyz", endpoint=endpoint, store=store)
    try:
        parsed = parse_nodes(json.loads(nodes.content))
    except ValueError as e:
        raise KubeApiError(f"/api/v1/nodes is not a node list ({e})", endpoint=endpoint, store=store) from None
    if readyz is None:
        return ClusterSnapshot(endpoint=endpoint, readyz_ok=False, readyz_detail="not read", nodes=parsed)
    text = readyz.text.strip()
    return ClusterSnapshot(endpoint=endpoint, readyz_ok=readyz.status_code == 200 and text == "ok",
                           readyz_detail=f"HTTP {readyz.status_code}: {text[:300]}", nodes=parsed)


class KubeApiClient:
    """One store's Kubernetes API over TLS: one pooled ``httpx.AsyncClient`` whose SSL context (the
    cluster CA, the client certificate) is built once. Keep it for the run; ``aclose()`` at its end.
    Reads raise ``KubeApiError`` subclasses (see ``edgefleet.errors``).

    Under TLS 1.3 a server refuses a client certificate after the handshake, and its alert is
    mostly lost: it closes the connection with our request unread, and the reset discards the
    alert (measured with Python's and uvicorn's TLS servers: "connection reset by peer", never the
    alert). So when a read fails that way, one handshake capped at TLS 1.2 (where the certificate is
    judged inside the handshake and the alert arrives) tells a refused certificate from a server
    that drops connections; a server that speaks only TLS 1.3 leaves it "unreachable"."""

    def __init__(self, access: ClusterAccess, *, keys: KeyLoader, store: str = "", deadline_s: float = 15.0,
                 retry: RetryPolicy = READ_RETRY):
        self.endpoint = access.endpoint.rstrip("/")
        self.store = store
        self.deadline_s = deadline_s
        self.retry = retry
        headers = {"Accept": "application/json"}
        if access.token:
            headers["Authorization"] = f"Bearer {access.token}"
        ctx, self._diag_ctx = _ssl_contexts(access, keys)
        self._client = httpx.AsyncClient(
            verify=ctx, timeout=httpx.Timeout(min(5.0, deadline_s), read=deadline_s), trust_env=False,
            headers=headers, limits=httpx.Limits(max_connections=4, max_keepalive_connections=2, keepalive_expiry=30))

    async def snapshot(self, *, readyz: bool = True) -> ClusterSnapshot:
        """``/api/v1/nodes`` and (``readyz``) ``/readyz`` now, read again after a transient failure
        as ``retry`` allows within the deadline."""
        return await retrying(replace(self.retry, deadline_s=self.deadline_s), lambda: self._snapshot(readyz))

    async def _snapshot(self, readyz: bool) -> ClusterSnapshot:
        base = self.endpoint
        try:
            async with asyncio.timeout(self.deadline_s):
                if readyz:
                    rz, nodes = await asyncio.gather(self._client.get(f"{base}/readyz"),
                                                     self._client.get(f"{base}/api/v1/nodes"))
                else:
                    rz, nodes = None, await self._client.get(f"{base}/api/v1/nodes")
        except (TimeoutError, httpx.HTTPError, ssl.SSLError, OSError) as e:
            # ssl.SSLError: a TLS alert after the handshake (a refused client certificate under TLS
            # 1.3) surfaces on the first read, unmapped by httpcore.
            err = classify_failure(e, endpoint=base, store=self.store, deadline_s=self.deadline_s)
            if isinstance(err, KubeApiUnreachable) and isinstance(e, httpx.ReadError | httpx.RemoteProtocolError):
                err = await self._diagnose(err)
            raise err from None
        return parse_snapshot(base, nodes, rz, store=self.store)

    async def _diagnose(self, err: KubeApiUnreachable) -> KubeApiError:
        """A connection dropped after the handshake: refused credentials, or a server dropping it?"""
        url = httpx.URL(self.endpoint)
        host, port = url.host, url.port or 443
        try:
            async with asyncio.timeout(min(5.0, self.deadline_s)):
                _, writer = await asyncio.open_connection(host, port, ssl=self._diag_ctx, server_hostname=host)
            writer.close()
            return err
        except (TimeoutError, ssl.SSLError, OSError) as e:
            refused = classify_failure(e, endpoint=self.endpoint, store=self.store, deadline_s=self.deadline_s)
            return refused if isinstance(refused, KubeCredentialsRefused) else err

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> KubeApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def fetch_cluster(access: ClusterAccess, *, deadline_s: float = 15.0) -> ClusterSnapshot:
    """Read ``/readyz`` and ``/api/v1/nodes`` once (a client for this one read). Raises a
    ``KubeApiError`` (a ``ProbeError``) when the API cannot be evaluated: unreachable, credentials
    refused, another HTTP status, its certificate not trusted, not a node list, past the deadline."""
    keys = KeyLoader()
    try:
        async with KubeApiClient(access, keys=keys, deadline_s=deadline_s) as client:
            return await client.snapshot()
    finally:
        keys.close()



Get = Callable[[str], Awaitable[httpx.Response]]


async def read_snapshot(get: Get, endpoint: str, *, store: str = "", readyz: bool = True, deadline_s: float = 15.0,
                        retry: RetryPolicy = READ_RETRY) -> ClusterSnapshot:
    """A snapshot of the API at ``endpoint`` read with ``get`` (a caller's pooled plain-http client:
    the fleet simulator's APIs), read again after a transient failure as ``retry`` allows within
    ``deadline_s``. Raises the typed ``KubeApiError`` of the last failure."""
    base = endpoint.rstrip("/")

    async def once() -> ClusterSnapshot:
        try:
            nodes = await get(f"{base}/api/v1/nodes")
            check_status(nodes, "/api/v1/nodes", endpoint=base, store=store)
            rz = await get(f"{base}/readyz") if readyz else None
        except (httpx.HTTPError, OSError) as e:
            raise classify_failure(e, endpoint=base, store=store, deadline_s=deadline_s) from None
        return parse_snapshot(base, nodes, rz, store=store)

    return await retrying(replace(retry, deadline_s=deadline_s), once)
