"""Prefect flows of release trains: ``train_tick`` and ``run_operation``, thin over
``edgefleet.trains.controller`` and ``edgefleet.rollout.operations``.

``train_tick`` (deployment ``train-tick``, on an interval schedule) ticks every active train, or
the one it is given: each tick reads the train from the state store, decides what is due now and
dispatches it through a ``PrefectDispatcher``: one run of ``run-operation/rollout-<region>`` per
region's child operation, on that region's work pool, without waiting for it. The next tick reads
the children's outcomes from the ledger, whichever worker ran them. Each tick leaves a markdown
artifact per train: its stages, its stores' counts, what it waits for.

``run_operation`` (deployments ``rollout-<region>``) runs one recorded child operation to its end:
it starts a planned one, and resumes one whose runner died (a worker killed mid-run: its store
locks are taken over by the same rollout id, so two runs never work on one store). A run that finds
its operation finished does nothing; one that finds it still heartbeating elsewhere refuses
(Cancelled), so a duplicate launch never doubles the work.

Where a run reads and writes: ``inventory``, ``home``, ``state_url`` when given, else the worker's
``EDGEFLEET_INVENTORY``, ``EDGEFLEET_HOME`` and ``EDGEFLEET_STATE_URL`` (as ``flows/rollout.py``);
``sim_url``: drive that fleet simulator (and its clock) instead of the inventory's addresses. The
tick hands the parameters it was given on to the children.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.client.schemas.objects import State
from prefect.states import Cancelled, Completed, Failed

from edgefleet.errors import EdgefleetError
from edgefleet.inventory.model import Fleet
from edgefleet.rollout.endpoints import Endpoints
from edgefleet.rollout.ledger import FINISHED, Ledger, RolloutStatus
from edgefleet.settings import load_settings
from edgefleet.state.db import open_state
from edgefleet.trains.controller import STALE_AFTER, tick
from edgefleet.trains.model import ACTIVE, StageProgress, StoreProgress, Wait
from edgefleet.trains.prefect_deploy import PrefectDispatcher
from edgefleet.trains.store import TrainStore
from flows.rollout import _drive, _endpoints, _fleet

STALE_AFTER_S = STALE_AFTER.total_seconds()


def _live_elsewhere(heartbeat_at: datetime | None, stale_after: timedelta) -> timedelta | None:
    """How long ago a running operation's runner last beat, when that is recent enough to be alive."""
    if heartbeat_at is None:
        return None
    age = datetime.now(UTC) - heartbeat_at
    return age if age < stale_after else None


@flow(name="run-operation", retries=0)
async def run_operation(rollout_id: str, stale_after_s: float = STALE_AFTER_S, sim_url: str | None = None,
                        inventory: str | None = None, home: str | None = None,
                        state_url: str | None = None) -> State[Any]:
    """Run (planned) or resume (its runner died) the recorded operation ``rollout_id``.

    ``stale_after_s``: a running operation whose heartbeat (wall clock) is younger than this has a
    live runner somewhere: this run refuses to take it over and ends Cancelled."""
    logger = get_run_logger()
    fleet = _fleet(inventory)
    engine = open_state(state_url or load_settings().state_store_url)
    home_dir = Path(home) if home else load_settings().home
    ledger = Ledger(engine)
    rec = ledger.rollout(rollout_id)
    if rec.status in FINISHED and not ledger.split_runs(rollout_id):
        logger.info("%s is already %s: nothing to run", rollout_id, rec.status.value)
        return Completed(message=f"{rec.kind.value} {rollout_id}: already {rec.status.value}")
    if rec.status is RolloutStatus.running:
        age = _live_elsewhere(rec.heartbeat_at, timedelta(seconds=stale_after_s))
        if age is not None:
            why = f"{rollout_id} has a live runner (heartbeat {age.total_seconds():.0f} s ago): not taken over"
            logger.warning(why)
            return Cancelled(message=why)
    resume = rec.status is not RolloutStatus.planned
    logger.info("%s %s (%s)", "resuming" if resume else "starting", rollout_id, rec.status.value)
    endpoints = await _endpoints(fleet, sim_url)
    return await _drive(fleet, home_dir, engine, endpoints, rollout_id, None, resume=resume)


def _when(at: datetime | None) -> str:
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M} UTC" if at is not None else "-"


