"""The one choke point for all BMC HTTP: every Redfish request edgefleet makes goes through
``Connector.request``.

It owns, in one place:

* connections: an ``httpx.AsyncClient`` shared by every BMC with the same trust settings
  (``BmcClients``) over one small connection pool per BMC (``edgefleet.redfish.transport``: httpcore's
  pool costs O(connections) per request, which a pool shared by hundreds of BMCs turns into most of
  the orchestrator's CPU), explicit timeouts per attempt and a deadline per call, so nothing waits
  forever;
* trust: TLS verification on by default, with a per-store CA bundle (``BmcTls.ca_file``) or a pinned
  sha256 certificate fingerprint (``BmcTls.fingerprint``, checked right after the TLS handshake,
  before any credential is sent, in ``transport``); ``BmcTls.insecure`` opts out and is logged once
  per BMC;
* authentication: a Redfish session (``X-Auth-Token`` from the SessionService) when the BMC offers
  one, else HTTP basic auth; on a 401 with a session the session is re-created once;
* retries through the one retry policy (``edgefleet.retry``, ``RetryPolicy`` attempts and backoff),
  only for transient failures: connect errors, timeouts and 5xx (except 501), with a 503's
  ``Retry-After`` honoured up to a cap. A POST (an action, which may not be idempotent) is retried
  only when the request cannot have been processed (connect error, 503) unless the caller says it is
  idempotent;
* errors: every failure becomes a ``BmcError`` naming the BMC and the operation, with ``transient``
  and ``status`` set; Redfish error bodies (``error.@Message.ExtendedInfo``) are parsed in exactly
  one place, ``responses.error_from_response``;
* ``If-Match`` on PATCH when the caller has an ETag, and 202 + task-monitor polling with a deadline
  (the monitor is a read: a transient failure reading it is read again until that deadline; the
  action is never sent again).

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
import json
import logging
import os
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from edgefleet.errors import BmcError
from edgefleet.inventory.model import BmcTls, CredentialsRef, Node
from edgefleet.redfish.responses import (
    RedfishResponse,
    error_from_response,
    parse_retry_after,
    parse_success,
    redfish_messages,
)
from edgefleet.redfish.transport import POOL_KEY, BmcClients, PinMismatch, PooledClient, Timeouts, is_cert_failure
from edgefleet.retry import RetryPolicy, is_transient, retrying

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

_insecure_logged: set[str] = set()


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
# The connector


@dataclass
class _Tries:
    """How one call's tries went: how many were sent, whether the last failure may be repeated
    (an action that may have been applied may not), and the wait its answer asked for."""

    count: int = 0
    repeatable: bool = False
    hint: float | None = None


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
            # The monitor is a read: a transient failure is read again until the task's deadline.
            resp = await retrying(self.retry.within(deadline - time.monotonic()),
                                  lambda: self._send("GET", monitor, operation))
            state = resp.body.get("TaskState")
            if resp.status != 202 and state not in ("New", "Starting", "Running", "Pending", "Stopping",
                                                    "Suspended", "Service"):
                if state in ("Exception", "Killed", "Cancelled", "Interrupted"):
                    msgs = redfish_messages({"@Message.ExtendedInfo": resp.body.get("Messages")})
                    raise BmcError(f"task {monitor} ended {state}: {'; '.join(msgs) or 'no message'}",
                                   bmc=self.bmc, operation=operation)
                return resp
            if time.monotonic() + delay > deadline:
                raise BmcError(f"task {monitor} still {state or 'running'} after "
                               f"{self.timeouts.task_deadline_s:g} s", bmc=self.bmc, operation=operation,
                               transient=True)
            wait = parse_retry_after(resp.headers.get("retry-after"), time.time())
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
        tries = _Tries()
        try:
            async with asyncio.timeout(deadline):
                return await self._attempts(method, url, operation, headers, content, idempotent, auth, timeout,
                                            tries)
        except TimeoutError:
            # The call's time is used up: it counts as every attempt the policy allows.
            raise BmcError(f"{method} {url}: no answer within the call deadline of {deadline:g} s",
                           bmc=self.bmc, operation=operation, transient=True,
                           attempts=self.retry.attempts or tries.count) from None

    async def _attempts(self, method: str, url: str, operation: str, headers: dict[str, str],
                        content: bytes | None, idempotent: bool, auth: bool,
                        timeout: httpx.Timeout | None, tries: _Tries) -> RedfishResponse:
        """The request, tried again as ``self.retry`` allows (``edgefleet.retry``): a transient
        failure is repeated when the request is idempotent or cannot have been processed."""

        async def once() -> RedfishResponse:
            tries.count += 1
            tries.repeatable, tries.hint = False, None
            try:
                return await self._attempt(method, url, operation, headers, content, idempotent, auth, timeout,
                                           tries)
            except BmcError as e:
                e.attempts = tries.count
                raise

        def log_retry(attempt: int, err: BaseException, delay: float) -> None:
            log.debug("BMC %s: %s %s attempt %d failed (%s); retrying in %.1f s", self.bmc, method, url,
                      attempt, err, delay)

        return await retrying(self.retry, once, retry_if=lambda e: tries.repeatable and is_transient(e),
                              wait_hint=lambda e: tries.hint, before_sleep=log_retry)

    async def _attempt(self, method: str, url: str, operation: str, headers: dict[str, str],
                       content: bytes | None, idempotent: bool, auth: bool, timeout: httpx.Timeout | None,
                       tries: _Tries) -> RedfishResponse:
        """One try; a failure says in ``tries`` whether it may be repeated and after how long."""
        try:
            if auth:
                headers = {**headers, **self._auth_headers()}
            if isinstance(self.client, PooledClient):
                r = await self.client.send_direct(method, url, headers, content, timeout, self._pool_ext[POOL_KEY])
            else:
                r = await self.client.request(method, url, headers=headers, content=content,
                                              timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                                              extensions=self._pool_ext)
        except PinMismatch as e:
            raise BmcError(f"{method} {url}: TLS {e}; the BMC certificate changed or this is not the "
                           "BMC: update bmc.tls.fingerprint only after checking",
                           bmc=self.bmc, operation=operation) from None
        except httpx.ConnectError as e:
            if is_cert_failure(e):
                raise BmcError(f"{method} {url}: TLS verification failed ({e}); set bmc.tls.ca_file "
                               "or bmc.tls.fingerprint for this BMC", bmc=self.bmc, operation=operation) from None
            tries.repeatable = True  # nothing was sent
            raise self._transport_error(method, url, operation, "cannot connect", e) from None
        except httpx.TimeoutException as e:
            # An action that timed out reading its answer may have been applied: not repeated.
            tries.repeatable = idempotent or isinstance(e, httpx.ConnectTimeout | httpx.PoolTimeout)
            raise self._transport_error(method, url, operation, "timed out", e) from None
        except (httpx.TransportError, ssl.SSLError, OSError) as e:
            # ssl.SSLError / OSError: a TLS alert or reset surfacing on a read, unmapped by httpcore
            tries.repeatable = idempotent
            raise self._transport_error(method, url, operation, "transport error", e) from None
        if r.status_code < 400:
            return parse_success(r.status_code, r.headers, r.content, method=method, url=url, bmc=self.bmc,
                                 operation=operation)
        err = error_from_response(r.status_code, r.content, bmc=self.bmc, operation=operation,
                                  method=method, url=url)
        if r.status_code == 503:  # not processed: repeated for any method, after its Retry-After
            tries.repeatable = True
            tries.hint = parse_retry_after(r.headers.get("retry-after"), time.time())
        else:
            tries.repeatable = idempotent
        raise err

    def _transport_error(self, method: str, url: str, operation: str, what: str,
                         e: Exception) -> BmcError:
        detail = str(e) or type(e).__name__
        return BmcError(f"{method} {url}: {what} ({detail})", bmc=self.bmc, operation=operation,
                        transient=True)

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
