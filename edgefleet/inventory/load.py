"""Load an inventory directory into a validated ``Fleet``, collecting every problem in one pass.

Layout (Ansible-like layering; lowest precedence first)::

    inventory/
      fleet.yml              fleet name, ``defaults`` (layer 0), ``freezes``
      group_vars/NAME.yml    vars for a group: country_dk, region_nordics, ring_canary, canary, ...
      stores/*.yml           ``stores:`` a list of stores, each with its ``nodes``

A store's effective settings are ``defaults`` <- its groups in order (country, region, ring,
canary, then its explicit ``groups``) <- the store itself; a node's are the merged
``node_defaults`` <- the node itself. Mappings merge key by key, lists replace, except
``talos_patches``, which accumulate in layer order (fleet, groups, store; then the node's own).

Files are read with ``edgefleet.safeyaml`` (libyaml, UTF-8 only, bounded alias expansion, no
duplicate keys); line numbers are looked up lazily, only for the files that have problems.
"""

from __future__ import annotations

import functools
import gc
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from edgefleet.errors import InventoryError, Problem, YamlError
from edgefleet.inventory.checks import check_store
from edgefleet.inventory.model import Fleet, Freeze, Store
from edgefleet.safeyaml import load_yaml_file, parse_yaml

LAYER_KEYS = {
    "timezone", "region", "ring", "maintenance_windows", "network", "cluster", "node_defaults", "probes",
    "talos_patches", "wipe_method", "seed_url",
}
STORE_ONLY_KEYS = {"id", "name", "country", "canary", "groups", "nodes"}
ACCUMULATING = "talos_patches"

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class _Source:
    """Where a mapping came from: file and key path inside it."""

    file: str
    path: tuple[str | int, ...] = ()


@dataclass
class _Ctx:
    root: Path
    problems: list[Problem] = field(default_factory=list)

    def rel(self, p: Path) -> str:
        try:
            return str(p.relative_to(self.root.parent))
        except ValueError:
            return str(p)

    def add(self, message: str, *, file: str | None = None, line: int | None = None, store: str | None = None,
            node: str | None = None, fld: str | None = None, hint: str | None = None) -> None:
        self.problems.append(Problem(message, file, line, store, node, fld, hint))


def _read_yaml(ctx: _Ctx, path: Path) -> Any:
    try:
        return load_yaml_file(path, source=ctx.rel(path))
    except YamlError as e:
        ctx.problems.append(e.problem)
    return None


@functools.lru_cache(maxsize=64)
def _composed(path: str) -> yaml.Node | None:
    try:
        return yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=_Loader)
    except Exception:
        return None


def _line_of(abs_file: str, path: Iterable[str | int]) -> int | None:
    """1-based line of the node at ``path`` in the file, or the deepest ancestor found."""
    node = _composed(abs_file)
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in path:
        nxt: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                    nxt = v
                    line = k.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            nxt = node.value[part]
            line = nxt.start_mark.line + 1
        if nxt is None:
            return line
        node = nxt
    return line


def _scalar_at(abs_file: str, path: Iterable[str | int]) -> str | None:
    """The source text of the scalar at ``path`` (as written, before YAML typed it), or None."""
    node = _composed(abs_file)
    for part in path:
        nxt: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            nxt = node.value[part]
        if nxt is None:
            return None
        node = nxt
    return node.value if isinstance(node, yaml.ScalarNode) else None


