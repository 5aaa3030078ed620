"""The simulated BMCs' Redfish service: resources of the real shape and their actions.

Every node's BMC lives under ``/bmc/<node>/redfish/v1/``; ``@odata.id`` links carry that prefix (an
absolute path on the simulator's host, as RFC 3986 resolution of a link against the BMC's base URL
expects). Shapes follow the DMTF schemas (ServiceRoot v1_15, ComputerSystem v1_20, Manager v1_17,
VirtualMedia v1_6, SessionService v1_1, Message v1_1) and what sushy-tools' emulator serves:

* ``/redfish/v1/`` (no authentication) links Systems, Managers, SessionService and ``Links.Sessions``;
* ``Systems/1``: ``PowerState``, ``Status``, ``Boot`` with ``BootSourceOverrideTarget`` /
  ``BootSourceOverrideEnabled`` and their ``@Redfish.AllowableValues`` (PATCH with ``If-Match``),
  ``Actions.#ComputerSystem.Reset`` with ``ResetType@Redfish.AllowableValues``;
* ``Managers/1/VirtualMedia/{Cd,Usb}``: two slots with ``#VirtualMedia.InsertMedia`` (downloads the
  image for real) and ``#VirtualMedia.EjectMedia``;
* ``SessionService/Sessions``: POST ``{UserName, Password}`` gives ``X-Auth-Token`` + ``Location``;
  other resources take that token or HTTP basic auth;
* every resource has an ``ETag`` (weak, per node state generation) and ``@odata.etag``; errors are
  Redfish error bodies with ``@Message.ExtendedInfo``; a body without a JSON content type is 415.

``handle`` is transport-free: the server passes method, path, headers and body and sends back
the ``Reply``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgefleet.sim.fleet import (
    BOOT_ENABLED,
    BOOT_TARGETS,
    POWER_OFF,
    POWER_ON,
    RESET_TYPES,
    SLOT_IDS,
    ActionError,
    NodeState,
    SimFleet,
)
from edgefleet.sim.oracle import disruptive_boot_override

__all__ = ["OPERATION_HEADER", "Reply", "disruptive_action", "error_reply", "handle"]

OPERATION_HEADER = "x-edgefleet-operation"
SYSTEM_ID = "1"
MANAGER_ID = "1"
_MEDIA_TYPES = {"Cd": ["CD", "DVD"], "Usb": ["USBStick"]}
_UUID_NS = uuid.UUID("6f1c3f8e-5a0e-4c55-9d8e-0e5f1a7d2b10")


@dataclass(slots=True)
class Reply:
    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def error_reply(status: int, message: str, message_id: str = "Base.1.8.GeneralError", *,
                resolution: str = "", headers: dict[str, str] | None = None) -> Reply:
    """A Redfish error body (DSP0266 9.6) with one ``@Message.ExtendedInfo`` entry."""
    info: dict[str, Any] = {"@odata.type": "#Message.v1_1_1.Message", "MessageId": message_id, "Message": message,
                            "MessageArgs": [], "Severity": "Critical" if status >= 500 else "Warning",
                            "MessageSeverity": "Critical" if status >= 500 else "Warning"}
    if resolution:
        info["Resolution"] = resolution
    return Reply(status, {"error": {"code": message_id, "message": message, "@Message.ExtendedInfo": [info]}},
                 headers or {})


def _base(ns: NodeState) -> str:
    return f"/bmc/{ns.name}/redfish/v1"


def _etag(ns: NodeState) -> str:
    return f'W/"{ns.generation}"'


def _ok(ns: NodeState, body: dict[str, Any], status: int = 200) -> Reply:
    tag = _etag(ns)
    body["@odata.etag"] = tag
    return Reply(status, body, {"ETag": tag})


def service_root(ns: NodeState) -> dict[str, Any]:
    b = _base(ns)
    return {
        "@odata.type": "#ServiceRoot.v1_15_0.ServiceRoot", "@odata.id": f"{b}/", "Id": "RootService",
        "Name": "Root Service", "RedfishVersion": "1.15.0",
        "UUID": str(uuid.uuid5(_UUID_NS, "root:" + ns.name)),
        "Systems": {"@odata.id": f"{b}/Systems"}, "Managers": {"@odata.id": f"{b}/Managers"},
        "SessionService": {"@odata.id": f"{b}/SessionService"},
        "Links": {"Sessions": {"@odata.id": f"{b}/SessionService/Sessions"}},
        "Vendor": "edgefleet-sim",
    }


def _collection(odata_type: str, odata_id: str, name: str, members: list[str]) -> dict[str, Any]:
    return {"@odata.type": odata_type, "@odata.id": odata_id, "Name": name,
            "Members@odata.count": len(members), "Members": [{"@odata.id": m} for m in members]}


def computer_system(sim: SimFleet, ns: NodeState) -> dict[str, Any]:
    b = _base(ns)
    ready, _ = sim.readiness(ns)
    state = "Disabled" if ns.power != POWER_ON else ("Starting" if ns.booting else "Enabled")
    return {
        "@odata.type": "#ComputerSystem.v1_20_0.ComputerSystem", "@odata.id": f"{b}/Systems/{SYSTEM_ID}",
        "Id": SYSTEM_ID, "Name": ns.name, "HostName": ns.name, "SystemType": "Physical",
        "UUID": str(uuid.uuid5(_UUID_NS, ns.name)), "Manufacturer": "edgefleet-sim", "Model": "Simulated Edge Node",
        "SerialNumber": f"SIM-{uuid.uuid5(_UUID_NS, ns.name).hex[:10].upper()}",
        "PowerState": ns.power,
        "Status": {"State": state, "Health": "OK" if ready or ns.booting or ns.power != POWER_ON else "Warning"},
        "Boot": {
            "BootSourceOverrideEnabled": ns.boot_enabled, "BootSourceOverrideTarget": ns.boot_target,
            "BootSourceOverrideMode": "UEFI",
            "BootSourceOverrideTarget@Redfish.AllowableValues": list(BOOT_TARGETS),
            "BootSourceOverrideEnabled@Redfish.AllowableValues": list(BOOT_ENABLED),
        },
        "Actions": {"#ComputerSystem.Reset": {
            "target": f"{b}/Systems/{SYSTEM_ID}/Actions/ComputerSystem.Reset",
            "ResetType@Redfish.AllowableValues": list(RESET_TYPES)}},
        "Links": {"ManagedBy": [{"@odata.id": f"{b}/Managers/{MANAGER_ID}"}]},
    }


def manager(ns: NodeState) -> dict[str, Any]:
    b = _base(ns)
    return {
        "@odata.type": "#Manager.v1_17_0.Manager", "@odata.id": f"{b}/Managers/{MANAGER_ID}", "Id": MANAGER_ID,
        "Name": f"BMC of {ns.name}", "ManagerType": "BMC", "FirmwareVersion": "sim-1.0",
        "Status": {"State": "Enabled", "Health": "OK"},
        "VirtualMedia": {"@odata.id": f"{b}/Managers/{MANAGER_ID}/VirtualMedia"},
        "Links": {"ManagerForServers": [{"@odata.id": f"{b}/Systems/{SYSTEM_ID}"}]},
    }


def virtual_media(ns: NodeState, slot: str) -> dict[str, Any]:
    b = f"{_base(ns)}/Managers/{MANAGER_ID}/VirtualMedia/{slot}"
    m = ns.media.get(slot)
    return {
        "@odata.type": "#VirtualMedia.v1_6_0.VirtualMedia", "@odata.id": b, "Id": slot,
        "Name": "Virtual CD" if slot == "Cd" else "Virtual USB", "MediaTypes": _MEDIA_TYPES[slot],
        "Image": m.url if m else None, "ImageName": m.url.rsplit("/", 1)[-1].split("?")[0] if m else None,
        "Inserted": m is not None, "WriteProtected": True,
        "ConnectedVia": "URI" if m else "NotConnected", "TransferMethod": "Stream",
        "TransferProtocolType": (m.url.split(":", 1)[0].upper() if m else None),
        "Actions": {
            "#VirtualMedia.InsertMedia": {"target": f"{b}/Actions/VirtualMedia.InsertMedia"},
            "#VirtualMedia.EjectMedia": {"target": f"{b}/Actions/VirtualMedia.EjectMedia"},
        },
    }


def session_service(ns: NodeState) -> dict[str, Any]:
    b = _base(ns)
    return {"@odata.type": "#SessionService.v1_1_8.SessionService", "@odata.id": f"{b}/SessionService",
            "Id": "SessionService", "Name": "Session Service", "ServiceEnabled": True, "SessionTimeout": 1800,
            "Sessions": {"@odata.id": f"{b}/SessionService/Sessions"}}


def session(ns: NodeState, sid: str) -> dict[str, Any]:
    return {"@odata.type": "#Session.v1_6_0.Session", "@odata.id": f"{_base(ns)}/SessionService/Sessions/{sid}",
            "Id": sid, "Name": "User Session", "UserName": ns.username}


# -- auth ---------------------------------------------------------------------------------------------

def _authorized(ns: NodeState, headers: Mapping[str, str]) -> bool:
    token = headers.get("x-auth-token")
    if token:
        return ns.sessions is not None and token in ns.sessions
    auth = headers.get("authorization", "")
    if auth[:6].lower() != "basic ":
        return False
    try:
        user, _, pw = base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return False
    return hmac.compare_digest(user.encode(), ns.username.encode()) and \
        hmac.compare_digest(pw.encode(), ns.password.encode())


def _unauthorized() -> Reply:
    return error_reply(401, "authentication required: use HTTP basic auth or an X-Auth-Token from "
                       "SessionService/Sessions", "Base.1.8.NoValidSession",
                       headers={"WWW-Authenticate": 'Basic realm="edgefleet-sim BMC"'})


# -- request bodies -----------------------------------------------------------------------------------

def _json_body(headers: Mapping[str, str], raw: bytes) -> dict[str, Any] | Reply:
    ctype = headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        return error_reply(415, f"content type {ctype or '(none)'!r} is not supported: send application/json",
                           "Base.1.8.UnsupportedMediaType")
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        return error_reply(400, f"the request body is not valid JSON: {e}", "Base.1.8.MalformedJSON")
    if not isinstance(data, dict):
        return error_reply(400, "the request body must be a JSON object", "Base.1.8.MalformedJSON")
    return data


def _not_found(path: str) -> Reply:
    return error_reply(404, f"no resource at {path}", "Base.1.8.ResourceMissingAtURI")


def _method_not_allowed(method: str, path: str) -> Reply:
    return error_reply(405, f"{method} is not allowed on {path}", "Base.1.8.OperationNotAllowed")


def disruptive_action(ns: NodeState, method: str, rest: str, raw: bytes) -> str | None:
    """What a request would do to the node, when it is disruptive (``edgefleet.sim.oracle``); for
    the requests the scenario fails before they are handled. ``rest``: the path after ``/bmc/<node>/``."""
    parts = [p for p in rest.split("/") if p][2:]  # after redfish/v1
    if method == "POST" and len(parts) == 6 and parts[5] == "VirtualMedia.InsertMedia":
        return f"InsertMedia {parts[3]} on {ns.name}"
    if method not in ("POST", "PATCH") or not parts or parts[0] != "Systems":
        return None
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict):
        return None
    if method == "PATCH" and len(parts) == 2 and isinstance(body.get("Boot"), dict):
        boot = body["Boot"]
        target = str(boot.get("BootSourceOverrideTarget", ns.boot_target))
        enabled = str(boot.get("BootSourceOverrideEnabled", ns.boot_enabled))
        return f"boot override {target} ({enabled}) on {ns.name}" if disruptive_boot_override(target, enabled) \
            else None
    if method == "POST" and parts[2:] == ["Actions", "ComputerSystem.Reset"]:
        rtype = body.get("ResetType")
        noop = {"Nmi"} | ({"On"} if ns.power == POWER_ON else {"ForceOff", "GracefulShutdown"} if
                          ns.power == POWER_OFF else set())
        return f"Reset {rtype} of {ns.name}" if isinstance(rtype, str) and rtype not in noop else None
    return None


# -- dispatch -----------------------------------------------------------------------------------------

async def handle(sim: SimFleet, ns: NodeState, method: str, rest: str, headers: Mapping[str, str],
                 raw: bytes) -> Reply:
    """One Redfish request: ``rest`` is the path after ``/redfish/v1`` (no leading/trailing slash);
    ``headers`` have lower-case names."""
    parts = [p for p in rest.split("/") if p]
    path = f"{_base(ns)}/{'/'.join(parts)}"
    op = headers.get(OPERATION_HEADER) or None
    if not parts:
        if method != "GET":
            return _method_not_allowed(method, path)
        return _ok(ns, service_root(ns))
    if parts == ["SessionService", "Sessions"] and method == "POST":
        return _create_session(ns, headers, raw)
    if not _authorized(ns, headers):
        return _unauthorized()
    body: dict[str, Any] = {}
    if method in ("POST", "PATCH"):
        parsed = _json_body(headers, raw)
        if isinstance(parsed, Reply):
            return parsed
        body = parsed
    try:
        return await _route(sim, ns, method, parts, path, headers, body, op)
    except ActionError as e:
        return error_reply(e.status, str(e), e.message_id)


async def _route(sim: SimFleet, ns: NodeState, method: str, parts: list[str], path: str,
                 headers: Mapping[str, str], body: dict[str, Any], op: str | None) -> Reply:
    head = parts[0]
    if head == "Systems":
        return _route_systems(sim, ns, method, parts, path, headers, body, op)
    if head == "Managers":
        return await _route_managers(sim, ns, method, parts, path, body, op)
    if head == "SessionService":
        return _route_sessions(ns, method, parts, path)
    return _not_found(path)


def _route_systems(sim: SimFleet, ns: NodeState, method: str, parts: list[str], path: str,
                   headers: Mapping[str, str], body: dict[str, Any], op: str | None) -> Reply:
    """``/Systems``: the one computer system, its boot override (PATCH) and its Reset action."""
    b, n = _base(ns), len(parts)
    if n == 1:
        return _get_only(method, path) or _ok(ns, _collection(
            "#ComputerSystemCollection.ComputerSystemCollection", f"{b}/Systems", "Computer System Collection",
            [f"{b}/Systems/{SYSTEM_ID}"]))
    if parts[1] != SYSTEM_ID:
        return _not_found(path)
    if n == 2:
        if method == "GET":
            return _ok(ns, computer_system(sim, ns))
        if method == "PATCH":
            return _patch_system(sim, ns, headers, body, op)
        return _method_not_allowed(method, path)
    if parts[2:] == ["Actions", "ComputerSystem.Reset"]:
        if method != "POST":
            return _method_not_allowed(method, path)
        rtype = body.get("ResetType")
        if rtype is None:
            return error_reply(400, "the action requires parameter ResetType", "Base.1.8.ActionParameterMissing")
        if rtype not in RESET_TYPES:
            return error_reply(400, f"ResetType {rtype!r} is not one of {', '.join(RESET_TYPES)}",
                               "Base.1.8.ActionParameterNotSupported")
        sim.reset(ns, str(rtype), op)
        return Reply(204)
    return _not_found(path)


async def _route_managers(sim: SimFleet, ns: NodeState, method: str, parts: list[str], path: str,
                          body: dict[str, Any], op: str | None) -> Reply:
    """``/Managers``: the one BMC manager, its virtual media slots and their Insert/Eject actions."""
    b, n = _base(ns), len(parts)
    if n == 1:
        return _get_only(method, path) or _ok(ns, _collection(
            "#ManagerCollection.ManagerCollection", f"{b}/Managers", "Manager Collection",
            [f"{b}/Managers/{MANAGER_ID}"]))
    if parts[1] != MANAGER_ID:
        return _not_found(path)
    if n == 2:
        return _get_only(method, path) or _ok(ns, manager(ns))
    if parts[2] != "VirtualMedia":
        return _not_found(path)
    if n == 3:
        return _get_only(method, path) or _ok(ns, _collection(
            "#VirtualMediaCollection.VirtualMediaCollection", f"{b}/Managers/{MANAGER_ID}/VirtualMedia",
            "Virtual Media Services", [f"{b}/Managers/{MANAGER_ID}/VirtualMedia/{s}" for s in SLOT_IDS]))
    slot = parts[3]
    if slot not in SLOT_IDS:
        return _not_found(path)
    if n == 4:
        return _get_only(method, path) or _ok(ns, virtual_media(ns, slot))
    if n == 6 and parts[4] == "Actions" and parts[5] in ("VirtualMedia.InsertMedia", "VirtualMedia.EjectMedia"):
        if method != "POST":
            return _method_not_allowed(method, path)
        if parts[5] == "VirtualMedia.EjectMedia":
            sim.eject_media(ns, slot, op)
            return Reply(204)
        image = body.get("Image")
        if not isinstance(image, str) or not image:
            return error_reply(400, "InsertMedia requires parameter Image (a URL)",
                               "Base.1.8.ActionParameterMissing")
        if body.get("Inserted", True) is not True:
            return error_reply(400, "Inserted=false is not supported by this BMC",
                               "Base.1.8.ActionParameterNotSupported")
        await sim.insert_media(ns, slot, image, op)
        return Reply(204)
    return _not_found(path)


def _route_sessions(ns: NodeState, method: str, parts: list[str], path: str) -> Reply:
    """``/SessionService``: the session service and the node's sessions (read, delete)."""
    b, n = _base(ns), len(parts)
    if n == 1:
        return _get_only(method, path) or _ok(ns, session_service(ns))
    if parts[1] != "Sessions":
        return _not_found(path)
    sessions = ns.sessions or {}
    if n == 2:
        return _get_only(method, path) or _ok(ns, _collection(
            "#SessionCollection.SessionCollection", f"{b}/SessionService/Sessions", "Session Collection",
            [f"{b}/SessionService/Sessions/{sid}" for sid in sessions.values()]))
    sid = parts[2]
    token = next((t for t, s in sessions.items() if s == sid), None)
    if token is None or n != 3:
        return _not_found(path)
    if method == "GET":
        return _ok(ns, session(ns, sid))
    if method == "DELETE":
        del sessions[token]
        return Reply(204)
    return _method_not_allowed(method, path)


