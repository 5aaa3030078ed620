"""The train controller's pure decision: stage gates, budgets, soak, approvals, promotion, halts,
windows, freezes, caps, locks, dead children and the rollback, with hypothesis properties over
arbitrary snapshots (never a later stage before an earlier one passed, never a store outside its
window or in a freeze, never over a cap, nothing after a failed stage)."""

from __future__ import annotations

import functools
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.inventory.generate import generate_fleet
from edgefleet.inventory.load import load_fleet
from edgefleet.inventory.model import Fleet, Freeze, MaintenanceWindow, Weekday
from edgefleet.schedule.windows import freeze_at, next_window, window_at
from edgefleet.trains.decide import WAIT_DETAIL, decide
from edgefleet.trains.model import (
    Decision,
    Dispatch,
    Finish,
    Promote,
    Resume,
    SetStage,
    StagePolicy,
    StageProgress,
    StageSpec,
    StageStatus,
    StoreProgress,
    StoreState,
    TrainSnapshot,
    TrainSpec,
    TrainStatus,
)

NODE = timedelta(minutes=20)
MON = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)  # a Monday, outside the Christmas freeze


@functools.cache
def sample_fleet() -> Fleet:
    with tempfile.TemporaryDirectory() as tmp:
        return load_fleet(generate_fleet(Path(tmp) / "f", 40, seed=3, countries=12))


@pytest.fixture
def fleet() -> Fleet:
    return sample_fleet()


def always_open(fleet: Fleet) -> Fleet:
    """The fleet with every store's window open around the clock and no freezes."""
    allday = [MaintenanceWindow(days=list(Weekday), start=time(0, 0), end=time(0, 0))]
    return fleet.model_copy(update={"freezes": [], "stores": {
        sid: s.model_copy(update={"maintenance_windows": allday}) for sid, s in fleet.stores.items()}})


def spec(*policies: StagePolicy, manual_promote: bool = False) -> TrainSpec:
    return TrainSpec("v2", tuple(StageSpec(f"s{i}", f"g{i}", p) for i, p in enumerate(policies)),
                     manual_promote=manual_promote)


def snap(sp: TrainSpec, stages: Sequence[StageStatus | StageProgress], stores: Mapping[str, StoreProgress], *,
         status: TrainStatus = TrainStatus.running, release_state: str = "canary", **kw: object) -> TrainSnapshot:
    progress = tuple(s if isinstance(s, StageProgress) else StageProgress(i, f"s{i}", s) for i, s in enumerate(stages))
    return TrainSnapshot(id="tr-1", spec=sp, status=status, release_state=release_state, stages=progress,
                         stores=stores, **kw)  # type: ignore[arg-type]


def stores_of(assign: Mapping[str, int], state: StoreState = StoreState.pending, **kw: object
              ) -> dict[str, StoreProgress]:
    return {s: StoreProgress(s, i, state, **kw) for s, i in assign.items()}  # type: ignore[arg-type]


def of(decision: Decision, kind: type) -> list:  # type: ignore[type-arg]
    return [a for a in decision.actions if isinstance(a, kind)]


def dispatched(decision: Decision) -> set[str]:
    return {s for a in of(decision, Dispatch) for s in a.stores}


def first(fleet: Fleet, n: int, skip: int = 0) -> list[str]:
    return sorted(fleet.stores)[skip:skip + n]


# -- dispatching ----------------------------------------------------------------------------------------

def test_a_new_train_moves_the_release_to_canary_and_dispatches_its_first_stage_per_region(fleet: Fleet) -> None:
    f = always_open(fleet)
    a, b = first(f, 6), first(f, 6, skip=6)
    s = snap(spec(StagePolicy(), StagePolicy()), [StageStatus.running, StageStatus.locked],
             stores_of({**dict.fromkeys(a, 0), **dict.fromkeys(b, 1)}), release_state="built")
    d = decide(s, f, MON, node_duration=NODE)
    assert of(d, Promote) == [Promote("canary", {"train": "tr-1", "stage": "s0"})]
    assert dispatched(d) == set(a)
    for disp in of(d, Dispatch):
        assert disp.stage == 0 and not disp.rollback
        assert {f.stores[x].region for x in disp.stores} == {disp.region}
    assert len(of(d, Dispatch)) == len({f.stores[x].region for x in a})