def _tick_markdown(train_id: str, release: str, status: str, stages: Sequence[StageProgress],
                   stores: Mapping[str, StoreProgress], waiting: Sequence[Wait], launched: Mapping[str, str],
                   now: datetime) -> str:
    """One tick of one train, for people: stages, store counts per stage, what it waits for and
    the child runs this tick created."""
    counts: dict[int, Counter[str]] = {}
    for p in stores.values():
        counts.setdefault(p.stage, Counter())[p.state.value] += 1
    lines = [f"## Train {train_id} ({release}): {status}\n", f"tick at {_when(now)} (fleet time)\n",
             "| stage | status | stores | counts | finished | soak until |", "|---|---|---|---|---|---|"]
    for st in stages:
        c = counts.get(st.index, Counter())
        lines.append(f"| {st.index} {st.name} | {st.status.value} | {sum(c.values())} | "
                     f"{', '.join(f'{k} {v}' for k, v in sorted(c.items())) or '-'} | {_when(st.finished_at)} | "
                     f"{_when(st.soak_until)} |")
    if waiting:
        lines.append("\nWaiting for:\n")
        lines += [f"- {w.reason}" + (f" (until {_when(w.until)})" if w.until else "") for w in waiting[:50]]
        if len(waiting) > 50:
            lines.append(f"- ... and {len(waiting) - 50} more")
    if launched:
        lines.append("\nChild runs created by this tick:\n")
        lines += [f"- {rid}: flow run {run}" for rid, run in sorted(launched.items())]
    return "\n".join(lines) + "\n"


async def _tick_one(fleet: Fleet, engine: Any, home: Path, endpoints: Endpoints, train_id: str,
                    params: Mapping[str, Any], stale_after: timedelta) -> str:
    """One train's tick and its artifact; its status afterwards. The tick is synchronous (it reads
    and writes the state store and launches children through the Prefect API): it runs in a thread."""
    trains = TrainStore(engine)
    dispatcher = PrefectDispatcher(train_id, params)
    now = endpoints.clock()
    decision = await asyncio.to_thread(tick, engine, fleet, home, train_id, now, dispatcher, stale_after=stale_after)
    rec = trains.get(train_id)
    await acreate_markdown_artifact(
        markdown=_tick_markdown(train_id, rec.release, rec.status.value, trains.stages(train_id),
                                trains.stores(train_id), decision.waiting, dispatcher.launched, now),
        key=f"train-{train_id}".lower().replace("_", "-").replace(".", "-"),
        description=f"train {train_id}: {rec.status.value}")
    get_run_logger().info("train %s: %s; %d child run(s) created", train_id, rec.status.value,
                          len(dispatcher.launched))
    return rec.status.value


@flow(name="train-tick", retries=0)
async def train_tick(train_id: str | None = None, stale_after_s: float = STALE_AFTER_S, sim_url: str | None = None,
                     inventory: str | None = None, home: str | None = None,
                     state_url: str | None = None) -> State[Any]:
    """Tick every active train (or ``train_id``): dispatch what is due now to the region
    deployments, resume children whose runner died, record what finished; a markdown artifact per
    train says where it stands. A train whose tick fails does not keep the others from theirs (the
    run ends Failed, naming it).

    ``stale_after_s``: a running child whose heartbeat is older than this (wall time) lost its
    runner and is launched again; its new run uses the same bound to judge it."""
    logger = get_run_logger()
    fleet = _fleet(inventory)
    engine = open_state(state_url or load_settings().state_store_url)
    home_dir = Path(home) if home else load_settings().home
    endpoints = await _endpoints(fleet, sim_url)
    trains = TrainStore(engine)
    ids = [train_id] if train_id else [t.id for t in trains.list(limit=1000) if t.status in ACTIVE]
    params = {"sim_url": sim_url, "inventory": inventory, "home": home, "state_url": state_url,
              "stale_after_s": stale_after_s}
    done: list[str] = []
    failed: list[str] = []
    for tid in ids:
        try:
            status = await _tick_one(fleet, engine, home_dir, endpoints, tid, params, timedelta(seconds=stale_after_s))
            done.append(f"{tid} {status}")
        except EdgefleetError as e:
            logger.error("train %s: tick failed: %s", tid, e)
            failed.append(f"{tid}: {e}")
    if failed:
        return Failed(message="; ".join(failed))
    return Completed(message="; ".join(done) or "no active train")


__all__ = ["run_operation", "train_tick"]
