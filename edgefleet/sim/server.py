"""The simulator's HTTP server: one asyncio process on 127.0.0.1 serving every BMC, every store's
Kubernetes API and the simulator's own API.

Routes::

    /bmc/<node>/redfish/v1/...        Redfish (edgefleet.sim.redfish), with the scenario's faults
    /k8s/<store>/readyz               200 "ok" / 503
    /k8s/<store>/api/v1/nodes         NodeList / 503
    /k8s/<store>/api/v1/nodes/<node>  Node; PATCH spec.unschedulable (cordon)
    /k8s/<store>/api/v1/pods          PodList (?fieldSelector=spec.nodeName=<node>)
    /k8s/<store>/api/v1/namespaces/<ns>/pods/<pod>/eviction   POST: 201 / 429 (disruption budget)
    /probes/<store>/<probe name>      the store's custom HTTP probes: their expected status / 503
    /sim/endpoints                    {"nodes": {node: bmc base URL}, "stores": {store: k8s base URL}} and,
                                      when the Talos API is served, "talos": {"endpoint", "ca_pem"}
    /sim/clock                        GET {"now", "time_scale"}; POST {"now": ISO 8601} jumps the clock
    /sim/state                        per node state (?store=ID or ?node=NAME narrows it)
    /sim/events                       the event log (?since=SEQ&limit=N&store=&node=&kind=)
    /sim/violations                   the oracle's violations
    /sim/report                       summary + violations (and BMC requests per operation and store)
    /sim/operations                   {operation id: {store: BMC requests carrying that operation id}}
    /sim/scenario                     GET the scenario; POST a JSON object of changes
    /sim/netseed                      GET the registered nocloud-net URLs (redacted); POST {node: URL or null}
                                      (edgefleet.sim.netseed)
    /sim/oracle                       the declared release trains (each stage's verdict now) and release states
    /sim/oracle/train                 POST {"release", "stages": [[store, ...], ...], "soak_s"}: declare a train
    /sim/oracle/release               POST {"release", "state"}: a release's catalog state from now on
                                      (edgefleet.sim.oracle_trains)

Server: Starlette on uvicorn (both come with prefect, so no new dependency): the BMC route is a
plain ASGI endpoint (no per-request Request/Response objects on the hot path), the rest are
Starlette routes (``edgefleet.sim.routes``). A connection-reset fault sends the response head with
a Content-Length and then ends without the body: uvicorn closes the connection, and the client sees
the response cut off.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from edgefleet.sim.fleet import NodeState, SimFleet
from edgefleet.sim.redfish import OPERATION_HEADER, Reply, disruptive_action, error_reply, handle
from edgefleet.sim.routes import SimApi, StoreApis, json_bytes

__all__ = ["build_app", "listen_socket", "running_server", "serve"]

log = logging.getLogger("edgefleet.sim")
_MAX_BODY = 1024 * 1024
_OPERATION_HEADER = OPERATION_HEADER.encode()


class _QuietCutoff(logging.Filter):
    """Drop uvicorn's error line for the connection-reset fault we cause on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing response" not in record.getMessage()


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > _MAX_BODY:
            return b"\x00" * (_MAX_BODY + 1)
        chunks.append(chunk)
        if not msg.get("more_body", False):
            return b"".join(chunks)


