"""Release trains: the vocabulary shared by the store (``trains.store``), the pure controller
(``trains.decide``) and its adapters (``trains.controller``, the CLI, the Prefect flows).

A train carries one release across the fleet stage by stage: each stage's stores are reimaged in
their own maintenance windows, the stage's gate is judged from the ledger (its failure budget over
the stores it touched), then the train waits out the stage's soak (fleet time after the stage's last
store finished) before the next stage unlocks. The first stage is the canary stage: it moves the
release ``built -> canary``; its gate and soak passed, the train promotes the release to ``stable``
(unless the operator promotes by hand), and only then does any later stage start.

This module is pure: data and enums, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

__all__ = [
    "ACTIVE",
    "Action",
    "Decision",
    "Dispatch",
    "Finish",
    "Promote",
    "Resume",
    "SetStage",
    "StagePolicy",
    "StageProgress",
    "StageSpec",
    "StageStatus",
    "StoreProgress",
    "StoreState",
    "TrainSnapshot",
    "TrainSpec",
    "TrainStatus",
    "Wait",
]


class TrainStatus(StrEnum):
    running = "running"
    """Dispatching stores of the unlocked stage as their windows come."""
    paused = "paused"
    """Paused by a person (``train pause``) or waiting for one (an approval, an inconclusive gate)."""
    halted = "halted"
    """A stage went past its failure budget: no store of a later stage is touched."""
    rolling_back = "rolling_back"
    """``train abort --rollback``: the train's stores go back to their last known-good release."""
    aborted = "aborted"
    """Stopped for good by a person (after its rollback, when one was asked for)."""
    succeeded = "succeeded"
    """Every stage passed."""


ACTIVE = frozenset({TrainStatus.running, TrainStatus.paused, TrainStatus.halted, TrainStatus.rolling_back})
"""A store of an active train belongs to it: no second train may touch it."""


class StageStatus(StrEnum):
    locked = "locked"
    """An earlier stage has not passed its gate and soak yet."""
    running = "running"
    """Its stores are dispatched as their windows open."""
    soaking = "soaking"
    """Every store finished within the budget; waiting out the soak."""
    awaiting_approval = "awaiting_approval"
    """Gate and soak passed (or inconclusive): a person must ``train approve``."""
    passed = "passed"
    failed = "failed"
    """Past its failure budget: the train halts."""


class StoreState(StrEnum):
    pending = "pending"
    """Not dispatched yet (its stage is locked, or its window has not come)."""
    dispatched = "dispatched"
    """A child operation (a rollout of this store, recorded in the ledger) is working on it."""
    succeeded = "succeeded"
    """On the train's release, healthy."""
    failed = "failed"
    """The child operation failed or was refused for this store (counts against the budget)."""
    rolled_back = "rolled_back"
    """The engine put it back on its previous release (counts against the budget)."""
    returned = "returned"
    """Brought back to its last known-good release by ``train abort --rollback``."""


@dataclass(frozen=True)
class StagePolicy:
    failure_budget: int | str = "10%"
    """Stores of the stage that may fail or roll back before the stage fails (count or ``N%``)."""
    soak: timedelta = timedelta(hours=24)
    """Fleet time after the stage's last store finished before the next stage unlocks."""
    approve: bool = False
    """A person must ``train approve`` the stage after its gate and soak."""
    max_concurrent: int | None = None
    max_per_region: int | None = None
    max_per_country: int | None = None


@dataclass(frozen=True)
class StageSpec:
    name: str
    selector: str
    """What the stage takes: an inventory group or Ansible-style pattern (``country_dk:&ring1``), or
    ``N%`` of the stores no earlier stage took."""
    policy: StagePolicy = field(default_factory=StagePolicy)


@dataclass(frozen=True)
class TrainSpec:
    release: str
    stages: tuple[StageSpec, ...]
    manual_promote: bool = False
    """Do not promote the release to stable when the canary stage passes: wait for ``train approve``."""
    limit: str | None = None
    """Only the stores this pattern selects (None: the whole inventory)."""
    settings: Mapping[str, object] = field(default_factory=dict)
    """The engine settings every child operation runs with (``EngineSettings`` as JSON; empty: the
    defaults). Their ``node_duration`` is what a store needs of its window, per node."""


@dataclass(frozen=True)
class StoreProgress:
    store: str
    stage: int
    state: StoreState
    rollout: str | None = None
    """The child operation working on it (the latest one)."""
    live: bool = False
    """For a dispatched store: its child operation shows a fresh heartbeat or has not started yet
    (False: its runner died; the next tick resumes it)."""
    finished_at: datetime | None = None
    returning: bool = False
    """Its latest child operation is a rollback (``train abort --rollback``), not a rollout."""


@dataclass(frozen=True)
class StageProgress:
    index: int
    name: str
    status: StageStatus
    finished_at: datetime | None = None
    """When its last store finished (the soak runs from here)."""
    soak_until: datetime | None = None
    approved: bool = False


@dataclass(frozen=True)
class TrainSnapshot:
    """Everything ``decide`` reads: the train, its stages and stores, and the fleet's state."""

    id: str
    spec: TrainSpec
    status: TrainStatus
    release_state: str
    """The release's catalog state now (built, canary, stable, revoked)."""
    stages: tuple[StageProgress, ...]
    stores: Mapping[str, StoreProgress]
    locks: Mapping[str, str] = field(default_factory=dict)
    """Stores held by another operation, with the holder."""
    current: Mapping[str, str | None] = field(default_factory=dict)
    """Each store's current release per the ledger."""
    last_known_good: Mapping[str, str | None] = field(default_factory=dict)
    pause_requested: bool = False
    """A person asked the train to pause (``train pause``): nothing more is started."""
    abort_requested: bool = False
    """A person asked the train to stop (``train abort``)."""
    rollback_requested: bool = False
    """... and to bring its stores back to their last known-good release (``--rollback``)."""


@dataclass(frozen=True)
class Dispatch:
    """Start a child operation on ``stores`` (one region) now."""

    stage: int
    region: str
    stores: tuple[str, ...]
    rollback: bool = False
    """A rollback child (``train abort --rollback``) rather than a rollout of the release."""


@dataclass(frozen=True)
class Resume:
    """A child operation whose runner died: continue it from the ledger."""

    rollout: str
    region: str


@dataclass(frozen=True)
class SetStage:
    index: int
    status: StageStatus
    reason: str = ""
    finished_at: datetime | None = None
    soak_until: datetime | None = None


@dataclass(frozen=True)
class Promote:
    """Move the release to ``to`` (canary or stable), recording ``evidence``."""

    to: str
    evidence: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Finish:
    status: TrainStatus
    reason: str


@dataclass(frozen=True)
class Wait:
    """What the train waits for, said for people (``train status``): ``reason`` until ``until``."""

    reason: str
    until: datetime | None = None


Action = Dispatch | Resume | SetStage | Promote | Finish


@dataclass(frozen=True)
class Decision:
    actions: tuple[Action, ...]
    waiting: tuple[Wait, ...] = ()
