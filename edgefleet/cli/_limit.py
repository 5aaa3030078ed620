"""The one store selector of the CLI: ``--limit PATTERN`` (``-l``), an Ansible host pattern resolved
by ``edgefleet.inventory.patterns.select``.

The older spellings are aliases of it: ``--store ID`` (repeatable) and ``--stores a,b`` are the
pattern ``ID,...``, and seed build's ``--all`` is the pattern ``all``. Give one spelling per
command line: two selectors on one command would leave open whether they add up or intersect.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer

from edgefleet.errors import InputError

if TYPE_CHECKING:
    from edgefleet.inventory.model import Fleet

LIMIT_HELP = ("Stores to act on, as an Ansible host pattern: groups (country_dk, region_nordics, ring_ring1, canary), "
              "store ids, globs (dk-*), ~regex, joined with ',' or ':'; &group intersects, !group excludes; e.g. "
              "'country_dk:&ring_ring1:!dk-003'")
LimitOpt = Annotated[str | None, typer.Option("--limit", "-l", help=LIMIT_HELP)]


def alias_pattern(values: Sequence[str] | str | None) -> str | None:
    """An alias's values as one pattern: ``--store a --store b`` or ``--stores a,b`` -> ``a,b``."""
    if values is None:
        return None
    items = [values] if isinstance(values, str) else list(values)
    return ",".join(v.strip() for v in items)


def limit_stores(fleet: Fleet, limit: str | None, *, aliases: dict[str, str | None] | None = None,
                 allow_empty: bool = False) -> list[str] | None:
    """The store ids ``--limit`` (or one of its ``aliases``, option name -> pattern) selects, in
    inventory order; None when no selector was given (the command's default). InputError for two
    selectors at once, a pattern part that names nothing, and, unless ``allow_empty``, a pattern
    that selects no store (an intersection that came out empty acts on nothing: say so)."""
    from edgefleet.inventory.patterns import select

    given = {opt: p for opt, p in {"--limit": limit, **(aliases or {})}.items() if p is not None}
    if len(given) > 1:
        raise InputError(f"give one store selector, not {' and '.join(given)}: --limit takes the whole pattern "
                         f"(e.g. --limit 'a,b,&group'); the others are its older spellings")
    if not given:
        return None
    (option, pattern), = given.items()
    try:
        stores = select(fleet, pattern)
    except InputError as e:
        raise InputError(f"{option}: {e}") from None
    if not stores and not allow_empty:
        raise InputError(f"{option} {pattern!r} selects no store of the inventory {fleet.source or ''}".rstrip()
                         + ": check its & and ! parts")
    return stores
