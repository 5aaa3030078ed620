"""The train controller's tick on a real SQLite state store, its children recorded in the real
ledger and handed to a dispatcher that only notes what it was given (the children's execution is
the simulator tests'): a dispatch records a child rollout of the train, the release goes to canary;
a child not started within ``START_WITHIN`` or whose heartbeat is older than ``STALE_AFTER`` is
resumed (once per child), a live one is not; the stores' outcomes come from the child's store runs."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from edgefleet.inventory.model import Fleet
from edgefleet.releases.catalog import ReleaseCatalog, ReleaseState
from edgefleet.rollout.ledger import Ledger, RunStatus, stmt_run, stmt_store_release
from edgefleet.state.db import close_all, open_state
from edgefleet.trains.controller import STALE_AFTER, START_WITHIN, snapshot, tick
from edgefleet.trains.model import Dispatch, Resume, StagePolicy, StageSpec, StoreState, TrainSpec, TrainStatus
from edgefleet.trains.store import TrainStore
from tests.helpers import record_release
from tests.unit.test_train_decide import always_open, sample_fleet

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
WALL = datetime(2026, 12, 3, 18, 0, tzinfo=UTC)


class Noted:
    """A dispatcher that notes the children it is asked to start."""

    def __init__(self) -> None:
        self.launched: list[tuple[str, str]] = []

    def launch(self, rollout_id: str, region: str) -> None:
        self.launched.append((rollout_id, region))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Engine, Fleet, list[str]]]:
    record_release(tmp_path, "v1")
    record_release(tmp_path, "v2", stable=False)
    engine = open_state(f"sqlite:///{tmp_path / 'edgefleet.db'}")
    fleet = always_open(sample_fleet())
    region = sorted(fleet.stores.values(), key=lambda x: x.id)[0].region
    stores = sorted(sid for sid, st in fleet.stores.items() if st.region == region)[:3]  # one child for all
    ledger = Ledger(engine)
    for sid in stores:
        ledger.write(*stmt_store_release(sid, "v1", "v1", NOW))
    yield engine, fleet, stores
    close_all()


def test_a_tick_dispatches_children_and_a_dead_one_is_resumed(world: tuple[Engine, Fleet, list[str]],
                                                              tmp_path: Path) -> None:
    engine, fleet, stores = world
    trains, ledger = TrainStore(engine), Ledger(engine)
    spec = TrainSpec("v2", (StageSpec("canary", "canary", StagePolicy(failure_budget=0)),))
    rec = trains.create(spec, dict.fromkeys(stores, 0), ["canary"], NOW)
    noted = Noted()

    d = tick(engine, fleet, tmp_path, rec.id, NOW, noted, wall=WALL)
    (child,) = ledger.train_rollouts(rec.id)
    region = fleet.stores[stores[0]].region
    assert [a for a in d.actions if isinstance(a, Dispatch)] == [Dispatch(0, region, tuple(stores))]
    assert noted.launched == [(child.id, region)]
    assert ReleaseCatalog(engine).get("v2").state is ReleaseState.canary
    assert {s: (p.state, p.rollout) for s, p in trains.stores(rec.id).items()} == dict.fromkeys(
        stores, (StoreState.dispatched, child.id))
    assert child.train == rec.id and child.heartbeat_at == WALL
    assert sorted(r.store for r in ledger.runs(child.id)) == stores

    # Not started yet, dispatched within START_WITHIN: live, nothing to do.
    later = NOW + timedelta(hours=1)
    d = tick(engine, fleet, tmp_path, rec.id, later, noted, wall=WALL + START_WITHIN - timedelta(seconds=1))
    assert not [a for a in d.actions if isinstance(a, (Resume, Dispatch))]
    # Never picked up: resumed once (not once per store), its heartbeat renewed.
    lost = WALL + START_WITHIN + timedelta(seconds=1)
    d = tick(engine, fleet, tmp_path, rec.id, later, noted, wall=lost)
    assert [a for a in d.actions if isinstance(a, Resume)] == [Resume(child.id, region)]
    assert noted.launched == [(child.id, region)] * 2
    assert ledger.rollout(child.id).heartbeat_at == lost
    # Running with a fresh heartbeat: live; with a stale one: resumed.
    ledger.set_rollout(child.id, later, status="running", heartbeat_at=lost)
    assert snapshot(engine, fleet, rec.id, wall=lost + STALE_AFTER - timedelta(seconds=1)).stores[stores[0]].live
    assert not snapshot(engine, fleet, rec.id, wall=lost + STALE_AFTER + timedelta(seconds=1)).stores[stores[0]].live

    # Its store runs ended: the train's stores follow, with an event each.
    ended = later + timedelta(minutes=30)
    first, *rest = stores
    ledger.write(stmt_run(child.id, first, status=RunStatus.succeeded.value, started_at=later, ended_at=ended),
                 *[stmt_run(child.id, s, status=RunStatus.rolled_back.value, started_at=later, ended_at=ended)
                   for s in rest])
    ledger.set_rollout(child.id, ended, status="failed")
    d = tick(engine, fleet, tmp_path, rec.id, ended, noted, wall=lost)
    assert not [a for a in d.actions if isinstance(a, (Resume, Dispatch))]
    got = trains.stores(rec.id)
    assert got[first].state is StoreState.succeeded
    assert all(got[s].state is StoreState.rolled_back for s in rest)
    kinds = [e["kind"] for e in ledger.events(rec.id) if e["store"] == first]
    assert kinds == ["store_succeeded"]
    # Canaries rolled back with a budget of 0: the stage failed, the train halted.
    assert trains.get(rec.id).status is TrainStatus.halted
