"""Redfish answers: a successful response as a value, and the one place an error response becomes
a ``BmcError`` (Redfish error bodies, ``@Message.ExtendedInfo``, parsed here and nowhere else).
Pure: no I/O."""

from __future__ import annotations

import email.utils
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgefleet.errors import BmcError

__all__ = ["RedfishResponse", "error_from_response", "is_json_type", "parse_retry_after", "parse_success",
           "redfish_messages"]


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



def _is_transient_status(status: int) -> bool:
    return (status >= 500 and status != 501) or status == 429


def redfish_messages(body: Any) -> list[str]:
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
    messages = redfish_messages(body)
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


def parse_retry_after(value: str | None, now: float) -> float | None:
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


def is_json_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")



def parse_success(status: int, headers: Mapping[str, str], content: bytes, *, method: str, url: str, bmc: str,
                  operation: str) -> RedfishResponse:
    """A 2xx answer as a ``RedfishResponse``: an empty body or a 204 is ``{}``; anything but a JSON
    object with a JSON content type is a non-transient ``BmcError`` (is this URL a Redfish service?)."""
    hdrs = {k.lower(): v for k, v in headers.items()}
    if status == 204 or not content.strip():
        return RedfishResponse(status, {}, hdrs, url)
    ctype = hdrs.get("content-type", "")
    if not is_json_type(ctype):
        raise BmcError(f"{method} {url} -> HTTP {status} with content type {ctype or '(none)'!r}, "
                       "expected application/json: is this URL a Redfish service?",
                       bmc=bmc, operation=operation, status=status)
    try:
        body = json.loads(content)
    except ValueError as e:
        raise BmcError(f"{method} {url} -> HTTP {status}: malformed JSON ({e})", bmc=bmc,
                       operation=operation, status=status) from None
    if not isinstance(body, dict):
        raise BmcError(f"{method} {url} -> HTTP {status}: expected a JSON object, got "
                       f"{type(body).__name__}", bmc=bmc, operation=operation, status=status)
    return RedfishResponse(status, body, hdrs, url)
