"""The seed server's HTTP layer on Starlette and uvicorn (``edgefleet.seeds.server`` assembles it).

* ``AccessLogMiddleware``: one access-log line per request once its response is over (status and
  body bytes as sent, the path without its token), and a send timeout for clients that stop reading.
* ``TokenCheck``: a middleware that lets a request reach the endpoint only when its token grants its
  path (the decisions are ``edgefleet.seeds.tokens``), leaving what it grants in the request's
  ``RequestOutcome``; ``404`` for a path that cannot exist, ``403`` with the reason otherwise.
* ``GuardedH11``: uvicorn's h11 protocol with the limits uvicorn lacks (head timeout, head size,
  connection count), so that a slow or greedy client cannot hold the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any, ClassVar, Protocol, cast

import h11
import uvicorn
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

from edgefleet.errors import SeedError
from edgefleet.seeds.tokens import Grants, check_token, split_target

__all__ = [
    "AccessLog",
    "AccessLogMiddleware",
    "DynamicReply",
    "DynamicRoute",
    "GuardedH11",
    "Limits",
    "QuietUvicorn",
    "RequestOutcome",
    "TokenCheck",
    "error_response",
    "listen",
    "outcome_of",
]

_SENDFILE_CHUNK = 4 * 1024 * 1024
_STATE_KEY = "edgefleet.seeds"  # the request's RequestOutcome in scope["state"]


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


@dataclass
class RequestOutcome:
    """One request as the access log shows it, filled in by the middlewares and the endpoint; the
    token check leaves what the token granted in ``relpath`` (a file) or ``route`` + ``rest``."""

    status: int = 0
    sent: int = 0
    path: str = "-"
    node: str = "-"
    range: str = "-"
    relpath: str = ""
    route: DynamicRoute | None = None
    rest: tuple[str, ...] = ()
    finish: Callable[[], None] | None = None  # writes the access-log line (once)


def error_response(status: int, reason: str, headers: dict[str, str] | None = None) -> Response:
    return PlainTextResponse(f"{status} {HTTPStatus(status).phrase}: {reason}\n", status, headers=headers)


def outcome_of(scope: Scope) -> RequestOutcome:
    out = scope.setdefault("state", {}).get(_STATE_KEY)
    if out is None:
        out = scope["state"][_STATE_KEY] = RequestOutcome()
    assert isinstance(out, RequestOutcome)
    return out



# --- the access log ------------------------------------------------------------------------------


_UNSAFE = re.compile(r"[^\x21-\x7e]")


def _clean(text: str) -> str:
    """One access-log field: no spaces or control characters (a path cannot forge a log line)."""
    return _UNSAFE.sub(lambda m: f"%{ord(m.group()) & 0xFF:02X}", text) or "-"


class AccessLog:
    """The access-log file: one line per request, flushed at once; not opened, no lines."""

    def __init__(self) -> None:
        self._fh: IO[str] | None = None

    def open(self, path: Path | None) -> None:
        self.close()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = path.open("a", encoding="utf-8")

    def write(self, client: str, method: str, out: RequestOutcome, started: float) -> None:
        if self._fh is None:
            return
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        dur = (time.monotonic() - started) * 1000 if started else 0.0
        fields = [now, client, _clean(method), _clean(out.path), str(out.status), str(out.sent), _clean(out.range),
                  f"node={_clean(out.node)}", f"{dur:.1f}ms"]
        self._fh.write(" ".join(fields) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class AccessLogMiddleware:
    """Logs every request when its response is over (status and body bytes as sent), and drops a
    client that stops reading: each send must be taken within ``send_timeout_s``."""

    def __init__(self, app: ASGIApp, *, log: AccessLog, send_timeout_s: float):
        self.app = app
        self.log = log
        self.send_timeout_s = send_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        out = outcome_of(scope)
        logged = False

        def write_log() -> None:
            nonlocal logged
            if not logged:
                logged = True
                client = scope.get("client")
                self.log.write(f"{client[0]}:{client[1]}" if client else "-", scope["method"], out, started)

        async def counted(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                out.status = message["status"]
            elif kind == "http.response.body" and scope["method"] != "HEAD":
                out.sent += len(message.get("body", b""))
            elif kind == "http.response.pathsend":
                # The whole file by sendfile: the protocol times each chunk, counts the bytes
                # and writes the log line (out.finish) before the last byte.
                out.finish = write_log
                await send(message)
                return
            if kind == "http.response.body" and not message.get("more_body", False):
                # Before the last bytes go out, not when the app returns: by then the client may
                # have read the response and had its next request answered (and logged).
                write_log()
            async with asyncio.timeout(self.send_timeout_s):
                await send(message)

        try:
            await self.app(scope, receive, counted)
        except TimeoutError:
            pass  # the client stopped reading; uvicorn closes the connection (response incomplete)
        finally:
            write_log()


# --- the token check -----------------------------------------------------------------------------


def refusal(scope: Scope) -> Response | None:
    """What is wrong with a request before its path is read: method, HTTP version, a body."""
    if scope["http_version"] not in ("1.0", "1.1"):
        return error_response(505, "only HTTP/1.0 and HTTP/1.1")
    if scope["method"] not in ("GET", "HEAD"):
        return error_response(405, "only GET and HEAD", {"Allow": "GET, HEAD", "Connection": "close"})
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"", b"0")):
            return error_response(400, "request bodies are not accepted", {"Connection": "close"})
    return None


class TokenCheck:
    """Lets a request through to the endpoint only when its token grants its path (a file under
    the root, or a dynamic route's scope), and records in the request's ``RequestOutcome`` what it
    grants; answers ``404`` for a path that cannot exist and ``403`` (with the reason) otherwise."""

    def __init__(self, app: ASGIApp, *, secret: bytes, grants: Grants, dynamic: Mapping[str, DynamicRoute],
                 clock: Callable[[], datetime]):
        self.app = app
        self.secret = secret
        self.grants = grants
        self.dynamic = dynamic
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = refusal(scope) or self._check(scope, outcome_of(scope))
        if refused is not None:
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope, out: RequestOutcome) -> Response | None:
        target = split_target(scope.get("raw_path", scope["path"].encode()).decode("latin-1"))
        if target is not None:
            out.path = target.shown
        if target is None or target.relpath is None:
            return error_response(404, "not found")
        segs = target.segments
        now = self.clock().timestamp()
        route = self.dynamic.get(segs[0]) if len(segs) > 1 else None
        if route is not None:
            granted = route.scope(segs[1:])
            if granted is None:
                return error_response(404, "not found")
            node, why = check_token(self.secret, target.token, granted, now)
            out.route, out.rest = route, tuple(segs[1:])
        else:
            node, why = self.grants.check(self.secret, target.token, target.relpath, now)
            out.relpath = target.relpath
        if node is None:
            return error_response(403, why)
        out.node = node
        return None



# --- the connection guard ------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    max_connections: int
    max_head_bytes: int
    header_timeout_s: float
    send_timeout_s: float
    log: Callable[[str, int], None]


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with the limits uvicorn lacks: a request head must arrive within
    ``header_timeout_s`` (``408``) and stay under ``max_head_bytes`` (``431``); a connection beyond
    ``max_connections`` gets ``503``. ``limits`` is set on a subclass made per server.

    It also offers the ASGI ``http.response.pathsend`` extension, which Starlette's
    ``FileResponse`` uses for a whole file: the body goes out with ``sendfile`` (no copy through
    Python; a release image is hundreds of MiB), each 4 MiB within ``send_timeout_s``."""

    limits: ClassVar[Limits]
    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0
    _offered: RequestResponseCycle | None = None

    def handle_events(self) -> None:
        super().handle_events()
        cycle = self.cycle
        if cycle is not None and cycle is not self._offered:
            # A request just began: its task is created but has not run yet, so it still sees this.
            self._offered = cycle
            cycle.scope["extensions"] = {**cycle.scope.get("extensions", {}), "http.response.pathsend": {}}
            plain = cycle.send
            timeout = self.limits.send_timeout_s

            async def send(message: Any) -> None:
                if message["type"] == "http.response.pathsend":
                    await _send_file(cycle, message["path"], timeout)
                else:
                    await plain(message)

            cycle.send = send  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, "too many connections")
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # (the rest of) a request head
            if self._head_timer is None:
                self._arm()
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_head_bytes:
                self._refuse(431, "request head too large")
                return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "malformed request")

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._head_bytes = 0

    def _head_timeout(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self._refuse(408, "request head not received in time")

    def _refuse(self, status: int, reason: str) -> None:
        self._disarm()
        body = f"{status} {HTTPStatus(status).phrase}: {reason}\n".encode()
        head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        self.transport.write(head + body)
        self.transport.close()
        self.limits.log(f"{self.client[0]}:{self.client[1]}" if self.client else "-", status)


class _QuietDrop(logging.Filter):
    """Drop uvicorn's error line for a response we end on purpose (a client that stopped reading,
    already in the access log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing response" not in record.getMessage()


_QUIET_DROP = _QuietDrop()


class _Placeholder:
    """Stands for a file chunk in h11's framing (``send_with_data_passthrough``): h11 counts its
    length against the Content-Length, and the bytes themselves go out with ``sendfile``."""

    def __init__(self, length: int):
        self.length = length

    def __len__(self) -> int:
        return self.length


async def _send_file(cycle: RequestResponseCycle, path: str, timeout_s: float) -> None:
    """The body of a response whose head is sent: the file at ``path``, by ``sendfile``, then the
    end of the response. A client gone (or too slow) ends it early; uvicorn closes the connection.
    The request's access-log line is written just before the last byte goes out (once the client
    has the whole response, it may already be reading the log), with the bytes sent."""
    out = outcome_of(cast(Scope, cycle.scope))
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            pos = 0
            while pos < size:
                if cycle.disconnected:
                    return
                if cycle.flow.write_paused:
                    await cycle.flow.drain()
                chunk = min(_SENDFILE_CHUNK, size - 1 - pos) or 1  # the last byte goes on its own
                if pos + chunk == size and out.finish is not None:
                    out.sent = size
                    out.finish()
                await _send_chunk(cycle, fh, pos, chunk, timeout_s)
                pos += chunk
                out.sent = pos
    except (ConnectionError, TimeoutError, RuntimeError, h11.LocalProtocolError):
        # RuntimeError: the transport closed under sendfile; LocalProtocolError: the file is not
        # the length the response declared (replaced since). Either way the response cannot end well.
        cycle.transport.close()
        return
    await cycle.send({"type": "http.response.body", "body": b"", "more_body": False})


async def _send_chunk(cycle: RequestResponseCycle, fh: IO[bytes], pos: int, count: int, timeout_s: float) -> None:
    placeholder = _Placeholder(count)
    parts = cycle.conn.send_with_data_passthrough(h11.Data(data=placeholder))  # type: ignore[arg-type]
    for part in parts or ():
        if part is not placeholder:  # type: ignore[comparison-overlap]
            cycle.transport.write(part)
            continue
        async with asyncio.timeout(timeout_s):
            sent = await asyncio.get_running_loop().sendfile(cycle.transport, fh, pos, count)
        if sent != count:
            raise ConnectionError(f"{fh.name} shrank while being sent")


class QuietUvicorn(uvicorn.Server):
    """uvicorn without its signal handlers (the program that runs the seed server owns its
    signals) and without an error line per client dropped for not reading."""

    def __init__(self, config: uvicorn.Config):
        super().__init__(config)
        logging.getLogger("uvicorn.error").addFilter(_QUIET_DROP)  # the same filter once, however many servers

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise SeedError(f"seed server cannot listen on {host}:{port}: {exc.strerror}; choose another "
                        "address or port") from exc
    sock.setblocking(False)
    return sock


