"""The one choke point for all BMC HTTP: every Redfish request edgefleet makes goes through
``Connector.request``.

It owns, in one place:

* connections: an ``httpx.AsyncClient`` shared by every BMC with the same trust settings
  (``BmcClients``) over one small connection pool per BMC (``_BmcPools``: httpcore's pool costs
  O(connections) per request, which a pool shared by hundreds of BMCs turns into most of the
  orchestrator's CPU), explicit timeouts per attempt and a deadline per call, so nothing waits
  forever;
* trust: TLS verification on by default, with a per-store CA bundle (``BmcTls.ca_file``) or a pinned
  sha256 certificate fingerprint (``BmcTls.fingerprint``, checked right after the TLS handshake,
  before any credential is sent); ``BmcTls.insecure`` opts out and is logged once per BMC;
* authentication: a Redfish session (``X-Auth-Token`` from the SessionService) when the BMC offers
  one, else HTTP basic auth; on a 401 with a session the session is re-created once;
* retries with exponential backoff, only for transient failures: connect errors, timeouts and 5xx
  (except 501), with a 503's ``Retry-After`` honoured up to a cap. A POST (an action, which may not be
  idempotent) is retried only when the request cannot have been processed (connect error, 503)
  unless the caller says it is idempotent;
* errors: every failure becomes a ``BmcError`` naming the BMC and the operation, with ``transient``
  and ``status`` set; Redfish error bodies (``error.@Message.ExtendedInfo``) are parsed in exactly
  one place, ``error_from_response``;
* ``If-Match`` on PATCH when the caller has an ETag, and 202 + task-monitor polling with a deadline.

Every failure is one ``BmcError(bmc=, operation=, transient=, status=)``; what decides its fields::

    BmcError
    ├── transient=True                     retrying later may help
    │   ├── cannot connect, connection reset       status None  (retried; a POST too: nothing was sent)
    │   ├── read timeout, call deadline passed     status None  (retried for GET/PATCH, never for POST)
    │   ├── HTTP 5xx except 501, HTTP 429          status set   (retried for GET/PATCH; POST only on 503)
    │   └── 202 task still running at its deadline
    └── transient=False                    something must be fixed first
        ├── HTTP 4xx, HTTP 501                     status set, Redfish messages in the text
        ├── TLS verification failed, pinned fingerprint mismatch
        ├── 2xx that is not JSON, not an object, or not application/json
        ├── password variable or file missing      (``resolve_password``)
        └── 202 task ended Exception / Killed / Cancelled

Secrets: the password is resolved at use (``resolve_password``) and neither it nor a session token
is ever logged or put in an error message.

Base URLs may carry a path prefix (``http://127.0.0.1:8000/bmc/node-a``): Redfish paths
(``/redfish/v1/...``) are placed under it, and links that already carry the prefix are kept as they
are, so a BMC behind a path-routing proxy works whichever way it writes its ``@odata.id`` links.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import itertools
import json
import logging
import os
import re
import select
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpcore
import httpx

from edgefleet.errors import BmcError
from edgefleet.inventory.model import BmcTls, CredentialsRef, Node

__all__ = [
    "OPERATION_HEADER",
    "BmcClients",
    "BmcUrlResolver",
    "Connector",
    "PooledClient",
    "RedfishResponse",
    "RetryPolicy",
    "Timeouts",
    "bmc_base_url",
    "connector_for_node",
    "error_from_response",
    "resolve_password",
]

log = logging.getLogger("edgefleet.redfish")

OPERATION_HEADER = "X-Edgefleet-Operation"
USER_AGENT = "edgefleet"
SERVICE_ROOT = "/redfish/v1/"

AuthMode = Literal["auto", "session", "basic"]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-attempt socket timeouts and the deadline of one whole call (all its retries included)."""

    connect_s: float = 5.0
    read_s: float = 30.0
    write_s: float = 10.0
    pool_s: float = 10.0
    call_deadline_s: float = 60.0
    task_deadline_s: float = 600.0  # a 202 task monitor is polled at most this long

    def httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect_s, read=self.read_s, write=self.write_s, pool=self.pool_s)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to wait between attempts of one call (transient failures only)."""

    attempts: int = 4
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    retry_after_cap_s: float = 30.0

    def delay(self, attempt: int) -> float:
        """Backoff before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        return float(min(self.backoff_max_s, self.backoff_s * (2 ** (attempt - 1))))


