"""Store selection with Ansible's host-pattern syntax (``--limit``, train stages).

Pure: a ``Fleet`` and a pattern in, store ids out (in inventory order). The syntax and its order of
evaluation are Ansible's (``ansible.inventory.manager``), read at the level of stores instead of
hosts:

* parts are separated by ``,``; a pattern without a comma may use ``:`` instead (a pattern with a
  comma is split at commas only, as Ansible does);
* ``name`` is a group (``country_dk``, ``region_nordics``, ``ring_ring1``, ``canary``, a store's own
  ``groups``, ``all``), a store id (``dk-003``) or the store's group in the Ansible export
  (``store_dk_003``); group names may also be written as the export writes them (``-`` and other
  characters become ``_``);
* ``*``, ``?`` and ``[abc]`` make a shell glob, ``~`` starts a regular expression; both are matched
  from the start of every group name and store id (``re.match``, as Ansible does) and select the
  stores of every name they match;
* ``&part`` intersects, ``!part`` excludes. Whatever their place in the pattern, plain parts are
  joined first, then intersections apply, then exclusions; a pattern of only ``&``/``!`` parts
  starts from ``all``;
* ``part[i]``, ``part[i:j]`` (inclusive, as Ansible), ``part[i:]`` pick stores by position among
  those ``part`` matches, in inventory order; a negative ``i`` counts from the end.

Where Ansible would ignore a part with a warning (a name or glob that matches nothing), ``select``
raises ``InputError`` naming the part, with close names ("did you mean"): a typo in a selector for
destructive work must stop it, not widen or narrow it silently.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable

from edgefleet.errors import InputError
from edgefleet.inventory.ansible import group_name
from edgefleet.inventory.model import Fleet, Role

__all__ = ["select", "split_pattern"]

# Ansible's own (ansible/inventory/manager.py): a part followed by [i], [i:j], [i:] (or [i-j]).
_SUBSCRIPT = re.compile(r"^(.+)\[(?:(-?[0-9]+)|([0-9]+)([:-])([0-9]*))\]$")
# Ansible's ':'-separated form: runs of anything but whitespace, ':' and brackets, or whole [...].
_COLON_PARTS = re.compile(r"(?:[^\s:\[\]]|\[[^\]]*\])+")
_GLOB_CHARS = ("*", "?", "[")
_ROLE_GROUPS = frozenset(r.value for r in Role)


def split_pattern(pattern: str) -> list[str]:
    """The parts of a pattern, as Ansible's ``split_host_pattern`` cuts them (empty parts dropped)."""
    text = pattern.strip()
    parts = text.split(",") if "," in text else _COLON_PARTS.findall(text)
    return [p.strip() for p in parts if p.strip()]


def _names(fleet: Fleet) -> dict[str, set[str]]:
    """Every name a part can match -> the store ids it stands for."""
    names: dict[str, set[str]] = {"all": set(fleet.stores), "ungrouped": set()}
    for s in fleet.stores.values():
        for name in (s.id, f"store_{group_name(s.id)}"):
            names.setdefault(name, set()).add(s.id)
        for g in s.all_groups:
            for name in {g, group_name(g)}:
                names.setdefault(name, set()).add(s.id)
    return names


def _unknown(fleet: Fleet, names: Iterable[str], word: str, what: str) -> InputError:
    """The error for a part that names nothing: where was looked, and close names (or, with none,
    what names there are)."""
    known = sorted(names)
    near = [n for n in (f"{kind}_{word}" for kind in ("ring", "country", "region")) if n in known]
    near += [n for n in difflib.get_close_matches(word, known, n=3, cutoff=0.6) if n not in near]
    where = f"the inventory {fleet.source}" if fleet.source else "the inventory"
    if near:
        return InputError(f"{what} in {where}; did you mean {' or '.join(repr(n) for n in near[:3])}?")
    kinds: dict[str, str] = {}  # one group of each kind (country_, region_, ring_, canary, ...)
    for n in sorted(fleet.groups()):
        kinds.setdefault(n.split("_")[0], n)
    return InputError(f"{what} in {where} (its stores: {', '.join(list(fleet.stores)[:3])}, ...; groups: "
                      f"{', '.join(sorted(kinds.values())[:5])}, ...); check the name or the inventory path")


