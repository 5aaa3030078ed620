"""The simulated BMCs' passwords, read once at start from the inventory's credential references
(environment variables or password files)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from edgefleet.errors import InputError
from edgefleet.inventory.model import CredentialsRef, Fleet

__all__ = ["resolve_passwords"]


def resolve_passwords(fleet: Fleet, *, environ: Mapping[str, str] | None = None,
                      base_dir: Path | None = None) -> dict[CredentialsRef, str]:
    """Every distinct BMC password of the fleet, read now. Raises InputError naming every missing one."""
    env = os.environ if environ is None else environ
    base = base_dir or (Path(fleet.source) if fleet.source else Path.cwd())
    out: dict[CredentialsRef, str] = {}
    missing: dict[str, list[str]] = {}
    for s in fleet.stores.values():
        for n in s.nodes:
            if n.bmc is None:
                continue
            ref = n.bmc.credentials
            if ref in out:
                continue
            if ref.password_env is not None:
                value = env.get(ref.password_env)
                if value is None:
                    missing.setdefault(f"environment variable {ref.password_env}", []).append(n.name)
                    continue
                out[ref] = value
            else:
                assert ref.password_file is not None
                path = Path(ref.password_file)
                path = path if path.is_absolute() else base / path
                try:
                    out[ref] = path.read_text().rstrip("\r\n")
                except OSError as e:
                    missing.setdefault(f"password file {path} ({e.strerror})", []).append(n.name)
    if missing:
        lines = [f"  {what}: needed by {', '.join(nodes[:3])}{' ...' if len(nodes) > 3 else ''}"
                 for what, nodes in missing.items()]
        raise InputError("cannot resolve BMC passwords for the simulated BMCs:\n" + "\n".join(lines)
                         + "\nset the variables / create the files, then start the simulator again")
    return out

