"""Release trains in a real SQLite state store: a train round-trips (spec, stages, stores, requests,
approvals, events), a store belongs to one active train at a time (a second train is refused naming
the holder, also when two trains are created at once from two engines), and child rollouts carry
their train in the ledger."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from edgefleet.errors import LockHeld, StateError, UnknownTrain
from edgefleet.rollout.ledger import Kind, Ledger
from edgefleet.state.db import create_state_engine
from edgefleet.trains.model import (
    SetStage,
    StagePolicy,
    StageSpec,
    StageStatus,
    StoreState,
    TrainSpec,
    TrainStatus,
)
from edgefleet.trains.store import TrainRecord, TrainStore, parse_spec, spec_json

NOW = datetime(2026, 12, 7, 21, 0, tzinfo=UTC)

SPEC = TrainSpec(
    release="v2",
    stages=(StageSpec("canary", "canary", StagePolicy(failure_budget=0, soak=timedelta(hours=24))),
            StageSpec("ring1", "ring1", StagePolicy(failure_budget="10%", soak=timedelta(hours=6), approve=True,
                                                    max_concurrent=5, max_per_region=2, max_per_country=1)),
            StageSpec("rest", "50%", StagePolicy(failure_budget=3, soak=timedelta(0)))),
    manual_promote=True, limit="country_dk", settings={"node_duration": "PT20M", "poll_s": 0.5})
ASSIGN = {"dk-001": 0, "dk-002": 1, "dk-003": 1, "dk-004": 2}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = create_state_engine(f"sqlite:///{tmp_path / 'edgefleet.db'}")
    yield e
    e.dispose()


def test_spec_json_round_trips() -> None:
    assert parse_spec(spec_json(SPEC)) == SPEC
    with pytest.raises(StateError, match="train spec is invalid"):
        parse_spec({"release": "v2"})


def test_a_train_round_trips(engine: Engine) -> None:
    trains = TrainStore(engine)
    rec = trains.create(SPEC, ASSIGN, ["canary", "ring1", "rest"], NOW, operator="alice", done={"dk-004"})
    assert rec.id.startswith("tr-20261207T210000-")
    got = trains.get(rec.id)
    assert got == rec
    assert (got.release, got.status, got.spec, got.operator, got.approvals) == (
        "v2", TrainStatus.running, SPEC, "alice", ())
    assert [(s.index, s.name, s.status) for s in trains.stages(rec.id)] == [
        (0, "canary", StageStatus.running), (1, "ring1", StageStatus.locked), (2, "rest", StageStatus.locked)]
    stores = trains.stores(rec.id)
    assert {s: (p.stage, p.state, p.rollout) for s, p in stores.items()} == {
        "dk-001": (0, StoreState.pending, None), "dk-002": (1, StoreState.pending, None),
        "dk-003": (1, StoreState.pending, None), "dk-004": (2, StoreState.succeeded, None)}

    later = NOW + timedelta(hours=1)
    trains.set_stores(rec.id, {"dk-001": (StoreState.dispatched, "ro-1")}, later)
    assert trains.stores(rec.id)["dk-001"].rollout == "ro-1"
    trains.set_stage(rec.id, SetStage(0, StageStatus.soaking, "gate passed", finished_at=later,
                                      soak_until=later + timedelta(hours=24)), later)
    stage0 = trains.stages(rec.id)[0]
    assert (stage0.status, stage0.finished_at, stage0.soak_until) == (
        StageStatus.soaking, later, later + timedelta(hours=24))
    assert trains.stage_reasons(rec.id)[0] == "gate passed"
    trains.approve(rec.id, 1, later)
    trains.approve(rec.id, 1, later)
    assert trains.get(rec.id).approvals == (1,)
    assert trains.stages(rec.id)[1].approved
    trains.request(rec.id, now=later, pause=True)
    trains.request(rec.id, now=later, abort=True, rollback=True)
    got = trains.get(rec.id)
    assert (got.pause_requested, got.abort_requested, got.rollback_requested) == (True, True, True)
    trains.set_status(rec.id, TrainStatus.halted, "stage canary failed", later)
    trains.touch(rec.id, later)
    got = trains.get(rec.id)
    assert (got.status, got.reason, got.updated_at, got.heartbeat_at) == (
        TrainStatus.halted, "stage canary failed", later, later)
    assert got.to_json()["spec"]["stages"][1]["policy"]["soak_s"] == 6 * 3600

    trains.event(later, "stage_failed", rec.id, store="dk-001", reason="budget", failures=1)
    events = Ledger(engine).events(rec.id)
    assert [(e["kind"], e["store"]) for e in events] == [("train_started", None), ("stage_failed", "dk-001")]
    assert events[1]["detail"] == {"failures": 1}
    assert [t.id for t in trains.list()] == [rec.id]


def test_unknown_trains_and_stages_are_refused(engine: Engine) -> None:
    trains = TrainStore(engine)
    with pytest.raises(UnknownTrain, match=r"no train 'tr-nope'.*none yet") as e:
        trains.get("tr-nope")
    assert e.value.exit_code == 2
    rec = trains.create(SPEC, ASSIGN, ["canary", "ring1", "rest"], NOW)
    with pytest.raises(UnknownTrain, match=rf"recent: {rec.id}"):
        trains.get("tr-nope")
    with pytest.raises(StateError, match="no stage 7"):
        trains.set_stage(rec.id, SetStage(7, StageStatus.running), NOW)
    with pytest.raises(StateError, match="store xx-001 is not part of"):
        trains.set_stores(rec.id, {"xx-001": (StoreState.dispatched, "ro-1")}, NOW)
    with pytest.raises(StateError, match="assigned to no stage"):
        trains.create(SPEC, {"dk-009": 3}, ["canary", "ring1", "rest"], NOW)


def test_a_store_belongs_to_one_active_train(engine: Engine) -> None:
    trains = TrainStore(engine)
    first = trains.create(SPEC, ASSIGN, ["canary", "ring1", "rest"], NOW)
    assert trains.active_holder("dk-003") == first.id
    assert trains.active_holder("dk-999") is None
    with pytest.raises(LockHeld, match=rf"store dk-003 belongs to train {first.id}.*train abort {first.id}"):
        trains.create(SPEC, {"dk-003": 0, "dk-010": 1}, ["canary", "ring1"], NOW + timedelta(seconds=1))
    other = trains.create(SPEC, {"dk-010": 0}, ["canary"], NOW + timedelta(seconds=2))  # disjoint: fine
    # Halted still holds its stores; once finished (aborted, succeeded) they are free again.
    trains.set_status(first.id, TrainStatus.halted, "stage failed", NOW)
    assert trains.active_holder("dk-003") == first.id
    trains.set_status(first.id, TrainStatus.aborted, "aborted by a person", NOW)
    assert trains.active_holder("dk-003") is None
    again = trains.create(SPEC, {"dk-003": 0}, ["canary"], NOW + timedelta(seconds=3))
    assert trains.active_holder("dk-003") == again.id
    assert {t.id for t in trains.list()} == {first.id, other.id, again.id}


def test_two_trains_started_at_once_cannot_both_take_a_store(tmp_path: Path) -> None:
    """Two engines (as two processes would) create overlapping trains at the same moment: exactly
    one wins, the other is refused naming it."""
    url = f"sqlite:///{tmp_path / 'edgefleet.db'}"
    engines = [create_state_engine(url) for _ in range(2)]
    results: list[TrainRecord | LockHeld] = []
    barrier = threading.Barrier(2)

    def start(engine: Engine, n: int) -> None:
        barrier.wait()
        try:
            results.append(TrainStore(engine).create(SPEC, {f"dk-{i:03d}": 0 for i in range(200)}, ["canary"],
                                                     NOW + timedelta(seconds=n)))
        except LockHeld as e:
            results.append(e)

    threads = [threading.Thread(target=start, args=(e, n)) for n, e in enumerate(engines)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [r for r in results if isinstance(r, TrainRecord)]
    lost = [r for r in results if isinstance(r, LockHeld)]
    assert len(won) == 1 and len(lost) == 1
    assert won[0].id in str(lost[0])
    for e in engines:
        e.dispose()


def test_child_rollouts_carry_their_train(engine: Engine) -> None:
    ledger = Ledger(engine)
    child = ledger.create_rollout(rollout_id="ro-1", kind=Kind.rollout, release="v2", now=NOW, policy={}, plan={},
                                  operator="", waves=[(0, "stage", 1)], runs=[("dk-001", 0, "v1", "v2")],
                                  train="tr-1")
    alone = ledger.create_rollout(rollout_id="ro-2", kind=Kind.rollout, release="v2", now=NOW, policy={}, plan={},
                                  operator="", waves=[], runs=[])
    assert (child.train, alone.train) == ("tr-1", None)
    assert ledger.rollout("ro-1").to_json()["train"] == "tr-1"