def test_caps_count_the_stores_in_flight(fleet: Fleet) -> None:
    f = always_open(fleet)
    ids = first(f, 10)
    stores = stores_of(dict.fromkeys(ids, 0))
    stores[ids[0]] = StoreProgress(ids[0], 0, StoreState.dispatched, "ro-1", live=True)
    d = decide(snap(spec(StagePolicy(max_concurrent=3)), [StageStatus.running], stores), f, MON, node_duration=NODE)
    assert len(dispatched(d)) == 2
    assert any("concurrency cap (3) is full" in w.reason for w in d.waiting)
    by_country = Counter(f.stores[x].country for x in ids)
    d = decide(snap(spec(StagePolicy(max_per_country=1)), [StageStatus.running], stores_of(dict.fromkeys(ids, 0))),
               f, MON, node_duration=NODE)
    assert Counter(f.stores[x].country for x in dispatched(d)) == Counter(dict.fromkeys(by_country, 1))


def test_stores_wait_for_their_windows_freezes_and_locks(fleet: Fleet) -> None:
    ids = first(fleet, 3)
    d = decide(snap(spec(StagePolicy()), [StageStatus.running], stores_of(dict.fromkeys(ids, 0))), fleet, MON,
               node_duration=NODE)
    assert not of(d, Dispatch)  # 12:00 UTC: every store is outside its night window
    waits = {w.reason.split(":")[0]: w for w in d.waiting}
    for sid in ids:
        store, until = fleet.stores[sid], waits[sid].until
        assert until is not None and until > MON and window_at(store, until) is not None
        assert f"outside its window; next window {until.astimezone(ZoneInfo(store.timezone)):%Y-%m-%d %H:%M} " \
            f"{store.timezone}" in waits[sid].reason
    f = always_open(fleet)
    frozen_one = ids[0]
    free = next(s for s in sorted(f.stores) if f.stores[s].country != f.stores[frozen_one].country)
    locked = next(s for s in sorted(f.stores) if s not in (frozen_one, free))
    frozen = f.model_copy(update={"freezes": [Freeze(name="audit", start=MON - timedelta(hours=1),
                                                     end=MON + timedelta(hours=5),
                                                     countries=[f.stores[frozen_one].country])]})
    d = decide(snap(spec(StagePolicy()), [StageStatus.running], stores_of(dict.fromkeys([frozen_one, free, locked], 0)),
                    locks={locked: "ro-other"}), frozen, MON, node_duration=NODE)
    assert dispatched(d) == {free}
    reasons = " | ".join(w.reason for w in d.waiting)
    assert f"{frozen_one}: frozen (audit); next window" in reasons
    assert f"{locked}: held by operation ro-other" in reasons


def test_a_store_that_does_not_fit_in_what_is_left_of_its_window_waits(fleet: Fleet) -> None:
    sid = first(fleet, 1)[0]
    store = fleet.stores[sid]
    # Ten minutes before its window closes tonight: its nodes (20 minutes each) do not fit.
    start, end = next_window(store, MON)
    now = end - timedelta(minutes=10)
    d = decide(snap(spec(StagePolicy()), [StageStatus.running], stores_of({sid: 0})), fleet, now, node_duration=NODE)
    assert not of(d, Dispatch)
    assert d.waiting[0].until is not None and d.waiting[0].until > end
    d = decide(snap(spec(StagePolicy()), [StageStatus.running], stores_of({sid: 0})), fleet, start,
               node_duration=NODE)
    assert dispatched(d) == {sid}


def test_many_waiting_stores_are_summed_up(fleet: Fleet) -> None:
    ids = first(fleet, 30)
    d = decide(snap(spec(StagePolicy()), [StageStatus.running], stores_of(dict.fromkeys(ids, 0))), fleet, MON,
               node_duration=NODE)
    assert len(d.waiting) == WAIT_DETAIL + 1
    assert d.waiting[-1].reason.startswith(f"{30 - WAIT_DETAIL} more stores wait")


