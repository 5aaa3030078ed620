"""Build the NoCloud seed ISOs of a fleet, of some stores or of one node: incrementally.

``build_seeds`` writes ``<out>/<store>/<node>.iso`` for every selected node and keeps
``<out>/index.json``: for each node, the digest of everything its seed is made from (the store's
and node's inventory data, the release, the store's secrets file, the renderer version) and the
sha256 and size of the ISO written from it. A node whose digest is unchanged and whose ISO is
still there with the recorded size is not rendered again, so re-checking an unchanged fleet costs
about a file stat per node.

Nothing is written when the input is bad: every node that needs a new seed is rendered (and, with
a schema, validated) in memory first; new secrets, ISOs and the index are written only after all
of them succeeded.

Secrets (``edgefleet.secrets``): a store's secrets are generated on its first build only. A store
that already has seeds (an index entry or an ISO under ``<out>/<store>``) or that the caller says
has a cluster, but has no secrets file, is an error: new secrets would split its cluster.
Missing secrets for several stores are generated in parallel processes (RSA-4096 keys cost about
a second each).

One build at a time per output directory (an ``flock`` on ``<out>/.lock``).
"""

from __future__ import annotations

import fcntl
import gc
import hashlib
import json
import os
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from edgefleet.atomic import write_atomic
from edgefleet.errors import InputError, LockHeld, SecretsError
from edgefleet.inventory.model import Fleet, Node, Store
from edgefleet.outpaths import check_output_dir
from edgefleet.secrets import (
    ClusterSecrets,
    decode_secrets,
    encode_secrets,
    generate_secrets,
    secrets_path,
    write_secrets_file,
)
from edgefleet.seeds.iso import SeedFiles, write_seed_isos
from edgefleet.seeds.render import render_seed_files
from edgefleet.talos.config import ReleaseRef, TalosSchema

__all__ = ["INDEX_NAME", "RENDERER_VERSION", "SeedBuildReport", "SeedEvent", "build_seeds", "load_index",
           "seed_path"]

RENDERER_VERSION = "edgefleet-seed/2"
WRITE_BATCH = 512  # ISOs made durable together (see write_seed_isos); the index is saved after all
"""Part of every node's input digest: bump it when rendering changes, so every seed is rebuilt."""
INDEX_NAME = "index.json"
INDEX_VERSION = 1

Action = Literal["written", "unchanged", "skipped"]


@dataclass(frozen=True, slots=True)
class SeedEvent:
    """Progress: ``written`` (new or changed ISO), ``unchanged`` (rendered, same bytes as on disk),
    ``skipped`` (inputs unchanged since the last build: not rendered at all)."""

    store: str
    node: str
    action: Action
    path: Path


@dataclass(slots=True)
class SeedBuildReport:
    nodes: int = 0
    written: list[str] = field(default_factory=list)  # "store/node"
    unchanged: int = 0
    skipped: int = 0
    secrets_generated: list[str] = field(default_factory=list)  # store ids
    secrets_seconds: float = 0.0
    render_seconds: float = 0.0
    write_seconds: float = 0.0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def seed_path(out: Path, store_id: str, node_name: str) -> Path:
    return out / store_id / f"{node_name}.iso"


def _key(store_id: str, node_name: str) -> str:
    return f"{store_id}/{node_name}"


def load_index(out: Path) -> dict[str, dict[str, Any]]:
    """``store/node`` -> {digest, sha256, size, release}. A missing or unreadable index is empty:
    it is a cache, everything in it can be recomputed."""
    try:
        data = (out / INDEX_NAME).read_bytes()
    except OSError:
        return {}
    # Tens of thousands of small dicts: with a large heap (a loaded fleet) the cyclic GC would run
    # many times during the parse and cost 15x the parse itself. JSON cannot contain cycles.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        raw = json.loads(data)
    except ValueError:
        return {}
    finally:
        if gc_was_enabled:
            gc.enable()
    if not isinstance(raw, dict) or raw.get("version") != INDEX_VERSION or not isinstance(raw.get("nodes"), dict):
        return {}
    return {k: v for k, v in raw["nodes"].items() if isinstance(v, dict)}


