"""The report's data (``edgefleet.report``): what ``collect_report`` reads from the ledger and
``render_report`` prints, as plain frozen records. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgefleet.trains.timeline import TrainSummary

__all__ = ["DeadLock", "OperationSummary", "ReleaseChange", "ReportData", "ReportEvent", "StoreOutcome",
           "WaveSummary"]


@dataclass(frozen=True, slots=True)
class WaveSummary:
    index: int
    name: str
    status: str
    budget: int
    failures: int
    stores: int


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    rollout: str
    store: str
    status: str
    from_release: str | None
    to_release: str
    reason: str


@dataclass(frozen=True, slots=True)
class OperationSummary:
    id: str
    kind: str
    release: str
    status: str
    reason: str
    operator: str
    created_at: datetime
    updated_at: datetime
    counts: Mapping[str, int]
    """Store runs by status (succeeded, rolled_back, failed, skipped, ...)."""
    waves: tuple[WaveSummary, ...]
    problems: tuple[StoreOutcome, ...]
    """Store runs that failed, were rolled back or were refused."""


@dataclass(frozen=True, slots=True)
class ReleaseChange:
    ts: datetime
    store: str
    release: str | None
    rollout: str | None
    kind: str


@dataclass(frozen=True, slots=True)
class ReportEvent:
    ts: datetime
    rollout: str | None
    store: str | None
    node: str | None
    kind: str
    reason: str


@dataclass(frozen=True, slots=True)
class DeadLock:
    """A store locked by an operation no executor works on: running with a stale heartbeat, paused,
    finished or gone (a store its operation left split keeps its lock on purpose: it is listed as
    split, not here)."""

    store: str
    holder: str
    since: datetime | None
    holder_status: str
    """The holder's status (``unknown``: no such operation in the ledger)."""
    heartbeat_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ReportData:
    title: str
    generated_at: datetime
    operations: tuple[OperationSummary, ...]
    changes: tuple[ReleaseChange, ...]
    """Release changes in time order."""
    events: tuple[ReportEvent, ...]
    """The event log in time order (possibly only its newest part: see ``events_total``)."""
    events_total: int
    initial: Mapping[str, str | None] = field(default_factory=dict)
    """store -> its release before the first change shown (absent: on no release)."""
    current: Mapping[str, str | None] = field(default_factory=dict)
    """store -> current release from the ``store_release`` table (what the fleet is on now)."""
    trains: tuple[TrainSummary, ...] = ()
    """Release trains, oldest first (``edgefleet.trains.timeline``)."""
    failed: tuple[StoreOutcome, ...] = ()
    """Stores whose latest decisive run (succeeded, failed, rolled back, split) failed."""
    dead_locks: tuple[DeadLock, ...] = ()
    """Stores locked by an operation no executor works on any more."""