async def _send_reply(send: Send, reply: Reply) -> None:
    headers = [(b"odata-version", b"4.0")]
    body = b""
    if reply.body is not None:
        body = json_bytes(reply.body)
        headers.append((b"content-type", b"application/json; charset=utf-8"))
    headers.append((b"content-length", str(len(body)).encode()))
    headers.extend((k.lower().encode(), v.encode("latin-1")) for k, v in reply.headers.items())
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BmcEndpoint:
    """ASGI endpoint for ``/bmc/{node}/{rest:path}``."""

    def __init__(self, sim: SimFleet):
        self.sim = sim

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sim = self.sim
        params = scope["path_params"]
        node, rest = params["node"], params["rest"]
        ns = sim.nodes.get(node)
        raw = await _read_body(receive)
        if raw is None:
            return
        if ns is None:
            await _send_reply(send, error_reply(404, f"no simulated BMC for node {node!r}",
                                                "Base.1.8.ResourceMissingAtURI"))
            return
        if not (rest == "redfish" or rest.startswith("redfish/")):
            await _send_reply(send, error_reply(404, f"no resource at /bmc/{node}/{rest}",
                                                "Base.1.8.ResourceMissingAtURI"))
            return
        method = scope["method"]
        sim.requests[f"bmc {method}"] += 1
        sim.node_requests[(ns.name, f"bmc {method}")] += 1
        op = next((v for k, v in scope["headers"] if k == _OPERATION_HEADER), None)
        if op:
            sim.operation_requests[(op.decode("latin-1"), ns.store.id)] += 1
        if ns.store.id in sim.offline:
            await _send_reply(send, error_reply(503, f"store {ns.store.id} is offline (simulated)",
                                                "Base.1.8.ServiceTemporarilyUnavailable"))
            return
        if rest == "redfish":
            await _send_reply(send, Reply(200, {"v1": f"/bmc/{node}/redfish/v1/"}))
            return
        if await self._fault(send, node, ns, op, method, rest, raw):
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        sub = rest[len("redfish/v1"):] if rest.startswith("redfish/v1") else None
        if sub is None:
            await _send_reply(send, error_reply(404, f"no resource at /bmc/{node}/{rest}",
                                                "Base.1.8.ResourceMissingAtURI"))
            return
        if len(raw) > _MAX_BODY:
            await _send_reply(send, error_reply(413, "request body too large", "Base.1.8.GeneralError"))
            return
        reply = await handle(sim, ns, method, sub, headers, raw)
        await _send_reply(send, reply)

    async def _fault(self, send: Send, node: str, ns: NodeState, op: bytes | None, method: str, rest: str,
                     raw: bytes) -> bool:
        """The scenario's BMC faults (a hang, a cut connection, a 5xx, a burst of 5xx): whether one
        answered the request."""
        sim = self.sim
        sc = sim.scenario
        fault = next((kind for kind, rate in (("timeout", sc.bmc_timeout_rate), ("reset", sc.bmc_reset_rate),
                                              ("error", sc.bmc_error_rate)) if sim.roll(rate)), None)
        if fault is not None:
            # A failed disruptive request was still sent (a real BMC may have acted on it): the oracle hears of it.
            action = disruptive_action(ns, method, rest, raw)
            if action is not None:
                sim.disruptive_request(ns, op.decode("latin-1") if op else None, action)
        if fault == "timeout":
            sim.faults["bmc_timeout"] += 1
            sim.event("fault", node=ns, detail={"fault": "timeout", "method": method, "path": rest})
            await asyncio.sleep(sc.bmc_timeout_seconds)
            await _send_reply(send, error_reply(503, "the BMC did not answer in time (simulated hang)",
                                                "Base.1.8.ServiceTemporarilyUnavailable"))
            return True
        if fault == "reset":
            sim.faults["bmc_reset"] += 1
            sim.event("fault", node=ns, detail={"fault": "connection reset", "method": method, "path": rest})
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")]})
            return True  # uvicorn closes the connection: the body never comes
        if fault == "error":
            sim.faults["bmc_error"] += 1
            sim.event("fault", node=ns, detail={"fault": "5xx", "method": method, "path": rest})
            await _send_reply(send, error_reply(500, "internal BMC error (simulated)", "Base.1.8.InternalError"))
            return True
        if sim.burst_fault(node, method, rest):
            sim.faults["bmc_burst"] += 1
            sim.event("fault", node=ns, detail={"fault": "5xx burst", "method": method, "path": rest})
            await _send_reply(send, error_reply(500, "internal BMC error (simulated burst)", "Base.1.8.InternalError"))
            return True
        return False


def build_app(sim: SimFleet, talos: Mapping[str, str] | None = None) -> Starlette:
    """The simulator's routes: the BMCs here, the stores' APIs and the simulator's own API from
    ``edgefleet.sim.routes``. ``talos``: the simulated Talos API to list in ``/sim/endpoints``
    (``endpoint`` and ``ca_pem``)."""
    routes = [
        Route("/bmc/{node}/{rest:path}", BmcEndpoint(sim), methods=["GET", "POST", "PATCH", "DELETE", "PUT"]),
        *StoreApis(sim).routes(),
        *SimApi(sim, talos).routes(),
    ]
    return Starlette(routes=routes)


def listen_socket(port: int) -> socket.socket:
    """A listening TCP socket on 127.0.0.1 (port 0: any free port)."""
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it every response (head and body are two writes) waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def _server(sim: SimFleet, talos: Mapping[str, str] | None = None) -> uvicorn.Server:
    logging.getLogger("uvicorn.error").addFilter(_QuietCutoff())
    config = uvicorn.Config(build_app(sim, talos), log_level="warning", access_log=False, lifespan="off",
                            timeout_keep_alive=30, backlog=4096, http="h11")
    return uvicorn.Server(config)


@asynccontextmanager
async def running_server(sim: SimFleet, port: int = 0, talos: Mapping[str, str] | None = None
                         ) -> AsyncIterator[str]:
    """Run the simulator on the current loop; yields its base URL (``http://127.0.0.1:PORT``).
    ``talos``: the running simulated Talos API to list in ``/sim/endpoints`` (see ``build_app``)."""
    sock = listen_socket(port)
    server = _server(sim, talos)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sim.close()
        await sim.fetcher.client.aclose()
        sock.close()


def new_media_client() -> httpx.AsyncClient:
    """The client InsertMedia downloads with: bounded pool, explicit timeouts, no proxies."""
    return httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=60.0), trust_env=False,
                             limits=httpx.Limits(max_connections=16, max_keepalive_connections=16))


async def serve(sim: SimFleet, port: int, *, announce: bool = True, talos_port: int | None = None) -> None:
    """Serve until cancelled (Ctrl-C). Prints the base URL first when ``announce``. With
    ``talos_port`` the nodes' Talos API is served too (gRPC, mTLS) and clusters form only on Bootstrap."""
    from edgefleet.sim.talos_serve import running_talos_api

    sock = listen_socket(port)
    if announce:
        print(f"edgefleet sim: listening on http://127.0.0.1:{sock.getsockname()[1]} "
              f"({len(sim.store_nodes)} stores, {len(sim.nodes)} BMCs)", flush=True)
    try:
        if talos_port is None:
            await _server(sim).serve(sockets=[sock])
        else:
            async with running_talos_api(sim, port=talos_port, announce=announce) as api:
                talos = {"endpoint": api.endpoint, "ca_pem": api.ca_pem.decode()}
                await _server(sim, talos).serve(sockets=[sock])
    finally:
        sim.close()
        await sim.fetcher.client.aclose()
        sock.close()
