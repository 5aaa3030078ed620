"""The simulated BMCs' passwords, read once at start from the inventory's credential references
(environment variables or password files), by the same rules the engine reads them with
(``edgefleet.redfish.connector.resolve_password``: an unset or empty variable, an unreadable or
empty file is refused)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from edgefleet.errors import BmcError, InputError
from edgefleet.inventory.model import CredentialsRef, Fleet
from edgefleet.redfish.connector import resolve_password

__all__ = ["resolve_passwords"]


def resolve_passwords(fleet: Fleet, *, environ: Mapping[str, str] | None = None,
                      base_dir: Path | None = None) -> dict[CredentialsRef, str]:
    """Every distinct BMC password of the fleet, read now. Raises InputError naming every missing one."""
    env = os.environ if environ is None else environ
    base = base_dir or (Path(fleet.source) if fleet.source else Path.cwd())
    users: dict[CredentialsRef, list[str]] = {}
    for s in fleet.stores.values():
        for n in s.nodes:
            if n.bmc is not None:
                users.setdefault(n.bmc.credentials, []).append(n.name)
    out: dict[CredentialsRef, str] = {}
    missing: list[str] = []
    for ref, nodes in users.items():
        try:
            out[ref] = resolve_password(nodes[0], ref, environ=env, base_dir=base)
        except BmcError as e:
            missing.append(f"  {e.message}: needed by {', '.join(nodes[:3])}{' ...' if len(nodes) > 3 else ''}")
    if missing:
        raise InputError("cannot resolve BMC passwords for the simulated BMCs:\n" + "\n".join(missing)
                         + "\nset the variables / create the files, then start the simulator again")
    return out
