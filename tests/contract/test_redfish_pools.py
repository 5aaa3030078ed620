"""The connector's connection handling against a raw HTTP/1.1 server on 127.0.0.1 that records which
TCP connection carried each request: one small pool per BMC (two BMCs behind one host and port
never share a connection, one BMC reuses its own), a BMC's connections closed when its connector
closes, idle BMC pools bounded, no cookie carried from one BMC to another, and the headers every
request carries. Plus the driver's read-back of a boot override from a PATCH that answers 200 with
the resource, and its refusal when that body says the change did not take.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from edgefleet.errors import BmcError
from edgefleet.inventory.model import BmcTls
from edgefleet.redfish import OPERATION_HEADER, BmcClients, Connector, RedfishDriver, Timeouts

PASSWORD = "pools-Secret-1a2b3c"
T = Timeouts(connect_s=1, read_s=2, write_s=1, pool_s=1, call_deadline_s=5, task_deadline_s=3)


@dataclass
class Seen:
    conn: int  # which accepted TCP connection carried the request
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Wire:
    url: str
    seen: list[Seen] = field(default_factory=list)
    closed: set[int] = field(default_factory=set)  # connections the client closed (EOF seen)


Answer = Callable[[Seen], tuple[int, dict[str, Any] | None, dict[str, str]]]


def _json_ok(req: Seen) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
    return 200, {"@odata.id": req.path}, {}


@asynccontextmanager
async def wire_server(answer: Answer = _json_ok) -> AsyncIterator[Wire]:
    counter = 0
    wire = Wire(url="")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal counter
        counter += 1
        me = counter
        try:
            while True:
                line = await reader.readline()
                if not line:
                    wire.closed.add(me)
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    k, v = h.decode("latin-1").split(":", 1)
                    headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                req = Seen(me, method, target.split("?")[0], headers, body)
                wire.seen.append(req)
                status, payload, extra = answer(req)
                data = b"" if payload is None else json.dumps(payload).encode()
                hdrs = {"Content-Length": str(len(data)), **extra}
                if data:
                    hdrs["Content-Type"] = "application/json"
                head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
                writer.write(head.encode("latin-1") + data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            wire.closed.add(me)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    wire.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield wire
    finally:
        server.close()
        await asyncio.sleep(0)


def connector(base: str, clients: BmcClients, bmc: str) -> Connector:
    return Connector(base_url=base, bmc=bmc, username="admin", password=PASSWORD, client=clients.for_tls(BmcTls()),
                     timeouts=T, auth="basic", operation_id="op-7")


async def _settle(cond: Callable[[], bool]) -> None:
    for _ in range(200):  # the server sees an EOF a loop iteration or two after the close
        if cond():
            return
        await asyncio.sleep(0.01)


def test_each_bmc_gets_its_own_connection_and_reuses_it() -> None:
    async def go() -> None:
        async with wire_server() as wire, BmcClients(T) as clients:
            a = connector(f"{wire.url}/bmc/a", clients, "a")
            b = connector(f"{wire.url}/bmc/b", clients, "b")
            for i in range(3):
                await asyncio.gather(a.get(f"/redfish/v1/Systems/{i}", "read"),
                                     b.get(f"/redfish/v1/Systems/{i}", "read"))
            conns_a = {s.conn for s in wire.seen if s.path.startswith("/bmc/a/")}
            conns_b = {s.conn for s in wire.seen if s.path.startswith("/bmc/b/")}
            assert len(conns_a) == 1 and len(conns_b) == 1, (conns_a, conns_b)
            assert conns_a.isdisjoint(conns_b)
            await a.aclose()  # closes a's connection, leaves b's
            await _settle(lambda: conns_a <= wire.closed)
            assert conns_a <= wire.closed and not conns_b & wire.closed
            await b.get("/redfish/v1/Systems/9", "read")
            assert wire.seen[-1].conn in conns_b
            await b.aclose()
            await _settle(lambda: conns_b <= wire.closed)
            assert conns_b <= wire.closed

    asyncio.run(go())


def test_idle_bmc_pools_are_bounded() -> None:
    async def go() -> None:
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=2, keepalive_expiry=30)
        async with wire_server() as wire, BmcClients(T, limits) as clients:
            conns = [connector(f"{wire.url}/bmc/n{i}", clients, f"n{i}") for i in range(6)]
            for c in conns:  # never closed: only the idle-pool bound limits open connections
                await c.get("/redfish/v1/", "read")
            opened = {s.conn for s in wire.seen}
            assert len(opened) == 6
            await _settle(lambda: len(opened - wire.closed) <= 3)
            # the newest pool plus at most max_keepalive_connections idle ones stay open
            assert len(opened - wire.closed) <= 3, (opened, wire.closed)
            # an evicted BMC simply connects again
            await conns[0].get("/redfish/v1/Systems", "read")
            assert wire.seen[-1].conn not in opened

    asyncio.run(go())


def test_headers_on_every_request_and_no_cookie_crosses_bmcs() -> None:
    def answer(req: Seen) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        return 200, {"Id": "x"}, {"Set-Cookie": "bmcsession=secret-of-a; Path=/"}

    async def go() -> None:
        async with wire_server(answer) as wire, BmcClients(T) as clients:
            a = connector(f"{wire.url}/bmc/a", clients, "a")
            b = connector(f"{wire.url}/bmc/b", clients, "b")
            await a.get("/redfish/v1/Systems", "read")
            await b.patch("/redfish/v1/Systems/1", {"Boot": {}}, "write", etag='W/"3"')
            await a.aclose()
            await b.aclose()
        first, second = wire.seen
        for s in (first, second):
            assert s.headers["accept"] == "application/json"
            assert s.headers["odata-version"] == "4.0"
            assert s.headers[OPERATION_HEADER.lower()] == "op-7"
            assert s.headers["authorization"].startswith("Basic ")
            assert s.headers["host"] == wire.url.removeprefix("http://")
            assert "cookie" not in s.headers
        assert second.method == "PATCH" and second.headers["if-match"] == 'W/"3"'
        assert second.headers["content-type"] == "application/json"
        assert json.loads(second.body) == {"Boot": {}}

    asyncio.run(go())


def _system(target: str, enabled: str, power: str = "On") -> dict[str, Any]:
    return {"@odata.id": "/redfish/v1/Systems/1", "Id": "1", "PowerState": power,
            "Boot": {"BootSourceOverrideTarget": target, "BootSourceOverrideEnabled": enabled},
            "Actions": {"#ComputerSystem.Reset": {"target": "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"}}}


def _bmc(patch_reply: dict[str, Any]) -> Answer:
    def answer(req: Seen) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        if req.path.endswith("/redfish/v1/"):
            return 200, {"Systems": {"@odata.id": "/redfish/v1/Systems"}}, {}
        if req.path.endswith("/Systems"):
            return 200, {"Members": [{"@odata.id": "/redfish/v1/Systems/1"}]}, {}
        if req.method == "PATCH":
            return 200, patch_reply, {}
        return 200, _system("None", "Disabled"), {}
    return answer


@pytest.mark.parametrize("patch_reply, error", [
    (_system("Cd", "Once"), None),
    (_system("Pxe", "Once"), "reads back target 'Pxe'"),
    (_system("Cd", "Continuous"), "reads back enabled 'Continuous'"),
])
def test_boot_override_read_back_from_the_patch_answer(patch_reply: dict[str, Any], error: str | None) -> None:
    async def go() -> None:
        async with wire_server(_bmc(patch_reply)) as wire, BmcClients(T) as clients:
            conn = connector(wire.url, clients, "n1")
            drv = RedfishDriver(conn)
            try:
                if error is None:
                    body = await drv.set_boot_once_cd()
                    assert body["Boot"]["BootSourceOverrideTarget"] == "Cd"
                else:
                    with pytest.raises(BmcError, match=error):
                        await drv.set_boot_once_cd()
            finally:
                await conn.aclose()
        after_patch = [s.method for s in wire.seen][[s.method for s in wire.seen].index("PATCH") + 1:]
        assert after_patch == []  # the 200 answer was the read-back: no GET after the PATCH

    asyncio.run(go())


def test_patch_without_body_is_read_back_with_a_get() -> None:
    state = {"target": "None"}

    def answer(req: Seen) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        if req.method == "PATCH":
            state["target"] = json.loads(req.body)["Boot"]["BootSourceOverrideTarget"]
            return 204, None, {}
        if req.path.endswith("/redfish/v1/"):
            return 200, {"Systems": {"@odata.id": "/redfish/v1/Systems"}}, {}
        if req.path.endswith("/Systems"):
            return 200, {"Members": [{"@odata.id": "/redfish/v1/Systems/1"}]}, {}
        return 200, _system(state["target"], "Once"), {}

    async def go() -> None:
        async with wire_server(answer) as wire, BmcClients(T) as clients:
            conn = connector(wire.url, clients, "n1")
            try:
                await RedfishDriver(conn).set_boot_once_cd()
            finally:
                await conn.aclose()
        methods = [s.method for s in wire.seen]
        assert methods[methods.index("PATCH") + 1:] == ["GET"]

    asyncio.run(go())