def _write_index(out: Path, nodes: dict[str, dict[str, Any]]) -> None:
    data = json.dumps({"version": INDEX_VERSION, "renderer": RENDERER_VERSION, "nodes": nodes},
                      separators=(",", ":"), sort_keys=True).encode()
    write_atomic(out / INDEX_NAME, data, mode=0o600, fsync=False)


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold ``<out>/.lock``. If ``out`` is new and the build fails before writing, it is removed
    again, so bad input leaves nothing behind."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(f"another seed build is writing to {out}; wait for it to finish") from None
        yield
    except BaseException:
        if created and [p.name for p in out.iterdir()] == [".lock"]:
            (out / ".lock").unlink()
            out.rmdir()
        raise
    finally:
        os.close(fd)


def _select(fleet: Fleet, store_ids: Sequence[str] | None, node: str | None) -> list[tuple[Store, list[Node]]]:
    stores = list(fleet.stores.values()) if store_ids is None else [fleet.store(s) for s in store_ids]
    if node is None:
        return [(s, list(s.nodes)) for s in stores]
    picked = [(s, [n]) for s in stores for n in s.nodes if n.name == node]
    if not picked:
        where = "the fleet" if store_ids is None else "store " + ", ".join(store_ids)
        raise InputError(f"no node {node!r} in {where} (inventory {fleet.source or '<memory>'})")
    if len(picked) > 1:
        raise InputError(f"node name {node!r} is in several stores ({', '.join(s.id for s, _ in picked)}): "
                         "give --store too")
    return picked


def _has_seeds(out: Path, store_id: str, index: dict[str, dict[str, Any]]) -> bool:
    prefix = f"{store_id}/"
    if any(k.startswith(prefix) for k in index):
        return True
    d = out / store_id
    return d.is_dir() and any(p.suffix == ".iso" for p in d.iterdir())


