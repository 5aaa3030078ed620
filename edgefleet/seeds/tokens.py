"""What the seed server decides, without touching the world: paths, URL tokens, reimage grants and
byte ranges. Pure: no network, disk or clock (``now`` is a parameter); ``edgefleet.seeds.server``
is the HTTP adapter around it.

* **Paths.** ``normalize_relpath`` refuses anything that could leave the served root (empty,
  ``.``/``..``, backslash or NUL segments); ``split_target`` takes a request's raw path
  ``/<token>/<segments...>`` apart, percent-decoding each segment on its own (an encoded ``/`` is
  refused, never reinterpreted).
* **Tokens.** ``<b64(node)>.<expires>.<b64(HMAC-SHA256(secret, relpath, node, expires[, grant]))>``:
  ``mint_token`` / ``check_token`` (MACs compared in constant time). A token names the node and
  grants one path (or one dynamic-route scope, which contains a NUL byte so no file path can have it).
* **Grants.** ``Grants`` is the per-node reimage bookkeeping: while a node has a current grant its
  URLs must carry it; ended grants are remembered (a few per node) only to say why a token is refused.
* **Ranges.** ``parse_range`` reads one ``Range`` header (RFC 9110 14.1.2).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote

from edgefleet.errors import SeedError

__all__ = [
    "Grants",
    "Target",
    "check_token",
    "mint_token",
    "normalize_relpath",
    "parse_range",
    "split_target",
    "token_node",
]

_TOKEN_CONTEXT = b"edgefleet-seed-url-v1\x00"
_TOKEN_RE = re.compile(r"^([A-Za-z0-9_-]{1,400})\.([0-9]{1,12})\.([A-Za-z0-9_-]{43})$")
_REVOKED_KEPT = 4


def normalize_relpath(relpath: str) -> str:
    """Return ``relpath`` as ``a/b/c`` or raise SeedError if it could leave the root."""
    segments = relpath.split("/")
    for seg in segments:
        if seg in ("", ".", "..") or "\\" in seg or "\x00" in seg:
            raise SeedError(f"refusing path {relpath!r}: it must be a relative path below the served root "
                            "without empty, '.' or '..' segments")
    return "/".join(segments)


@dataclass(frozen=True)
class Target:
    """A request path ``/<token>/<segments...>`` taken apart. ``shown``: the path without the token
    (as received, for the access log); ``relpath``: the decoded, normalized path, or None when it
    could leave the root or does not decode (the server answers 404 without touching the disk)."""

    token: str
    shown: str
    segments: list[str] = field(default_factory=list)
    relpath: str | None = None


def split_target(raw_path: str) -> Target | None:
    """``raw_path`` (still percent-encoded, no query) as a ``Target``; None when it has no token
    and path at all (``/`` or ``/x``)."""
    parts = raw_path.split("/")
    if len(parts) < 3 or parts[0] != "":
        return None
    token, raw_segments = parts[1], parts[2:]
    shown = "/" + "/".join(raw_segments)
    try:
        segments = [unquote(seg, errors="strict") if "%" in seg else seg for seg in raw_segments]
        if any("/" in seg for seg in segments):
            raise SeedError("encoded slash")
        relpath = normalize_relpath("/".join(segments))
    except (SeedError, UnicodeDecodeError):
        return Target(token, shown)
    return Target(token, shown, segments, relpath)


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


class Grants:
    """Per-node reimage grants: between ``begin(node, grant)`` and ``end(node)`` a node's file
    tokens must carry ``grant``; after ``end`` they are refused until the next ``begin``."""

    def __init__(self) -> None:
        self._current: dict[str, str] = {}  # node -> the grant of its reimage in progress
        self._revoked: dict[str, list[str]] = {}  # node -> its last few ended grants (for the 403's reason)

    def current(self, node: str) -> str:
        """``node``'s grant in progress, or "" (then its URLs carry none)."""
        return self._current.get(node, "")

    def begin(self, node: str, grant: str) -> None:
        if not node:
            raise SeedError("a reimage must name its node")
        if not grant:
            raise SeedError(f"the reimage of {node} needs a non-empty grant")
        self.end(node)
        self._current[node] = grant

    def end(self, node: str) -> None:
        grant = self._current.pop(node, None)
        if grant is not None:
            past = self._revoked.setdefault(node, [])
            past.append(grant)
            del past[:-_REVOKED_KEPT]

    def check(self, secret: bytes, token: str, relpath: str, now: float) -> tuple[str | None, str]:
        """``check_token`` for a file, under the grant of the node the token claims: ``(node, "")``
        or ``(None, reason)``. A node whose last reimage ended (and no new one began) is refused
        even a plain token."""
        claim = token_node(token) or ""
        grant, past = self._current.get(claim, ""), self._revoked.get(claim, ())
        node, why = check_token(secret, token, relpath, now, grant, past)
        if node is not None and not grant and past:
            return None, f"token revoked: no reimage of {node} is in progress"
        return node, why


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
