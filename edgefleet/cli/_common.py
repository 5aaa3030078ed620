"""Shared CLI plumbing: consoles, the common options, and where edgefleet keeps its files.

The environment (``EDGEFLEET_INVENTORY``, ``EDGEFLEET_HOME``, ``EDGEFLEET_STATE_URL``, each
overridable by an option) is read by ``edgefleet.settings``, which the flows use too.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from typer import _click
from typer.core import TyperCommand, TyperGroup, TyperOption

from edgefleet.errors import InputError, ReleaseInputError
from edgefleet.settings import load_settings

if TYPE_CHECKING:
    from edgefleet.releases.catalog import ReleaseCatalog

# Off a terminal (pipes, CI logs) rich would wrap at 80 columns and cut table cells.
_WIDTH = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "160"))
console = Console(highlight=False, width=_WIDTH)
err_console = Console(stderr=True, highlight=False, width=_WIDTH)


_F = TypeVar("_F", bound=Callable[..., Any])


def _untyped_flags(params: list[_click.Parameter]) -> list[_click.Parameter]:
    """A flag takes no value: its help row shows no ``<bool>`` type (typer shows one by default)."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


class Command(TyperCommand):
    """Every edgefleet command: flags are listed without a value type."""

    def get_params(self, ctx: _click.Context) -> list[_click.Parameter]:
        return _untyped_flags(super().get_params(ctx))


class Group(TyperGroup):
    """Every edgefleet command group: as :class:`Command`; an unknown command gets "Did you mean"."""

    def get_params(self, ctx: _click.Context) -> list[_click.Parameter]:
        return _untyped_flags(super().get_params(ctx))


class App(typer.Typer):
    """A typer app whose groups and commands follow edgefleet's conventions: ``-h`` as well as
    ``--help``, help shown when no command is given, flags without a ``<bool>``, and close matches
    suggested for a mistyped command."""

    def __init__(self, *, help: str, add_completion: bool = False, **kwargs: Any) -> None:
        super().__init__(cls=Group, no_args_is_help=True, add_completion=add_completion, help=help,
                         context_settings={"help_option_names": ["-h", "--help"]},
                         pretty_exceptions_enable=False, **kwargs)

    def command(self, name: str | None = None, *, cls: type[TyperCommand] | None = None,
                **kwargs: Any) -> Callable[[_F], _F]:
        return super().command(name, cls=cls or Command, **kwargs)


def parse_instant(value: str | None, option: str) -> datetime:
    """An option's ISO 8601 instant with a UTC offset (``Z`` allowed), in UTC; None: now."""
    if value is None:
        return datetime.now(UTC)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{option} {value!r} is not ISO 8601; write e.g. 2026-11-02T23:30:00Z") from None
    if when.tzinfo is None:
        raise InputError(f"{option} {value!r} has no UTC offset; write e.g. 2026-11-02T23:30:00Z "
                         "(it is local to no store in particular)")
    if not 1970 <= when.year <= 2999:  # plans look months ahead: far years would overflow the calendar
        raise InputError(f"{option} {value!r}: the year must lie in 1970-2999")
    return when.astimezone(UTC)


def default_inventory() -> Path:
    return load_settings().inventory


def edgefleet_home() -> Path:
    return load_settings().home


def default_state_url() -> str:
    return load_settings().state_store_url


def existing_catalog() -> ReleaseCatalog:
    """The release catalog of the state store in use, which must already exist: a command that only
    reads releases never creates an empty state store (a SQLite file in the wrong directory)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from edgefleet.releases.catalog import ReleaseCatalog
    from edgefleet.state.db import open_state

    url = default_state_url()
    try:
        parsed = make_url(url)
    except ArgumentError:  # open_state names a bad URL with the fix
        parsed = None
    if parsed is not None and parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        db = Path(str(parsed.database))
        if not db.is_file():
            raise ReleaseInputError(f"no release catalog at {db} (EDGEFLEET_HOME={edgefleet_home()}): build a release "
                                    "first with `edgefleet release build`, or point EDGEFLEET_HOME / "
                                    "EDGEFLEET_STATE_URL at the state store that has it")
    return ReleaseCatalog(open_state(url))


InventoryOpt = Annotated[
    Path, typer.Option("--inventory", "-i", envvar="EDGEFLEET_INVENTORY", help="Inventory directory")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
