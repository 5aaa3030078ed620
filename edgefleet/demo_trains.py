"""The release-train chapters of ``make demo`` (``edgefleet.demo`` tells the rest).

A week of the sample fleet, on the simulator's accelerated clock, told with the commands an
operator types:

1. v2 travels as a train: the canary ring on Monday night, a 12-hour soak, ring 1 on Tuesday night,
   the rest on Wednesday night. One worker of a store in the last stage never becomes Ready on v2: the
   engine puts that store back on v1 by itself and the stage's failure budget holds. The canary
   stage's gate and soak promote v2 to stable.
2. v3 is bad: one canary's node never becomes Ready on it. The canary stage fails its gate, the train
   halts before any store of ring 1 is touched, and ``train abort --rollback`` brings the canaries
   back to v2 in their next windows and revokes v3.

Each train is declared to the simulator's oracle, which checks its stage order and that no store
outside the canary stage receives a release that is not stable, besides its safety rules.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from edgefleet.errors import EdgefleetError
from edgefleet.trains.model import TrainStatus
from edgefleet.trains.store import TrainStore

__all__ = ["bad_release", "next_monday_noon", "week_of_v2"]

SOAK = "12h"
RING2_FAILING_NODE = "us-003-w1"  # a worker of the last stage that never becomes Ready on v2
CANARY_FAILING_NODE = "dk-002-n3"  # a canary's node that never becomes Ready on v3
# Real seconds: at 3,600x a node boots in 25 ms and 8 s are eight simulated hours.
TRAIN_OPTIONS = ("--soak", SOAK, "--node-timeout", "8", "--gate-timeout", "10", "--poll", "0.2",
                 "--node-minutes", "15")

Step = Callable[..., None]
Sim = Callable[..., Any]


def _newest_train(engine: Engine, release: str) -> str:
    for rec in TrainStore(engine).list(limit=5):
        if rec.release == release:
            return rec.id
    raise EdgefleetError(f"demo: train start recorded no train of {release}")


def _declare(sim: Sim, url: str, engine: Engine, train_id: str) -> None:
    """The train's stages, soaks and budgets, as recorded, told to the simulator's oracle."""
    trains = TrainStore(engine)
    rec = trains.get(train_id)
    stores = trains.stores(train_id)
    stages = []
    for i, st in enumerate(rec.spec.stages):
        members = sorted(s for s, p in stores.items() if p.stage == i)
        if members:
            stages.append({"name": st.name, "stores": members, "soak_s": st.policy.soak.total_seconds(),
                           "failure_budget": st.policy.failure_budget})
    sim(url, "/sim/oracle/train", {"release": rec.release, "stages": stages})


def _stages(engine: Engine, train_id: str) -> None:
    trains = TrainStore(engine)
    rec = trains.get(train_id)
    print(f"  train {train_id}: {rec.status.value} ({rec.reason})", flush=True)
    for st in trains.stages(train_id):
        members = [p for p in trains.stores(train_id).values() if p.stage == st.index]
        states: dict[str, int] = {}
        for p in members:
            states[p.state.value] = states.get(p.state.value, 0) + 1
        finished = f", last store finished {st.finished_at:%a %Y-%m-%d %H:%M} UTC" if st.finished_at else ""
        print(f"  stage {st.index} {st.name}: {st.status.value}, {states}{finished}", flush=True)


def _expect(engine: Engine, train_id: str, status: TrainStatus) -> None:
    rec = TrainStore(engine).get(train_id)
    if rec.status is not status:
        raise EdgefleetError(f"demo: train {train_id} is {rec.status.value} ({rec.reason}), expected {status.value}")


def next_monday_noon(after: datetime) -> datetime:
    """Monday 12:00 UTC of the first week starting after the day of ``after`` (the next day counts)."""
    day = (after.astimezone(UTC) + timedelta(days=1)).date()
    day += timedelta(days=(7 - day.weekday()) % 7)
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC)


def week_of_v2(step: Step, title: Callable[[str], None], sim: Sim, url: str, engine: Engine) -> None:
    """v2 across the fleet as a train: canaries, soak, ring 1, soak, the rest; one store of the
    last stage rolled back by the engine; v2 promoted to stable after its canary stage."""
    monday = next_monday_noon(sim_now(sim, url))
    sim(url, "/sim/clock", {"now": monday.isoformat()})
    title(f"later: the simulator's clock moves on to Monday {monday:%Y-%m-%d %H:%M} UTC (nothing runs in between)")
    sim(url, "/sim/scenario", {"never_ready_on": {"v2": [RING2_FAILING_NODE]}})
    step("the stage plan of a v2 train: the inventory's rings in order, canary first, each store in its "
         "own window", "train", "start", "-r", "v2", "--dry-run", "--sim", url, *TRAIN_OPTIONS)
    step("start the v2 train (recorded in the ledger; v2 is only built: the canary stage makes it canary)",
         "train", "start", "-r", "v2", "--sim", url, *TRAIN_OPTIONS)
    train_id = _newest_train(engine, "v2")
    _declare(sim, url, engine, train_id)
    step(f"carry the train out in this process (in production: the train-tick deployment on Prefect "
         f"workers); {RING2_FAILING_NODE} never becomes Ready", "train", "run", train_id, "--sim", url,
         "--poll", "0.5")
    _expect(engine, train_id, TrainStatus.succeeded)
    _stages(engine, train_id)
    step("the train as an operator sees it", "train", "status", train_id, "--sim", url)


def bad_release(step: Step, title: Callable[[str], None], sim: Sim, url: str, engine: Engine) -> None:
    """A bad v3: its canary stage fails, the train halts before ring 1, and is aborted with a
    rollback that brings the canaries back to v2 and revokes v3."""
    sim(url, "/sim/scenario", {"never_ready_on": {"v3": [CANARY_FAILING_NODE]}})
    step(f"start a v3 train; on v3 {CANARY_FAILING_NODE} never becomes Ready", "train", "start", "-r", "v3",
         "--sim", url, *TRAIN_OPTIONS)
    train_id = _newest_train(engine, "v3")
    _declare(sim, url, engine, train_id)
    step("run it: the canary stage goes past its failure budget and the train halts (exit 1)",
         "train", "run", train_id, "--sim", url, "--poll", "0.5", expect_failure=True)
    _expect(engine, train_id, TrainStatus.halted)
    _stages(engine, train_id)
    step("abort the train and roll its stores back (v3 is revoked)", "train", "abort", train_id, "--rollback",
         "--yes")
    step("carry the rollback out: the canaries go back to v2 in their next windows (the train ends aborted: "
         "exit 1)", "train", "run", train_id, "--sim", url, "--poll", "0.5", expect_failure=True)
    _expect(engine, train_id, TrainStatus.aborted)
    _stages(engine, train_id)


def stores_per_release(engine: Engine) -> dict[str | None, list[str]]:
    from edgefleet.rollout.ledger import Ledger

    out: dict[str | None, list[str]] = {}
    for s, (current, _lkg) in sorted(Ledger(engine).store_releases().items()):
        out.setdefault(current, []).append(s)
    return out


def expected_end() -> dict[str, str]:
    """What the demo's fleet must look like at the end (checked by the summary)."""
    return {"rolled_back_store": RING2_FAILING_NODE.rsplit("-", 1)[0], "release": "v2", "base": "v1"}


def sim_now(sim: Sim, url: str) -> datetime:
    return datetime.fromisoformat(sim(url, "/sim/clock")["now"])
