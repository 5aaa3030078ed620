"""Writes of the rollout engine: the statements it queues (``stmt_*``) and ``Journal``, the group
commit that many concurrent stores share (one transaction per tick, every writer woken once its
statements are durable: a step recorded "before" is on disk before the step is taken).

State changes go through ``stmt_advance`` / ``stmt_wave_advance``, which check the move against
``edgefleet.rollout.states.TRANSITIONS`` before anything is queued (``IllegalTransition``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Executable, delete, insert, update

from edgefleet.errors import StateError
from edgefleet.rollout.states import Machine, RunEvent, RunState, WaveEvent, WaveState, next_state
from edgefleet.rollout.tables import EventRow, NodeStateRow, StoreReleaseRow, StoreRunRow, WaveRow

__all__ = ["Journal", "RunCursor", "dumps", "event_values", "stmt_advance", "stmt_event", "stmt_node", "stmt_run",
           "stmt_store_release", "stmt_wave", "stmt_wave_advance"]


def dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True, default=str)


@dataclass(slots=True)
class RunCursor:
    """A store run's state as the engine holds it while it works on the store (no re-read)."""

    rollout: str
    store: str
    state: RunState


def stmt_advance(run: RunCursor, event: RunEvent, **values: Any) -> Executable:
    """The store run moved by ``event`` (refused with IllegalTransition when the table has no such
    move); ``values``: other columns (step, reason, ended_at, ...). ``run.state`` is updated."""
    to = RunState(next_state(Machine.run, run.state, event))
    if "detail" in values and not isinstance(values["detail"], str):
        values["detail"] = dumps(values["detail"])
    stmt = update(StoreRunRow).where(StoreRunRow.rollout == run.rollout, StoreRunRow.store == run.store) \
        .values(status=to.value, **values)
    run.state = to
    return stmt


def stmt_wave_advance(rollout: str, index: int, current: WaveState, event: WaveEvent, **values: Any) -> Executable:
    """The wave moved by ``event`` (IllegalTransition when the table has no such move)."""
    to = next_state(Machine.wave, current, event)
    return update(WaveRow).where(WaveRow.rollout == rollout, WaveRow.index == index).values(status=to, **values)


def event_values(now: datetime, kind: str, *, rollout: str | None, store: str | None = None, node: str | None = None,
                 reason: str = "", detail: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"ts": now, "rollout": rollout, "store": store, "node": node, "kind": kind, "reason": reason[:4000],
            "detail": dumps(dict(detail or {}))}


def stmt_event(now: datetime, kind: str, **kw: Any) -> Executable:
    return insert(EventRow).values(**event_values(now, kind, **kw))


def stmt_run(rollout: str, store: str, **values: Any) -> Executable:
    if "detail" in values and not isinstance(values["detail"], str):
        values["detail"] = dumps(values["detail"])
    if "status" in values:
        values["status"] = RunState(values["status"]).value
    return update(StoreRunRow).where(StoreRunRow.rollout == rollout, StoreRunRow.store == store).values(**values)


def stmt_node(node: str, store: str, release: str | None, ready: bool, now: datetime) -> list[Executable]:
    return [delete(NodeStateRow).where(NodeStateRow.node == node),
            insert(NodeStateRow).values(node=node, store=store, release=release, ready=ready, observed_at=now)]


def stmt_store_release(store: str, current: str | None, last_known_good: str | None,
                       now: datetime) -> list[Executable]:
    return [delete(StoreReleaseRow).where(StoreReleaseRow.store == store),
            insert(StoreReleaseRow).values(store=store, current=current, last_known_good=last_known_good,
                                           updated_at=now)]


def stmt_wave(rollout: str, index: int, **values: Any) -> Executable:
    return update(WaveRow).where(WaveRow.rollout == rollout, WaveRow.index == index).values(**values)


class Journal:
    """Group commit of ledger writes for many concurrent coroutines (see the module docstring).

    ``await journal.write(stmt, ...)`` returns once the statements are committed. Statements of
    one ``write`` call commit together; a failing batch fails every writer in it with StateError.
    """

    def __init__(self, engine: Engine, *, max_batch: int = 2000):
        self.engine = engine
        self.max_batch = max_batch
        self._pending: list[tuple[tuple[Executable, ...], asyncio.Future[None]]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.commits = 0
        self.statements = 0

    async def __aenter__(self) -> Journal:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._flusher())
        return self

    async def __aexit__(self, *exc: object) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._flush_now()  # whatever is still queued

    async def write(self, *stmts: Executable) -> None:
        if self._task is None or self._wake is None:
            self._commit([(stmts, None)])
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((stmts, fut))
        self._wake.set()
        await asyncio.shield(fut)

    async def _flusher(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(0)  # let the writers of this tick queue up
            self._flush_now()

    def _flush_now(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
            self._commit(batch)

    def _commit(self, batch: Sequence[tuple[Sequence[Executable], asyncio.Future[None] | None]]) -> None:
        try:
            with self.engine.begin() as conn:
                for stmts, _ in batch:
                    for st in stmts:
                        conn.execute(st)
                        self.statements += 1
            self.commits += 1
        except Exception as e:
            err = StateError(f"the ledger refused a write: {e}")
            for _, fut in batch:
                if fut is None:
                    raise err from e
                if not fut.done():
                    fut.set_exception(err)
            return
        for _, fut in batch:
            if fut is not None and not fut.done():
                fut.set_result(None)
