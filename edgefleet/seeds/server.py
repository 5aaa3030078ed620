"""The seed/artifact server: hands seed ISOs and release images to BMCs over HTTP(S).

A BMC mounts virtual media from a URL, so every store's nodes download their seed ISO (and, on a
reimage, the release image) from here. It is a Starlette app on uvicorn (as the simulator is):
one event loop serves every BMC, files go out through Starlette's ``FileResponse`` (one byte
range, ``If-Range``, ``HEAD``), and the decisions are the pure ``edgefleet.seeds.tokens``.

What it guarantees:

* **Per-node expiring URLs.** :meth:`SeedServer.url_for` mints
  ``<base>/<token>/<relpath>`` where the token carries the node name and an expiry and an
  HMAC-SHA256 (server secret) over relpath, node and expiry. A token for another path (another
  node's seed), a tampered node or expiry, an expired token or garbage: ``403``. The MAC is
  compared in constant time. Pass a persistent ``secret`` for URLs that survive a restart.
* **Per-reimage URLs.** Between :meth:`SeedServer.begin_reimage` and :meth:`SeedServer.end_reimage`
  for a node, the node's URLs also carry that reimage's random grant in their MAC: they open only
  while that reimage is the node's current one. Once it ended (or the next one began) they are
  refused (``403 token revoked``), however long their expiry; a later server instance never knew
  the grant, so they are refused there too. Files stay reachable with plain tokens for nodes that
  never had a reimage begun.
* **Never outside the root.** Path segments are percent-decoded one by one and ``.``/``..``/empty/
  NUL/backslash segments are refused (``404``) before anything touches the disk; the resolved file
  must still lie under the root (symlinks out of it: ``404``) and be a regular file.
* **HTTP/1.1 as BMCs use it:** ``GET`` and ``HEAD``, keep-alive, one byte range (``206`` +
  ``Content-Range``; ``416`` when unsatisfiable; several ranges or a malformed header are ignored
  and the whole file is sent, as RFC 9110 allows), ``If-Range`` against the ETag. Every file
  response carries the sha256 of the whole file as ``X-Content-SHA256`` (hex), ``Digest:
  sha-256=<base64>`` and the strong ``ETag`` ``"sha256-<hex>"``; hashes are computed off the event
  loop once per (file, mtime, size) and cached.
* **Bounded.** The request head is limited in size (``431``) and must arrive completely within
  ``header_timeout_s`` (a client that trickles bytes gets ``408``: no slowloris); bodies are
  refused; a client that stops reading is dropped after ``send_timeout_s``; connections beyond
  ``max_connections`` get ``503``. uvicorn has none of these limits, so ``GuardedH11`` (its h11
  protocol with a head timer, a head size count and a connection count) adds them.
* **Dynamic routes** (additive): :meth:`SeedServer.add_dynamic_route` serves a route family
  from memory under the same token scheme, with tokens minted by :meth:`SeedServer.scoped_url`
  for a scope no file path can have; ``edgefleet.seeds.netseed`` uses it for nocloud-net seeds.
* **An access log** (a middleware), one line per request: UTC time, client, method, path
  *without* the token, status, body bytes, range, node, duration.

The token check is a middleware too (``TokenCheck``): the endpoint only runs for a request whose
token grants its path, and finds the node and path it may serve in the request's state.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import os
import secrets
import ssl
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Literal, Self
from urllib.parse import quote

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route
from starlette.types import Scope

from edgefleet.errors import SeedError
from edgefleet.seeds.asgi import (
    AccessLog,
    AccessLogMiddleware,
    DynamicReply,
    DynamicRoute,
    GuardedH11,
    Limits,
    QuietUvicorn,
    RequestOutcome,
    TokenCheck,
    error_response,
    listen,
    outcome_of,
)
from edgefleet.seeds.tokens import Grants, check_token, mint_token, normalize_relpath, parse_range, token_node

__all__ = [
    "DynamicReply",
    "DynamicRoute",
    "SeedServer",
    "TlsFiles",
    "check_token",
    "mint_token",
    "normalize_relpath",
    "parse_range",
    "token_node",
]

_HASH_CACHE_SIZE = 4096
_INLINE_MAX = 256 * 1024  # whole files up to this size are sent from one read (seed ISOs are ~70 KiB)


@dataclass(frozen=True)
class TlsFiles:
    """A PEM certificate (chain) and its private key, to serve HTTPS."""

    cert: Path
    key: Path


# --- the endpoint --------------------------------------------------------------------------------


class _FileResponse(FileResponse):
    chunk_size = 256 * 1024  # Starlette's 64 KiB costs a thread hop per 64 KiB of a release image


def _keep_range(scope: Scope, wanted: tuple[int, int] | None) -> None:
    """Leave in the request only the range decided on (``FileResponse`` reads it from the scope):
    none for a malformed, multiple or stale (``If-Range``) one, so the whole file is sent."""
    headers = [(k, v) for k, v in scope["headers"] if k not in (b"range", b"if-range")]
    if wanted is not None:
        headers.append((b"range", f"bytes={wanted[0]}-{wanted[1]}".encode()))
    scope["headers"] = headers


async def _dynamic_response(out: RequestOutcome) -> Response:
    assert out.route is not None
    reply = await out.route.serve(out.node, list(out.rest))
    if reply.status != 200:
        return error_response(reply.status, reply.body.decode("utf-8", "replace"))
    digest = hashlib.sha256(reply.body).digest()
    return Response(reply.body, 200, media_type="application/octet-stream", headers={
        "ETag": f'"sha256-{digest.hex()}"', "X-Content-SHA256": digest.hex(),
        "Digest": f"sha-256={base64.b64encode(digest).decode()}", "Cache-Control": "no-store"})


def _wanted_range(request: Request, out: RequestOutcome, etag: str,
                  st: os.stat_result) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """The one range to send (``parse_range``), or None for the whole file: no ``Range``, a
    malformed or multiple one, or an ``If-Range`` that names another version of the file."""
    range_header = request.headers.get("range")
    if range_header is not None:
        out.range = range_header.strip()[:100]
    wanted = parse_range(range_header, st.st_size)
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() not in (etag, _http_date(st.st_mtime)):
        wanted = None
    return wanted


def _http_date(epoch_s: float) -> str:
    return email.utils.formatdate(epoch_s, usegmt=True)


def _hash_fd(fd: int) -> tuple[str, str]:
    h = hashlib.sha256()
    try:
        offset = 0
        while True:
            block = os.pread(fd, 1 << 20, offset)
            if not block:
                break
            h.update(block)
            offset += len(block)
    finally:
        os.close(fd)
    return h.hexdigest(), base64.b64encode(h.digest()).decode("ascii")


# --- the server ----------------------------------------------------------------------------------


class SeedServer:
    """Serve the files under ``root_dir`` to holders of URLs from :meth:`url_for` (see module docstring).

    Use ``await start()`` / ``await stop()`` inside an event loop, or ``with SeedServer(...) as s:``
    from synchronous code (it then runs its own loop in a background thread).
    """

    def __init__(
        self,
        root_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token_ttl_s: float = 6 * 3600,
        tls: TlsFiles | None = None,
        access_log: Path | None = None,
        secret: bytes | None = None,
        public_url: str | None = None,
        clock: Callable[[], datetime] | None = None,
        header_timeout_s: float = 10.0,
        idle_timeout_s: float = 30.0,
        send_timeout_s: float = 60.0,
        max_head_bytes: int = 16 * 1024,
        max_connections: int = 1024,
    ):
        if token_ttl_s <= 0:
            raise SeedError(f"token_ttl_s must be positive, got {token_ttl_s}")
        self.root_dir = Path(root_dir)
        self.host = host
        self.token_ttl_s = token_ttl_s
        self.tls = tls
        self.access_log = access_log
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self._public_url = public_url.rstrip("/") if public_url else None
        self._clock = clock or (lambda: datetime.now(UTC))
        self.header_timeout_s = header_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.send_timeout_s = send_timeout_s
        self.max_head_bytes = max_head_bytes
        self.max_connections = max_connections
        self._requested_port = port
        self._port: int | None = None
        self._root_real: Path | None = None
        self._uvicorn: QuietUvicorn | None = None
        self._serving: asyncio.Task[None] | None = None
        self._log = AccessLog()
        self._hash_cache: OrderedDict[tuple[int, int, int, int], tuple[str, str]] = OrderedDict()
        self._hash_inflight: dict[tuple[int, int, int, int], asyncio.Future[tuple[str, str]]] = {}
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._dynamic: dict[str, DynamicRoute] = {}
        self._grants = Grants()

    # -- lifecycle --

    @property
    def port(self) -> int:
        if self._port is None:
            raise SeedError("the seed server is not started; call start() first")
        return self._port

    @property
    def base_url(self) -> str:
        if self._public_url:
            return self._public_url
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    async def start(self) -> None:
        if self._uvicorn is not None:
            return
        root = self.root_dir.resolve()
        if not root.is_dir():
            raise SeedError(f"seed server root {self.root_dir} is not a directory; create it or fix the path")
        self._root_real = root
        config = self._config(self._ssl_context())
        sock = listen(self.host, self._requested_port)
        self._log.open(self.access_log)
        server = self._uvicorn = QuietUvicorn(config)
        self._serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if self._serving.done():  # it failed to start: say why
                self._uvicorn = None
                self._log.close()
                sock.close()
                self._serving.result()
                raise SeedError(f"the seed server on {self.host} did not start")
            await asyncio.sleep(0.005)
        self._port = sock.getsockname()[1]

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(self.tls.cert, self.tls.key)
        except (OSError, ssl.SSLError) as exc:
            raise SeedError(f"cannot load TLS certificate {self.tls.cert} / key {self.tls.key}: {exc}") from exc
        return ctx

    def _config(self, ctx: ssl.SSLContext | None) -> uvicorn.Config:
        limits = Limits(self.max_connections, self.max_head_bytes, self.header_timeout_s, self.send_timeout_s,
                         lambda client, status: self._log.write(client, "-", RequestOutcome(status=status), 0.0))
        protocol = type("_SeedProtocol", (GuardedH11,), {"limits": limits})
        middleware = [Middleware(AccessLogMiddleware, log=self._log, send_timeout_s=self.send_timeout_s),
                      Middleware(TokenCheck, secret=self._secret, grants=self._grants, dynamic=self._dynamic,
                                 clock=self._clock)]
        app = Starlette(routes=[Route("/{rest:path}", self._endpoint, methods=["GET", "HEAD"])],
                        middleware=middleware)
        return uvicorn.Config(
            app, http=protocol, lifespan="off", log_config=None, log_level="warning", access_log=False,
            proxy_headers=False, server_header=False, headers=[("Server", "edgefleet-seeds")],
            timeout_keep_alive=max(1, round(self.idle_timeout_s)), timeout_graceful_shutdown=1,
            ssl_context_factory=(lambda _config, _default: ctx) if ctx is not None else None)

    async def stop(self) -> None:
        server, serving = self._uvicorn, self._serving
        self._uvicorn = self._serving = None
        if server is None or serving is None:
            return
        server.should_exit = True
        try:
            await asyncio.wait_for(serving, 10)
        finally:
            self._log.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    def __enter__(self) -> Self:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._thread_loop = loop
        self._thread = threading.Thread(target=run, name="seed-server", daemon=True)
        self._thread.start()
        ready.wait()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout=30)
        except BaseException:
            self._stop_thread()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop_thread()

    def _stop_thread(self) -> None:
        loop, thread = self._thread_loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            loop.close()
            self._thread_loop = self._thread = None

    # -- URLs --

    def url_for(self, relpath: str, node: str, now: datetime) -> str:
        """The URL under which ``node`` may fetch ``relpath`` for ``token_ttl_s`` from ``now`` (and
        only during its current reimage, when one was begun: ``begin_reimage``)."""
        rel = normalize_relpath(relpath)
        expires = int(now.timestamp() + self.token_ttl_s)
        token = mint_token(self._secret, rel, node, expires, self._grants.current(node))
        return f"{self.base_url}/{token}/" + "/".join(quote(seg, safe="") for seg in rel.split("/"))

    def begin_reimage(self, node: str) -> None:
        """Start a new reimage of ``node``: URLs minted for it from now on are bound to this
        reimage; those of its previous one stop working."""
        self._grants.begin(node, secrets.token_hex(16))

    def end_reimage(self, node: str) -> None:
        """``node``'s reimage is over (its media ejected): every URL minted for it during the
        reimage is refused from now on, until the next ``begin_reimage`` gives it new ones."""
        self._grants.end(node)

    # -- dynamic routes (additive: a route family served from memory, e.g. nocloud-net seeds) --

    def add_dynamic_route(self, prefix: str, route: DynamicRoute) -> None:
        """Serve ``/<token>/<prefix>/...`` through ``route`` instead of from files (a file under
        ``<root>/<prefix>`` is then not reachable). The token must grant ``route.scope(rest)``."""
        normalize_relpath(prefix)
        if "/" in prefix:
            raise SeedError(f"dynamic route prefix {prefix!r} must be one path segment")
        self._dynamic[prefix] = route

    def scoped_url(self, scope: str, path: str, node: str, now: datetime, *, ttl_s: float | None = None,
                   base_url: str | None = None) -> str:
        """``<base>/<token>/<path>`` with a token granting ``scope`` to ``node`` for ``ttl_s``
        (default ``token_ttl_s``) from ``now``; for dynamic routes. ``path`` is sent as given
        (the caller quotes it); ``base_url`` replaces the server's base (another address nodes
        reach it under)."""
        if "\x00" not in scope:
            raise SeedError("a dynamic route's token scope must contain a NUL byte (see DynamicRoute.scope)")
        ttl = self.token_ttl_s if ttl_s is None else ttl_s
        if ttl <= 0:
            raise SeedError(f"ttl_s must be positive, got {ttl}")
        token = mint_token(self._secret, scope, node, int(now.timestamp() + ttl))
        return f"{(base_url or self.base_url).rstrip('/')}/{token}/{path.lstrip('/')}"

    # -- serving (behind the token check) --

    async def _endpoint(self, request: Request) -> Response:
        out = outcome_of(request.scope)
        if out.route is not None:
            return await _dynamic_response(out)
        real = self._under_root(out.relpath)
        try:
            fd = os.open(real, os.O_RDONLY) if real is not None else -1
        except OSError:
            fd = -1
        if fd < 0:
            return error_response(404, "not found")
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return error_response(404, "not found")
            hex_digest, b64_digest = await self._sha256(fd, st)
            etag = f'"sha256-{hex_digest}"'
            headers = {"ETag": etag, "X-Content-SHA256": hex_digest, "Digest": f"sha-256={b64_digest}"}
            wanted = _wanted_range(request, out, etag, st)
            if wanted == "unsatisfiable":
                return error_response(416, "range not satisfiable",
                                      {"Content-Range": f"bytes */{st.st_size}", "Accept-Ranges": "bytes", **headers})
            if wanted is None and st.st_size <= _INLINE_MAX:
                # A whole seed ISO (tens of KiB) in one read from the open file: FileResponse would
                # take four worker-thread hops for it (open, read, close, and its disconnect watch).
                body = os.pread(fd, st.st_size, 0)
                if len(body) == st.st_size:
                    headers |= {"Last-Modified": _http_date(st.st_mtime), "Accept-Ranges": "bytes"}
                    return Response(body, 200, headers=headers, media_type="application/octet-stream")
        finally:
            os.close(fd)
        _keep_range(request.scope, wanted)
        assert real is not None
        return _FileResponse(real, stat_result=st, headers=headers, media_type="application/octet-stream")

    def _under_root(self, relpath: str) -> Path | None:
        root = self._root_real
        assert root is not None
        real = Path(os.path.realpath(root.joinpath(*relpath.split("/"))))
        if not real.is_relative_to(root) or real == root:
            return None
        return real

    async def _sha256(self, fd: int, st: os.stat_result) -> tuple[str, str]:
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._hash_cache.get(key)
        if cached is not None:
            self._hash_cache.move_to_end(key)
            return cached
        fut = self._hash_inflight.get(key)
        if fut is None:
            # The worker thread reads its own duplicate of the descriptor: this request may be
            # cancelled (client gone, server stopping) and close ``fd`` while the hash is running.
            fut = asyncio.ensure_future(asyncio.to_thread(_hash_fd, os.dup(fd)))
            self._hash_inflight[key] = fut

            def done(f: asyncio.Future[tuple[str, str]]) -> None:
                self._hash_inflight.pop(key, None)
                if not f.cancelled() and f.exception() is None:
                    self._hash_cache[key] = f.result()
                    while len(self._hash_cache) > _HASH_CACHE_SIZE:
                        self._hash_cache.popitem(last=False)

            fut.add_done_callback(done)
        return await asyncio.shield(fut)
