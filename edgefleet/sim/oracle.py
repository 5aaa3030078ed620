"""The simulator's safety oracle: the rules a rollout must never break, and their verdicts.

Pure: each check takes the facts of one moment (the simulated clock, the store, counts) and
returns the violations it finds; ``edgefleet.sim.fleet`` calls them on every reset and insert and
records what they return. The rules:

``outside_window``
    a reimage step (InsertMedia, a reset) on a node outside its store's maintenance window;
``freeze``
    the same inside a change freeze covering the store;
``control_planes_down``
    a control plane taken down while another control plane of the same store is not Ready;
``concurrent_operations``
    a change to a store's node by operation B while a node of that store is mid-reimage for
    operation A (operations are named by the ``X-Edgefleet-Operation`` request header; requests
    without it are not attributed);
``concurrency_cap``
    more nodes rebooting (off or booting) at once than a scenario cap allows (global, per region,
    per country).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from edgefleet.inventory.model import Freeze, Store
from edgefleet.schedule.windows import freeze_at, in_window
from edgefleet.sim.scenario import Caps

__all__ = [
    "RULES",
    "Finding",
    "check_caps",
    "check_concurrent_operations",
    "check_control_planes",
    "check_schedule",
]

RULES = ("outside_window", "freeze", "control_planes_down", "concurrent_operations", "concurrency_cap")


@dataclass(frozen=True, slots=True)
class Finding:
    rule: str
    detail: str


def check_schedule(store: Store, freezes: Sequence[Freeze], now: datetime, action: str) -> list[Finding]:
    out = []
    if not in_window(store, now):
        out.append(Finding("outside_window", f"{action} at {now.isoformat()} is outside every maintenance window "
                                             f"of store {store.id} ({store.timezone})"))
    f = freeze_at(freezes, store, now)
    if f is not None:
        out.append(Finding("freeze", f"{action} at {now.isoformat()} is inside freeze {f.name!r}"
                                     + (f" ({f.reason})" if f.reason else "")))
    return out


def check_control_planes(node: str, other_control_planes_down: Iterable[str]) -> list[Finding]:
    down = sorted(other_control_planes_down)
    if not down:
        return []
    return [Finding("control_planes_down", f"control plane {node} taken down while {', '.join(down)} "
                                           f"{'is' if len(down) == 1 else 'are'} not Ready")]


def check_concurrent_operations(operation: str | None, store_id: str,
                                mid_reimage: Mapping[str, str]) -> list[Finding]:
    """``mid_reimage``: node name -> operation id of the store's nodes mid-reimage."""
    if operation is None:
        return []
    others = sorted({f"{op} ({n})" for n, op in mid_reimage.items() if op != operation})
    if not others:
        return []
    return [Finding("concurrent_operations", f"operation {operation} touches store {store_id} while "
                                             f"{', '.join(others)} is mid-reimage")]


def check_caps(caps: Caps, rebooting_total: int, rebooting_region: int, rebooting_country: int, region: str,
               country: str) -> list[Finding]:
    """Counts include the node being reset now."""
    out = []
    if caps.global_ is not None and rebooting_total > caps.global_:
        out.append(Finding("concurrency_cap", f"{rebooting_total} nodes rebooting at once, global cap {caps.global_}"))
    if caps.per_region is not None and rebooting_region > caps.per_region:
        out.append(Finding("concurrency_cap", f"{rebooting_region} nodes rebooting at once in region {region}, "
                                              f"cap {caps.per_region}"))
    if caps.per_country is not None and rebooting_country > caps.per_country:
        out.append(Finding("concurrency_cap", f"{rebooting_country} nodes rebooting at once in country {country}, "
                                              f"cap {caps.per_country}"))
    return out
