"""The simulator's safety oracle: the rules a rollout must never break, and their verdicts.

Pure: each check takes the facts of one moment (the simulated clock, the store, counts) and
returns the violations it finds; ``edgefleet.sim.fleet`` calls them on every disruptive request
and records what they return. The rules are those an independent replay of the simulator's event
log checks.

A *disruptive request* is one that changes what a node runs or will boot: ``InsertMedia``, a PATCH
that leaves a boot override enabled (``disruptive_boot_override``), and a ``Reset`` that changes
the power state (every type except ``Nmi``, ``On`` on a node that is on and ``ForceOff`` or
``GracefulShutdown`` on a node that is off); a Talos API reset or reboot is one too. A request the BMC failed
(a simulated 5xx, hang or cut connection) counts as well: it was sent, and a real BMC may have
acted on it. Ejecting media is not disruptive (it is how a reimage ends, also after a window
closed).

``outside_window``
    a disruptive request to a node outside its store's maintenance window;
``freeze``
    the same inside a change freeze covering the store;
``control_planes_down``
    a control plane taken down while another control plane of the same store is down. A control
    plane is taken down by its first disruptive request, and counts as down from then until it is
    Ready again (``ControlPlaneDowns``); a control plane that is not Ready counts as down too;
``concurrent_operations``
    a change to a store's node by operation B while a node of that store is mid-reimage for
    operation A (operations are named by the ``X-Edgefleet-Operation`` request header; requests
    without it are not attributed). A node is mid-reimage from its operation's first disruptive
    request until its media are ejected (and no boot or boot override is pending);
``stale_etcd_member``
    a control plane installed on replacement hardware joined etcd while the dead machine's member
    of the same name was still registered (it must be removed first, from a healthy control plane);
``concurrency_cap``
    more nodes rebooting (off or booting) at once than a scenario cap allows (global, per region,
    per country).

Release trains: ``stage_order`` (no step on a later stage before the earlier one passed and
soaked) and ``release_state`` (no non-stable release outside the canary stage), checked by
``edgefleet.sim.oracle_trains.TrainOracle`` over the trains declared to the simulator.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from edgefleet.inventory.model import Freeze, Store
from edgefleet.schedule.windows import freeze_at, in_window
from edgefleet.sim.scenario import Caps

__all__ = [
    "DISRUPTIVE_BOOT_TARGETS",
    "RULES",
    "ControlPlaneDowns",
    "Finding",
    "NodeFacts",
    "Violation",
    "check_caps",
    "check_concurrent_operations",
    "check_control_planes",
    "check_schedule",
    "disruptive_boot_override",
]

RULES = ("outside_window", "freeze", "control_planes_down", "concurrent_operations", "concurrency_cap",
         "stage_order", "release_state", "stale_etcd_member")


@dataclass(frozen=True, slots=True)
class Finding:
    rule: str
    detail: str


@dataclass(frozen=True, slots=True)
class Violation:
    """A finding as recorded in the simulator's report: when, where and under which operation."""

    seq: int
    time: str
    store: str
    node: str
    rule: str
    operation: str | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": self.time, "store": self.store, "node": self.node, "rule": self.rule,
                "operation": self.operation, "detail": self.detail}


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
    """``other_control_planes_down``: the other control planes of the store that are down, each
    named with why (e.g. ``n2 (not Ready: booting)``)."""
    down = sorted(other_control_planes_down)
    if not down:
        return []
    return [Finding("control_planes_down", f"control plane {node} taken down while {', '.join(down)} "
                                           f"{'is' if len(down) == 1 else 'are'} down")]


# Boot override targets that make the next boot something other than the installed system.
DISRUPTIVE_BOOT_TARGETS = frozenset({"Cd", "Usb", "Pxe", "BiosSetup"})


def disruptive_boot_override(target: str, enabled: str) -> bool:
    """Whether a boot override left at ``target``/``enabled`` changes the node's next boot."""
    return enabled != "Disabled" and target in DISRUPTIVE_BOOT_TARGETS


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What the oracle needs to know of a node at one moment."""

    ready: bool
    why: str  # the readiness reason
    media: bool  # any virtual media inserted
    booting: bool


@dataclass(slots=True)
class _Down:
    since: str  # the disruptive request that took the node down
    booted: bool = False  # a boot finished since that request


class ControlPlaneDowns:
    """Which control planes are down: from a control plane's first disruptive request until it
    is Ready again. Ready again means Ready after a boot that finished since its last disruptive
    request, or Ready with no media inserted and no boot under way (a reimage given up before its
    reset, e.g. because the window was closing). A control plane that is not Ready is down anyway.

    Checked lazily: the simulator asks when a control plane of the store is disrupted, so idle
    nodes cost nothing."""

    def __init__(self) -> None:
        self._marks: dict[str, _Down] = {}

    def _marked(self, node: str, facts: NodeFacts) -> _Down | None:
        mark = self._marks.get(node)
        if mark is not None and facts.ready and (mark.booted or (not facts.media and not facts.booting)):
            del self._marks[node]  # Ready again
            return None
        return mark

    def down(self, node: str, facts: NodeFacts) -> str | None:
        """Why ``node`` is down now, or None when it is up."""
        mark = self._marked(node, facts)
        if mark is not None:
            return f"{node} ({mark.since}; not Ready again since: {facts.why})"
        if not facts.ready:
            return f"{node} (not Ready: {facts.why})"
        return None

    def booted(self, node: str) -> None:
        """A boot of ``node`` finished."""
        mark = self._marks.get(node)
        if mark is not None:
            mark.booted = True

    def disrupt(self, node: str, action: str, facts: NodeFacts, others: Mapping[str, NodeFacts]) -> list[Finding]:
        """A disruptive request ``action`` to control plane ``node``; ``others``: the store's
        other control planes. A violation when it takes ``node`` down (it was up) while another
        one is down; a node already down (being repaired, or in the middle of its own reimage) is
        not taken down again."""
        prev = self._marked(node, facts)
        self._marks[node] = _Down(since=prev.since if prev is not None else action)  # a boot must follow it
        if prev is not None:
            return []
        down = [why for name, f in others.items() if (why := self.down(name, f)) is not None]
        return check_control_planes(node, down)


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

