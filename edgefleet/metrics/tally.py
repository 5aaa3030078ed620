"""What the metrics count from the ledger's event log, folded one event at a time (pure: events in,
numbers out; no clock, no database).

The log is append-only, so the collector (``edgefleet.metrics.collector``) reads each event once
and folds it here; a scrape then costs the events written since the last one. The tally keeps:

* reimage and boot durations per reimage method, in fleet seconds (the ledger's clock): a node's
  reimage runs from its latest ``reimage_started`` to its ``node_done``, its boot from its
  ``reimage_booting`` (the reset, or the in-band wipe, was sent) to its ``node_done`` (Ready on
  the release, gate passed). A reimage that failed, or whose node gate failed, is not timed;
* BMC and Talos errors by kind (``edgefleet.errors.error_kind``, recorded in the event's detail as
  ``bmc_error`` / ``talos_error``; a Talos version mismatch after an in-band reimage is one too);
* gate outcomes: node gates (``node_done`` / ``node_gate_failed``), store gates, pre and post
  hooks, the Talos version check after an in-band reimage;
* window waits: a node whose reset was put off to the store's next window (``window_closing``),
  a split store whose repair did not start for want of a window (``repair_not_started``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["BOOT_BUCKETS", "REIMAGE_BUCKETS", "TALLIED_KINDS", "DurationHistogram", "EventTally", "TalliedEvent"]

REIMAGE_BUCKETS = (60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0, 7200.0)
"""Fleet seconds: a node's reimage takes minutes (media, reset, boot, join, gate)."""
BOOT_BUCKETS = (15.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0, 900.0, 1800.0)

_GATES: Mapping[str, tuple[str, str]] = {
    "node_done": ("node", "passed"),
    "node_gate_failed": ("node", "failed"),
    "store_gate_passed": ("store", "passed"),
    "store_gate_failed": ("store", "failed"),
    "pre_hook_passed": ("pre_hook", "passed"),
    "pre_hook_failed": ("pre_hook", "failed"),
    "post_hook_passed": ("post_hook", "passed"),
    "post_hook_failed": ("post_hook", "failed"),
    "talos_version_checked": ("talos_version", "passed"),
    "talos_version_mismatch": ("talos_version", "failed"),
}
_WAITS: Mapping[str, str] = {"window_closing": "node_reset_postponed", "repair_not_started": "repair_not_started"}
_ERRORS = ("reimage_retry", "reimage_failed", "eject_failed", "bootstrap_refused")

TALLIED_KINDS: tuple[str, ...] = tuple(sorted({"reimage_started", "reimage_booting", *_GATES, *_WAITS, *_ERRORS}))
"""The event kinds the tally reads; the collector asks the ledger for these only."""


@dataclass(frozen=True, slots=True)
class TalliedEvent:
    """The part of a ledger event the tally reads."""

    id: int
    ts: datetime
    rollout: str | None
    node: str | None
    kind: str
    detail: Mapping[str, Any]


@dataclass
class DurationHistogram:
    """A cumulative histogram of durations (seconds) over fixed upper bounds."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)  # the last one: +Inf

    def observe(self, seconds: float) -> None:
        self.total += seconds
        for i, bound in enumerate(self.bounds):
            if seconds <= bound:
                self.counts[i] += 1
                return
        self.counts[-1] += 1

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, count)`` pairs as the Prometheus exposition wants them, ``+Inf`` last."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*(f"{b:g}" for b in self.bounds), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, float(running)))
        return out


def _method(detail: Mapping[str, Any]) -> str:
    return str(detail.get("method") or "bmc")  # the Redfish reimager's events name no method


@dataclass
class EventTally:
    """The running totals (see the module docstring); ``add`` folds events in id order."""

    reimage: dict[str, DurationHistogram] = field(default_factory=dict)
    boot: dict[str, DurationHistogram] = field(default_factory=dict)
    bmc_errors: Counter[str] = field(default_factory=Counter)
    talos_errors: Counter[str] = field(default_factory=Counter)
    gates: Counter[tuple[str, str]] = field(default_factory=Counter)
    window_waits: Counter[str] = field(default_factory=Counter)
    events: int = 0
    _started: dict[tuple[str | None, str], tuple[datetime, str]] = field(default_factory=dict)
    _booting: dict[tuple[str | None, str], datetime] = field(default_factory=dict)

    def add(self, events: Iterable[TalliedEvent]) -> None:
        for ev in events:
            self.events += 1
            self._fold(ev)

    def _fold(self, ev: TalliedEvent) -> None:
        key = (ev.rollout, ev.node or "")
        if ev.kind == "reimage_started" and ev.node:
            self._started[key] = (ev.ts, _method(ev.detail))
            self._booting.pop(key, None)
        elif ev.kind == "reimage_booting" and ev.node:
            self._booting[key] = ev.ts
        elif ev.kind == "node_done" and ev.node:
            started = self._started.pop(key, None)
            booting = self._booting.pop(key, None)
            if started is not None:
                ts, method = started
                self._histogram(self.reimage, method, REIMAGE_BUCKETS).observe((ev.ts - ts).total_seconds())
                if booting is not None:
                    self._histogram(self.boot, method, BOOT_BUCKETS).observe((ev.ts - booting).total_seconds())
        elif ev.kind in ("reimage_failed", "node_gate_failed"):
            self._started.pop(key, None)
            self._booting.pop(key, None)
        self._count(ev)

    def _count(self, ev: TalliedEvent) -> None:
        gate = _GATES.get(ev.kind)
        if gate is not None:
            self.gates[gate] += 1
        wait = _WAITS.get(ev.kind)
        if wait is not None:
            self.window_waits[wait] += 1
        if "bmc_error" in ev.detail:
            self.bmc_errors[str(ev.detail["bmc_error"])] += 1
        elif ev.kind in ("reimage_retry", "eject_failed"):  # written before events carried the kind
            self.bmc_errors["unknown"] += 1
        if "talos_error" in ev.detail:
            self.talos_errors[str(ev.detail["talos_error"])] += 1
        elif ev.kind == "talos_version_mismatch":
            self.talos_errors["version_mismatch"] += 1

    @staticmethod
    def _histogram(into: dict[str, DurationHistogram], method: str, bounds: tuple[float, ...]) -> DurationHistogram:
        h = into.get(method)
        if h is None:
            h = into[method] = DurationHistogram(bounds)
        return h