@dataclass(frozen=True, slots=True)
class RedfishResponse:
    """A successful Redfish response: status, parsed JSON body (``{}`` when empty) and headers."""

    status: int
    body: dict[str, Any]
    headers: Mapping[str, str]
    url: str

    @property
    def etag(self) -> str | None:
        return self.headers.get("etag") or self.body.get("@odata.etag")


BmcUrlResolver = Callable[[Node], str]


def bmc_base_url(node: Node) -> str:
    """The BMC base URL from the inventory (``node.bmc.url``). Override it with a resolver of your
    own (e.g. the fleet simulator serves every BMC under one port at ``/bmc/<node-name>``)."""
    if node.bmc is None:
        raise BmcError("the node has no bmc section in the inventory; add bmc.url and bmc.credentials",
                       bmc=node.name, operation="resolve BMC URL")
    return node.bmc.url


def resolve_password(node_name: str, ref: CredentialsRef, *, environ: Mapping[str, str] | None = None,
                     base_dir: Path | None = None) -> str:
    """The BMC password named by ``ref`` (an environment variable or a file), read now.

    Raises a non-transient ``BmcError`` naming the node and the variable or file when it is missing.
    """
    env = os.environ if environ is None else environ
    if ref.password_env is not None:
        value = env.get(ref.password_env)
        if value is None or value == "":
            raise BmcError(
                f"environment variable {ref.password_env} (the BMC password for user {ref.username!r}) "
                "is not set; export it before running",
                bmc=node_name, operation="resolve credentials")
        return value
    assert ref.password_file is not None  # the model guarantees exactly one of the two
    path = Path(ref.password_file).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise BmcError(f"cannot read password_file {path} ({e.strerror or e}); create it or fix the path",
                       bmc=node_name, operation="resolve credentials") from None
    value = text.rstrip("\r\n")
    if not value:
        raise BmcError(f"password_file {path} is empty", bmc=node_name, operation="resolve credentials")
    return value


# ---------------------------------------------------------------------------------------------
# Trust: ssl contexts and fingerprint pinning


class PinMismatch(Exception):
    """The peer's certificate does not have the pinned sha256 fingerprint (raised by the backend,
    turned into a non-transient ``BmcError`` by the connector)."""


