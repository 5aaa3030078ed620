"""The seed/artifact server: hands seed ISOs and release images to BMCs over HTTP(S).

A BMC mounts virtual media from a URL, so every store's nodes download their seed ISO (and, on a
reimage, the release image) from here. One asyncio event loop serves them all: a connection costs
a coroutine, not a thread, and bodies go out with ``sendfile`` (chunked, with a stall timeout), so
several hundred concurrent BMC downloads are ordinary load.

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
* **Never outside the root.** Path segments are percent-decoded and ``.``/``..``/empty/NUL/
  backslash segments are refused (``404``) before anything touches the disk; the resolved file
  must still lie under the root (symlinks out of it: ``404``) and be a regular file.
* **HTTP/1.1 as BMCs use it:** ``GET`` and ``HEAD``, keep-alive, one byte range
  (``206`` + ``Content-Range``; ``416`` when unsatisfiable; several ranges or a malformed header
  are ignored and the whole file is sent, as RFC 9110 allows), ``If-Range`` against the ETag.
  Every file response carries the sha256 of the whole file as ``X-Content-SHA256`` (hex),
  ``Digest: sha-256=<base64>`` and a strong ``ETag``; hashes are computed off the event loop once
  per (file, mtime, size) and cached.
* **Bounded.** The request head is limited in size (``431``) and must arrive completely within
  ``header_timeout_s`` (a client that trickles bytes is dropped: no slowloris); bodies are refused;
  a client that stops reading is dropped after ``send_timeout_s``; connections beyond
  ``max_connections`` get ``503``.
* **Dynamic routes** (additive): :meth:`SeedServer.add_dynamic_route` serves a route family
  from memory under the same token scheme, with tokens minted by :meth:`SeedServer.scoped_url`
  for a scope no file path can have; ``edgefleet.seeds.netseed`` uses it for nocloud-net seeds.
* **An access log**, one line per request: UTC time, client, method, path *without* the token,
  status, body bytes, range, node, duration.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import functools
import hashlib
import hmac
import os
import re
import secrets
import ssl
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, Protocol, Self
from urllib.parse import quote, unquote

from edgefleet.errors import SeedError

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

_TOKEN_CONTEXT = b"edgefleet-seed-url-v1\x00"
_SEND_CHUNK = 4 * 1024 * 1024
_HASH_CACHE_SIZE = 4096
_MAX_HEADERS = 100
_MAX_REQUESTS_PER_CONNECTION = 1000
_REVOKED_KEPT = 4


@dataclass(frozen=True)
class TlsFiles:
    """A PEM certificate (chain) and its private key, to serve HTTPS."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class DynamicReply:
    """What a dynamic route answers: ``status`` 200 with ``body`` (the bytes to send), or an error
    status with ``body`` as the reason (sent as text)."""

    status: int
    body: bytes = b""


class DynamicRoute(Protocol):
    """A route family served from memory instead of files under the root (see
    :meth:`SeedServer.add_dynamic_route`), e.g. ``edgefleet.seeds.netseed``'s ``nocloud``."""

    def scope(self, segments: list[str]) -> str | None:
        """The token scope (what a URL's token must grant) for the path segments after the route
        prefix, or None when no such resource can exist (404). Scopes must contain a NUL byte so
        that no file relpath (which cannot) shares a token with them."""

    async def serve(self, node: str, segments: list[str]) -> DynamicReply:
        """The reply for ``node`` (the token's node, already checked against the scope)."""


# --- pure parts: paths, tokens, ranges -----------------------------------------------------------


def normalize_relpath(relpath: str) -> str:
    """Return ``relpath`` as ``a/b/c`` or raise SeedError if it could leave the root."""
    segments = relpath.split("/")
    for seg in segments:
        if seg in ("", ".", "..") or "\\" in seg or "\x00" in seg:
            raise SeedError(f"refusing path {relpath!r}: it must be a relative path below the served root "
                            "without empty, '.' or '..' segments")
    return "/".join(segments)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, relpath: str, node: str, expires: int, grant: str = "") -> bytes:
    fields = [relpath.encode(), node.encode(), str(expires).encode()]
    if grant:  # without one the message (and every token minted before grants existed) is unchanged
        fields.append(grant.encode())
    return hmac.new(secret, _TOKEN_CONTEXT + b"\x00".join(fields), hashlib.sha256).digest()