def _subscript(part: str, expr: str) -> tuple[str, tuple[int, int | None] | None]:
    """``expr`` without its ``[...]`` and the positions asked for: (i, None) or (i, j) inclusive,
    j = -1 for "to the end"."""
    if expr.startswith("~"):
        return expr, None  # as Ansible: no subscripts on regular expressions
    m = _SUBSCRIPT.match(expr)
    if m is None:
        return expr, None
    base, idx, start, sep, end = m.groups()
    if idx is not None:
        return base, (int(idx), None)
    if sep == "-":
        raise InputError(f"{part!r}: Ansible reads [{start}-{end}] as positions {start} to {end}: write "
                         f"{base}[{start}:{end}] for that, or a ~regex to match characters")
    first, last = int(start), int(end) if end else -1
    if last != -1 and last < first:
        raise InputError(f"{part!r}: the range [{start}:{end}] ends before it starts")
    return base, (first, last)


def _match(part: str, expr: str, names: dict[str, set[str]], pattern: str, fleet: Fleet) -> set[str]:
    """The store ids one part (without its ``&``/``!`` and subscript) stands for."""
    if expr in _ROLE_GROUPS:
        raise InputError(f"{part!r} in pattern {pattern!r}: {expr!r} groups nodes by role in the Ansible "
                         "export; a pattern selects whole stores (groups like country_dk, ring_ring1, "
                         "canary, or store ids)")
    if expr.startswith("~") or any(c in expr for c in _GLOB_CHARS):
        try:
            regex = re.compile(expr[1:] if expr.startswith("~") else fnmatch.translate(expr))
        except re.error as e:
            raise InputError(f"{part!r} in pattern {pattern!r} is not a valid regular expression ({e})") from None
        hits = [n for n in names if regex.match(n)]
        if not hits:
            raise _unknown(fleet, names, expr.lstrip("~"), f"{part!r} in pattern {pattern!r} matches no group or store")
        return set().union(*(names[n] for n in hits))
    if expr not in names:
        if ":" in expr:
            raise InputError(f"{part!r} in pattern {pattern!r}: a pattern with ',' is split at ',' only, as Ansible "
                             "does: use one separator (a,b,&c or a:b:&c)")
        raise _unknown(fleet, names, expr, f"{part!r} in pattern {pattern!r}: no group or store {expr!r}")
    return names[expr]


def _pick(part: str, matched: set[str], order: list[str], positions: tuple[int, int | None]) -> set[str]:
    ordered = [s for s in order if s in matched]
    first, last = positions
    n = len(ordered)
    if last is None:
        if not -n <= first < n:
            raise InputError(f"{part!r}: position {first} is out of range ({n} store{'s' if n != 1 else ''} "
                             f"match, positions 0 to {n - 1})")
        return {ordered[first]}
    if first >= n:
        raise InputError(f"{part!r}: position {first} is out of range ({n} store{'s' if n != 1 else ''} match)")
    return set(ordered[first:] if last == -1 else ordered[first:last + 1])


def select(fleet: Fleet, pattern: str) -> list[str]:
    """The ids of the stores ``pattern`` selects, in inventory order (see the module docstring)."""
    parts = split_pattern(pattern)
    if not parts:
        raise InputError(f"empty store pattern {pattern!r}: give a group, a store id or 'all'")
    names = _names(fleet)
    order = list(fleet.stores)
    plain = [p for p in parts if p[0] not in "&!"]
    ordered = (plain or ["all"]) + [p for p in parts if p[0] == "&"] + [p for p in parts if p[0] == "!"]
    chosen: set[str] = set()
    for part in ordered:
        expr = part[1:] if part[0] in "&!" else part
        if not expr:
            raise InputError(f"{part!r} in pattern {pattern!r}: a group, store id, glob or ~regex must follow "
                             f"{part[0]!r}")
        expr, positions = _subscript(part, expr)
        try:
            matched = _match(part, expr, names, pattern, fleet)
        except InputError as e:
            if positions is None:
                raise
            raise InputError(f"{e} (Ansible reads the [...] that ends {part!r} as positions: to match "
                             "characters there, use a ~regex)") from None
        if positions is not None:
            matched = _pick(part, matched, order, positions)
        if part[0] == "&":
            chosen &= matched
        elif part[0] == "!":
            chosen -= matched
        else:
            chosen |= matched
    return [s for s in order if s in chosen]
