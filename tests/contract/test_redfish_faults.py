"""Bad input from the wire, and the connector's protocol features, against a tiny raw HTTP/1.1
server on 127.0.0.1 (asyncio streams, written here so a test can make it misbehave at the byte
level): malformed JSON, a wrong content type, 401, 404 on a link, a hanging connection, resets,
503 + Retry-After, 5xx retries, session auth with re-login, ETag/If-Match, 202 task monitors, the
operation header, a path-prefixed base URL, VirtualMedia under Managers, single-slot BMCs and
Off/On resets. Each failure must be a BmcError naming the BMC and the operation, within a deadline.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from edgefleet.errors import BmcError
from edgefleet.inventory.model import Bmc, BmcTls, CredentialsRef, Node, Role
from edgefleet.redfish import (
    OPERATION_HEADER,
    BmcClients,
    Connector,
    PowerState,
    RedfishDriver,
    RetryPolicy,
    Timeouts,
    connector_for_node,
    reimage_sequence,
)
from edgefleet.redfish.connector import AuthMode

PASSWORD = "wire-Secret-9f8e7d"
TOKEN = "tok-5b0c1a2e3d4f"


@dataclass
class Req:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"{}")


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict -> JSON; bytes -> as is
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    action: str = ""  # "hang": never answer; "close": close without answering


Handler = Callable[[Req], Awaitable[Reply] | Reply]
REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 400: "Bad Request",
           401: "Unauthorized", 404: "Not Found", 412: "Precondition Failed", 500: "Internal Server Error",
           503: "Service Unavailable"}


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[tuple[str, list[Req]]]:
    """An HTTP/1.1 server with keep-alive on 127.0.0.1; yields (base URL, list of requests seen)."""
    seen: list[Req] = []
    hung: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    k, v = h.decode("latin-1").split(":", 1)
                    headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                req = Req(method, target, headers, body)
                seen.append(req)
                out = handler(req)
                reply = await out if asyncio.iscoroutine(out) else out
                assert isinstance(reply, Reply)
                if reply.action == "hang":
                    hung.append(writer)
                    await asyncio.sleep(3600)
                if reply.action == "close":
                    writer.close()
                    return
                data = reply.body if isinstance(reply.body, bytes) else (
                    b"" if reply.body is None else json.dumps(reply.body).encode())
                hdrs = {"Content-Length": str(len(data)), **reply.headers}
                if data:
                    hdrs.setdefault("Content-Type", reply.content_type)
                head = f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'X')}\r\n" + "".join(
                    f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
                writer.write(head.encode("latin-1") + data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        server.close()
        for w in hung:
            w.close()
        # close_clients exists from 3.13; the hung handlers are cancelled with the loop otherwise
        await asyncio.sleep(0)


T = Timeouts(connect_s=1, read_s=2, write_s=1, pool_s=1, call_deadline_s=5, task_deadline_s=3)


def connector(url: str, clients: BmcClients, *, bmc: str = "bmc-test", auth: AuthMode = "basic",
              attempts: int = 3, operation_id: str | None = None, deadline_s: float = 5.0) -> Connector:
    return Connector(base_url=url, bmc=bmc, username="admin", password=PASSWORD, client=clients.for_tls(BmcTls()),
                     timeouts=replace(T, call_deadline_s=deadline_s),
                     retry=RetryPolicy(attempts=attempts, backoff_s=0.05, backoff_max_s=0.2, retry_after_cap_s=0.5),
                     operation_id=operation_id, auth=auth)


def run(coro: Awaitable[Any]) -> Any:
    async def wrapped() -> Any:
        return await asyncio.wait_for(coro, 30)  # a hang in the code under test fails, never blocks

    return asyncio.run(wrapped())


ROOT = {"@odata.id": "/redfish/v1/", "Systems": {"@odata.id": "/redfish/v1/Systems"},
        "Managers": {"@odata.id": "/redfish/v1/Managers"}}


# -- bad input from the wire -------------------------------------------------------------------


@pytest.mark.parametrize("reply, expect", [
    (Reply(body=b"{\"PowerState\": \"On\",,}"), "malformed JSON"),
    (Reply(body=b"<html>login</html>", content_type="text/html"), "content type"),
    (Reply(body=b"[1, 2]"), "expected a JSON object"),
    (Reply(401, {"error": {"code": "Base.1.0.GeneralError", "message": "Authentication required",
                           "@Message.ExtendedInfo": [{"MessageId": "Base.1.0.NoValidSession",
                                                      "Message": "There is no valid session"}]}}),
     "There is no valid session"),
])
def test_bad_replies_are_typed(reply: Reply, expect: str) -> None:
    async def main() -> None:
        async with raw_server(lambda r: reply) as (url, _), BmcClients(T) as clients:
            c = connector(url, clients)
            with pytest.raises(BmcError) as ei:
                await c.get("/redfish/v1/Systems/1", "get power state")
            e = ei.value
            assert e.bmc == "bmc-test" and e.operation == "get power state" and not e.transient
            assert expect in str(e) and str(e).startswith("BMC bmc-test: get power state: ")
            assert PASSWORD not in str(e)

    run(main())


def test_404_on_a_link_names_bmc_and_operation() -> None:
    def handler(r: Req) -> Reply:
        if r.path == "/redfish/v1/":
            return Reply(body=ROOT)
        if r.path == "/redfish/v1/Systems":
            return Reply(body={"Members": [{"@odata.id": "/redfish/v1/Systems/gone"}]})
        return Reply(404, {"error": {"message": "Resource not found",
                                     "@Message.ExtendedInfo": [{"Message": "The resource gone was not found",
                                                                "Resolution": "Check the URI"}]}})

    async def main() -> None:
        async with raw_server(handler) as (url, seen), BmcClients(T) as clients:
            drv = RedfishDriver(connector(url, clients))
            with pytest.raises(BmcError) as ei:
                await drv.power_state()
            e = ei.value
            assert e.status == 404 and not e.transient and e.operation == "find the system"
            assert "The resource gone was not found (resolution: Check the URI)" in str(e)
            assert sum(r.path == "/redfish/v1/Systems/gone" for r in seen) == 1  # 404 is not retried

    run(main())


def test_hanging_connection_ends_in_a_transient_error_within_the_deadline() -> None:
    async def main() -> None:
        async with raw_server(lambda r: Reply(action="hang")) as (url, _), BmcClients(T) as clients:
            c = connector(url, clients, deadline_s=1.5, attempts=5)
            t0 = time.monotonic()
            with pytest.raises(BmcError) as ei:
                await c.get("/redfish/v1/Systems/1", "get power state")
            elapsed = time.monotonic() - t0
            assert ei.value.transient and ei.value.operation == "get power state"
            assert "call deadline" in str(ei.value) and elapsed < 2.5

    run(main())


def test_hang_after_accept_without_reading() -> None:
    """A listener that accepts and never reads or answers (the raw socket case)."""
    async def main() -> None:
        conns: list[asyncio.StreamWriter] = []

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conns.append(writer)

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            async with BmcClients(T) as clients:
                c = connector(url, clients, deadline_s=1.0)
                t0 = time.monotonic()
                with pytest.raises(BmcError) as ei:
                    await RedfishDriver(c).power_state()
                assert time.monotonic() - t0 < 2.0 and ei.value.transient
                assert ei.value.operation == "find the system" and ei.value.bmc == "bmc-test"
        finally:
            for w in conns:
                w.close()
            server.close()

    run(main())


def test_service_root_behind_auth_is_asked_again_with_credentials() -> None:
    def handler(r: Req) -> Reply:
        if "authorization" not in r.headers:
            return Reply(401, {"error": {"message": "login required"}})
        if r.path == "/redfish/v1/":
            return Reply(body=ROOT)
        if r.path == "/redfish/v1/Systems":
            return Reply(body={"Members": [{"@odata.id": "/redfish/v1/Systems/1"}]})
        return Reply(body={"PowerState": "On"})

    async def main() -> None:
        async with raw_server(handler) as (url, seen), BmcClients(T) as clients:
            assert await RedfishDriver(connector(url, clients, auth="auto")).power_state() is PowerState.on
            assert [r.path for r in seen[:2]] == ["/redfish/v1/", "/redfish/v1/"]

    run(main())


def test_connection_refused_is_transient_and_retried() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there

    async def main() -> None:
        async with BmcClients(T) as clients:
            c = connector(f"http://127.0.0.1:{port}", clients, attempts=3)
            with pytest.raises(BmcError) as ei:
                await c.get("/redfish/v1/", "discover service root")
            assert ei.value.transient and "cannot connect" in str(ei.value)

    run(main())


# -- retries ------------------------------------------------------------------------------------


def test_reset_connection_and_5xx_are_retried_for_get() -> None:
    calls = {"n": 0}

    def handler(r: Req) -> Reply:
        calls["n"] += 1
        if calls["n"] == 1:
            return Reply(action="close")
        if calls["n"] == 2:
            return Reply(500, {"error": {"message": "busy"}})
        return Reply(body={"PowerState": "On"})

    async def main() -> None:
        async with raw_server(handler) as (url, seen), BmcClients(T) as clients:
            r = await connector(url, clients).get("/redfish/v1/Systems/1", "get power state")
            assert r.body == {"PowerState": "On"} and len(seen) == 3

    run(main())


def test_post_action_is_not_repeated_after_a_5xx() -> None:
    async def main() -> None:
        async with raw_server(lambda r: Reply(500, {"error": {"message": "internal"}})) as (url, seen), \
                BmcClients(T) as clients:
            with pytest.raises(BmcError) as ei:
                await connector(url, clients).post("/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
                                                   {"ResetType": "ForceRestart"}, "reset")
            assert ei.value.transient and ei.value.status == 500 and len(seen) == 1

    run(main())


def test_503_retry_after_is_honoured_up_to_the_cap() -> None:
    calls = {"n": 0}

    def handler(r: Req) -> Reply:
        calls["n"] += 1
        if calls["n"] == 1:
            return Reply(503, {"error": {"message": "try later"}}, headers={"Retry-After": "3600"})
        return Reply(body={"ok": True})

    async def main() -> None:
        async with raw_server(handler) as (url, seen), BmcClients(T) as clients:
            t0 = time.monotonic()
            # a POST too: a 503 means the action was not processed
            r = await connector(url, clients).post("/redfish/v1/x", {}, "act")
            waited = time.monotonic() - t0
            assert r.body == {"ok": True} and len(seen) == 2
            assert 0.45 <= waited < 2.0  # the 3600 s Retry-After was capped at 0.5 s

    run(main())


def test_503_exhausts_attempts_as_transient() -> None:
    async def main() -> None:
        async with raw_server(lambda r: Reply(503, headers={"Retry-After": "0"})) as (url, seen), \
                BmcClients(T) as clients:
            with pytest.raises(BmcError) as ei:
                await connector(url, clients, attempts=3).get("/redfish/v1/", "discover service root")
            assert ei.value.transient and ei.value.status == 503 and len(seen) == 3

    run(main())


# -- session auth, ETag, task monitor, operation header, prefix -----------------------------------


class SessionBmc:
    """A BMC with a SessionService that expires its token once."""

    def __init__(self) -> None:
        self.tokens: set[str] = set()
        self.logins = 0
        self.deleted: list[str] = []
        self.expire_next = False
        self.etag = '"v1"'
        self.boot = {"BootSourceOverrideTarget": "None", "BootSourceOverrideEnabled": "Disabled"}

    def __call__(self, r: Req) -> Reply:
        if r.path == "/redfish/v1/":
            return Reply(body={**ROOT, "SessionService": {"@odata.id": "/redfish/v1/SessionService"},
                               "Links": {"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}}})
        if r.path == "/redfish/v1/SessionService/Sessions" and r.method == "POST":
            b = r.json()
            if b != {"UserName": "admin", "Password": PASSWORD}:
                return Reply(401, {"error": {"message": "bad credentials"}})
            self.logins += 1
            new = f"{TOKEN}-{self.logins}"
            self.tokens.add(new)
            where = f"/redfish/v1/SessionService/Sessions/{self.logins}"
            return Reply(201, {"Id": str(self.logins)}, headers={"X-Auth-Token": new, "Location": where})
        tok = r.headers.get("x-auth-token", "")
        if "authorization" in r.headers:
            return Reply(400, {"error": {"message": "basic auth sent to a session BMC"}})
        if tok not in self.tokens:
            return Reply(401, {"error": {"message": "no valid session"}})
        if self.expire_next:
            self.expire_next = False
            self.tokens.discard(tok)
            return Reply(401, {"error": {"message": "session expired"}})
        if r.method == "DELETE":
            self.deleted.append(r.path)
            return Reply(204)
        if r.path == "/redfish/v1/Systems/1" and r.method == "GET":
            return Reply(body={"@odata.id": "/redfish/v1/Systems/1", "PowerState": "On", "Boot": self.boot},
                         headers={"ETag": self.etag})
        if r.path == "/redfish/v1/Systems/1" and r.method == "PATCH":
            if r.headers.get("if-match") != self.etag:
                return Reply(412, {"error": {"message": "ETag mismatch"}})
            self.boot = {**self.boot, **r.json()["Boot"]}
            self.etag = '"v2"'
            return Reply(204)
        return Reply(404)


def test_session_auth_relogin_once_and_logout(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bmc = SessionBmc()

    async def main() -> None:
        async with raw_server(bmc) as (url, seen), BmcClients(T) as clients:
            c = connector(url, clients, auth="auto")
            assert (await c.get("/redfish/v1/Systems/1", "get power state")).body["PowerState"] == "On"
            bmc.expire_next = True
            assert (await c.get("/redfish/v1/Systems/1", "get power state")).body["PowerState"] == "On"
            assert bmc.logins == 2
            await c.aclose()
            assert bmc.deleted == ["/redfish/v1/SessionService/Sessions/2"]
            assert not any("authorization" in r.headers for r in seen)

    run(main())
    assert PASSWORD not in caplog.text and TOKEN not in caplog.text


def test_session_login_with_wrong_password_is_a_clear_error() -> None:
    async def main() -> None:
        async with raw_server(SessionBmc()) as (url, _), BmcClients(T) as clients:
            c = connector(url, clients, auth="auto")
            c.password = "wrong"
            with pytest.raises(BmcError) as ei:
                await c.get("/redfish/v1/Systems/1", "get power state")
            assert ei.value.status == 401 and "credentials" in str(ei.value) and not ei.value.transient

    run(main())


def test_if_match_on_patch_via_boot_override() -> None:
    bmc = SessionBmc()

    async def main() -> None:
        def handler(r: Req) -> Reply:
            if r.path == "/redfish/v1/Systems":
                return Reply(body={"Members": [{"@odata.id": "/redfish/v1/Systems/1"}]})
            return bmc(r)

        async with raw_server(handler) as (url, seen), BmcClients(T) as clients:
            drv = RedfishDriver(connector(url, clients, auth="session"))
            await drv.set_boot_once_cd()
            patches = [r for r in seen if r.method == "PATCH"]
            assert len(patches) == 1 and patches[0].headers["if-match"] == '"v1"'
            assert patches[0].headers["content-type"] == "application/json"
            assert bmc.boot == {"BootSourceOverrideTarget": "Cd", "BootSourceOverrideEnabled": "Once"}

    run(main())


def test_task_monitor_is_followed_to_completion_and_failure() -> None:
    polls = {"ok": 0}

    def handler(r: Req) -> Reply:
        if r.path == "/redfish/v1/act-ok":
            return Reply(202, {}, headers={"Location": "/redfish/v1/TaskService/Tasks/7"})
        if r.path == "/redfish/v1/TaskService/Tasks/7":
            polls["ok"] += 1
            if polls["ok"] < 3:
                return Reply(202, {"TaskState": "Running"}, headers={"Retry-After": "0"})
            return Reply(200, {"TaskState": "Completed", "TaskStatus": "OK"})
        if r.path == "/redfish/v1/act-bad":
            return Reply(202, {"@odata.id": "/redfish/v1/TaskService/Tasks/8"})
        if r.path == "/redfish/v1/TaskService/Tasks/8":
            return Reply(200, {"TaskState": "Exception",
                               "Messages": [{"Message": "Image download failed: 404"}]})
        if r.path == "/redfish/v1/act-slow":
            return Reply(202, {}, headers={"Location": "/redfish/v1/TaskService/Tasks/9"})
        return Reply(202, {"TaskState": "Running"})

    async def main() -> None:
        async with raw_server(handler) as (url, _), BmcClients(T) as clients:
            c = connector(url, clients)
            r = await c.post("/redfish/v1/act-ok", {}, "insert media")
            assert r.body["TaskState"] == "Completed" and polls["ok"] == 3
            with pytest.raises(BmcError, match="ended Exception: Image download failed: 404"):
                await c.post("/redfish/v1/act-bad", {}, "insert media")
            t0 = time.monotonic()
            with pytest.raises(BmcError) as ei:
                await c.post("/redfish/v1/act-slow", {}, "insert media")
            assert ei.value.transient and "still Running" in str(ei.value) and time.monotonic() - t0 < 5

    run(main())


def test_a_task_monitor_failing_transiently_is_read_again_and_the_action_not_resent() -> None:
    """Five 500s in a row on the monitor (more than the connector's 3 attempts) within the task's
    deadline: the monitor is a read, read again until the task ends; the action went out once."""
    seen = {"act": 0, "monitor": 0}

    def handler(r: Req) -> Reply:
        if r.path == "/redfish/v1/act":
            seen["act"] += 1
            return Reply(202, {}, headers={"Location": "/redfish/v1/TaskService/Tasks/3"})
        seen["monitor"] += 1
        if seen["monitor"] <= 5:
            return Reply(500, {"error": {"message": "internal"}})
        return Reply(200, {"TaskState": "Completed", "TaskStatus": "OK"})

    async def main() -> None:
        async with raw_server(handler) as (url, _), BmcClients(T) as clients:
            r = await connector(url, clients).post("/redfish/v1/act", {}, "insert media")
            assert r.body["TaskState"] == "Completed" and seen == {"act": 1, "monitor": 6}

    run(main())


def test_operation_header_and_path_prefix() -> None:
    """The simulator serves BMCs at /bmc/<node>; links may or may not carry the prefix."""
    def handler(r: Req) -> Reply:
        if not r.path.startswith("/bmc/node-a/redfish/v1"):
            return Reply(404)
        p = r.path.removeprefix("/bmc/node-a")
        if p == "/redfish/v1/":
            return Reply(body=ROOT)
        if p == "/redfish/v1/Systems":
            return Reply(body={"Members": [{"@odata.id": "/bmc/node-a/redfish/v1/Systems/1"}]})
        if p == "/redfish/v1/Systems/1":
            return Reply(body={"PowerState": "Off", "Manufacturer": "Acme"})
        return Reply(404)

    async def main() -> None:
        async with raw_server(handler) as (url, seen), BmcClients(T) as clients:
            n = Node(name="node-a", role=Role.worker, mac="02:00:00:00:00:01", ip=ipaddress.IPv4Address("192.0.2.5"),
                     bmc=Bmc(url="https://192.0.2.200", credentials=CredentialsRef(username="admin",
                                                                                  password_env="BMC_PW")))
            conn = connector_for_node(n, clients, resolver=lambda node: f"{url}/bmc/{node.name}",
                                      operation_id="rollout-42/store-7", environ={"BMC_PW": PASSWORD})
            assert await RedfishDriver(conn).power_state() is PowerState.off
            assert seen and all(r.headers.get(OPERATION_HEADER.lower()) == "rollout-42/store-7" for r in seen)
            assert all(r.path.startswith("/bmc/node-a/") for r in seen)

    run(main())


# -- driver behaviour on other BMC shapes ---------------------------------------------------------


class ShapeBmc:
    """A BMC whose VirtualMedia lives under the Manager only, with a configurable slot list and
    ResetType list; power changes happen at once."""

    def __init__(self, slots: list[tuple[str, list[str]]], reset_types: list[str]) -> None:
        self.power = "On"
        self.media: dict[str, dict[str, Any]] = {
            sid: {"Id": sid, "MediaTypes": types, "Inserted": False, "Image": None} for sid, types in slots}
        self.reset_types = reset_types
        self.resets: list[str] = []
        self.boot = {"BootSourceOverrideTarget": "Hdd", "BootSourceOverrideEnabled": "Disabled"}

    def __call__(self, r: Req) -> Reply:
        p = r.path
        vm = "/redfish/v1/Managers/bmc/VirtualMedia"
        if p == "/redfish/v1/":
            return Reply(body=ROOT)
        if p == "/redfish/v1/Systems":
            return Reply(body={"Members": [{"@odata.id": "/redfish/v1/Systems/sys"}]})
        if p == "/redfish/v1/Systems/sys" and r.method == "GET":
            return Reply(body={"PowerState": self.power, "Boot": self.boot,
                               "Links": {"ManagedBy": [{"@odata.id": "/redfish/v1/Managers/bmc"}]},
                               "Actions": {"#ComputerSystem.Reset": {
                                   "target": "/redfish/v1/Systems/sys/Actions/ComputerSystem.Reset",
                                   "ResetType@Redfish.AllowableValues": self.reset_types}}})
        if p == "/redfish/v1/Systems/sys" and r.method == "PATCH":
            self.boot = {**self.boot, **r.json()["Boot"]}
            return Reply(204)
        if p == "/redfish/v1/Systems/sys/Actions/ComputerSystem.Reset":
            rt = r.json()["ResetType"]
            if rt not in self.reset_types:
                return Reply(400, {"error": {"@Message.ExtendedInfo": [
                    {"MessageId": "Base.1.8.ActionParameterNotSupported", "Message": f"{rt} not supported"}]}})
            self.resets.append(rt)
            self.power = "Off" if rt in ("ForceOff", "GracefulShutdown") else "On"
            return Reply(204)
        if p == "/redfish/v1/Managers/bmc":
            return Reply(body={"VirtualMedia": {"@odata.id": vm}})
        if p == vm:
            return Reply(body={"Members": [{"@odata.id": f"{vm}/{sid}"} for sid in self.media]})
        for sid, m in self.media.items():
            if p == f"{vm}/{sid}":
                return Reply(body={**m, "@odata.id": p, "Actions": {
                    "#VirtualMedia.InsertMedia": {"target": f"{p}/Actions/VirtualMedia.InsertMedia"},
                    "#VirtualMedia.EjectMedia": {"target": f"{p}/Actions/VirtualMedia.EjectMedia"}}})
            if p == f"{vm}/{sid}/Actions/VirtualMedia.InsertMedia":
                if r.headers.get("content-type") != "application/json":
                    return Reply(415)
                m.update(Inserted=True, Image=r.json()["Image"])
                return Reply(204)
            if p == f"{vm}/{sid}/Actions/VirtualMedia.EjectMedia":
                m.update(Inserted=False, Image=None)
                return Reply(204)
        return Reply(404, {"error": {"message": f"{p} not found"}})


def test_virtual_media_under_managers_and_off_on_reset() -> None:
    bmc = ShapeBmc([("CD1", ["CD", "DVD"]), ("USB1", ["USBStick"])], ["On", "ForceOff", "GracefulShutdown"])

    async def main() -> None:
        async with raw_server(bmc) as (url, _), BmcClients(T) as clients:
            drv = RedfishDriver(connector(url, clients), poll_interval_s=0.05)
            res = await reimage_sequence(drv, "http://127.0.0.1:1/boot.iso", "http://127.0.0.1:1/seed.iso",
                                         power_deadline_s=2)
            assert (res.boot_slot, res.seed_slot) == ("CD1", "USB1")
            assert res.reset_types == ("ForceOff", "On") and bmc.resets == ["ForceOff", "On"]
            assert bmc.media["CD1"]["Image"].endswith("boot.iso") and bmc.media["USB1"]["Image"].endswith("seed.iso")
            assert bmc.boot["BootSourceOverrideEnabled"] == "Once"

    run(main())


def test_single_slot_bmc_is_refused_with_a_fallback_hint() -> None:
    bmc = ShapeBmc([("CD1", ["CD", "DVD"])], ["ForceRestart", "On"])

    async def main() -> None:
        async with raw_server(bmc) as (url, _), BmcClients(T) as clients:
            drv = RedfishDriver(connector(url, clients, bmc="store-9-cp1"))
            with pytest.raises(BmcError) as ei:
                await reimage_sequence(drv, "http://127.0.0.1:1/b.iso", "http://127.0.0.1:1/s.iso")
            assert "single virtual media slot" in str(ei.value) and "talos-api" in str(ei.value)
            assert ei.value.bmc == "store-9-cp1" and not ei.value.transient
            assert bmc.resets == [] and not bmc.media["CD1"]["Inserted"]  # refused before touching anything

    run(main())


def test_power_wait_deadline() -> None:
    bmc = ShapeBmc([("CD1", ["CD"]), ("CD2", ["CD"])], ["ForceRestart"])
    bmc.power = "Off"

    async def main() -> None:
        async with raw_server(bmc) as (url, _), BmcClients(T) as clients:
            drv = RedfishDriver(connector(url, clients), poll_interval_s=0.05)
            t0 = time.monotonic()
            with pytest.raises(BmcError) as ei:
                await drv.wait_power(PowerState.on, 0.5)
            assert ei.value.transient and "power still Off" in str(ei.value)
            assert time.monotonic() - t0 < 1.5

    run(main())


# -- measurement ----------------------------------------------------------------------------------


TRIVIAL_SERVER = r"""
import asyncio, sys
BODY = b'{"PowerState": "On"}'
RESP = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            n = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":", 1)[1])
            if n:
                await reader.readexactly(n)
            writer.write(RESP)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.wait_for(server.serve_forever(), float(sys.argv[1]))
try:
    asyncio.run(main())
except TimeoutError:
    pass
"""


@pytest.mark.slow
def test_measure_request_rate() -> None:
    """Requests per second through the connector (basic auth, deadline, retry bookkeeping) against a
    trivial keep-alive server in another process; a bounded loop. Printed for the benchmark record."""
    import subprocess

    n, concurrency = 1500, 20
    proc = subprocess.Popen([sys.executable, "-c", TRIVIAL_SERVER, "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = f"http://127.0.0.1:{int(proc.stdout.readline())}"

        async def main() -> float:
            async with BmcClients(T) as clients:
                c = connector(url, clients)
                sem = asyncio.Semaphore(concurrency)

                async def one() -> None:
                    async with sem:
                        r = await c.get("/redfish/v1/Systems/1", "get power state")
                        assert r.body == {"PowerState": "On"}

                t0 = time.monotonic()
                await asyncio.gather(*(one() for _ in range(n)))
                return time.monotonic() - t0

        elapsed = run(main())
    finally:
        proc.kill()
        proc.wait()
    sys.stdout.write(f"\nconnector: {n} GETs at concurrency {concurrency} in {elapsed:.2f} s = "
                     f"{n / elapsed:.0f} requests/s\n")
    assert n / elapsed > 50