def mint_token(secret: bytes, relpath: str, node: str, expires: int, grant: str = "") -> str:
    """A URL-safe token granting ``node`` access to ``relpath`` until ``expires`` (epoch seconds),
    and, when ``grant`` is given, only while the server holds that grant for the node."""
    if not node:
        raise SeedError("a seed URL must name the node it is for")
    return f"{_b64(node.encode())}.{expires}.{_b64(_mac(secret, relpath, node, expires, grant))}"


_TOKEN_RE = re.compile(r"^([A-Za-z0-9_-]{1,400})\.([0-9]{1,12})\.([A-Za-z0-9_-]{43})$")


def token_node(token: str) -> str | None:
    """The node a token claims to be for (unverified: only ``check_token`` proves it), or None."""
    m = _TOKEN_RE.match(token)
    if m is None:
        return None
    try:
        return _unb64(m.group(1)).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def check_token(secret: bytes, token: str, relpath: str, now: float, grant: str = "",
                revoked: Sequence[str] = ()) -> tuple[str | None, str]:
    """Return ``(node, "")`` when ``token`` grants ``relpath`` at ``now`` (under ``grant``, the
    node's current one, if any), else ``(None, reason)``. ``revoked``: grants the node held before,
    only to say why a token minted under one of them is refused."""
    m = _TOKEN_RE.match(token)
    if m is None:
        return None, "malformed token"
    try:
        node = _unb64(m.group(1)).decode()
        mac = _unb64(m.group(3))
    except (ValueError, UnicodeDecodeError):
        return None, "malformed token"
    expires = int(m.group(2))
    if not hmac.compare_digest(mac, _mac(secret, relpath, node, expires, grant)):
        if any(hmac.compare_digest(mac, _mac(secret, relpath, node, expires, old)) for old in revoked):
            return None, f"token revoked: the reimage of {node} it was issued for has ended"
        return None, "token not valid for this path"
    if expires <= now:
        return None, "token expired"
    return node, ""


def parse_range(header: str | None, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """One ``Range`` header against a file of ``size`` bytes (RFC 9110 14.1.2).

    Returns ``(first, last)`` inclusive for a satisfiable single range, ``"unsatisfiable"`` for a
    valid but unsatisfiable one, and ``None`` when the header is absent, malformed, not in bytes or
    asks for several ranges (the whole file is then sent).
    """
    if header is None:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or not spec or "," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition("-")
    if not dash or not (first_s.isdigit() or first_s == "") or not (last_s.isdigit() or last_s == ""):
        return None
    if first_s == "":
        if last_s == "":
            return None
        suffix = int(last_s)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size - 1
    first = int(first_s)
    if last_s and int(last_s) < first:
        return None
    if first >= size:
        return "unsatisfiable"
    return first, min(int(last_s), size - 1) if last_s else size - 1


# --- the server ----------------------------------------------------------------------------------


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]


@dataclass
class _Outcome:
    status: int = 0
    sent: int = 0
    path: str = "-"
    node: str = "-"
    range: str = "-"


