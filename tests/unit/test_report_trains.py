"""The report's release trains: a real ledger in a SQLite file holding a train (recorded with
``TrainStore`` and child rollouts as the controller records them) collected, rendered and parsed:
the trains table, each stage's counts and times, and each stage drawn on the timeline (run, then
soak) on the same time axis as the chart; a ledger without trains renders without them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from edgefleet.report import ReportData, collect_report, render_report
from edgefleet.rollout.ledger import Kind, Ledger, RolloutStatus, RunStatus, stmt_event, stmt_run, stmt_store_release
from edgefleet.state.db import create_state_engine
from edgefleet.trains.model import SetStage, StagePolicy, StageSpec, StageStatus, StoreState, TrainSpec, TrainStatus
from edgefleet.trains.store import TrainStore
from edgefleet.trains.timeline import StageSummary, TrainSummary
from tests.unit.test_report import Page, parse, self_contained, series

T0 = datetime(2026, 12, 7, 21, 0, tzinfo=UTC)
SOAK = timedelta(hours=24)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = create_state_engine(f"sqlite:///{tmp_path / 'edgefleet.db'}")
    yield e
    e.dispose()


def _child(ledger: Ledger, train: str, rid: str, stores: list[str], start: datetime, *, failed: str = "") -> datetime:
    """A child rollout of ``train`` as the controller records it; its stores start at ``start`` and
    finish 40 minutes apart (``failed`` fails). Returns when the last one finished."""
    ledger.create_rollout(rollout_id=rid, kind=Kind.rollout, release="v2", now=start - timedelta(minutes=1),
                          policy={}, plan={}, operator="train", waves=[(0, "all", len(stores))],
                          runs=[(s, 0, "v1", "v2") for s in stores], train=train)
    ledger.set_rollout(rid, start, status=RolloutStatus.running.value)
    end = start
    for k, s in enumerate(stores):
        end = start + timedelta(minutes=40 * (k + 1))
        if s == failed:
            ledger.write(stmt_run(rid, s, status=RunStatus.failed, started_at=start, ended_at=end, reason="gate"))
            continue
        ledger.write(stmt_run(rid, s, status=RunStatus.succeeded, started_at=start + timedelta(minutes=40 * k),
                              ended_at=end), *stmt_store_release(s, "v2", "v1", end),
                     stmt_event(end, "store_succeeded", rollout=rid, store=s, detail={"release": "v2"}))
    ledger.set_rollout(rid, end, status=RolloutStatus.failed.value if failed else RolloutStatus.succeeded.value)
    return end


def _train_story(engine: Engine) -> tuple[str, datetime]:
    """A train of v2 over three stages: canary passed (soaked), ring1 finished and soaking with one
    store failed, ring2 locked."""
    trains, ledger = TrainStore(engine), Ledger(engine)
    spec = TrainSpec("v2", tuple(StageSpec(n, n, StagePolicy(soak=SOAK, failure_budget=1))
                                 for n in ("canary", "ring1", "ring2")))
    stores = {"dk-1": 0, "de-1": 0, "dk-2": 1, "de-2": 1, "us-2": 1, "dk-3": 2, "us-3": 2}
    rec = trains.create(spec, stores, ["canary", "ring1", "ring2"], T0, operator="alice")
    canary_done = _child(ledger, rec.id, "ro-c", ["dk-1", "de-1"], T0 + timedelta(hours=1))
    trains.set_stores(rec.id, {"dk-1": (StoreState.succeeded, "ro-c"), "de-1": (StoreState.succeeded, "ro-c")},
                      canary_done)
    trains.set_stage(rec.id, SetStage(0, StageStatus.passed, finished_at=canary_done,
                                      soak_until=canary_done + SOAK), canary_done + SOAK)
    ring1_start = canary_done + SOAK + timedelta(hours=1)
    ring1_done = _child(ledger, rec.id, "ro-r1", ["dk-2", "de-2", "us-2"], ring1_start, failed="us-2")
    trains.set_stores(rec.id, {"dk-2": (StoreState.succeeded, "ro-r1"), "de-2": (StoreState.succeeded, "ro-r1"),
                               "us-2": (StoreState.failed, "ro-r1")}, ring1_done)
    trains.set_stage(rec.id, SetStage(1, StageStatus.soaking, finished_at=ring1_done,
                                      soak_until=ring1_done + SOAK), ring1_done)
    return rec.id, ring1_done


def _lanes(p: Page) -> list[dict[str, str | None]]:
    return [a for t, a in p.tags if t == "rect" and (a.get("class") or "").startswith("stage-")]


def test_a_ledger_with_a_train_shows_its_stages_counts_and_timeline(engine: Engine) -> None:
    tid, ring1_done = _train_story(engine)
    data = collect_report(engine, now=ring1_done + timedelta(hours=2))
    page = render_report(data)
    p = parse(page)
    self_contained(page)

    assert p.rows["trains"][1:] == [[tid, "v2", "running", "", "2026-12-07 21:00:00Z"]]
    stages = {r[1]: r for r in p.rows["train-stages"][1:]}
    assert list(stages) == ["0 canary", "1 ring1", "2 ring2"]
    assert stages["0 canary"][2:] == ["passed", "2", "succeeded: 2", "2026-12-07 22:00:00Z", "2026-12-07 23:20:00Z",
                                      "2026-12-08 23:20:00Z", ""]
    assert stages["1 ring1"][2:5] == ["soaking", "3", "failed: 1, succeeded: 2"]
    assert stages["1 ring1"][5:8] == ["2026-12-09 00:20:00Z", "2026-12-09 02:20:00Z", "2026-12-10 02:20:00Z"]
    assert stages["2 ring2"][2:] == ["locked", "2", "pending: 2", "-", "-", "-", ""]

    # the chart still counts stores per release; the train's lane lies on its time axis
    assert series(p) == {"v2": 4}
    bars = _lanes(p)
    assert [(b["class"], b["data-stage"]) for b in bars] == [
        ("stage-run stage-status-passed", "canary"), ("stage-soak stage-status-passed", "canary"),
        ("stage-run stage-status-soaking", "ring1"), ("stage-soak stage-status-soaking", "ring1")]
    x = [float(str(b["x"])) for b in bars]
    w = [float(str(b["width"])) for b in bars]
    assert x[0] + w[0] == pytest.approx(x[1], abs=0.2)  # the soak starts where the run ends
    assert x[1] + w[1] < x[2]  # ring1 starts an hour after the canary soak ended
    assert w[1] == pytest.approx(w[3], abs=0.2)  # two 24 h soaks, one scale
    assert w[1] / w[0] == pytest.approx(24 * 60 / 80, rel=0.02)  # 80 min of run against 24 h of soak
    assert f"train {tid}: v2, running" in " ".join(p.text)


def test_a_selected_child_rollout_shows_its_train_and_no_other(engine: Engine) -> None:
    tid, _ = _train_story(engine)
    assert [t.id for t in collect_report(engine, rollout_ids=["ro-r1"]).trains] == [tid]
    # a train id stands for its child rollouts and its own events
    whole = collect_report(engine, rollout_ids=[tid])
    assert [t.id for t in whole.trains] == [tid] and [op.id for op in whole.operations] == ["ro-c", "ro-r1"]
    assert {ev.rollout for ev in whole.events} == {tid, "ro-c", "ro-r1"}
    Ledger(engine).create_rollout(rollout_id="ro-alone", kind=Kind.rollout, release="v2", now=T0, policy={}, plan={},
                                  operator="bob", waves=[], runs=[])
    assert collect_report(engine, rollout_ids=["ro-alone"]).trains == ()
    # --limit: the trains holding one of the stores, their stages counting those stores only
    (limited,) = collect_report(engine, stores=["us-2", "dk-3"]).trains
    assert [(st.name, st.stores, dict(st.counts)) for st in limited.stages] == [
        ("canary", 0, {}), ("ring1", 1, {"failed": 1}), ("ring2", 1, {"pending": 1})]
    assert collect_report(engine, stores=["nowhere"]).trains == ()


def test_a_ledger_without_trains_renders_without_them(engine: Engine) -> None:
    ledger = Ledger(engine)
    _child(ledger, "", "ro-plain", ["dk-1"], T0)  # no train: an empty train id is not one
    data = collect_report(engine)
    assert data.trains == ()
    p = parse(render_report(data))
    assert "No release train in the state store." in " ".join(p.text)
    assert "trains" not in p.rows and _lanes(p) == []
    assert series(p) == {"v2": 1}


def test_a_train_before_any_release_change_is_drawn_with_its_running_stage() -> None:
    """Pure: a train whose first stage is still running (nothing finished, no store changed release
    yet) still gets the timeline, its run bar drawn up to the report's time."""
    now = T0 + timedelta(hours=3)
    train = TrainSummary("tr-1", "v3", TrainStatus.running.value, "", "alice", T0, now, (
        StageSummary(0, "canary", StageStatus.running.value, 3, {"dispatched": 2, "pending": 1},
                     started_at=T0 + timedelta(hours=1)),
        StageSummary(1, "ring1", StageStatus.locked.value, 5, {"pending": 5})))
    data = ReportData(title="t", generated_at=now, operations=(), changes=(), events=(), events_total=0,
                      trains=(train,))
    p = parse(render_report(data))
    bars = _lanes(p)
    assert [(b["class"], b["data-stage"]) for b in bars] == [("stage-run stage-status-running", "canary")]
    right = float(str(bars[0]["x"])) + float(str(bars[0]["width"]))
    assert right == pytest.approx(960 - 20, abs=0.2)  # to now, the right end of the axis
    assert series(p) == {} and "no store changed release" in " ".join(p.text)
    empty = parse(render_report(ReportData(title="t", generated_at=now, operations=(), changes=(), events=(),
                                           events_total=0)))
    assert _lanes(empty) == [] and "there is no release train" in " ".join(empty.text)