# -- gates, soak, approval, promotion ---------------------------------------------------------------------

def test_a_stage_over_its_budget_fails_and_halts_the_train(fleet: Fleet) -> None:
    f = always_open(fleet)
    a, b = first(f, 10), first(f, 5, skip=10)
    stores = {**stores_of(dict.fromkeys(a, 0)), **stores_of(dict.fromkeys(b, 1))}
    stores[a[0]] = StoreProgress(a[0], 0, StoreState.rolled_back, "ro-1")
    sp = spec(StagePolicy(failure_budget="10%"), StagePolicy())
    d = decide(snap(sp, [StageStatus.running, StageStatus.locked], stores), f, MON, node_duration=NODE)
    assert of(d, Finish) == [] and dispatched(d) == set(a[1:])  # 1 of 10 is within 10%
    stores[a[1]] = StoreProgress(a[1], 0, StoreState.failed, "ro-1")
    d = decide(snap(sp, [StageStatus.running, StageStatus.locked], stores), f, MON, node_duration=NODE)
    assert not of(d, Dispatch)
    (fail,) = of(d, SetStage)
    assert (fail.index, fail.status) == (0, StageStatus.failed) and "2 of its 10 stores" in fail.reason
    assert of(d, Finish)[0].status is TrainStatus.halted
    # Halted: nothing is dispatched, whatever the stages say; it says how to roll back.
    d = decide(snap(sp, [StageStatus.failed, StageStatus.locked], stores, status=TrainStatus.halted), f, MON,
               node_duration=NODE)
    assert d.actions == () and "abort tr-1 --rollback" in d.waiting[-1].reason


def test_a_done_stage_soaks_from_its_last_finish_then_unlocks_the_next(fleet: Fleet) -> None:
    f = always_open(fleet)
    a, b = first(f, 3), first(f, 3, skip=3)
    ends = [MON - timedelta(hours=h) for h in (5, 3, 4)]
    stores = {**{s: StoreProgress(s, 0, StoreState.succeeded, "ro-1", finished_at=t)
                 for s, t in zip(a, ends, strict=True)}, **stores_of(dict.fromkeys(b, 1))}
    sp = spec(StagePolicy(soak=timedelta(hours=24)), StagePolicy())
    d = decide(snap(sp, [StageStatus.running, StageStatus.locked], stores), f, MON, node_duration=NODE)
    soak_until = MON - timedelta(hours=3) + timedelta(hours=24)
    assert of(d, SetStage) == [SetStage(0, StageStatus.soaking, "0 failures within its budget of 0",
                                        finished_at=MON - timedelta(hours=3), soak_until=soak_until)]
    assert not of(d, Dispatch) and not of(d, Promote)
    assert d.waiting[0].reason == f"stage s1 unlocks after the soak of stage s0 at {soak_until:%Y-%m-%d %H:%M} UTC"
    soaking = StageProgress(0, "s0", StageStatus.soaking, MON - timedelta(hours=3), soak_until)
    later = soak_until + timedelta(minutes=1)
    d = decide(snap(sp, [soaking, StageStatus.locked], stores), f, later, node_duration=NODE)
    assert [(x.index, x.status) for x in of(d, SetStage)] == [(0, StageStatus.passed), (1, StageStatus.running)]
    (promote,) = of(d, Promote)
    assert promote.to == "stable"
    assert promote.evidence["stores"] == a and promote.evidence["failures"] == []
    assert promote.evidence["soak_until"] == soak_until.isoformat()
    assert dispatched(d) == set(b)
    assert {x.stage for x in of(d, Dispatch)} == {1}


