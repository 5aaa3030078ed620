"""The one way edgefleet reads YAML written by someone else: safe tags, bounded work, located errors.

Every YAML file a user hands in (inventory files, group_vars, a scenario, a secrets bundle, the seeds a
simulated node fetches) goes through ``parse_yaml`` / ``parse_yaml_all`` / ``load_yaml_file``. On top
of PyYAML's safe tags (read with libyaml when it is there) they:

* refuse a key given twice in one mapping (YAML would silently keep the last one); ``<<`` merge
  keys work as YAML 1.1 defines them: the mapping's own keys win, then earlier merged mappings;
* bound alias expansion. An alias (``*name``) reuses a node; a few KB of nested aliases ("billion
  laughs") expand to billions of nodes. Building the data may create at most
  ``ALIAS_FACTOR`` times the document's own node count plus ``ALIAS_ALLOWANCE`` nodes; beyond
  that the file is refused before any memory is spent on it. Nesting is limited to ``MAX_DEPTH``
  levels (which also stops a recursive alias);
* read bytes as UTF-8 only (a leading byte-order mark is allowed) and name the line of the first
  byte that is not UTF-8.

Problems raise ``YamlError`` (exit 2) carrying a ``Problem`` with the file and the 1-based line.
Pure: no I/O except ``load_yaml_file``, which reads the one file it is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from edgefleet.errors import Problem, YamlError

__all__ = ["ALIAS_ALLOWANCE", "ALIAS_FACTOR", "MAX_DEPTH", "decode_utf8", "load_yaml_file", "parse_yaml",
           "parse_yaml_all"]

MAX_DEPTH = 64
ALIAS_FACTOR = 4
ALIAS_ALLOWANCE = 50_000

_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(_Base):  # type: ignore[valid-type,misc]
    """libyaml with a memo of implicit tag resolution: inventories repeat the same keys and values
    thousands of times, and resolving each plain scalar against YAML 1.1's regexes is the
    dominant cost of loading a fleet."""

    _tags: dict[tuple[str, tuple[bool, bool]], str] = {}  # noqa: RUF012 - a class-wide cache on purpose

    def resolve(self, kind: type[yaml.Node], value: Any, implicit: Any) -> Any:
        if kind is yaml.ScalarNode:
            key = (value, implicit)
            tag = self._tags.get(key)
            if tag is None:
                tag = super().resolve(kind, value, implicit)
                if len(self._tags) < 100_000:
                    self._tags[key] = tag
            return tag
        return super().resolve(kind, value, implicit)


class _Refused(Exception):
    def __init__(self, message: str, node: yaml.Node | None, hint: str | None = None):
        super().__init__(message)
        self.message, self.node, self.hint = message, node, hint


def _line(node: yaml.Node | None) -> int | None:
    return node.start_mark.line + 1 if node is not None and node.start_mark is not None else None


def _count_distinct(root: yaml.Node) -> int:
    """Nodes of the composed document, each counted once however many aliases point at it."""
    seen: set[int] = set()
    todo = [root]
    while todo:
        n = todo.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n, yaml.SequenceNode):
            todo.extend(n.value)
        elif isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                todo.append(k)
                todo.append(v)
    return len(seen)


class _Builder:
    """Python data from a composed node tree, counting every node it builds against a budget."""

    def __init__(self, loader: yaml.SafeLoader, root: yaml.Node):
        self.loader = loader
        self.root = root
        self.distinct: int | None = None  # counted only when a document builds more than the allowance
        self.budget = ALIAS_ALLOWANCE
        self.built = 0

    def _over_budget(self) -> bool:
        if self.distinct is None:
            self.distinct = _count_distinct(self.root)
            self.budget = ALIAS_FACTOR * self.distinct + ALIAS_ALLOWANCE
        return self.built > self.budget

    def build(self, node: yaml.Node, depth: int = 0) -> Any:
        self.built += 1
        if self.built > self.budget and self._over_budget():
            raise _Refused(f"aliases expand this document beyond {self.budget:,} nodes (it has {self.distinct:,} "
                           "of its own): refused as an alias bomb", node,
                           hint=f"aliases may add at most {ALIAS_FACTOR}x the document's nodes plus "
                                f"{ALIAS_ALLOWANCE:,}; write the repeated data out or use group_vars")
        if depth > MAX_DEPTH:
            raise _Refused(f"nesting deeper than {MAX_DEPTH} levels (a recursive alias?)", node)
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _STR_TAG:
                return node.value
            constructor = self.loader.yaml_constructors.get(node.tag)
            if constructor is None or node.tag == _MERGE_TAG:
                raise _Refused(f"the tag {node.tag} is not allowed here (plain YAML values only)", node)
            return constructor(self.loader, node)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(n, depth + 1) for n in node.value]
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, depth)
        raise _Refused(f"unsupported YAML node {node.tag}", node)  # pragma: no cover - composer makes no other

    def _mapping(self, node: yaml.MappingNode, depth: int) -> dict[Any, Any]:
        own: dict[Any, Any] = {}
        merged: dict[Any, Any] = {}
        for k, v in node.value:
            if k.tag == _MERGE_TAG:
                sources = v.value if isinstance(v, yaml.SequenceNode) else [v]
                for src in sources:
                    data = self.build(src, depth + 1)
                    if not isinstance(data, dict):
                        raise _Refused("a merge key (<<) takes a mapping or a list of mappings", src)
                    for mk, mv in data.items():
                        merged.setdefault(mk, mv)  # an earlier merged mapping wins
                continue
            key = self.build(k, depth + 1)
            try:
                if key in own:
                    raise _Refused(f"key {key!r} is given twice in one mapping", k,
                                   hint="YAML would silently keep only the last one")
                own[key] = self.build(v, depth + 1)
            except TypeError:
                raise _Refused("a mapping key must be a plain value", k) from None
        if not merged:
            return own
        merged.update(own)
        return merged


def decode_utf8(data: bytes, source: str) -> str:
    """``data`` as text; raises ``YamlError`` naming the line of the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - data.rfind(b"\n", 0, e.start)
        raise YamlError(Problem(f"byte 0x{data[e.start]:02x} at column {column} is not UTF-8", source, line,
                                hint="save the file as UTF-8")) from None


