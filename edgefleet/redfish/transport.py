"""How edgefleet's HTTP reaches BMCs (and the stores' plain-http Kubernetes APIs in the simulator):
TLS trust, certificate pinning, plain asyncio streams under httpcore, and one small connection pool
per BMC. The Redfish connector (``edgefleet.redfish.connector``) is its only user for Redfish; it
speaks no Redfish itself.

* trust: ``_ssl_context`` from a node's ``BmcTls`` (CA bundle, pinned sha256 fingerprint checked
  right after the handshake and before any byte of a request, or verification off);
* ``BmcClients``: one ``PooledClient`` per distinct trust setting, each routing every request to
  its BMC's own pool (``_BmcPools``), so per-request bookkeeping stays constant however many BMCs
  are in flight;
* ``_RedactAuthHeaders``: httpcore's DEBUG trace never shows a session token or credential.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import re
import select
import ssl
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from edgefleet.errors import BmcError
from edgefleet.inventory.model import BmcTls

__all__ = ["POOL_KEY", "BmcClients", "PinMismatch", "PooledClient", "Timeouts", "is_cert_failure"]


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



def is_cert_failure(e: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            return True
        cur = cur.__cause__ or cur.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(e)