def test_approval_pauses_the_train_until_a_person_approves(fleet: Fleet) -> None:
    f = always_open(fleet)
    a, b = first(f, 2), first(f, 2, skip=2)
    stores = {**stores_of(dict.fromkeys(a, 0), finished_at=MON - timedelta(hours=1)),
              **stores_of(dict.fromkeys(b, 1))}
    stores = {s: StoreProgress(s, p.stage, StoreState.succeeded if p.stage == 0 else p.state,
                               finished_at=p.finished_at) for s, p in stores.items()}
    soaked = StageProgress(0, "s0", StageStatus.soaking, MON - timedelta(hours=1), MON)
    for sp in (spec(StagePolicy(approve=True), StagePolicy()), spec(StagePolicy(), StagePolicy(), manual_promote=True)):
        d = decide(snap(sp, [soaked, StageStatus.locked], stores), f, MON, node_duration=NODE)
        assert [(x.index, x.status) for x in of(d, SetStage)] == [(0, StageStatus.awaiting_approval)]
        assert of(d, Finish) == [Finish(TrainStatus.paused, "stage s0 awaits approval: `edgefleet train approve tr-1`")]
        assert not of(d, Promote) and not of(d, Dispatch)
        waiting = StageProgress(0, "s0", StageStatus.awaiting_approval, MON - timedelta(hours=1), MON)
        d = decide(snap(sp, [waiting, StageStatus.locked], stores, status=TrainStatus.paused), f, MON,
                   node_duration=NODE)
        assert not of(d, SetStage) and not of(d, Finish)  # still paused, nothing new
        approved = StageProgress(0, "s0", StageStatus.awaiting_approval, MON - timedelta(hours=1), MON, approved=True)
        d = decide(snap(sp, [approved, StageStatus.locked], stores, status=TrainStatus.paused), f, MON,
                   node_duration=NODE)
        assert of(d, Finish) == [Finish(TrainStatus.running, "stage s0 approved")]
        assert [(x.index, x.status) for x in of(d, SetStage)] == [(0, StageStatus.passed), (1, StageStatus.running)]
        assert [p.to for p in of(d, Promote)] == ["stable"] and of(d, Promote)[0].evidence["approved"] is True
        assert dispatched(d) == set(b)
        # Paused by a person: an approval does not restart it.
        d = decide(snap(sp, [approved, StageStatus.locked], stores, status=TrainStatus.paused, pause_requested=True),
                   f, MON, node_duration=NODE)
        assert not of(d, Finish) and not of(d, Dispatch) and not of(d, Promote)


def test_the_last_stage_passing_finishes_the_train(fleet: Fleet) -> None:
    f = always_open(fleet)
    a = first(f, 2)
    stores = {s: StoreProgress(s, 0, StoreState.succeeded, finished_at=MON - timedelta(hours=2)) for s in a}
    sp = spec(StagePolicy(soak=timedelta(hours=1)))
    d = decide(snap(sp, [StageStatus.running], stores, release_state="stable"), f, MON, node_duration=NODE)
    assert [(x.status) for x in of(d, SetStage)] == [StageStatus.soaking, StageStatus.passed]
    assert not of(d, Promote)  # already stable
    assert of(d, Finish)[0].status is TrainStatus.succeeded
    assert decide(snap(sp, [StageStatus.passed], stores, status=TrainStatus.succeeded), f, MON,
                  node_duration=NODE) == Decision(())


def test_a_stage_with_nothing_to_do_passes_without_soak(fleet: Fleet) -> None:
    f = always_open(fleet)
    a, b = first(f, 2), first(f, 2, skip=2)
    stores = {**stores_of(dict.fromkeys(a, 0), StoreState.succeeded), **stores_of(dict.fromkeys(b, 1))}
    # one store of stage 0 is already on the release per the ledger, though recorded pending
    stores[a[1]] = StoreProgress(a[1], 0, StoreState.pending)
    d = decide(snap(spec(StagePolicy(), StagePolicy()), [StageStatus.running, StageStatus.locked], stores,
                    release_state="built", current={a[1]: "v2"}), f, MON, node_duration=NODE)
    assert [(x.index, x.status) for x in of(d, SetStage)] == [
        (0, StageStatus.soaking), (0, StageStatus.passed), (1, StageStatus.running)]
    assert [p.to for p in of(d, Promote)] == ["canary", "stable"]
    assert dispatched(d) == set(b)


# -- requests, dead children, rollback ------------------------------------------------------------------

