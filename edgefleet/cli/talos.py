"""``edgefleet talosconfig STORE`` and ``edgefleet kubeconfig STORE``: client configuration for
operators, with certificates minted from the store's cluster secrets (``$EDGEFLEET_HOME/secrets``).

* ``talosconfig``: role ``os:reader`` unless ``--role`` says otherwise (``os:operator``,
  ``os:admin``); endpoints are the store's control planes.
* ``kubeconfig``: the user is in group ``edgefleet:readers`` (which the cluster must bind to a
  read-only role, e.g. a ClusterRoleBinding to ``view``); ``--admin`` puts it in
  ``system:masters`` instead.

Files are written with mode 0600, atomically, and never over an existing file with different
content unless ``--force``. Bad input (unknown store, no secrets, an existing file) exits 2 and
writes nothing. The two functions are registered as top-level commands by ``edgefleet.cli``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from edgefleet.atomic import write_atomic
from edgefleet.cli._common import InventoryOpt, console, edgefleet_home
from edgefleet.errors import InputError
from edgefleet.outpaths import check_output_file
from edgefleet.talos.certs import TalosRole

__all__ = ["kubeconfig_cmd", "talosconfig_cmd", "write_private_file"]

StoreArg = Annotated[str, typer.Argument(help="Store id")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing file")]
TtlOpt = Annotated[float, typer.Option("--ttl-hours", min=0.1, max=87600, help="Client certificate lifetime")]


def write_private_file(path: Path, data: bytes, *, force: bool) -> bool:
    """Write ``data`` to ``path`` with mode 0600, atomically. Returns False when the file already
    holds exactly ``data``. Raises ``InputError`` when it holds something else and not ``force``."""
    try:
        if path.read_bytes() == data:
            return False
        exists = True
    except FileNotFoundError:
        exists = False
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    if exists and not force:
        raise InputError(f"{path} exists with other content; give --force to replace it, or --out another file")
    try:
        # Linked into place without --force: a file someone created meanwhile is never replaced.
        write_atomic(path, data, mode=0o600, exclusive=not force)
    except FileExistsError:
        raise InputError(f"{path} appeared while writing; give --force to replace it") from None
    except OSError as e:
        parent = path.parent if str(path.parent) else Path(".")
        raise InputError(f"cannot write in {parent}: {e.strerror}") from None
    return True


def talosconfig_cmd(
    store: StoreArg,
    role: Annotated[TalosRole, typer.Option("--role", help="Talos API role of the client certificate")] = (
        TalosRole.reader),
    out: Annotated[Path | None, typer.Option("--out", help="File to write (default: ./<store>.talosconfig)")] = None,
    force: ForceOpt = False,
    ttl_hours: TtlOpt = 24 * 365,
    inventory: InventoryOpt = Path("inventory"),
) -> None:
    """Write a talosconfig for a store (talosctl --talosconfig FILE)."""
    from edgefleet.inventory.load import load_fleet
    from edgefleet.secrets import load_secrets
    from edgefleet.talos.certs import mint_os_client_cert
    from edgefleet.talos.clientconfig import render_talosconfig

    s = load_fleet(inventory).store(store)
    path = out or Path(f"{s.id}.talosconfig")
    check_output_file(path, "--out")
    secrets = load_secrets(edgefleet_home(), s.id)
    cert = mint_os_client_cert(secrets, role, now=datetime.now(UTC), store_id=s.id,
                               validity=timedelta(hours=ttl_hours))
    write_private_file(path, render_talosconfig(s, cert), force=force)
    console.print(f"wrote {path} (store {s.id}, role {role.value}, valid {ttl_hours:g} h)", markup=False)


def kubeconfig_cmd(
    store: StoreArg,
    admin: Annotated[bool, typer.Option("--admin", help="Cluster admin (group system:masters)")] = False,
    user: Annotated[str, typer.Option("--user", help="User name (certificate CN)")] = "edgefleet",
    out: Annotated[Path | None, typer.Option("--out", help="File to write (default: ./<store>.kubeconfig)")] = None,
    force: ForceOpt = False,
    ttl_hours: TtlOpt = 24 * 30,
    inventory: InventoryOpt = Path("inventory"),
) -> None:
    """Write a kubeconfig for a store's cluster (read-only group unless --admin)."""
    from edgefleet.inventory.load import load_fleet
    from edgefleet.secrets import load_secrets
    from edgefleet.talos.certs import READER_GROUP, mint_kube_client_cert
    from edgefleet.talos.clientconfig import render_kubeconfig

    s = load_fleet(inventory).store(store)
    path = out or Path(f"{s.id}.kubeconfig")
    check_output_file(path, "--out")
    secrets = load_secrets(edgefleet_home(), s.id)
    cert = mint_kube_client_cert(secrets, admin=admin, now=datetime.now(UTC), user=user, store_id=s.id,
                                 validity=timedelta(hours=ttl_hours))
    write_private_file(path, render_kubeconfig(s, cert, user=user), force=force)
    group = "system:masters" if admin else READER_GROUP
    console.print(f"wrote {path} (store {s.id}, user {user}, group {group}, valid {ttl_hours:g} h)", markup=False)
