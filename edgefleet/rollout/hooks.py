"""Per-store hooks: optional Ansible playbooks the engine runs before (``pre``) and after
(``post``) it reimages a store, e.g. to tell the store's systems that a reimage is coming.

Each run goes through ansible-runner with its own ``private_data_dir`` (never the default, which
fills the system temp directory at fleet size) and an inventory of that store alone, rendered
from the Ansible export (``edgefleet.inventory.ansible``): hosts are the store's nodes with
``ansible_connection: local``, so a playbook runs on the controller and talks to the store's
systems over their APIs.
Extra variables: ``edgefleet_hook_phase`` (pre|post), ``edgefleet_hook_store``,
``edgefleet_hook_release``, ``edgefleet_hook_operation``.

A failing pre hook fails the store before anything is touched; a failing post hook fails the
store gate (the store is rolled back). ansible-runner blocks, so the engine calls ``run_hook`` in a
worker thread.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from edgefleet.errors import InputError
from edgefleet.inventory.ansible import group_name, render_ansible_inventory, to_static_inventory
from edgefleet.inventory.model import Fleet, Store

__all__ = ["HookResult", "run_hook"]


@dataclass(frozen=True, slots=True)
class HookResult:
    ok: bool
    status: str  # ansible-runner's: successful, failed, timeout, canceled
    rc: int
    detail: str


def _store_inventory(fleet: Fleet, store: Store, python: str) -> dict[str, object]:
    one = Fleet(name=fleet.name, stores={store.id: store}, freezes=fleet.freezes, source=fleet.source)
    static = to_static_inventory(render_ansible_inventory(one))
    all_group = static["all"]
    all_group["vars"] = {"ansible_python_interpreter": python}
    return static


def run_hook(playbook: Path, fleet: Fleet, store: Store, *, phase: str, release: str, operation: str,
             work_dir: Path, timeout_s: float = 300.0, python: str | None = None) -> HookResult:
    """Run ``playbook`` for ``store`` (blocking); the verdict and a short reason."""
    import ansible_runner

    if not playbook.is_file():
        raise InputError(f"{phase} hook playbook {playbook} does not exist")
    pdd = work_dir / f"{store.id}-{phase}"
    (pdd / "inventory").mkdir(parents=True, exist_ok=True)
    (pdd / "inventory" / "hosts.json").write_text(
        json.dumps(_store_inventory(fleet, store, python or sys.executable)))
    env = {"ANSIBLE_LOCAL_TEMP": str(pdd / "tmp"), "ANSIBLE_HOME": str(pdd / "ansible-home"),
           "ANSIBLE_INVENTORY_ENABLED": "yaml", "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    r = ansible_runner.run(private_data_dir=str(pdd), playbook=str(playbook.resolve()), quiet=True,
                           limit=f"store_{group_name(store.id)}", envvars=env, timeout=int(max(1, timeout_s)),
                           extravars={"edgefleet_hook_phase": phase, "edgefleet_hook_store": store.id,
                                      "edgefleet_hook_release": release, "edgefleet_hook_operation": operation})
    if r.status == "successful":
        return HookResult(True, r.status, r.rc, "ok")
    failed = sorted({*(r.stats or {}).get("failures", {}), *(r.stats or {}).get("dark", {})})
    msgs = []
    for ev in r.events:
        if ev.get("event") in ("runner_on_failed", "runner_on_unreachable"):
            res = (ev.get("event_data") or {}).get("res") or {}
            msg = res.get("msg") if isinstance(res, dict) else None
            if msg:
                msgs.append(str(msg)[:200])
    detail = (f"{phase} hook {playbook.name} {r.status} (rc {r.rc})"
              + (f" on {', '.join(failed)}" if failed else "") + (f": {msgs[0]}" if msgs else ""))
    return HookResult(False, r.status, r.rc, detail)