def test_dead_children_are_resumed_once_per_child(fleet: Fleet) -> None:
    f = always_open(fleet)
    a = first(f, 4)
    stores = {a[0]: StoreProgress(a[0], 0, StoreState.dispatched, "ro-1", live=False),
              a[1]: StoreProgress(a[1], 0, StoreState.dispatched, "ro-1", live=False),
              a[2]: StoreProgress(a[2], 0, StoreState.dispatched, "ro-2", live=True),
              a[3]: StoreProgress(a[3], 0, StoreState.dispatched, "ro-3", live=False)}
    for status in (TrainStatus.running, TrainStatus.paused, TrainStatus.halted):
        d = decide(snap(spec(StagePolicy()), [StageStatus.running], stores, status=status), f, MON,
                   node_duration=NODE)
        assert of(d, Resume) == [Resume("ro-1", f.stores[a[0]].region), Resume("ro-3", f.stores[a[3]].region)]


def test_pause_abort_and_a_revoked_release(fleet: Fleet) -> None:
    f = always_open(fleet)
    stores = stores_of(dict.fromkeys(first(f, 3), 0))
    sp = spec(StagePolicy())
    d = decide(snap(sp, [StageStatus.running], stores, pause_requested=True), f, MON, node_duration=NODE)
    assert of(d, Finish)[0].status is TrainStatus.paused and not of(d, Dispatch)
    d = decide(snap(sp, [StageStatus.running], stores, abort_requested=True), f, MON, node_duration=NODE)
    assert d.actions == (Finish(TrainStatus.aborted, "aborted by a person"),)
    d = decide(snap(sp, [StageStatus.running], stores, abort_requested=True, rollback_requested=True), f, MON,
               node_duration=NODE)
    assert of(d, Finish)[0].status is TrainStatus.rolling_back and not of(d, Dispatch)
    d = decide(snap(sp, [StageStatus.running], stores, release_state="revoked"), f, MON, node_duration=NODE)
    assert of(d, Finish)[0].status is TrainStatus.halted and not of(d, Dispatch)


def test_rolling_back_returns_the_stores_on_the_release_then_aborts(fleet: Fleet) -> None:
    f = always_open(fleet)
    a = first(f, 6)
    stores = {a[0]: StoreProgress(a[0], 0, StoreState.succeeded, "ro-1"),
              a[1]: StoreProgress(a[1], 0, StoreState.rolled_back, "ro-1"),
              a[2]: StoreProgress(a[2], 1, StoreState.succeeded, "ro-2"),
              a[3]: StoreProgress(a[3], 1, StoreState.pending),
              a[4]: StoreProgress(a[4], 1, StoreState.succeeded, "ro-2"),
              a[5]: StoreProgress(a[5], 1, StoreState.dispatched, "ro-2", live=True)}
    current = {a[0]: "v2", a[1]: "v1", a[2]: "v2", a[3]: "v1", a[4]: "v2", a[5]: "v2"}
    lkg = {a[0]: "v1", a[1]: "v1", a[2]: "v1", a[3]: "v1", a[4]: None, a[5]: "v1"}
    sp = spec(StagePolicy(), StagePolicy())
    s = snap(sp, [StageStatus.passed, StageStatus.failed], stores, status=TrainStatus.rolling_back, current=current,
             last_known_good=lkg, abort_requested=True, rollback_requested=True)
    d = decide(s, f, MON, node_duration=NODE)
    assert dispatched(d) == {a[0], a[2]}  # a[4] has no known-good release, a[5] is still in flight
    assert all(x.rollback for x in of(d, Dispatch))
    assert all(stores[x].stage == disp.stage for disp in of(d, Dispatch) for x in disp.stores)
    assert not of(d, Finish)
    done = {**stores, a[0]: StoreProgress(a[0], 0, StoreState.returned, "rb-1", returning=True),
            a[2]: StoreProgress(a[2], 1, StoreState.failed, "rb-1", returning=True),
            a[5]: StoreProgress(a[5], 1, StoreState.returned, "rb-2", returning=True)}
    current = {**current, a[0]: "v1", a[5]: "v1"}
    d = decide(snap(sp, [StageStatus.passed, StageStatus.failed], done, status=TrainStatus.rolling_back,
                    current=current, last_known_good=lkg), f, MON, node_duration=NODE)
    assert not of(d, Dispatch)  # a failed rollback is not tried again
    (fin,) = of(d, Finish)
    assert fin.status is TrainStatus.aborted
    assert "2 stores returned" in fin.reason and f"{a[2]} (its rollback failed)" in fin.reason
    assert f"{a[4]} (no known-good release" in fin.reason


