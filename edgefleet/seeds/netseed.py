"""NoCloud network seeds (``ds=nocloud-net``): a node's three seed files over HTTP, for stores
reimaged in band (``wipe_method: talos-api``), and the strings that point a node at them.

A node whose STATE partition was wiped by a Talos API ``Reset`` boots without a machine config
and looks for its NoCloud seed: a ``cidata`` volume, or ``ds=nocloud-net;s=URL/`` in its SMBIOS
serial number or on its kernel command line, in which case it fetches ``URL/meta-data``,
``URL/user-data`` and ``URL/network-config``. The ``s=`` value is a prefix (it must end with
``/``), so one URL must open three files.

Serving (an I/O adapter, composed onto ``edgefleet.seeds.server.SeedServer``): ``NetSeeds`` is a
route family of the seed server::

    /<token>/nocloud/<store>/<node>/{meta-data,user-data,network-config}

The token carries the node and an expiry like every seed-server token, but grants the scope
``nocloud_scope(store, node)`` (``"nocloud-net\\0<store>\\0<node>"``): the three files of that node
only, never a file under the server's root (a file token cannot open these, nor these a file).
Which seed a node gets is what the orchestrator last ``publish``-ed for it (a seed ISO from
``edgefleet.seeds.build``, read back with ``read_seed_iso``, cached per file version);
nothing published: ``404``. Other names (``vendor-data``): ``404``.

Fetching (``fetch_nocloud_seed``): the three files from an ``s=`` URL as a node fetches them
(httpx, bounded sizes and time), for a preflight before a node is wiped and for the simulator.

Pure helpers: ``redact_seed_url`` (a URL without its token, for logs and messages),
``nocloud_scope``, ``nocloud_net_url`` (mint a node's URL, the base taken from the
store's ``seed_url`` when set: the address the store's nodes reach the seed server under),
``nocloud_datasource`` (``ds=nocloud-net;s=URL``: the SMBIOS serial number, or one kernel
argument), ``qemu_smbios_arg`` and ``parse_nocloud_datasource`` (the reverse, as the node does).

Where the string goes: for virtual machines, the SMBIOS system serial number (QEMU ``-smbios
type=1,serial=...``); for bare metal, the kernel command line of the installed system (Talos
``machine.install.extraKernelArgs`` at install time; in a GRUB menu the value must be quoted,
since GRUB reads ``;`` as the end of a command). It is set when the node is provisioned, so the
URL's token must outlive the node's time between reimages: mint it with a ``ttl_s`` to match.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx

from edgefleet.errors import NetworkSeedError, SeedError
from edgefleet.inventory.model import Node, Store
from edgefleet.redact import redact_tokens as redact_seed_url  # a URL without its token, for messages
from edgefleet.seeds.iso import SeedFiles, read_seed_iso
from edgefleet.seeds.server import DynamicReply, SeedServer

__all__ = [
    "NETSEED_EXPIRES",
    "NOCLOUD_FILES",
    "ROUTE_PREFIX",
    "SEED_KEY_FILE",
    "NetSeeds",
    "fetch_nocloud_seed",
    "load_seed_server_key",
    "nocloud_datasource",
    "nocloud_net_url",
    "nocloud_scope",
    "nocloud_urls",
    "parse_nocloud_datasource",
    "qemu_smbios_arg",
    "redact_seed_url",
    "stable_nocloud_url",
]

ROUTE_PREFIX = "nocloud"
NOCLOUD_FILES = ("meta-data", "user-data", "network-config")
"""What a Talos node fetches under its ``s=`` prefix (cloud-init also asks for vendor-data)."""
MAX_FILE_BYTES = 4 * 1024 * 1024


# --- pure ------------------------------------------------------------------------------------------


def nocloud_scope(store_id: str, node: str) -> str:
    """The token scope granting the three nocloud-net files of ``node`` in ``store_id``."""
    if not store_id or not node or "\x00" in store_id + node or "/" in store_id + node:
        raise SeedError(f"store {store_id!r} / node {node!r}: not usable in a nocloud-net seed path")
    return f"nocloud-net\x00{store_id}\x00{node}"


def _check_seed_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SeedError(f"nocloud-net seed URL {url!r} must be an http:// or https:// URL")
    if not url.endswith("/"):
        raise SeedError(f"nocloud-net seed URL {url!r} must end with '/': the node appends meta-data, user-data "
                        "and network-config to it")
    if any(c.isspace() for c in url) or ";" in url:
        raise SeedError(f"nocloud-net seed URL {url!r} must not contain spaces or ';' (both end the ds= value "
                        "on a kernel command line)")
    return url


def nocloud_net_url(server: SeedServer, store: Store, node: Node, now: datetime, *,
                    ttl_s: float | None = None) -> str:
    """The ``s=`` URL (ending in ``/``) under which ``node`` fetches its published seed, valid
    ``ttl_s`` (default: the server's token TTL) from ``now``. Its base is the store's
    ``seed_url`` when the inventory sets one, else the server's own base URL."""
    scope = nocloud_scope(store.id, node.name)
    path = f"{ROUTE_PREFIX}/{quote(store.id, safe='')}/{quote(node.name, safe='')}/"
    base = store.seed_url.rstrip("/") if store.seed_url else None
    if base is not None:
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SeedError(f"store {store.id}: seed_url {store.seed_url!r} is not an http(s) base URL like "
                            "https://seeds.example.net:8443 (fix seed_url in the inventory)")
    return _check_seed_url(server.scoped_url(scope, path, node.name, now, ttl_s=ttl_s, base_url=base))


def nocloud_datasource(url: str) -> str:
    """``ds=nocloud-net;s=URL``: the SMBIOS serial number, or one kernel argument, that makes a
    booting node fetch its seed from ``url``."""
    return f"ds=nocloud-net;s={_check_seed_url(url)}"


def qemu_smbios_arg(url: str) -> str:
    """The value of QEMU's ``-smbios`` option setting the serial number (commas doubled, as
    QEMU's option syntax escapes them)."""
    return "type=1,serial=" + nocloud_datasource(url).replace(",", ",,")


def parse_nocloud_datasource(text: str) -> str | None:
    """The seed URL a node reads from an SMBIOS serial number or a kernel command line, as
    cloud-init's NoCloud does: the whitespace-separated word starting ``ds=nocloud-net`` (or
    ``ds=nocloud``), its ``;``-separated ``s=``/``seedfrom=`` key. None when there is none or it is
    not an http(s) URL."""
    for word in text.split():
        if not (word.startswith("ds=nocloud-net") or word.startswith("ds=nocloud;") or word == "ds=nocloud"):
            continue
        for item in word.split(";")[1:]:
            key, sep, value = item.partition("=")
            if sep and key in ("s", "seedfrom") and urlsplit(value).scheme in ("http", "https"):
                return value
    return None


# --- serving ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Cached:
    key: tuple[int, int, int, int]
    files: SeedFiles


class NetSeeds:
    """The nocloud-net route family of a ``SeedServer`` (see the module docstring)::

        seeds = NetSeeds.attach(server)
        seeds.publish(store.id, node.name, seed_path(out, store.id, node.name))
        url = nocloud_net_url(server, store, node, now)
    """

    def __init__(self) -> None:
        self._published: dict[tuple[str, str], Path] = {}
        self._cache: dict[tuple[str, str], _Cached] = {}

    @classmethod
    def attach(cls, server: SeedServer) -> NetSeeds:
        seeds = cls()
        server.add_dynamic_route(ROUTE_PREFIX, seeds)
        return seeds

    def publish(self, store_id: str, node: str, iso: Path) -> None:
        """Serve the seed ISO ``iso`` to ``node`` from now on (replacing what it had)."""
        nocloud_scope(store_id, node)
        if not iso.is_file():
            raise SeedError(f"store {store_id} node {node}: seed ISO {iso} does not exist; build the seeds first "
                            "(edgefleet seed build)")
        self._published[(store_id, node)] = iso
        self._cache.pop((store_id, node), None)

    def withdraw(self, store_id: str, node: str) -> bool:
        """Stop serving ``node``'s seed; True when one was published."""
        self._cache.pop((store_id, node), None)
        return self._published.pop((store_id, node), None) is not None

    def published(self, store_id: str, node: str) -> Path | None:
        return self._published.get((store_id, node))

    # DynamicRoute

    def scope(self, segments: list[str]) -> str | None:
        if len(segments) != 3 or segments[2] not in NOCLOUD_FILES:
            return None
        try:
            return nocloud_scope(segments[0], segments[1])
        except SeedError:
            return None

    async def serve(self, node: str, segments: list[str]) -> DynamicReply:
        store_id, name, file = segments
        if name != node:  # the scope names the node, so a valid token cannot get here: belt and braces
            return DynamicReply(403, b"token not valid for this path")
        iso = self._published.get((store_id, name))
        if iso is None:
            return DynamicReply(404, f"no seed is published for store {store_id} node {name}".encode())
        try:
            files = await self._files(store_id, name, iso)
        except SeedError as e:
            return DynamicReply(500, f"the published seed of {name} is unreadable: {e}".encode())
        body = {"meta-data": files.meta_data, "user-data": files.user_data,
                "network-config": files.network_config}[file]
        return DynamicReply(200, body)

    async def _files(self, store_id: str, node: str, iso: Path) -> SeedFiles:
        try:
            st = os.stat(iso)
        except OSError as e:
            raise SeedError(f"{iso}: {e.strerror}") from None
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        hit = self._cache.get((store_id, node))
        if hit is not None and hit.key == key:
            return hit.files
        seed = await asyncio.to_thread(read_seed_iso, iso)
        if self._published.get((store_id, node)) == iso:
            self._cache[(store_id, node)] = _Cached(key, seed.files)
        return seed.files


# --- fetching --------------------------------------------------------------------------------------


async def fetch_nocloud_seed(url: str, *, client: httpx.AsyncClient, timeout_s: float = 30.0) -> SeedFiles:
    """Fetch ``<url>meta-data``, ``<url>network-config`` and ``<url>user-data`` as a Talos node
    does. Raises ``NetworkSeedError`` naming the file, the HTTP status and the server's reason
    (e.g. "token expired"); transient for no answer and 5xx. The URL in messages is redacted."""
    _check_seed_url(url)
    shown = redact_seed_url(url)
    got: dict[str, bytes] = {}
    try:
        async with asyncio.timeout(timeout_s):
            for name in ("meta-data", "network-config", "user-data"):
                got[name] = await _fetch_one(client, url + name, shown + name)
    except TimeoutError:
        raise NetworkSeedError(f"fetching the seed from {shown} took longer than {timeout_s:g} s",
                               transient=True) from None
    except httpx.HTTPError as e:
        raise NetworkSeedError(f"fetching the seed from {shown} failed: {type(e).__name__}: {e}",
                               transient=True) from None
    return SeedFiles(user_data=got["user-data"], meta_data=got["meta-data"], network_config=got["network-config"])


async def _fetch_one(client: httpx.AsyncClient, url: str, shown: str) -> bytes:
    async with client.stream("GET", url) as r:
        chunks: list[bytes] = []
        size = 0
        async for chunk in r.aiter_bytes():
            size += len(chunk)
            if size > MAX_FILE_BYTES:
                raise NetworkSeedError(f"{shown} is larger than {MAX_FILE_BYTES} bytes: not a seed file",
                                       status=r.status_code)
            chunks.append(chunk)
    body = b"".join(chunks)
    if r.status_code != 200:
        reason = body.decode("utf-8", "replace").strip().splitlines()[0][:200] if body.strip() else ""
        hint = {403: " (an expired or wrong token: mint the node's URL again)",
                404: " (no seed published for this node?)"}.get(r.status_code, "")
        raise NetworkSeedError(f"{shown} answered HTTP {r.status_code}{': ' + reason if reason else ''}{hint}",
                               status=r.status_code, transient=r.status_code >= 500)
    return body


# --- the persistent key and the long-lived URLs (the engine and ``edgefleet seed nocloud-url``) ---

SEED_KEY_FILE = "seed-server.key"
SEED_KEY_BYTES = 32
NETSEED_EXPIRES = 4102444800  # 2100-01-01T00:00:00Z: nocloud-net URLs live as long as the node's serial


def load_seed_server_key(home: Path) -> bytes:
    """The seed server's persistent HMAC key, ``<home>/seed-server.key`` (created 0600 on first use)."""
    path = home / SEED_KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as e:
        raise SeedError(f"cannot create the seed server key {path}: {e.strerror}; check that the edgefleet home "
                        f"{home} exists and is writable") from None
    else:
        try:
            os.write(fd, secrets.token_bytes(SEED_KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
    try:
        key = path.read_bytes()
        mode = path.stat().st_mode & 0o777
    except OSError as e:
        raise SeedError(f"cannot read the seed server key {path}: {e.strerror}") from None
    if len(key) != SEED_KEY_BYTES:
        raise SeedError(f"the seed server key {path} has {len(key)} bytes, not {SEED_KEY_BYTES}: restore it from a "
                        "backup (deleting it invalidates every talos-api node's nocloud-net URL)")
    if mode & 0o077:
        raise SeedError(f"the seed server key {path} is readable by others (mode {mode:o}): chmod 600 it")
    return key


def nocloud_urls(home: Path, store: Store, base_url: str) -> dict[str, str]:
    """Node name -> the long-lived nocloud-net ``s=`` URL of each node of ``store`` (see
    ``edgefleet.rollout.executor``'s docstring): signed with the persistent key, expiring at
    ``NETSEED_EXPIRES``, under the store's ``seed_url`` when set, else ``base_url``."""
    server = SeedServer(home, secret=load_seed_server_key(home), public_url=base_url)
    return {n.name: stable_nocloud_url(server, store, n) for n in store.nodes}


def stable_nocloud_url(server: SeedServer, store: Store, node: Node) -> str:
    """The node's nocloud-net URL that does not change from run to run (fixed expiry)."""
    return nocloud_net_url(server, store, node, datetime.fromtimestamp(0, UTC), ttl_s=float(NETSEED_EXPIRES))