_REASONS = {200: "OK", 206: "Partial Content", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 416: "Range Not Satisfiable",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable",
            505: "HTTP Version Not Supported"}


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
        self._server: asyncio.Server | None = None
        self._log_fh: IO[str] | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._hash_cache: OrderedDict[tuple[int, int, int, int], tuple[str, str]] = OrderedDict()
        self._hash_inflight: dict[tuple[int, int, int, int], asyncio.Future[tuple[str, str]]] = {}
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._dynamic: dict[str, DynamicRoute] = {}
        self._grants: dict[str, str] = {}  # node -> the grant of its reimage in progress
        self._revoked: dict[str, list[str]] = {}  # node -> its last few ended grants (for the 403's reason)

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
        if self._server is not None:
            return
        root = self.root_dir.resolve()
        if not root.is_dir():
            raise SeedError(f"seed server root {self.root_dir} is not a directory; create it or fix the path")
        self._root_real = root
        ssl_ctx: ssl.SSLContext | None = None
        if self.tls is not None:
            ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                ssl_ctx.load_cert_chain(self.tls.cert, self.tls.key)
            except (OSError, ssl.SSLError) as exc:
                raise SeedError(f"cannot load TLS certificate {self.tls.cert} / key {self.tls.key}: {exc}") from exc
        if self.access_log is not None:
            self.access_log.parent.mkdir(parents=True, exist_ok=True)
            self._log_fh = self.access_log.open("a", encoding="utf-8")
        self._server = await asyncio.start_server(
            self._on_connection, self.host, self._requested_port, ssl=ssl_ctx, backlog=1024,
            limit=self.max_head_bytes, ssl_handshake_timeout=self.header_timeout_s if ssl_ctx else None)
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

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
        token = mint_token(self._secret, rel, node, expires, self._grants.get(node, ""))
        return f"{self.base_url}/{token}/" + "/".join(quote(seg, safe="") for seg in rel.split("/"))

    def begin_reimage(self, node: str) -> None:
        """Start a new reimage of ``node``: URLs minted for it from now on are bound to this
        reimage; those of its previous one stop working."""
        if not node:
            raise SeedError("a reimage must name its node")
        self.end_reimage(node)
        self._grants[node] = secrets.token_hex(16)

    def end_reimage(self, node: str) -> None:
        """``node``'s reimage is over (its media ejected): every URL minted for it during the
        reimage is refused from now on, until the next ``begin_reimage`` gives it new ones."""
        grant = self._grants.pop(node, None)
        if grant is not None:
            past = self._revoked.setdefault(node, [])
            past.append(grant)
            del past[:-_REVOKED_KEPT]

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

    # -- connections --

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "-"
        try:
            if len(self._connections) > self.max_connections:
                await self._send_error(writer, 503, "too many connections", close=True)
                self._log(client, "-", _Outcome(status=503), 0.0)
                return
            for n in range(_MAX_REQUESTS_PER_CONNECTION):
                keep = await self._one_request(reader, writer, client, first=n == 0)
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError):
            pass
        except asyncio.CancelledError:
            # stop() cancels every connection; ending normally keeps asyncio's stream callback
            # (Python 3.11) from reporting each cancelled handler as an unhandled exception.
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5)

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str,
                           *, first: bool) -> bool:
        started = time.monotonic()
        prefix = b""
        if not first:  # keep-alive: wait for the next request to start, but not forever
            try:
                async with asyncio.timeout(self.idle_timeout_s):
                    prefix = await reader.read(1)
            except TimeoutError:
                return False
            if not prefix:
                return False
            started = time.monotonic()
        try:
            async with asyncio.timeout(self.header_timeout_s):
                head = prefix + await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            with contextlib.suppress(ConnectionError, TimeoutError):
                await self._send_error(writer, 408, "request head not received in time", close=True)
            self._log(client, "-", _Outcome(status=408), started)
            return False
        except asyncio.IncompleteReadError:
            return False
        except asyncio.LimitOverrunError:
            await self._send_error(writer, 431, "request head too large", close=True)
            self._log(client, "-", _Outcome(status=431), started)
            return False
        try:
            req = _parse_head(head)
        except _BadRequest as bad:
            await self._send_error(writer, bad.status, bad.reason, close=True)
            self._log(client, "-", _Outcome(status=bad.status), started)
            return False
        keep_alive = _wants_keep_alive(req)
        outcome = _Outcome()
        try:
            keep_alive = await self._respond(req, writer, outcome, keep_alive) and keep_alive
        finally:
            self._log(client, req.method, outcome, started)
        return keep_alive

    async def _respond(self, req: _Request, writer: asyncio.StreamWriter, out: _Outcome, keep_alive: bool) -> bool:
        if req.method not in ("GET", "HEAD"):
            out.status = 405
            # close: a body may follow that we will not read
            await self._send_error(writer, 405, "only GET and HEAD", close=True, extra={"Allow": "GET, HEAD"})
            return False
        if "transfer-encoding" in req.headers or req.headers.get("content-length", "0").strip() not in ("", "0"):
            out.status = 400
            await self._send_error(writer, 400, "request bodies are not accepted", close=True)
            return False
        path = req.target.split("?", 1)[0].split("#", 1)[0]
        parts = path.split("/")
        if len(parts) < 3 or parts[0] != "":
            out.status = 404
            await self._send_error(writer, 404, "not found", close=not keep_alive)
            return True
        token, raw_segments = parts[1], parts[2:]
        segments = [unquote(seg, errors="strict") if "%" in seg else seg for seg in raw_segments]
        out.path = "/" + "/".join(raw_segments)
        try:
            if any("/" in seg for seg in segments):
                raise SeedError("encoded slash")
            relpath = normalize_relpath("/".join(segments))
        except (SeedError, UnicodeDecodeError):
            out.status = 404
            await self._send_error(writer, 404, "not found", close=not keep_alive)
            return True
        dynamic = self._dynamic.get(segments[0]) if len(segments) > 1 else None
        if dynamic is not None:
            return await self._respond_dynamic(dynamic, req, writer, out, keep_alive, token, segments[1:])
        claim = token_node(token) or ""
        grant, past = self._grants.get(claim, ""), self._revoked.get(claim, ())
        node, why = check_token(self._secret, token, relpath, self._clock().timestamp(), grant, past)
        if node is not None and not grant and past:  # its last reimage ended and no new one began
            node, why = None, f"token revoked: no reimage of {node} is in progress"
        if node is None:
            out.status = 403
            await self._send_error(writer, 403, why, close=not keep_alive)
            return True
        out.node = node
        fh = self._open_under_root(relpath)
        if fh is None:
            out.status = 404
            await self._send_error(writer, 404, "not found", close=not keep_alive)
            return True
        with fh:
            st = os.fstat(fh.fileno())
            size = st.st_size
            hex_digest, b64_digest = await self._sha256(fh, st)
            etag = f'"sha256-{hex_digest}"'
            last_modified = _http_date(int(st.st_mtime))
            headers = {
                "Content-Type": "application/octet-stream",
                "Accept-Ranges": "bytes",
                "ETag": etag,
                "Last-Modified": last_modified,
                "X-Content-SHA256": hex_digest,
                "Digest": f"sha-256={b64_digest}",
            }
            range_header = req.headers.get("range")
            if range_header is not None:
                out.range = range_header.strip()[:100]
            if_range = req.headers.get("if-range")
            wanted = parse_range(range_header, size)
            if if_range is not None and if_range.strip() not in (etag, last_modified):
                wanted = None
            if wanted == "unsatisfiable":
                out.status = 416
                await self._send_error(writer, 416, "range not satisfiable", close=not keep_alive,
                                       extra={"Content-Range": f"bytes */{size}", **headers})
                return True
            if isinstance(wanted, tuple):
                first, last = wanted
                status = 206
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"
            else:
                first, last, status = 0, size - 1, 200
            count = last - first + 1
            headers["Content-Length"] = str(count)
            out.status = status
            await self._send_head(writer, status, headers, close=not keep_alive)
            if req.method == "GET" and count > 0:
                await self._send_body(writer, fh, first, count, out)
        return True

    async def _respond_dynamic(self, route: DynamicRoute, req: _Request, writer: asyncio.StreamWriter,
                               out: _Outcome, keep_alive: bool, token: str, rest: list[str]) -> bool:
        scope = route.scope(rest)
        if scope is None:
            out.status = 404
            await self._send_error(writer, 404, "not found", close=not keep_alive)
            return True
        node, why = check_token(self._secret, token, scope, self._clock().timestamp())
        if node is None:
            out.status = 403
            await self._send_error(writer, 403, why, close=not keep_alive)
            return True
        out.node = node
        reply = await route.serve(node, rest)
        if reply.status != 200:
            out.status = reply.status
            await self._send_error(writer, reply.status, reply.body.decode("utf-8", "replace"), close=not keep_alive)
            return True
        digest = hashlib.sha256(reply.body).digest()
        headers = {"Content-Type": "application/octet-stream", "ETag": f'"sha256-{digest.hex()}"',
                   "X-Content-SHA256": digest.hex(), "Digest": f"sha-256={base64.b64encode(digest).decode()}",
                   "Cache-Control": "no-store", "Content-Length": str(len(reply.body))}
        out.status = 200
        await self._send_head(writer, 200, headers, close=not keep_alive)
        if req.method == "GET" and reply.body:
            writer.write(reply.body)
            async with asyncio.timeout(self.send_timeout_s):
                await writer.drain()
            out.sent = len(reply.body)
        return True

    def _open_under_root(self, relpath: str) -> IO[bytes] | None:
        root = self._root_real
        assert root is not None
        real = Path(os.path.realpath(root.joinpath(*relpath.split("/"))))
        if not real.is_relative_to(root) or real == root:
            return None
        try:
            fh = real.open("rb")
        except OSError:
            return None
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            fh.close()
            return None
        return fh

    async def _sha256(self, fh: IO[bytes], st: os.stat_result) -> tuple[str, str]:
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._hash_cache.get(key)
        if cached is not None:
            self._hash_cache.move_to_end(key)
            return cached
        fut = self._hash_inflight.get(key)
        if fut is None:
            # The worker thread reads its own duplicate of the descriptor: this request may be
            # cancelled (client gone, server stopping) and close ``fh`` while the hash is running.
            dup = os.dup(fh.fileno())
            fut = asyncio.ensure_future(asyncio.to_thread(_hash_fd, dup))
            self._hash_inflight[key] = fut

            def done(f: asyncio.Future[tuple[str, str]]) -> None:
                self._hash_inflight.pop(key, None)
                if not f.cancelled() and f.exception() is None:
                    self._hash_cache[key] = f.result()
                    while len(self._hash_cache) > _HASH_CACHE_SIZE:
                        self._hash_cache.popitem(last=False)

            fut.add_done_callback(done)
        return await asyncio.shield(fut)

    async def _send_body(self, writer: asyncio.StreamWriter, fh: IO[bytes], offset: int, count: int,
                         out: _Outcome) -> None:
        loop = asyncio.get_running_loop()
        end = offset + count
        pos = offset
        while pos < end:
            chunk = min(_SEND_CHUNK, end - pos)
            async with asyncio.timeout(self.send_timeout_s):
                sent = await loop.sendfile(writer.transport, fh, pos, chunk)
            if sent == 0:
                raise ConnectionError("file shrank while sending")
            pos += sent
            out.sent += sent

    async def _send_head(self, writer: asyncio.StreamWriter, status: int, headers: dict[str, str], *,
                         close: bool) -> None:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
                 f"Date: {_http_date(int(time.time()))}", "Server: edgefleet-seeds"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append("Connection: close" if close else "Connection: keep-alive")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        async with asyncio.timeout(self.send_timeout_s):
            await writer.drain()

    async def _send_error(self, writer: asyncio.StreamWriter, status: int, reason: str, *, close: bool,
                          extra: dict[str, str] | None = None) -> None:
        body = f"{status} {_REASONS.get(status, '')}: {reason}\n".encode()
        headers = dict(extra or {})
        headers["Content-Type"] = "text/plain; charset=utf-8"
        headers["Content-Length"] = str(len(body))
        await self._send_head(writer, status, headers, close=close)
        writer.write(body)
        async with asyncio.timeout(self.send_timeout_s):
            await writer.drain()

    def _log(self, client: str, method: str, out: _Outcome, started: float) -> None:
        if self._log_fh is None:
            return
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        dur = (time.monotonic() - started) * 1000 if started else 0.0
        fields = [now, client, _clean(method), _clean(out.path), str(out.status), str(out.sent), _clean(out.range),
                  f"node={_clean(out.node)}", f"{dur:.1f}ms"]
        self._log_fh.write(" ".join(fields) + "\n")
        self._log_fh.flush()


# --- helpers -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _http_date(epoch_s: int) -> str:
    """An HTTP date (RFC 9110 5.6.7) for whole seconds; cached, as every response carries two."""
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


def _parse_head(head: bytes) -> _Request:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes everything
        raise _BadRequest(400, "undecodable request") from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise _BadRequest(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise _BadRequest(505, "only HTTP/1.0 and HTTP/1.1")
    if not target.startswith("/"):
        raise _BadRequest(400, "request target must be a path")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(400, "malformed header line")
        if len(headers) >= _MAX_HEADERS:
            raise _BadRequest(431, "too many header fields")
        headers[name.lower()] = value.strip()
    return _Request(method=method, target=target, version=version, headers=headers)


def _wants_keep_alive(req: _Request) -> bool:
    conn = req.headers.get("connection", "").lower()
    if req.version == "HTTP/1.0":
        return "keep-alive" in conn
    return "close" not in conn


_UNSAFE = re.compile(r"[^\x21-\x7e]")


def _clean(text: str) -> str:
    """One access-log field: no spaces or control characters (a path cannot forge a log line)."""
    return _UNSAFE.sub(lambda m: f"%{ord(m.group()) & 0xFF:02X}", text) or "-"