def test_rolling_back_respects_windows(fleet: Fleet) -> None:
    a = first(fleet, 2)
    stores = {s: StoreProgress(s, 0, StoreState.succeeded, "ro-1") for s in a}
    d = decide(snap(spec(StagePolicy()), [StageStatus.passed], stores, status=TrainStatus.rolling_back,
                    current=dict.fromkeys(a, "v2"), last_known_good=dict.fromkeys(a, "v1")), fleet, MON,
               node_duration=NODE)
    assert not of(d, Dispatch) and not of(d, Finish)
    assert all("next window" in w.reason for w in d.waiting)


# -- properties -------------------------------------------------------------------------------------------

_STAGE = st.sampled_from(list(StageStatus))
_STATE = st.sampled_from(list(StoreState))


def _mostly(value: object, others: Sequence[object]) -> st.SearchStrategy[object]:
    """``value`` two times in three, else any of ``others`` (arbitrary snapshots are rarely ones
    that dispatch anything: bias towards those that do, keep the rest reachable)."""
    return st.one_of(st.just(value), st.just(value), st.sampled_from(list(others)))


@st.composite
def snapshots(draw: st.DrawFn, fleet: Fleet) -> tuple[TrainSnapshot, datetime]:
    n_stages = draw(st.integers(1, 4))
    budgets: list[int | str] = [0, 1, 2, "10%", "50%"]
    policies = [StagePolicy(failure_budget=draw(st.sampled_from(budgets)),
                            soak=timedelta(hours=draw(st.integers(0, 30))), approve=draw(st.booleans()),
                            max_concurrent=draw(st.none() | st.integers(1, 4)),
                            max_per_region=draw(st.none() | st.integers(1, 2)),
                            max_per_country=draw(st.none() | st.integers(1, 2))) for _ in range(n_stages)]
    sp = spec(*policies, manual_promote=draw(st.booleans()))
    ids = sorted(fleet.stores)
    chosen = draw(st.lists(st.sampled_from(ids), min_size=1, max_size=25, unique=True))
    # Mostly at night in Europe (most windows are open then), over five weeks with two freezes.
    now = (MON.replace(hour=0) - timedelta(days=draw(st.integers(-14, 20)))
           + timedelta(minutes=draw(st.one_of(st.integers(-4 * 60, 5 * 60), st.integers(0, 24 * 60)))))
    stores: dict[str, StoreProgress] = {}
    for sid in chosen:
        state = draw(_mostly(StoreState.pending, list(StoreState)))
        assert isinstance(state, StoreState)
        finished = now - timedelta(hours=draw(st.integers(0, 48))) if state in (
            StoreState.succeeded, StoreState.failed, StoreState.rolled_back) else None
        stores[sid] = StoreProgress(sid, draw(st.integers(0, n_stages - 1)), state,
                                    "ro-x" if state is StoreState.dispatched else None, live=draw(st.booleans()),
                                    finished_at=finished, returning=draw(st.booleans()))
    stages = []
    for i in range(n_stages):
        usual = StageStatus.passed if i < n_stages // 2 else StageStatus.running
        status = draw(st.sampled_from([usual, usual, *StageStatus, StageStatus.failed, StageStatus.locked]))
        soak = now + timedelta(hours=draw(st.integers(-30, 30))) if status is StageStatus.soaking else None
        stages.append(StageProgress(i, f"s{i}", status, soak_until=soak, approved=draw(st.booleans())))
    status = draw(st.sampled_from([TrainStatus.running] * 4 + [TrainStatus.rolling_back] * 2 + list(TrainStatus)))
    rolling = status is TrainStatus.rolling_back
    locks = {s: "ro-other" for s in draw(st.lists(st.sampled_from(chosen), max_size=3))}
    current = {s: draw(st.sampled_from(["v1", "v2", "v2", None])) for s in chosen}
    return snap(sp, stages, stores, status=status,
                release_state=draw(st.sampled_from(["built", "canary", "stable"])), locks=locks, current=current,
                last_known_good={s: draw(_mostly("v1", ["v2", None])) for s in chosen},
                pause_requested=draw(_mostly(False, [True])), abort_requested=draw(_mostly(rolling, [not rolling])),
                rollback_requested=draw(st.booleans())), now


