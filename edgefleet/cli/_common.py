"""Shared CLI plumbing: consoles, the common options, and where edgefleet keeps its files.

Environment variables (each overridable by an option):

* ``EDGEFLEET_INVENTORY``: the inventory directory (default ``./inventory``)
* ``EDGEFLEET_HOME``: edgefleet's working directory for secrets, seeds and the ledger
  (default ``./.edgefleet``)
* ``EDGEFLEET_STATE_URL``: the state store's SQLAlchemy URL (default: SQLite in EDGEFLEET_HOME)
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from edgefleet.errors import InputError

# Off a terminal (pipes, CI logs) rich would wrap at 80 columns and cut table cells.
_WIDTH = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "160"))
console = Console(highlight=False, width=_WIDTH)
err_console = Console(stderr=True, highlight=False, width=_WIDTH)


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
    return when.astimezone(UTC)


def default_inventory() -> Path:
    return Path(os.environ.get("EDGEFLEET_INVENTORY", "inventory"))


def edgefleet_home() -> Path:
    return Path(os.environ.get("EDGEFLEET_HOME", ".edgefleet"))


def default_state_url() -> str:
    url = os.environ.get("EDGEFLEET_STATE_URL")
    if url:
        return url
    return f"sqlite:///{edgefleet_home() / 'edgefleet.db'}"


InventoryOpt = Annotated[
    Path, typer.Option("--inventory", "-i", envvar="EDGEFLEET_INVENTORY", help="Inventory directory")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