def _time_hint(fld: str, raw: str | None) -> str:
    """How to write a time-of-day field, from what the user wrote (``25:00``, ``0100``, ``"22:00Z"``)."""
    suggestion = None
    text = (raw or "").strip()
    m = re.match(r"^(\d{1,2}):(\d{2})", text) or re.fullmatch(r"(\d{1,2})(\d{2})", text)
    if m and int(m[1]) <= 23 and int(m[2]) <= 59:
        suggestion = f"{int(m[1]):02d}:{m[2]}"
    if suggestion is None:
        return f'write {fld}: "HH:MM", quoted, local wall time (hours 00-23; "24:00" only as an end)'
    return f'write {fld}: "{suggestion}", quoted, local wall time of the store\'s timezone'


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` wins; mappings merge recursively, lists and scalars replace, ``talos_patches`` add up."""
    out = dict(base)
    for k, v in over.items():
        old = out.get(k)
        if k == ACCUMULATING and isinstance(old, list) and isinstance(v, list):
            out[k] = old + v
        elif isinstance(old, Mapping) and isinstance(v, Mapping):
            out[k] = deep_merge(old, v)
        else:
            out[k] = v
    return out


def _has_path(data: Any, path: tuple[str | int, ...]) -> bool:
    for part in path:
        if isinstance(data, Mapping) and part in data:  # noqa: SIM114 - the narrowed types differ
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return False
    return True


def _pydantic_problems(ctx: _Ctx, err: ValidationError, store_id: str, raw_store: Mapping[str, Any],
                       src: _Source, layers: list[tuple[_Source, Mapping[str, Any]]]) -> None:
    raw_nodes = raw_store.get("nodes")
    nodes: list[Any] = raw_nodes if isinstance(raw_nodes, list) else []
    seen: set[tuple[tuple[str | int, ...], str]] = set()
    for e in err.errors(include_url=False):
        # Drop pydantic's union-member tags ("function-after[...]") from the location.
        loc = tuple(p for p in e["loc"] if isinstance(p, int) or ("[" not in p and "(" not in p))
        if (loc, e["type"]) in seen:
            continue
        seen.add((loc, e["type"]))
        node_name = None
        if len(loc) >= 2 and loc[0] == "nodes" and isinstance(loc[1], int) and loc[1] < len(nodes):
            n = nodes[loc[1]]
            node_name = n.get("name") if isinstance(n, Mapping) else None
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "extra_forbidden":
            msg = f"unknown field {loc[-1]!r}"
        elif e["type"] not in ("value_error",) and "input" in e and not isinstance(e["input"], (dict, list)):
            msg = f"{msg} (got {e['input']!r})"
        # Find who supplied the offending value: the store itself, its node_defaults, or a layer.
        file, path = src.file, src.path + loc
        if not _has_path(raw_store, loc):
            cand: list[tuple[_Source, tuple[str | int, ...]]] = []
            if len(loc) >= 3 and loc[0] == "nodes":
                cand.append((src, ("node_defaults", *loc[2:])))
            for lsrc, ldata in reversed(layers):
                if _has_path(ldata, loc):
                    cand.append((lsrc, loc))
                elif len(loc) >= 3 and loc[0] == "nodes" and _has_path(ldata, ("node_defaults", *loc[2:])):
                    cand.append((lsrc, ("node_defaults", *loc[2:])))
            for csrc, cpath in cand:
                if csrc is src and not _has_path(raw_store, cpath):
                    continue
                file, path = csrc.file, csrc.path + cpath
                break
        fld = ".".join(str(p) for p in loc) if loc else None
        hint = None
        if loc and loc[-1] == "country" and isinstance(e.get("input"), bool):
            hint = "YAML reads an unquoted NO as false: write 'NO'"
        elif len(loc) >= 3 and loc[0] == "maintenance_windows" and loc[-1] in ("start", "end"):
            hint = _time_hint(str(loc[-1]), _scalar_at(file, path))
        ctx.add(msg, file=ctx.rel(Path(file)), line=_line_of(file, path), store=store_id, node=node_name,
                fld=fld, hint=hint)


def _check_store(ctx: _Ctx, s: Store, file: str, path: tuple[str | int, ...]) -> None:
    """``check_store``'s findings, placed at their line in ``file``."""

    def add(msg: str, fld: str, sub: tuple[str | int, ...] = (), node: str | None = None,
            hint: str | None = None) -> None:
        ctx.add(msg, file=ctx.rel(Path(file)), line=_line_of(file, path + sub), store=s.id, node=node, fld=fld,
                hint=hint)

    check_store(s, add)


def _fleet_file(ctx: _Ctx, root: Path) -> tuple[str, dict[str, Any], list[Freeze], _Source]:
    path = root / "fleet.yml"
    src = _Source(str(path))
    name = root.name
    defaults: dict[str, Any] = {}
    freezes: list[Freeze] = []
    if not path.is_file():
        ctx.add("missing: every inventory has a fleet.yml (fleet name, defaults, freezes)", file=ctx.rel(path))
        return name, defaults, freezes, src
    data = _read_yaml(ctx, path)
    if data is None:
        return name, defaults, freezes, src
    if not isinstance(data, dict):
        ctx.add("must be a mapping with keys fleet, defaults, freezes", file=ctx.rel(path), line=1)
        return name, defaults, freezes, src
    for k in data:
        if k not in ("fleet", "defaults", "freezes"):
            ctx.add(f"unknown key {k!r}", file=ctx.rel(path), line=_line_of(str(path), (k,)),
                    hint="fleet.yml has fleet, defaults and freezes")
    fleet = data.get("fleet") or {}
    if isinstance(fleet, dict) and isinstance(fleet.get("name"), str):
        name = fleet["name"]
    d = data.get("defaults") or {}
    if not isinstance(d, dict):
        ctx.add("defaults must be a mapping", file=ctx.rel(path), line=_line_of(str(path), ("defaults",)))
    else:
        for k in d:
            if k not in LAYER_KEYS:
                ctx.add(f"unknown key {k!r} in defaults", file=ctx.rel(path),
                        line=_line_of(str(path), ("defaults", k)), hint=f"layer keys: {', '.join(sorted(LAYER_KEYS))}")
        defaults = {k: v for k, v in d.items() if k in LAYER_KEYS}
    raw_freezes = data.get("freezes") or []
    if not isinstance(raw_freezes, list):
        ctx.add("freezes must be a list", file=ctx.rel(path), line=_line_of(str(path), ("freezes",)))
        raw_freezes = []
    for i, f in enumerate(raw_freezes):
        try:
            freezes.append(Freeze.model_validate(f))
        except ValidationError as err:
            for e in err.errors(include_url=False):
                loc = ("freezes", i, *e["loc"])
                ctx.add(e["msg"].removeprefix("Value error, "), file=ctx.rel(path), line=_line_of(str(path), loc),
                        fld=".".join(map(str, loc)))
    return name, defaults, freezes, _Source(str(path), ("defaults",))


def _group_vars(ctx: _Ctx, root: Path) -> dict[str, tuple[_Source, dict[str, Any]]]:
    out: dict[str, tuple[_Source, dict[str, Any]]] = {}
    gdir = root / "group_vars"
    if not gdir.is_dir():
        return out
    for path in sorted(gdir.iterdir()):
        if path.suffix not in (".yml", ".yaml"):
            continue
        data = _read_yaml(ctx, path)
        if data is None:
            continue
        if not isinstance(data, dict):
            ctx.add("a group_vars file must be a mapping of layer keys", file=ctx.rel(path), line=1)
            continue
        bad = [k for k in data if k not in LAYER_KEYS]
        for k in bad:
            ctx.add(f"unknown key {k!r} for group {path.stem}", file=ctx.rel(path), line=_line_of(str(path), (k,)),
                    hint=f"layer keys: {', '.join(sorted(LAYER_KEYS))}")
        out[path.stem] = (_Source(str(path)), {k: v for k, v in data.items() if k in LAYER_KEYS})
    return out


def _iter_store_files(root: Path) -> Iterator[Path]:
    sdir = root / "stores"
    if sdir.is_dir():
        for dirpath, _dirs, files in sorted(os.walk(sdir)):
            for f in sorted(files):
                if f.endswith((".yml", ".yaml")):
                    yield Path(dirpath) / f


def _groups_of(raw: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[str]:
    country = raw.get("country")
    region = raw.get("region", defaults.get("region"))
    ring = raw.get("ring", defaults.get("ring", "ring1"))
    out = []
    if isinstance(country, str):
        out.append(f"country_{country.lower()}")
    if isinstance(region, str):
        out.append(f"region_{region}")
    if isinstance(ring, str):
        out.append(f"ring_{ring}")
    if raw.get("canary") is True:
        out.append("canary")
    extra = raw.get("groups")
    if isinstance(extra, list):
        out.extend(g for g in extra if isinstance(g, str) and g not in out)
    return out


def _resolve_store(raw: Mapping[str, Any], layers: list[Mapping[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = deep_merge(merged, layer)
    merged = deep_merge(merged, {k: v for k, v in raw.items() if k != "nodes"})
    node_defaults = merged.pop("node_defaults", None) or {}
    nodes = raw.get("nodes")
    if isinstance(nodes, list) and isinstance(node_defaults, Mapping):
        merged["nodes"] = [
            deep_merge({k: v for k, v in node_defaults.items() if k != ACCUMULATING}, n) if isinstance(n, Mapping)
            else n
            for n in nodes
        ]
    elif nodes is not None:
        merged["nodes"] = nodes
    return merged


def load_fleet(path: str | os.PathLike[str]) -> Fleet:
    """Load and validate the inventory at ``path``. Raises ``InventoryError`` with every problem found."""
    # Loading allocates hundreds of thousands of small long-lived objects; CPython's cyclic GC would
    # rescan them all again and again (measured: 2.5-4 s instead of 0.9 s for 3,400 stores). Nothing
    # built here forms reference cycles, so collection is paused for the duration.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _load_fleet(Path(path))
    finally:
        if was_enabled:
            gc.enable()


def _load_fleet(path: Path) -> Fleet:
    root = path.resolve()
    ctx = _Ctx(root)
    if not root.is_dir():
        raise InventoryError([Problem(f"inventory directory {path} does not exist", file=str(path))])
    name, defaults, freezes, dsrc = _fleet_file(ctx, root)
    gvars = _group_vars(ctx, root)
    stores: dict[str, Store] = {}
    origin: dict[str, tuple[str, tuple[str | int, ...]]] = {}
    files = list(_iter_store_files(root))
    if not files:
        ctx.add("no store files: put stores in stores/*.yml under a 'stores:' list", file=ctx.rel(root / "stores"))
    for f in files:
        data = _read_yaml(ctx, f)
        if data is None:
            continue
        rel = ctx.rel(f)
        if not isinstance(data, dict) or not isinstance(data.get("stores"), list):
            ctx.add("a store file holds a mapping with a 'stores:' list", file=rel, line=1)
            continue
        for i, raw in enumerate(data["stores"]):
            spath: tuple[str | int, ...] = ("stores", i)
            if not isinstance(raw, dict):
                ctx.add("each store is a mapping", file=rel, line=_line_of(str(f), spath))
                continue
            sid: str = raw["id"] if isinstance(raw.get("id"), str) else f"#{i}"
            if sid in origin:
                ofile, opath = origin[sid]
                ctx.add(f"duplicate store id (first defined at {ctx.rel(Path(ofile))}:{_line_of(ofile, opath)})",
                        file=rel, line=_line_of(str(f), spath), store=sid, fld="id")
                continue
            origin[sid] = (str(f), spath)
            src = _Source(str(f), spath)
            layer_list: list[tuple[_Source, Mapping[str, Any]]] = [(dsrc, defaults)]
            for g in _groups_of(raw, defaults):
                if g in gvars:
                    layer_list.append(gvars[g])
            merged = _resolve_store(raw, [d for _s, d in layer_list])
            try:
                store = Store.model_validate(merged)
            except ValidationError as err:
                _pydantic_problems(ctx, err, sid, raw, src, layer_list)
                continue
            _check_store(ctx, store, str(f), spath)
            stores[store.id] = store
    _check_fleet_unique(ctx, stores, origin)
    if ctx.problems:
        raise InventoryError(ctx.problems)
    return Fleet(name=name, stores=stores, freezes=freezes, source=str(root))


def _check_fleet_unique(ctx: _Ctx, stores: Mapping[str, Store],
                        origin: Mapping[str, tuple[str, tuple[str | int, ...]]]) -> None:
    """Host names, MACs and IPs are unique across the whole fleet."""
    seen: dict[tuple[str, str], tuple[str, str]] = {}
    for s in stores.values():
        file, spath = origin[s.id]
        items: list[tuple[str, str, str, tuple[str | int, ...]]] = []  # kind, value, node, path
        for i, n in enumerate(s.nodes):
            items.append(("host name", n.name, n.name, ("nodes", i, "name")))
            for mac in {n.mac, *(n.bond.macs if n.bond else ())}:
                items.append(("MAC", mac, n.name, ("nodes", i, "mac")))
            items.append(("IP", str(n.ip), n.name, ("nodes", i, "ip")))
            if n.ipv6 is not None:
                items.append(("IP", str(n.ipv6), n.name, ("nodes", i, "ipv6")))
        for fld, vip in (("vip", s.cluster.vip), ("vip6", s.cluster.vip6)):
            if vip is not None:
                items.append(("IP", str(vip), "", ("cluster", fld)))
        for kind, value, node, sub in items:
            key = (kind, value)
            if key in seen:
                ostore, onode = seen[key]
                if ostore == s.id and kind != "IP":
                    msg = f"{kind} {value} is used twice in this store"
                else:
                    msg = f"{kind} {value} is already used by store {ostore}" + (f" node {onode}" if onode else "")
                if not (ostore == s.id and kind == "IP"):  # same-store IP clashes are reported per store
                    ctx.add(msg, file=ctx.rel(Path(file)), line=_line_of(file, spath + sub), store=s.id,
                            node=node or None, fld=".".join(map(str, sub)), hint=f"{kind}s are unique fleet-wide")
            else:
                seen[key] = (s.id, node)


__all__ = ["deep_merge", "load_fleet", "parse_yaml"]