@pytest.mark.parametrize("windows", ["nightly", "always open"])
def test_decisions_are_safe(windows: str) -> None:
    """Over arbitrary snapshots: with the fleet's own night windows (where windows and freezes
    decide), and with windows always open (where stages, caps and locks decide)."""
    fleet = sample_fleet()
    if windows == "always open":
        fleet = always_open(fleet).model_copy(update={"freezes": fleet.freezes})
    seen: Counter[str] = Counter()

    @settings(max_examples=250, deadline=None, derandomize=True)
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        s, now = data.draw(snapshots(fleet))
        d = decide(s, fleet, now, node_duration=NODE)
        seen.update("rollback" if a.rollback else "forward" for a in of(d, Dispatch))
        check_safe(fleet, s, now, d)

    check()
    # Not vacuous: the snapshots drawn do dispatch, forward and back.
    assert seen["forward"] >= 5 and seen["rollback"] >= 2, seen


def check_safe(fleet: Fleet, s: TrainSnapshot, now: datetime, d: Decision) -> None:
    passed = {p.index for p in s.stages if p.status is StageStatus.passed}
    passed |= {a.index for a in of(d, SetStage) if a.status is StageStatus.passed}
    failed = {p.index for p in s.stages if p.status is StageStatus.failed} | {
        a.index for a in of(d, SetStage) if a.status is StageStatus.failed}
    disp = of(d, Dispatch)
    if s.status in (TrainStatus.succeeded, TrainStatus.aborted):
        assert d.actions == ()
    if disp and not disp[0].rollback:
        assert s.status is TrainStatus.running and not s.pause_requested and not s.abort_requested
        assert not failed, "a failed stage dispatches nothing more"
        assert len({a.stage for a in disp}) == 1
        stage = disp[0].stage
        assert set(range(stage)) <= passed, "a later stage before an earlier one passed"
    if disp and disp[0].rollback:
        assert s.status is TrainStatus.rolling_back or (s.abort_requested and s.rollback_requested)
    in_flight = [x for x, p in s.stores.items() if p.state is StoreState.dispatched]
    sent: list[str] = []
    for a in disp:
        for sid in a.stores:
            store, p = fleet.stores[sid], s.stores[sid]
            assert p.stage == a.stage and store.region == a.region
            assert p.state is StoreState.pending or a.rollback
            assert sid not in s.locks
            occ = window_at(store, now)
            assert occ is not None and now + NODE * len(store.nodes) <= occ[1], f"{sid} outside its window"
            assert freeze_at(fleet.freezes, store, now) is None
            sent.append(sid)
    assert len(sent) == len(set(sent))
    # Caps, per stage, counted over the stage's stores in flight after the dispatch.
    for stage in {a.stage for a in disp}:
        pol = s.spec.stages[stage].policy
        before = [fleet.stores[x] for x in in_flight if s.stores[x].stage == stage]
        after = before + [fleet.stores[x] for x in sent if s.stores[x].stage == stage]
        if pol.max_concurrent is not None:
            assert len(after) <= max(pol.max_concurrent, len(before)), "the concurrency cap exceeded"
        for attr, cap in (("region", pol.max_per_region), ("country", pol.max_per_country)):
            if cap is not None:
                was = Counter(getattr(x, attr) for x in before)
                for k, n in Counter(getattr(x, attr) for x in after).items():
                    assert n <= max(cap, was[k]), f"the {attr} cap exceeded"