def _get_only(method: str, path: str) -> Reply | None:
    return None if method == "GET" else _method_not_allowed(method, path)


def _create_session(ns: NodeState, headers: Mapping[str, str], raw: bytes) -> Reply:
    parsed = _json_body(headers, raw)
    if isinstance(parsed, Reply):
        return parsed
    user, pw = parsed.get("UserName"), parsed.get("Password")
    if not isinstance(user, str) or not isinstance(pw, str):
        return error_reply(400, "a session needs UserName and Password", "Base.1.8.PropertyMissing")
    if not (hmac.compare_digest(user.encode(), ns.username.encode())
            and hmac.compare_digest(pw.encode(), ns.password.encode())):
        return error_reply(401, "invalid user name or password", "Base.1.8.InsufficientPrivilege")
    if ns.sessions is None:
        ns.sessions = {}
    if len(ns.sessions) >= 16:  # a BMC has few session slots; the oldest one goes
        del ns.sessions[next(iter(ns.sessions))]
    token = secrets.token_hex(16)
    sid = secrets.token_hex(4)
    ns.sessions[token] = sid
    location = f"{_base(ns)}/SessionService/Sessions/{sid}"
    return Reply(201, session(ns, sid), {"X-Auth-Token": token, "Location": location})


def _patch_system(sim: SimFleet, ns: NodeState, headers: Mapping[str, str], body: dict[str, Any],
                  op: str | None) -> Reply:
    match = headers.get("if-match")
    if match and match != "*" and match not in (_etag(ns), _etag(ns).removeprefix("W/")):
        return error_reply(412, f"If-Match {match} does not match the current ETag {_etag(ns)}; read the "
                           "resource again", "Base.1.8.PreconditionFailed")
    unknown = sorted(set(body) - {"Boot"})
    if unknown:
        return error_reply(400, f"property {unknown[0]} cannot be changed here (only Boot)",
                           "Base.1.8.PropertyNotWritable")
    boot = body.get("Boot")
    if not isinstance(boot, dict) or not boot:
        return error_reply(400, "Boot must be an object", "Base.1.8.PropertyValueTypeError")
    target, enabled = boot.get("BootSourceOverrideTarget"), boot.get("BootSourceOverrideEnabled")
    extra = sorted(set(boot) - {"BootSourceOverrideTarget", "BootSourceOverrideEnabled", "BootSourceOverrideMode"})
    if extra:
        return error_reply(400, f"property Boot/{extra[0]} is unknown or read-only", "Base.1.8.PropertyUnknown")
    if target is not None and target not in BOOT_TARGETS:
        return error_reply(400, f"BootSourceOverrideTarget {target!r} is not one of {', '.join(BOOT_TARGETS)}",
                           "Base.1.8.PropertyValueNotInList")
    if enabled is not None and enabled not in BOOT_ENABLED:
        return error_reply(400, f"BootSourceOverrideEnabled {enabled!r} is not one of {', '.join(BOOT_ENABLED)}",
                           "Base.1.8.PropertyValueNotInList")
    mode = boot.get("BootSourceOverrideMode")
    if mode is not None and mode != "UEFI":
        return error_reply(400, f"BootSourceOverrideMode {mode!r} is not supported (UEFI only)",
                           "Base.1.8.PropertyValueNotInList")
    sim.set_boot(ns, target, enabled, op)
    return _ok(ns, computer_system(sim, ns))
