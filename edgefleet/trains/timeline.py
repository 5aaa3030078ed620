"""Release trains as the HTML report shows them (``edgefleet.report``): each train with its stages,
when each stage started, finished and ends its soak, and its stores by state.

``collect_trains`` reads the state store (``TrainStore``, and the ledger's child rollouts for when
each stage's first store started); ``TrainSummary``/``StageSummary`` are plain data the report
renders and draws on its timeline.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["StageSummary", "TrainSummary", "collect_trains", "expand_trains"]


@dataclass(frozen=True, slots=True)
class StageSummary:
    index: int
    name: str
    status: str
    stores: int
    counts: Mapping[str, int]
    """The stage's stores by state (pending, dispatched, succeeded, failed, rolled_back, returned)."""
    started_at: datetime | None = None
    """When its first store's child run started (None: nothing of it ran yet)."""
    finished_at: datetime | None = None
    """When its last store finished (the soak runs from here)."""
    soak_until: datetime | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TrainSummary:
    id: str
    release: str
    status: str
    reason: str
    operator: str
    created_at: datetime
    updated_at: datetime
    stages: tuple[StageSummary, ...]

    @property
    def times(self) -> list[datetime]:
        """Every instant of the train the timeline must show."""
        out = [self.created_at]
        for st in self.stages:
            out += [t for t in (st.started_at, st.finished_at, st.soak_until) if t is not None]
        return out


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _starts(engine: Engine, train_ids: Collection[str]) -> dict[tuple[str, str], datetime]:
    """(train, store) -> when the store's first child run started (else its child was created)."""
    from sqlalchemy import func, select

    from edgefleet.rollout.ledger import RolloutRow, StoreRunRow
    from edgefleet.state.db import session_scope

    out: dict[tuple[str, str], datetime] = {}
    ids = list(train_ids)
    with session_scope(engine) as s:
        for i in range(0, len(ids), 500):  # bounded IN lists
            q = (select(RolloutRow.train, StoreRunRow.store, func.min(StoreRunRow.started_at),
                        func.min(RolloutRow.created_at))
                 .join(RolloutRow, RolloutRow.id == StoreRunRow.rollout)
                 .where(RolloutRow.train.in_(ids[i:i + 500]))
                 .group_by(RolloutRow.train, StoreRunRow.store))
            for train, store, started, created in s.execute(q):
                when = started or created
                if train is not None and when is not None:
                    out[(train, store)] = _utc(when)
    return out


def expand_trains(engine: Engine, ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """``ids`` with each train id among them replaced by the train's child rollouts (oldest first),
    and the train ids found (a report of a train is the report of its children)."""
    from sqlalchemy import select

    from edgefleet.rollout.ledger import RolloutRow
    from edgefleet.state.db import session_scope
    from edgefleet.trains.store import TrainStore

    trains = TrainStore(engine)
    out: list[str] = []
    named: list[str] = []
    for rid in ids:
        if trains.find(rid) is None:
            out.append(rid)
            continue
        named.append(rid)
        with session_scope(engine) as s:
            out += s.scalars(select(RolloutRow.id).where(RolloutRow.train == rid)
                             .order_by(RolloutRow.created_at, RolloutRow.id)).all()
    return out, named


def collect_trains(engine: Engine, *, rollout_ids: Collection[str] | None = None, limit: int = 50,
                   stores: Collection[str] | None = None) -> tuple[TrainSummary, ...]:
    """The most recent ``limit`` trains, oldest first; with ``rollout_ids`` only the trains named
    there or owning one of those child rollouts; with ``stores`` only the trains holding one of
    them, their stages counting only those."""
    from edgefleet.rollout.ledger import Ledger
    from edgefleet.trains.store import TrainStore

    trains = TrainStore(engine)
    records = trains.list(limit=limit)
    if rollout_ids is not None:
        wanted = set(rollout_ids)
        ledger = Ledger(engine)
        owners = {child.train for rid in wanted if (child := ledger.find_rollout(rid)) is not None}
        records = [r for r in records if r.id in wanted or r.id in owners]
    starts = _starts(engine, [r.id for r in records])
    out = []
    for rec in sorted(records, key=lambda r: (r.created_at, r.id)):
        held = {s: p for s, p in trains.stores(rec.id).items() if stores is None or s in stores}
        if stores is not None and not held:
            continue
        reasons = trains.stage_reasons(rec.id)
        stages = []
        for st in trains.stages(rec.id):
            mine = [p for p in held.values() if p.stage == st.index]
            counts: dict[str, int] = {}
            for p in mine:
                counts[p.state.value] = counts.get(p.state.value, 0) + 1
            begun = [starts[(rec.id, p.store)] for p in mine if (rec.id, p.store) in starts]
            stages.append(StageSummary(st.index, st.name, st.status.value, len(mine), dict(sorted(counts.items())),
                                       min(begun, default=None), st.finished_at, st.soak_until,
                                       reasons.get(st.index, "")))
        out.append(TrainSummary(rec.id, rec.release, rec.status.value, rec.reason, rec.operator, rec.created_at,
                                rec.updated_at, tuple(stages)))
    return tuple(out)
