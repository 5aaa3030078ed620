"""Whether an operation has a live executor, and which stores are locked by one that has not.

An executor touches its operation's heartbeat (wall-clock time) every few seconds
(``EngineSettings.heartbeat_s``); an operation still ``running`` whose heartbeat is older than
``EXECUTOR_STALE_AFTER`` lost its executor (killed, crashed, machine gone). A store lock held by an
operation with no live executor is *dead*: nobody will release it until a person resumes the
operation (it takes its locks back) or aborts it (it releases them). A store its operation left
split keeps its lock on purpose until a person continues the repair: that lock is not dead.
``rollout abort`` and the report's "stores needing attention" use the same rule.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select

from edgefleet.rollout.ledger import Ledger, RolloutRecord, RolloutStatus, StoreLockRow
from edgefleet.state.db import session_scope

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["EXECUTOR_STALE_AFTER", "HeldLock", "dead_locks", "executor_live"]

EXECUTOR_STALE_AFTER = timedelta(seconds=60)
"""A running operation whose heartbeat is older than this (wall time) has no live executor."""


def executor_live(rec: RolloutRecord, wall: datetime, stale_after: timedelta = EXECUTOR_STALE_AFTER) -> bool:
    """Whether an executor works on ``rec`` now: running, with a heartbeat younger than
    ``stale_after`` at ``wall`` (wall-clock time)."""
    return (rec.status is RolloutStatus.running and rec.heartbeat_at is not None
            and wall - rec.heartbeat_at < stale_after)


@dataclass(frozen=True, slots=True)
class HeldLock:
    store: str
    holder: str
    since: datetime | None
    record: RolloutRecord | None
    """The holder's record (None: no such operation in the ledger)."""


def _utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def dead_locks(engine: Engine, stores: Collection[str] | None = None, *, wall: datetime | None,
               stale_after: timedelta = EXECUTOR_STALE_AFTER) -> list[HeldLock]:
    """The store locks (of ``stores`` when given), by store, whose holder has no live executor at
    ``wall`` (None: a running holder counts as live), leaving out a store its holder left split."""
    wanted = None if stores is None else sorted(stores)
    held: dict[str, tuple[str, datetime | None]] = {}
    with session_scope(engine) as s:
        for i in range(0, 1 if wanted is None else len(wanted), 500):  # bounded IN lists
            q = select(StoreLockRow).where(StoreLockRow.holder.is_not(None))
            if wanted is not None:
                q = q.where(StoreLockRow.store.in_(wanted[i:i + 500]))
            held |= {r.store: (r.holder, _utc(r.acquired_at)) for r in s.scalars(q) if r.holder is not None}
    ledger = Ledger(engine)
    holders: dict[str, tuple[RolloutRecord | None, set[str]]] = {}
    out: list[HeldLock] = []
    for store, (holder, since) in sorted(held.items()):
        if holder not in holders:
            holders[holder] = (ledger.find_rollout(holder), {r.store for _rid, r in ledger.split_runs(holder)})
        rec, split = holders[holder]
        if store in split:
            continue  # kept on purpose until a person continues the repair
        if rec is not None and rec.status is RolloutStatus.running and (
                wall is None or executor_live(rec, wall, stale_after)):
            continue
        out.append(HeldLock(store, holder, since, rec))
    return out