class _PinnedStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream, fingerprint: str):
        self._inner = inner
        self._fingerprint = fingerprint

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        tls = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        obj = tls.get_extra_info("ssl_object")
        der = obj.getpeercert(binary_form=True) if obj is not None else None
        got = hashlib.sha256(der).hexdigest() if der else "<no certificate>"
        if got != self._fingerprint:
            await tls.aclose()
            raise PinMismatch(f"certificate sha256 fingerprint is {got}, the inventory pins {self._fingerprint}")
        return _PinnedStream(tls, self._fingerprint)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AsyncioStream(httpcore.AsyncNetworkStream):
    """An httpcore network stream over asyncio streams. httpcore's default (AnyIO) backend costs
    a cancel scope, task lookups and a typed-attribute walk per read and write, about a third of
    the CPU of a small request; this one costs a timer handle."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError as e:
            raise httpcore.ReadTimeout(str(e) or "read timed out") from e
        except OSError as e:  # ssl.SSLError is an OSError
            raise httpcore.ReadError(str(e) or type(e).__name__) from e

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            async with asyncio.timeout(timeout):
                self._writer.write(buffer)
                await self._writer.drain()
        except TimeoutError as e:
            raise httpcore.WriteTimeout(str(e) or "write timed out") from e
        except (OSError, RuntimeError) as e:  # RuntimeError: written after the transport closed
            raise httpcore.WriteError(str(e) or type(e).__name__) from e

    async def aclose(self) -> None:
        # No wait for the close to complete (a TLS close_notify to a BMC that went away would
        # hold the caller for the shutdown timeout): the loop finishes it.
        self._writer.close()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname,
                                             ssl_handshake_timeout=timeout)
        except TimeoutError as e:
            self._writer.close()
            raise httpcore.ConnectTimeout(str(e) or "TLS handshake timed out") from e
        except OSError as e:
            self._writer.close()
            raise httpcore.ConnectError(str(e) or type(e).__name__) from e
        return self

    def get_extra_info(self, info: str) -> Any:
        transport = self._writer.transport
        if info == "ssl_object":
            return transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return transport.get_extra_info("sockname")
        if info == "server_addr":
            return transport.get_extra_info("peername")
        if info == "socket":
            return transport.get_extra_info("socket")
        if info == "is_readable":  # httpcore asks before reusing an idle connection
            return self._readable()
        return None

    def _readable(self) -> bool:
        """Whether an idle connection has something to read: EOF, an error, or bytes the server
        should not have sent. The loop moves socket data into the reader as it arrives, so look at
        the reader first, then at the socket for what arrived since."""
        r = self._reader
        if r.at_eof() or r.exception() is not None or self._writer.transport.is_closing():
            return True
        sock = self._writer.transport.get_extra_info("socket")
        fd = sock.fileno() if sock is not None else -1
        if fd < 0:
            return True
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))


class _AsyncioBackend(httpcore.AsyncNetworkBackend):
    """Plain asyncio TCP connections for httpcore (see ``_AsyncioStream``)."""

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, local_addr=(local_address, 0) if local_address else None)
        except TimeoutError as e:
            raise httpcore.ConnectTimeout(str(e) or f"connecting to {host}:{port} timed out") from e
        except OSError as e:
            raise httpcore.ConnectError(str(e) or type(e).__name__) from e
        sock = writer.transport.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return _AsyncioStream(reader, writer)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        raise NotImplementedError("BMCs are reached over TCP")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _PinningBackend(httpcore.AsyncNetworkBackend):
    """Checks the sha256 of the peer's DER certificate right after the handshake, before a request
    (and so a credential) is written to the connection."""

    def __init__(self, fingerprint: str):
        self._inner = _AsyncioBackend()
        self._fingerprint = fingerprint

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _PinnedStream(stream, self._fingerprint)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        raise NotImplementedError("BMCs are reached over TCP")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _ssl_context(tls: BmcTls) -> ssl.SSLContext:
    if tls.fingerprint is not None or tls.insecure:
        # Pinning replaces chain and name checks: the pinned fingerprint is the identity.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if tls.ca_file is not None:
        try:
            return ssl.create_default_context(cafile=tls.ca_file)
        except (OSError, ssl.SSLError) as e:
            raise BmcError(f"cannot load the BMC CA bundle {tls.ca_file}: {e}; fix bmc.tls.ca_file",
                           operation="load CA bundle") from None
    return ssl.create_default_context()


# Connection pools: one small pool per BMC
#
# httpcore's AsyncConnectionPool walks every connection of the pool (and calls poll() and
# getpeername() on each idle one) for every request it queues, and counts all connections once per
# idle connection: O(connections) to O(connections^2) per request. Shared by hundreds of BMCs that
# was 80-90 % of the orchestrator's CPU in a rollout at concurrency 100 (profiled). A BMC is
# talked to by one sequence at a time, so each BMC gets its own pool of a few connections, and the
# per-request bookkeeping stays constant however many BMCs are in flight.

POOL_KEY = "edgefleet.bmc"  # request extension naming the BMC; requests without it pool by origin
_PER_BMC = httpx.Limits(max_connections=4, max_keepalive_connections=4)
_LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=30.0)
_EVICT_SCAN = 64


def _new_transport(ctx: ssl.SSLContext, tls: BmcTls, keepalive_expiry: float | None) -> httpx.AsyncHTTPTransport:
    limits = httpx.Limits(max_connections=_PER_BMC.max_connections,
                          max_keepalive_connections=_PER_BMC.max_keepalive_connections,
                          keepalive_expiry=keepalive_expiry)
    transport = httpx.AsyncHTTPTransport(verify=ctx, limits=limits, trust_env=False)
    # httpx has no hook between handshake and first write; a connection pool with our own
    # network backend is the place to check a pinned certificate before any byte of a request
    # is sent (and to use plain asyncio streams instead of AnyIO's).
    backend = _PinningBackend(tls.fingerprint) if tls.fingerprint is not None else _AsyncioBackend()
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=ctx, max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry, network_backend=backend)
    return transport


def _pool_idle(transport: httpx.AsyncHTTPTransport) -> bool:
    pool = transport._pool
    return not getattr(pool, "_requests", ()) and all(c.is_idle() or c.is_closed() for c in pool.connections)


class _BmcPools(httpx.AsyncBaseTransport):
    """Routes each request to its BMC's own small connection pool (``POOL_KEY`` extension, else the
    origin). At most ``max_idle`` pools are kept open while idle (least recently used closed first);
    ``release`` closes one BMC's pool when its connector is done."""

    def __init__(self, tls: BmcTls, limits: httpx.Limits):
        self._ctx = _ssl_context(tls)  # built once: loading a CA store costs milliseconds
        self._tls = tls
        self._expiry = limits.keepalive_expiry
        self._max_idle = limits.max_keepalive_connections if limits.max_keepalive_connections is not None else 200
        self._pools: OrderedDict[str, httpx.AsyncHTTPTransport] = OrderedDict()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        key = request.extensions.get(POOL_KEY)
        if not isinstance(key, str):
            key = f"{request.url.scheme}://{request.url.netloc.decode('ascii')}"
        pools = self._pools
        transport = pools.get(key)
        if transport is None:
            transport = pools[key] = _new_transport(self._ctx, self._tls, self._expiry)
            if len(pools) > self._max_idle:
                await self._evict()
        else:
            pools.move_to_end(key)
        return await transport.handle_async_request(request)

    async def _evict(self) -> None:
        """Close idle pools, oldest first, looking at a bounded number of them (pools in use were
        moved to the end on their last request, so the oldest are usually idle)."""
        excess = len(self._pools) - self._max_idle
        closing = []
        for key, transport in list(itertools.islice(self._pools.items(), _EVICT_SCAN)):
            if excess <= 0:
                break
            if _pool_idle(transport):
                del self._pools[key]
                closing.append(transport)
                excess -= 1
        for transport in closing:
            await transport.aclose()

    async def release(self, key: str) -> None:
        """Close the pool of BMC ``key`` if nothing is using it (another connector to the same BMC
        in the middle of a request keeps it)."""
        transport = self._pools.get(key)
        if transport is not None and _pool_idle(transport):
            del self._pools[key]
            await transport.aclose()

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), OrderedDict()
        for transport in pools:
            await transport.aclose()


class PooledClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` over per-BMC pools (``pools``, keyed per request), with ``send_direct`` for
    the connector and for other callers that talk to many small servers (the stores' Kubernetes APIs)."""

    def __init__(self, pools: _BmcPools, timeouts: Timeouts):
        super().__init__(transport=pools, timeout=timeouts.httpx(), trust_env=False, follow_redirects=False)
        self.pools = pools
        self._default_timeout = self.timeout.as_dict()

    async def send_direct(self, method: str, url: str, headers: dict[str, str], content: bytes | None,
                          timeout: httpx.Timeout | None, pool_key: str) -> httpx.Response:
        """One request straight to the BMC's pool, body read. Skips what ``AsyncClient.send`` adds
        and the connector does not use (URL/header/cookie merging, a cookie jar shared by every BMC,
        auth flows, redirects, event hooks): about a quarter of the client's CPU per request.
        Timeouts are the client's (or ``timeout``); errors are httpx's, as from ``request``."""
        ext = {"timeout": timeout.as_dict() if timeout is not None else self._default_timeout, POOL_KEY: pool_key}
        request = httpx.Request(method, url, headers=headers, content=content, extensions=ext)
        response = await self.pools.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response


def _new_client(tls: BmcTls, timeouts: Timeouts, limits: httpx.Limits) -> httpx.AsyncClient:
    return PooledClient(_BmcPools(tls, limits), timeouts)


class BmcClients:
    """Pooled ``httpx.AsyncClient``s, one per distinct trust setting, shared by all BMCs that use it.

    Use as ``async with BmcClients() as clients:``; closing it closes every client.
    """

    def __init__(self, timeouts: Timeouts | None = None, limits: httpx.Limits | None = None):
        self.timeouts = timeouts or Timeouts()
        self._limits = limits or _LIMITS
        self._clients: dict[tuple[str | None, str | None, bool], httpx.AsyncClient] = {}

    def for_tls(self, tls: BmcTls) -> httpx.AsyncClient:
        key = (tls.ca_file, tls.fingerprint, tls.insecure)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = _new_client(tls, self.timeouts, self._limits)
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            await c.aclose()

    async def __aenter__(self) -> BmcClients:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


_insecure_logged: set[str] = set()


class _RedactAuthHeaders(logging.Filter):
    """httpcore's DEBUG trace logs response headers verbatim, and a session login answers with the
    token in ``X-Auth-Token``: redact it (and any echoed credential header) before it is written."""

    _TEXT = re.compile(r"(\(b'(?:x-auth-token|authorization|set-cookie)', b')[^']*(')", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        red = self._TEXT.sub(r"\1<redacted>\2", text)
        if red != text:
            record.msg, record.args = red, ()
        return True


for _name in ("httpcore.http11", "httpcore.http2"):
    logging.getLogger(_name).addFilter(_RedactAuthHeaders())


# ---------------------------------------------------------------------------------------------
# Errors: the one place a response becomes a BmcError


def _is_transient_status(status: int) -> bool:
    return (status >= 500 and status != 501) or status == 429


def _redfish_messages(body: Any) -> list[str]:
    """Human-readable messages from a Redfish error body (``error.message`` and every
    ``@Message.ExtendedInfo`` entry's Message / MessageId / Resolution)."""
    if not isinstance(body, dict):
        return []
    err = body.get("error")
    out: list[str] = []
    infos: Any = None
    if isinstance(err, dict):
        msg = err.get("message")
        if isinstance(msg, str) and msg:
            out.append(msg)
        infos = err.get("@Message.ExtendedInfo")
    if infos is None:
        infos = body.get("@Message.ExtendedInfo")
    if isinstance(infos, list):
        for info in infos:
            if not isinstance(info, dict):
                continue
            text = info.get("Message") or info.get("MessageId")
            if isinstance(text, str) and text and text not in out:
                res = info.get("Resolution")
                out.append(f"{text} (resolution: {res})" if isinstance(res, str) and res else text)
    return out


def error_from_response(status: int, content: bytes, *, bmc: str, operation: str, method: str,
                        url: str) -> BmcError:
    """Turn an error response into a ``BmcError``: the Redfish error body's messages when there is
    one, else the start of the body; ``transient`` for 5xx (not 501) and 429."""
    try:
        body: Any = json.loads(content) if content else None
    except ValueError:
        body = None
    messages = _redfish_messages(body)
    if messages:
        detail = "; ".join(messages)
    else:
        snippet = content[:200].decode("utf-8", "replace").strip()
        detail = snippet or "(empty body)"
    hint = ""
    if status == 401:
        hint = " (check the BMC user name and password in the inventory's credentials)"
    elif status == 403:
        hint = " (the BMC user lacks the privilege for this operation)"
    elif status == 404:
        hint = " (the BMC does not have this resource; a link may be stale or the firmware differs)"
    return BmcError(f"{method} {url} -> HTTP {status}: {detail}{hint}", bmc=bmc, operation=operation,
                    transient=_is_transient_status(status), status=status)


def _parse_retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def _is_json_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


# ---------------------------------------------------------------------------------------------
# The connector


@dataclass
class _Session:
    token: str
    location: str | None


@dataclass
class Connector:
    """All HTTP to one BMC. Create with ``connector_for_node`` (or directly for tests)."""

    base_url: str
    bmc: str  # how errors and logs name the BMC (the node name)
    username: str
    password: str = field(repr=False)
    client: httpx.AsyncClient
    tls: BmcTls = field(default_factory=BmcTls)
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    operation_id: str | None = None
    auth: AuthMode = "auto"
    _session: _Session | None = field(default=None, init=False, repr=False)
    _auth_decided: bool = field(default=False, init=False, repr=False)
    _auth_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)
    _root: dict[str, Any] | None = field(default=None, init=False, repr=False)
    _prefix: str = field(default="", init=False, repr=False)
    _origin: str = field(default="", init=False, repr=False)
    _pool_ext: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        url = httpx.URL(self.base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.host:
            raise BmcError(f"BMC URL {self.base_url!r} is not an http(s) URL", bmc=self.bmc,
                           operation="configure")
        self._origin = f"{url.scheme}://{url.netloc.decode('ascii')}"
        self._prefix = url.path.rstrip("/")
        self._pool_ext = {POOL_KEY: self._origin + self._prefix}
        if url.scheme == "https" and self.tls.insecure and self.base_url not in _insecure_logged:
            _insecure_logged.add(self.base_url)
            log.warning("BMC %s (%s): TLS certificate verification is OFF (bmc.tls.insecure in the "
                        "inventory)", self.bmc, self.base_url)

    # -- URLs ----------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        """The absolute URL of a Redfish path or ``@odata.id`` link on this BMC."""
        if path.startswith(("http://", "https://")):
            if not path.startswith(self._origin + "/"):
                raise BmcError(f"link {path!r} points outside the BMC {self._origin}; refusing to follow it",
                               bmc=self.bmc, operation="follow link")
            return path
        if not path.startswith("/"):
            path = "/" + path
        if self._prefix and not (path == self._prefix or path.startswith(self._prefix + "/")):
            path = self._prefix + path
        return self._origin + path

    # -- authentication --------------------------------------------------------------------------

    def _auth_headers(self) -> dict[str, str]:
        if self._session is not None:
            return {"X-Auth-Token": self._session.token}
        # Built per request rather than via httpx.BasicAuth: the auth-flow machinery costs about
        # as much as the request itself at high rates.
        raw = f"{self.username}:{self.password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}

    async def _ensure_auth(self, operation: str) -> None:
        if self._auth_decided:
            return
        async with self._auth_lock:
            if self._auth_decided:
                return
            if self.auth != "basic":
                await self._login(operation)
            self._auth_decided = True

    async def _login(self, operation: str) -> None:
        """Create a Redfish session. With ``auth="auto"`` a BMC without a usable SessionService
        falls back to basic auth; with ``auth="session"`` that is an error."""
        root = await self.service_root(operation)
        sessions = None
        links = root.get("Links")
        if isinstance(links, dict) and isinstance(links.get("Sessions"), dict):
            sessions = links["Sessions"].get("@odata.id")
        if sessions is None and isinstance(root.get("SessionService"), dict):
            svc = await self._send("GET", root["SessionService"]["@odata.id"], operation, auth=False)
            sess = svc.body.get("Sessions")
            sessions = sess.get("@odata.id") if isinstance(sess, dict) else None
        if not isinstance(sessions, str):
            if self.auth == "session":
                raise BmcError("the BMC offers no SessionService; use basic auth", bmc=self.bmc,
                               operation=operation)
            return
        try:
            resp = await self._send("POST", sessions, operation, auth=False,
                                    body={"UserName": self.username, "Password": self.password},
                                    idempotent=False)
        except BmcError as e:
            if self.auth == "session" or e.status in (401, 403):
                raise BmcError(f"session login as {self.username!r} failed: HTTP {e.status}; check the "
                               "BMC credentials in the inventory", bmc=self.bmc, operation=operation,
                               transient=e.transient, status=e.status) from None
            log.info("BMC %s: session login not available (HTTP %s); using basic auth", self.bmc, e.status)
            return
        token = resp.headers.get("x-auth-token")
        if not token:
            if self.auth == "session":
                raise BmcError("session created but no X-Auth-Token returned", bmc=self.bmc,
                               operation=operation)
            return
        self._session = _Session(token=token, location=resp.headers.get("location"))

    async def _relogin(self, operation: str, stale: _Session) -> None:
        async with self._auth_lock:
            if self._session is stale:
                self._session = None
                await self._login(operation)

    async def service_root(self, operation: str = "discover service root") -> dict[str, Any]:
        """The service root (``/redfish/v1/``), fetched once without credentials (Redfish serves it
        unauthenticated) and cached."""
        if self._root is None:
            try:
                resp = await self._send("GET", SERVICE_ROOT, operation, auth=False)
            except BmcError as e:
                if e.status != 401:
                    raise
                # Some firmware protects even the service root: ask again with basic auth.
                resp = await self._send("GET", SERVICE_ROOT, operation)
            self._root = resp.body
        return self._root

    # -- requests ----------------------------------------------------------------------------------

    async def get(self, path: str, operation: str) -> RedfishResponse:
        return await self.request("GET", path, operation)

    async def patch(self, path: str, body: Mapping[str, Any], operation: str,
                    etag: str | None = None) -> RedfishResponse:
        return await self.request("PATCH", path, operation, body=body, etag=etag, idempotent=True)

    async def post(self, path: str, body: Mapping[str, Any], operation: str, *,
                   idempotent: bool = False, read_timeout_s: float | None = None) -> RedfishResponse:
        return await self.request("POST", path, operation, body=body, idempotent=idempotent,
                                  read_timeout_s=read_timeout_s)

    async def request(self, method: str, path: str, operation: str, *, body: Mapping[str, Any] | None = None,
                      etag: str | None = None, idempotent: bool | None = None,
                      read_timeout_s: float | None = None) -> RedfishResponse:
        """One authenticated Redfish call with retries, a deadline, re-auth once on 401, and a
        202 task monitor followed to its end."""
        await self._ensure_auth(operation)
        stale = self._session
        try:
            resp = await self._send(method, path, operation, body=body, etag=etag, idempotent=idempotent,
                                    read_timeout_s=read_timeout_s)
        except BmcError as e:
            if e.status != 401 or stale is None:
                raise
            log.info("BMC %s: session expired (401); logging in again", self.bmc)
            await self._relogin(operation, stale)
            resp = await self._send(method, path, operation, body=body, etag=etag, idempotent=idempotent,
                                    read_timeout_s=read_timeout_s)
        if resp.status == 202:
            resp = await self._follow_task(resp, operation)
        return resp

    async def _follow_task(self, accepted: RedfishResponse, operation: str) -> RedfishResponse:
        monitor = accepted.headers.get("location") or accepted.body.get("@odata.id")
        if not isinstance(monitor, str):
            return accepted  # accepted without a monitor: nothing to follow
        deadline = time.monotonic() + self.timeouts.task_deadline_s
        delay = 0.2
        while True:
            resp = await self._send("GET", monitor, operation)
            state = resp.body.get("TaskState")
            if resp.status != 202 and state not in ("New", "Starting", "Running", "Pending", "Stopping",
                                                    "Suspended", "Service"):
                if state in ("Exception", "Killed", "Cancelled", "Interrupted"):
                    msgs = _redfish_messages({"@Message.ExtendedInfo": resp.body.get("Messages")})
                    raise BmcError(f"task {monitor} ended {state}: {'; '.join(msgs) or 'no message'}",
                                   bmc=self.bmc, operation=operation)
                return resp
            if time.monotonic() + delay > deadline:
                raise BmcError(f"task {monitor} still {state or 'running'} after "
                               f"{self.timeouts.task_deadline_s:g} s", bmc=self.bmc, operation=operation,
                               transient=True)
            wait = _parse_retry_after(resp.headers.get("retry-after"), time.time())
            await asyncio.sleep(min(wait, self.retry.retry_after_cap_s) if wait is not None else delay)
            delay = min(delay * 2, 5.0)

    async def _send(self, method: str, path: str, operation: str, *, body: Mapping[str, Any] | None = None,
                    etag: str | None = None, idempotent: bool | None = None,
                    auth: bool = True, read_timeout_s: float | None = None) -> RedfishResponse:
        url = self.url(path)
        if idempotent is None:
            idempotent = method in ("GET", "HEAD", "DELETE", "PUT")
        headers = {"Accept": "application/json", "OData-Version": "4.0", "User-Agent": USER_AGENT}
        if self.operation_id:
            headers[OPERATION_HEADER] = self.operation_id
        if etag and method == "PATCH":
            headers["If-Match"] = etag
        content: bytes | None = None
        if body is not None:
            content = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        deadline = self.timeouts.call_deadline_s
        timeout: httpx.Timeout | None = None
        if read_timeout_s is not None:
            timeout = httpx.Timeout(connect=self.timeouts.connect_s, read=read_timeout_s,
                                    write=self.timeouts.write_s, pool=self.timeouts.pool_s)
            deadline = max(deadline, read_timeout_s + self.timeouts.connect_s + self.timeouts.write_s)
        try:
            async with asyncio.timeout(deadline):
                return await self._attempts(method, url, operation, headers, content, idempotent, auth, timeout)
        except TimeoutError:
            raise BmcError(f"{method} {url}: no answer within the call deadline of {deadline:g} s",
                           bmc=self.bmc, operation=operation, transient=True,
                           attempts=self.retry.attempts) from None  # the call's time is used up

    async def _attempts(self, method: str, url: str, operation: str, headers: dict[str, str],
                        content: bytes | None, idempotent: bool, auth: bool,
                        timeout: httpx.Timeout | None) -> RedfishResponse:
        attempt = 0
        while True:
            attempt += 1
            err: BmcError
            wait: float | None = None
            try:
                if auth:
                    headers = {**headers, **self._auth_headers()}
                if isinstance(self.client, PooledClient):
                    r = await self.client.send_direct(method, url, headers, content, timeout,
                                                      self._pool_ext[POOL_KEY])
                else:
                    r = await self.client.request(method, url, headers=headers, content=content,
                                                  timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                                                  extensions=self._pool_ext)
            except PinMismatch as e:
                raise BmcError(f"{method} {url}: TLS {e}; the BMC certificate changed or this is not the "
                               "BMC: update bmc.tls.fingerprint only after checking",
                               bmc=self.bmc, operation=operation) from None
            except httpx.ConnectError as e:
                err = self._transport_error(method, url, operation, "cannot connect", e)
                if _is_cert_failure(e):
                    raise BmcError(f"{method} {url}: TLS verification failed ({e}); set bmc.tls.ca_file "
                                   "or bmc.tls.fingerprint for this BMC", bmc=self.bmc,
                                   operation=operation) from None
            except httpx.TimeoutException as e:
                err = self._transport_error(method, url, operation, "timed out", e)
                err.attempts = attempt
                if not idempotent and not isinstance(e, httpx.ConnectTimeout | httpx.PoolTimeout):
                    raise err from None  # the action may have been applied: do not repeat it
            except (httpx.TransportError, ssl.SSLError, OSError) as e:
                # ssl.SSLError / OSError: a TLS alert or reset surfacing on a read, unmapped by httpcore
                err = self._transport_error(method, url, operation, "transport error", e)
                err.attempts = attempt
                if not idempotent:
                    raise err from None
            else:
                if r.status_code < 400:
                    return self._parse_ok(r, method, url, operation)
                err = error_from_response(r.status_code, r.content, bmc=self.bmc, operation=operation,
                                          method=method, url=url)
                err.attempts = attempt
                if r.status_code == 503:
                    wait = _parse_retry_after(r.headers.get("retry-after"), time.time())
                    if wait is not None:
                        wait = min(wait, self.retry.retry_after_cap_s)
                elif not err.transient or not idempotent:
                    raise err
            err.attempts = attempt
            if attempt >= self.retry.attempts:
                raise err
            delay = wait if wait is not None else self.retry.delay(attempt)
            log.debug("BMC %s: %s %s attempt %d failed (%s); retrying in %.1f s", self.bmc, method, url,
                      attempt, err, delay)
            await asyncio.sleep(delay)

    def _transport_error(self, method: str, url: str, operation: str, what: str,
                         e: Exception) -> BmcError:
        detail = str(e) or type(e).__name__
        return BmcError(f"{method} {url}: {what} ({detail})", bmc=self.bmc, operation=operation,
                        transient=True)

    def _parse_ok(self, r: httpx.Response, method: str, url: str, operation: str) -> RedfishResponse:
        hdrs = {k.lower(): v for k, v in r.headers.items()}
        if r.status_code == 204 or not r.content.strip():
            return RedfishResponse(r.status_code, {}, hdrs, url)
        ctype = r.headers.get("content-type", "")
        if not _is_json_type(ctype):
            raise BmcError(f"{method} {url} -> HTTP {r.status_code} with content type {ctype or '(none)'!r}, "
                           "expected application/json: is this URL a Redfish service?",
                           bmc=self.bmc, operation=operation, status=r.status_code)
        try:
            body = json.loads(r.content)
        except ValueError as e:
            raise BmcError(f"{method} {url} -> HTTP {r.status_code}: malformed JSON ({e})", bmc=self.bmc,
                           operation=operation, status=r.status_code) from None
        if not isinstance(body, dict):
            raise BmcError(f"{method} {url} -> HTTP {r.status_code}: expected a JSON object, got "
                           f"{type(body).__name__}", bmc=self.bmc, operation=operation, status=r.status_code)
        return RedfishResponse(r.status_code, body, hdrs, url)

    async def aclose(self) -> None:
        """Log out of the session, if one was created (best effort: the BMC expires it anyway)."""
        sess, self._session = self._session, None
        self._auth_decided = False
        if sess is not None and sess.location:
            try:
                url, headers = self.url(sess.location), {"X-Auth-Token": sess.token, "User-Agent": USER_AGENT}
                if isinstance(self.client, PooledClient):
                    await asyncio.wait_for(self.client.send_direct("DELETE", url, headers, None, None,
                                                                   self._pool_ext[POOL_KEY]), 5.0)
                else:
                    await asyncio.wait_for(self.client.delete(url, headers=headers), 5.0)
            except (httpx.HTTPError, TimeoutError, BmcError, PinMismatch):
                log.debug("BMC %s: session logout failed; it will expire on the BMC", self.bmc)
        if isinstance(self.client, PooledClient):
            await self.client.pools.release(self._pool_ext[POOL_KEY])


def _is_cert_failure(e: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            return True
        cur = cur.__cause__ or cur.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(e)


def connector_for_node(node: Node, clients: BmcClients, *, resolver: BmcUrlResolver = bmc_base_url,
                       operation_id: str | None = None, environ: Mapping[str, str] | None = None,
                       base_dir: Path | None = None, retry: RetryPolicy | None = None,
                       auth: AuthMode = "auto") -> Connector:
    """A connector to ``node``'s BMC: URL from ``resolver``, password resolved now, a pooled client
    for the node's trust settings. ``operation_id`` is sent on every request as
    ``X-Edgefleet-Operation``."""
    if node.bmc is None:
        raise BmcError("the node has no bmc section in the inventory", bmc=node.name, operation="configure")
    base = resolver(node)
    if base.startswith("http://") and not node.bmc.allow_http and base == node.bmc.url:
        raise BmcError(f"{base} is plain http: credentials would travel in clear text; use https or set "
                       "bmc.allow_http: true for this node", bmc=node.name, operation="configure")
    password = resolve_password(node.name, node.bmc.credentials, environ=environ, base_dir=base_dir)
    try:
        client = clients.for_tls(node.bmc.tls)
    except BmcError as e:
        raise BmcError(str(e), bmc=node.name, operation=e.operation) from None
    return Connector(base_url=base, bmc=node.name, username=node.bmc.credentials.username, password=password,
                     client=client, tls=node.bmc.tls, timeouts=clients.timeouts,
                     retry=retry or RetryPolicy(), operation_id=operation_id, auth=auth)
