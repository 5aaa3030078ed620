"""Virtual media for the simulator's BMCs: download an image URL for real and read what is on it.

The one place the simulator makes outgoing HTTP requests (httpx). A URL must point at 127.0.0.1
(the simulator never talks to anything else). The response must be 200 and carry
``X-Content-SHA256``; the body's sha256 must match it. Release images are read once per sha256
(``read_release_manifest`` + ``read_kernel_args``) and cached; when the header names an image
already in the cache, the body is hashed as it streams and not kept. Seeds are read with
``read_seed_iso`` and reduced to ``SeedFacts`` at once.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import httpx

from edgefleet.errors import EdgefleetError, OperationFailed
from edgefleet.sim.boot import ReleaseFacts, SeedFacts, parse_seed_facts

__all__ = ["SHA_HEADER", "Media", "MediaError", "MediaFetcher", "iso_volume_label"]

SHA_HEADER = "X-Content-SHA256"
ALLOWED_HOSTS = frozenset({"127.0.0.1"})
_PVD_OFFSET = 16 * 2048  # ISO9660 primary volume descriptor (ECMA-119 8.4)


class MediaError(OperationFailed):
    """An InsertMedia download failed. ``status`` is the HTTP status a BMC would answer with."""

    def __init__(self, message: str, *, status: int = 400, message_id: str = "Base.1.8.ActionParameterValueError"):
        self.status = status
        self.message_id = message_id
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Media:
    """Inserted media: the image URL, its sha256 and what the node can read from it."""

    url: str
    sha256: str
    size: int
    kind: Literal["release", "seed", "other"]
    release: ReleaseFacts | None = None
    seed: SeedFacts | None = None
    note: str = ""  # why it is "other"


def iso_volume_label(head: bytes) -> str | None:
    """The volume identifier of an ISO9660 image from its first 34 KiB; None if not ISO9660."""
    pvd = head[_PVD_OFFSET:_PVD_OFFSET + 2048]
    if len(pvd) < 72 or pvd[1:6] != b"CD001":
        return None
    return pvd[40:72].decode("ascii", "replace").strip()


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname not in ALLOWED_HOSTS:
        raise MediaError(f"image URL {url!r} is refused: the simulator only fetches http(s)://127.0.0.1 URLs",
                         status=400, message_id="Base.1.8.ActionParameterValueFormatError")


def _read_release(body: bytes, sha: str) -> ReleaseFacts:
    from edgefleet.releases.image import read_kernel_args, read_release_manifest

    m = read_release_manifest(body)
    return ReleaseFacts(sha256=sha, release=m.release, talos_version=m.talos_version,
                        kubernetes_version=m.kubernetes_version, kernel_args=tuple(read_kernel_args(body)))


def _read_seed(body: bytes, sha: str) -> SeedFacts:
    from edgefleet.seeds.iso import read_seed_iso

    s = read_seed_iso(body)
    return parse_seed_facts(s.files.user_data, s.files.meta_data, s.files.network_config, sha256=sha)


class MediaFetcher:
    """Downloads and reads media; caches release facts by sha256."""

    def __init__(self, client: httpx.AsyncClient, *, max_bytes: int = 2 * 1024**3, deadline_s: float = 300.0,
                 parallel: int = 16):
        self.client = client
        # Downloads wait here rather than in httpcore's pool, whose queue handling costs
        # O(connections x waiting requests) per request (most of the CPU with 100 inserts at once).
        self._slots = asyncio.Semaphore(parallel)
        self.max_bytes = max_bytes
        self.deadline_s = deadline_s
        self.releases: dict[str, ReleaseFacts] = {}
        self._reading: dict[str, asyncio.Task[ReleaseFacts]] = {}  # one read per image, however many wait
        self.downloads = 0
        self.bytes = 0
        self.parses = 0

    async def fetch(self, url: str) -> Media:
        _check_url(url)
        try:
            async with asyncio.timeout(self.deadline_s), self._slots:
                return await self._fetch(url)
        except TimeoutError:
            raise MediaError(f"downloading {url} took longer than {self.deadline_s:g} s", status=500,
                             message_id="Base.1.8.InternalError") from None
        except httpx.HTTPError as e:
            raise MediaError(f"downloading {url} failed: {type(e).__name__}: {e}", status=500,
                             message_id="Base.1.8.InternalError") from None

    async def _read_release(self, body: bytes, sha: str) -> ReleaseFacts:
        """Parse a release image in a thread and cache it before the read counts as finished: a fetch
        of the same image that completes in between finds it cached, not the read gone and no cache."""
        facts = await asyncio.to_thread(_read_release, body, sha)
        self.releases[sha] = facts
        return facts

    async def _fetch(self, url: str) -> Media:
        async with self.client.stream("GET", url) as r:
            if r.status_code != 200:
                hint = " (an expired or wrong token?)" if r.status_code in (401, 403) else ""
                raise MediaError(f"downloading {url} answered HTTP {r.status_code}{hint}", status=400,
                                 message_id="Base.1.8.ResourceAtUriUnauthorized" if r.status_code in (401, 403)
                                 else "Base.1.8.ActionParameterValueError")
            want = (r.headers.get(SHA_HEADER) or "").strip().lower()
            if not want:
                raise MediaError(f"{url} answered without an {SHA_HEADER} header: the simulator cannot verify "
                                 "the image; serve it from edgefleet's artifact server", status=400)
            keep = want not in self.releases
            h = hashlib.sha256()
            chunks: list[bytes] = []
            size = 0
            async for chunk in r.aiter_bytes():
                size += len(chunk)
                if size > self.max_bytes:
                    raise MediaError(f"{url} is larger than {self.max_bytes} bytes", status=400)
                h.update(chunk)
                if keep:
                    chunks.append(chunk)
        self.downloads += 1
        self.bytes += size
        got = h.hexdigest()
        if got != want:
            raise MediaError(f"{url}: body sha256 {got} does not match {SHA_HEADER} {want}", status=400,
                             message_id="Base.1.8.ActionParameterValueError")
        cached = self.releases.get(got)
        if cached is not None:
            return Media(url=url, sha256=got, size=size, kind="release", release=cached)
        body = b"".join(chunks)
        label = iso_volume_label(body)
        if label is None:
            return Media(url=url, sha256=got, size=size, kind="other", note="not an ISO9660 image")
        self.parses += 1
        try:
            if label.upper() == "CIDATA":
                return Media(url=url, sha256=got, size=size, kind="seed", seed=_read_seed(body, got))
            task = self._reading.get(got)
            if task is None:
                task = asyncio.ensure_future(self._read_release(body, got))
                self._reading[got] = task
                task.add_done_callback(lambda _t: self._reading.pop(got, None))
            else:
                self.parses -= 1  # joined a read already under way
            facts = await asyncio.shield(task)
        except EdgefleetError as e:
            return Media(url=url, sha256=got, size=size, kind="other", note=f"unreadable: {e}")
        self.releases[got] = facts
        return Media(url=url, sha256=got, size=size, kind="release", release=facts)