def _generate_many(store_ids: list[str], now: datetime) -> dict[str, ClusterSecrets]:
    if len(store_ids) <= 1:
        return {s: generate_secrets(now) for s in store_ids}
    workers = min(len(store_ids), os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return dict(zip(store_ids, pool.map(generate_secrets, [now] * len(store_ids), chunksize=4), strict=True))


def build_seeds(fleet: Fleet, store_ids: Sequence[str] | None, node: str | None, release: ReleaseRef,
                home: Path, out: Path, *, now: datetime, progress: Callable[[SeedEvent], None] | None = None,
                schema: TalosSchema | None = None, existing_clusters: Collection[str] = (),
                secrets_key: str | None = None) -> SeedBuildReport:
    """Build (or re-check) seeds; see the module docstring.

    ``store_ids``: None for every store. ``node``: one node only (searched in the selected stores).
    ``existing_clusters``: stores known to have a running cluster (their secrets must exist).
    ``secrets_key``: Fernet key for secrets at rest (default: ``EDGEFLEET_SECRETS_KEY``)."""
    t_start = time.perf_counter()
    report = SeedBuildReport()
    selected = _select(fleet, store_ids, node)
    with _locked(out):
        index = load_index(out)
        # 1. Which stores need new secrets, and which nodes a new seed.
        store_secrets_sha, missing = _secrets_state(selected, home, out, index, existing_clusters, report)
        t = time.perf_counter()
        generated = _generate_many(missing, now)
        report.secrets_seconds = time.perf_counter() - t
        new_secrets_data: dict[str, bytes] = {}
        for sid, bundle in generated.items():
            data = encode_secrets(bundle, key=secrets_key)
            new_secrets_data[sid] = data
            store_secrets_sha[sid] = hashlib.sha256(data).hexdigest()
        need_render = _stale_seeds(selected, release, out, index, store_secrets_sha, report, progress)

        # 2. Render (and validate) everything before writing anything.
        t = time.perf_counter()
        loaded: dict[str, ClusterSecrets] = dict(generated)
        rendered: list[tuple[Store, Node, str, SeedFiles]] = []
        for store, n, digest in need_render:
            if store.id not in loaded:
                path = secrets_path(home, store.id)
                loaded[store.id] = decode_secrets(path.read_bytes(), store_id=store.id, source=path,
                                                  key=secrets_key)
            files = render_seed_files(store, n, release, loaded[store.id], schema=schema)
            rendered.append((store, n, digest, files))
        report.render_seconds = time.perf_counter() - t

        # 3. Write: secrets first (seeds depend on them), then the ISOs, then the index. A store
        # directory that cannot be written (a file in its place) stops the build before any of it.
        for sid in dict.fromkeys(store.id for store, _n, _d, _f in rendered):
            check_output_dir(out / sid, "--out")
        t = time.perf_counter()
        for sid, data in new_secrets_data.items():
            try:
                write_secrets_file(home, sid, data)
            except FileExistsError:
                raise SecretsError(f"store {sid}: its secrets were created by another process while this build "
                                   "ran; nothing of this store was written, run the build again") from None
            report.secrets_generated.append(sid)
        _write_seeds(rendered, release, out, index, report, progress)
        report.write_seconds = time.perf_counter() - t
    report.seconds = time.perf_counter() - t_start
    return report


def _secrets_state(selected: list[tuple[Store, list[Node]]], home: Path, out: Path, index: dict[str, dict[str, Any]],
                   existing_clusters: Collection[str], report: SeedBuildReport) -> tuple[dict[str, str], list[str]]:
    """The sha256 of each selected store's secrets file, and the stores that have none yet (refused
    for a store that has a cluster or seeds: new secrets would split it)."""
    store_secrets_sha: dict[str, str] = {}
    missing: list[str] = []
    for store, nodes in selected:
        report.nodes += len(nodes)
        path = secrets_path(home, store.id)
        try:
            store_secrets_sha[store.id] = hashlib.sha256(path.read_bytes()).hexdigest()
        except FileNotFoundError:
            if store.id in existing_clusters or _has_seeds(out, store.id, index):
                raise SecretsError(
                    f"store {store.id}: it already has a cluster (or seeds in {out / store.id}) but its "
                    f"secrets file {path} is missing; restore it from a backup (new secrets would split "
                    "the cluster: new nodes could not join)") from None
            missing.append(store.id)
    return store_secrets_sha, missing


def _stale_seeds(selected: list[tuple[Store, list[Node]]], release: ReleaseRef, out: Path,
                 index: dict[str, dict[str, Any]], store_secrets_sha: dict[str, str], report: SeedBuildReport,
                 progress: Callable[[SeedEvent], None] | None) -> list[tuple[Store, Node, str]]:
    """The nodes whose seed must be rendered (store, node, digest); the others are reported skipped."""
    release_json = json.dumps([release.name, release.talos_version, release.kubernetes_version,
                               release.installer_image])
    need_render: list[tuple[Store, Node, str]] = []
    out_str = os.fspath(out)
    for store, nodes in selected:
        store_digest = hashlib.sha256(
            f"{RENDERER_VERSION}\0{release_json}\0{store_secrets_sha[store.id]}\0".encode()
            + store.model_dump_json().encode()).hexdigest()
        for n in nodes:
            digest = hashlib.sha256(f"{store_digest}\0{n.name}".encode()).hexdigest()
            entry = index.get(_key(store.id, n.name))
            if entry is not None and entry.get("digest") == digest:
                iso = f"{out_str}/{store.id}/{n.name}.iso"  # plain strings: pathlib costs 10x here
                try:
                    size = os.stat(iso).st_size
                except FileNotFoundError:
                    size = -1
                if size == entry.get("size"):
                    report.skipped += 1
                    if progress:
                        progress(SeedEvent(store.id, n.name, "skipped", Path(iso)))
                    continue
            need_render.append((store, n, digest))
    return need_render


def _write_seeds(rendered: list[tuple[Store, Node, str, SeedFiles]], release: ReleaseRef, out: Path,
                 index: dict[str, dict[str, Any]], report: SeedBuildReport,
                 progress: Callable[[SeedEvent], None] | None) -> None:
    """Write the rendered seed ISOs in batches, then the index (also when a write fails midway)."""
    dirty = False
    try:
        for at in range(0, len(rendered), WRITE_BATCH):
            batch = rendered[at:at + WRITE_BATCH]
            writes = write_seed_isos([(seed_path(out, store.id, n.name), seed) for store, n, _d, seed in batch])
            for (store, n, digest, _seed), w in zip(batch, writes, strict=True):
                index[_key(store.id, n.name)] = {"digest": digest, "sha256": w.sha256, "size": w.size,
                                                 "release": release.name}
                dirty = True
                action: Action = "written" if w.changed else "unchanged"
                if w.changed:
                    report.written.append(_key(store.id, n.name))
                else:
                    report.unchanged += 1
                if progress:
                    progress(SeedEvent(store.id, n.name, action, w.path))
    finally:
        if dirty:
            _write_index(out, index)