def _text(text: str | bytes, source: str) -> str:
    return decode_utf8(text, source) if isinstance(text, bytes) else text


def _located(e: yaml.YAMLError, source: str) -> YamlError:
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        return YamlError(Problem(f"broken YAML: {e.problem or e.context}", source,
                                 mark.line + 1 if mark else None))
    if isinstance(e, yaml.reader.ReaderError):
        return YamlError(Problem(f"broken YAML: {e.reason} (character {e.character!r})", source,
                                 hint="a control character in the file"))
    return YamlError(Problem(f"broken YAML: {e}", source))


def _reader_line(text: str, e: yaml.YAMLError) -> int | None:
    pos = getattr(e, "position", None)
    return text.count("\n", 0, pos) + 1 if isinstance(pos, int) else None


def _documents(text: str, source: str, *, single: bool) -> list[Any]:
    loader = _Loader(text)
    out: list[Any] = []
    try:
        if single:
            node = loader.get_single_node()
            nodes = [] if node is None else [node]
        else:
            nodes = []
            while loader.check_node():
                nodes.append(loader.get_node())
        for node in nodes:
            out.append(_Builder(loader, node).build(node))
    except _Refused as e:
        raise YamlError(Problem(e.message, source, _line(e.node), hint=e.hint)) from None
    except yaml.YAMLError as e:
        err = _located(e, source)
        if err.problem.line is None:
            line = _reader_line(text, e)
            if line is not None:
                err = YamlError(Problem(err.problem.message, source, line, hint=err.problem.hint))
        raise err from None
    finally:
        loader.dispose()
    return out


def parse_yaml(text: str | bytes, *, source: str = "<input>") -> Any:
    """One YAML document (None when empty); ``source`` names it in errors."""
    docs = _documents(_text(text, source), source, single=True)
    return docs[0] if docs else None


def parse_yaml_all(text: str | bytes, *, source: str = "<input>") -> list[Any]:
    """Every document of a YAML stream, in order (empty documents included as None)."""
    return _documents(_text(text, source), source, single=False)


def load_yaml_file(path: Path, *, source: str | None = None) -> Any:
    """Read and parse one YAML file; ``source`` (default: the path) names it in errors."""
    label = source or str(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise YamlError(Problem(f"cannot read: {e.strerror or e}", label)) from None
    return parse_yaml(data, source=label)
