"""Window groups, group starts and the run-time freeze decision: the sample fleet, DST transition
days in Copenhagen and New York, and hypothesis properties over generated fleets."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.errors import InputError
from edgefleet.inventory.load import load_fleet
from edgefleet.inventory.model import Fleet
from edgefleet.schedule.groups import (
    FreezeVerdict,
    freeze_decision,
    group_stores,
    next_group_start,
    plan_schedule,
    upcoming_starts,
)
from edgefleet.schedule.windows import freeze_at, in_window, window_at
from tests.helpers import SAMPLE_INVENTORY

CPH = ZoneInfo("Europe/Copenhagen")
NYC = ZoneInfo("America/New_York")
ZONES = ["Europe/Copenhagen", "America/New_York", "Asia/Dubai", "Asia/Ho_Chi_Minh", "America/Toronto",
         "Australia/Lord_Howe"]  # Lord Howe shifts by 30 minutes


def store_doc(sid: str, tz: str, windows: list[dict[str, Any]], *, country: str = "DK", region: str = "nordics",
              groups: list[str] | None = None) -> dict[str, Any]:
    return {"id": sid, "name": sid, "country": country, "region": region, "timezone": tz,
            "groups": groups or [], "maintenance_windows": windows,
            "network": {"subnet": "10.16.0.0/24", "gateway": "10.16.0.1", "dns": ["10.0.0.53"]},
            "cluster": {"name": sid},
            "nodes": [{"name": f"{sid}-n1", "role": "controlplane", "mac": "02:ef:00:00:00:01",
                       "ip": "10.16.0.10"}]}


def make_fleet(stores: list[dict[str, Any]], freezes: list[dict[str, Any]] | None = None) -> Fleet:
    return Fleet.model_validate({"name": "t", "stores": {s["id"]: s for s in stores}, "freezes": freezes or []})


def local(tz: ZoneInfo, y: int, mo: int, d: int, h: int, mi: int = 0, fold: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=tz, fold=fold).astimezone(UTC)


DAILY = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


# --- grouping ---------------------------------------------------------------------------------------

def test_sample_fleet_groups_partition_and_start_inside_windows() -> None:
    fleet = load_fleet(SAMPLE_INVENTORY)
    groups = group_stores(fleet)
    members = [s for g in groups for s in g.stores]
    assert sorted(members) == sorted(fleet.stores)  # every store exactly once
    assert len({g.id for g in groups}) == len(groups)
    assert len(groups) >= len({s.timezone for s in fleet.stores.values()})
    # A Tuesday before Black Friday: every group starts inside every member's window, unfrozen.
    now = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)
    for gs in plan_schedule(fleet, now):
        assert gs.start is not None and gs.start >= now
        for sid in gs.group.stores:
            assert in_window(fleet.stores[sid], gs.start)
            assert freeze_at(fleet.freezes, fleet.stores[sid], gs.start) is None
    # Same inventory, same ids (the CLI's --group relies on it).
    assert [g.id for g in group_stores(load_fleet(SAMPLE_INVENTORY))] == [g.id for g in groups]


def test_window_order_and_repeated_days_do_not_split_groups() -> None:
    a = store_doc("a", "Europe/Copenhagen", [{"days": ["mon", "tue"], "start": "22:00", "end": "04:00"},
                                             {"days": ["sat"], "start": "01:00", "end": "05:00"}])
    b = store_doc("b", "Europe/Copenhagen", [{"days": ["sat"], "start": "01:00", "end": "05:00"},
                                             {"days": ["tue", "mon", "mon"], "start": "22:00", "end": "04:00"}])
    c = store_doc("c", "Europe/Oslo", [{"days": ["sat"], "start": "01:00", "end": "05:00"}])
    groups = group_stores(make_fleet([a, b, c]))
    assert [g.stores for g in groups] == [("a", "b"), ("c",)]
    assert groups[0].id.startswith("europe-copenhagen-") and groups[1].id.startswith("europe-oslo-")
    assert groups[0].windows == ("mon,tue 22:00-04:00", "sat 01:00-05:00")


def test_scoped_freeze_splits_a_group_and_holds_back_only_its_stores() -> None:
    w = [{"days": DAILY, "start": "01:00", "end": "05:00"}]
    fleet = make_fleet([store_doc("dk1", "Europe/Copenhagen", w), store_doc("dk2", "Europe/Copenhagen", w,
                                                                            groups=["pilot"])],
                       [{"name": "pilot-hold", "start": date(2026, 6, 1), "end": date(2026, 6, 3),
                         "groups": ["pilot"], "reason": "pilot review"}])
    starts = {gs.group.stores: gs for gs in plan_schedule(fleet, local(CPH, 2026, 6, 1, 0, 0))}
    assert set(starts) == {("dk1",), ("dk2",)}
    assert starts[("dk2",)].group.freezes == ("pilot-hold",)
    assert starts[("dk1",)].start == local(CPH, 2026, 6, 1, 1, 0)
    assert starts[("dk2",)].start == local(CPH, 2026, 6, 4, 1, 0)  # the day after the inclusive end


def test_by_region_splits_groups_and_unknown_inputs_are_clear() -> None:
    w = [{"days": DAILY, "start": "01:00", "end": "05:00"}]
    fleet = make_fleet([store_doc("a", "Europe/Copenhagen", w, region="north"),
                        store_doc("b", "Europe/Copenhagen", w, region="south")])
    assert len(group_stores(fleet)) == 1
    split = group_stores(fleet, by_region=True)
    assert [(g.region, g.stores) for g in split] == [("north", ("a",)), ("south", ("b",))]
    with pytest.raises(InputError, match=r"stores not in inventory.*nope"):
        group_stores(fleet, ["a", "nope"])
    with pytest.raises(InputError, match=r"unknown window group\(s\): zz.*europe-copenhagen-"):
        plan_schedule(fleet, local(CPH, 2026, 6, 1, 0), group_ids=["zz"])
    only = plan_schedule(fleet, local(CPH, 2026, 6, 1, 0), group_ids=[split[1].id], by_region=True)
    assert [g.group.stores for g in only] == [("b",)]


def test_frozen_for_the_whole_horizon_is_unschedulable_with_a_reason() -> None:
    fleet = make_fleet([store_doc("a", "Europe/Copenhagen", [{"days": DAILY, "start": "01:00", "end": "05:00"}])],
                       [{"name": "forever", "start": date(2026, 1, 1), "end": date(2027, 12, 31)}])
    (gs,) = plan_schedule(fleet, local(CPH, 2026, 6, 1, 0), horizon=timedelta(days=30))
    assert gs.start is None and gs.window_end is None
    assert "free of freezes within 30 days" in gs.reason and "forever" in gs.reason
    assert gs.to_json()["start_utc"] is None


def test_min_duration_needs_room_in_the_window() -> None:
    fleet = make_fleet([store_doc("a", "Europe/Copenhagen", [{"days": DAILY, "start": "01:00", "end": "03:00"}])])
    after = local(CPH, 2026, 6, 1, 2, 30)
    assert next_group_start(fleet, group_stores(fleet)[0], after).start == after
    gs = next_group_start(fleet, group_stores(fleet)[0], after, min_duration=timedelta(hours=1))
    assert gs.start == local(CPH, 2026, 6, 2, 1, 0)
    assert gs.window_end == local(CPH, 2026, 6, 2, 3, 0)


# --- DST transition days: exactly one start per local night --------------------------------------

@pytest.mark.parametrize(("tz", "first_day", "start", "end", "expected"), [
    # Copenhagen spring forward 2026-03-29 02:00 -> 03:00: the 02:30 window starts at 03:00 that night.
    (CPH, date(2026, 3, 27), "02:30", "04:00",
     [(3, 27, 2, 30, 0), (3, 28, 2, 30, 0), (3, 29, 3, 0, 0), (3, 30, 2, 30, 0), (3, 31, 2, 30, 0)]),
    # Copenhagen fall back 2026-10-25 03:00 -> 02:00: 02:30 happens twice; one start, the first.
    (CPH, date(2026, 10, 23), "02:30", "04:00",
     [(10, 23, 2, 30, 0), (10, 24, 2, 30, 0), (10, 25, 2, 30, 0), (10, 26, 2, 30, 0), (10, 27, 2, 30, 0)]),
    # New York spring forward 2026-03-08 02:00 -> 03:00.
    (NYC, date(2026, 3, 6), "02:15", "05:00",
     [(3, 6, 2, 15, 0), (3, 7, 2, 15, 0), (3, 8, 3, 0, 0), (3, 9, 2, 15, 0), (3, 10, 2, 15, 0)]),
    # New York fall back 2026-11-01 02:00 -> 01:00: 01:30 happens twice.
    (NYC, date(2026, 10, 30), "01:30", "04:00",
     [(10, 30, 1, 30, 0), (10, 31, 1, 30, 0), (11, 1, 1, 30, 0), (11, 2, 1, 30, 0), (11, 3, 1, 30, 0)]),
    # A window that crosses midnight, across the New York fall-back night.
    (NYC, date(2026, 10, 31), "23:00", "02:30",
     [(10, 30, 23, 0, 0), (10, 31, 23, 0, 0), (11, 1, 23, 0, 0), (11, 2, 23, 0, 0), (11, 3, 23, 0, 0)]),
])
def test_one_start_per_night_across_dst(tz: ZoneInfo, first_day: date, start: str, end: str,
                                        expected: list[tuple[int, int, int, int, int]]) -> None:
    fleet = make_fleet([store_doc("s", tz.key, [{"days": DAILY, "start": start, "end": end}])])
    (group,) = group_stores(fleet)
    day_before = first_day - timedelta(days=1)  # from noon the day before: no window is open then
    after = datetime(day_before.year, day_before.month, day_before.day, 12, 0, tzinfo=tz)
    starts = upcoming_starts(fleet, group, after, 5)
    assert starts == [local(tz, 2026, mo, d, h, mi, fold) for mo, d, h, mi, fold in expected]
    assert len({s.astimezone(tz).date() for s in starts}) == 5  # no night twice, none missed
    for s in starts:
        assert in_window(fleet.stores["s"], s)


def test_fall_back_fold_is_not_a_second_start_when_scheduling_from_inside_it() -> None:
    # Scheduling at 02:45 (first pass, CEST) on the fall-back night: the window 02:30-04:00 is open;
    # the group starts now, and the next start is the following night, not the repeated 02:30 CET.
    fleet = make_fleet([store_doc("s", "Europe/Copenhagen", [{"days": DAILY, "start": "02:30", "end": "04:00"}])])
    (group,) = group_stores(fleet)
    now = local(CPH, 2026, 10, 25, 2, 45, fold=0)
    first, second = upcoming_starts(fleet, group, now, 2)
    assert first == now
    assert second == local(CPH, 2026, 10, 26, 2, 30)


# --- the run-time freeze decision --------------------------------------------------------------------

def test_freeze_decision_go_wait_skip() -> None:
    w = [{"days": DAILY, "start": "01:00", "end": "05:00"}]
    fleet = make_fleet([store_doc("a", "Europe/Copenhagen", w), store_doc("b", "Europe/Copenhagen", w, country="SE")],
                       [{"name": "audit", "start": datetime(2026, 6, 2, 1, 0), "end": datetime(2026, 6, 2, 2, 0),
                         "countries": ["SE"], "reason": "stock audit"},
                        {"name": "peak", "start": date(2026, 6, 10), "end": date(2026, 6, 12), "reason": "peak sales"}])
    d = freeze_decision(fleet, ["a", "b"], local(CPH, 2026, 6, 1, 1, 30))
    assert d.verdict is FreezeVerdict.go and d.until is None and "no freeze" in d.reason
    # b is frozen for the first hour of the window: wait for it, inside the same window.
    d = freeze_decision(fleet, ["a", "b"], local(CPH, 2026, 6, 2, 1, 10))
    assert d.verdict is FreezeVerdict.wait and d.until == local(CPH, 2026, 6, 2, 2, 0)
    assert "store b is in freeze 'audit' (stock audit)" in d.reason
    # a run of 3 h would not end before the window closes at 05:00 after waiting: wait for tomorrow
    # exceeds max_wait (12 h) -> skip.
    d = freeze_decision(fleet, ["a", "b"], local(CPH, 2026, 6, 2, 1, 10), min_duration=timedelta(hours=3, minutes=30))
    assert d.verdict is FreezeVerdict.skip and "reschedule" in d.reason
    # Inside a fleet-wide date freeze: skip, naming the freeze and its end.
    d = freeze_decision(fleet, ["a"], local(CPH, 2026, 6, 11, 2, 0))
    assert d.verdict is FreezeVerdict.skip and "'peak' (peak sales) until 2026-06-13T00:00:00+02:00" in d.reason
    # Started early (before the window opens): wait until it opens.
    d = freeze_decision(fleet, ["a"], local(CPH, 2026, 6, 1, 0, 20))
    assert d.verdict is FreezeVerdict.wait and d.until == local(CPH, 2026, 6, 1, 1, 0)
    assert "outside its maintenance window" in d.reason
    # Started late (window closed): the next window is 20 h away, more than max_wait -> skip.
    d = freeze_decision(fleet, ["a"], local(CPH, 2026, 6, 1, 5, 0))
    assert d.verdict is FreezeVerdict.skip
    assert freeze_decision(fleet, ["a"], local(CPH, 2026, 6, 1, 5, 0), max_wait=timedelta(days=1)).until == \
        local(CPH, 2026, 6, 2, 1, 0)
    assert d.to_json()["verdict"] == "skip"
    with pytest.raises(InputError, match="no store 'zz'"):
        freeze_decision(fleet, ["zz"], local(CPH, 2026, 6, 1, 1, 30))
    with pytest.raises(InputError, match="at least one store"):
        freeze_decision(fleet, [], local(CPH, 2026, 6, 1, 1, 30))


def test_freeze_decision_with_windows_that_never_overlap_skips() -> None:
    fleet = make_fleet([store_doc("a", "Europe/Copenhagen", [{"days": DAILY, "start": "01:00", "end": "02:00"}]),
                        store_doc("b", "Europe/Copenhagen", [{"days": DAILY, "start": "03:00", "end": "04:00"}])])
    d = freeze_decision(fleet, ["a", "b"], local(CPH, 2026, 6, 1, 1, 30), max_wait=timedelta(days=3))
    assert d.verdict is FreezeVerdict.skip and "store b is outside its maintenance window" in d.reason


# --- properties ------------------------------------------------------------------------------------

windows_st = st.lists(
    st.fixed_dictionaries({
        "days": st.lists(st.sampled_from(DAILY), min_size=1, max_size=7, unique=True),
        "start": st.sampled_from(["00:30", "01:30", "02:00", "02:30", "03:00", "22:00", "23:30"]),
        "end": st.sampled_from(["01:00", "02:45", "03:30", "05:00", "23:00"]),
    }).filter(lambda w: w["start"] != w["end"]),
    min_size=1, max_size=2)

freeze_st = st.builds(
    lambda d0, span, countries, name: {"name": name, "start": d0, "end": d0 + timedelta(days=span),
                                       "countries": countries},
    st.dates(min_value=date(2026, 3, 1), max_value=date(2026, 11, 30)), st.integers(0, 4),
    st.sampled_from([[], ["DK"], ["US"]]), st.sampled_from(["f1", "f2", "f3"]))


@st.composite
def fleets(draw: st.DrawFn) -> Fleet:
    n = draw(st.integers(1, 8))
    shared = draw(windows_st)
    docs = []
    for i in range(n):
        tz = draw(st.sampled_from(ZONES))
        w = shared if draw(st.booleans()) else draw(windows_st)
        docs.append(store_doc(f"s{i}", tz, w, country=draw(st.sampled_from(["DK", "US"])),
                              region=draw(st.sampled_from(["r1", "r2"]))))
    return make_fleet(docs, draw(st.lists(freeze_st, max_size=3)))


# Around both 2026 transition seasons of both zones, and ordinary days.
after_st = st.datetimes(min_value=datetime(2026, 3, 5), max_value=datetime(2026, 11, 5),
                        timezones=st.just(UTC))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleet=fleets(), after=after_st, by_region=st.booleans(), dur=st.sampled_from([0, 20, 90]))
def test_groups_partition_and_every_start_fits_every_member(fleet: Fleet, after: datetime, by_region: bool,
                                                            dur: int) -> None:
    min_duration = timedelta(minutes=dur)
    groups = group_stores(fleet, by_region=by_region)
    ids = [s for g in groups for s in g.stores]
    assert sorted(ids) == sorted(fleet.stores) and len(ids) == len(set(ids))
    for gs in plan_schedule(fleet, after, by_region=by_region, min_duration=min_duration,
                            horizon=timedelta(days=30)):
        if gs.start is None:
            continue
        assert gs.start >= after and gs.window_end is not None
        assert gs.start + min_duration <= gs.window_end
        for sid in gs.group.stores:
            store = fleet.stores[sid]
            occ = window_at(store, gs.start)
            assert occ is not None and occ[1] == gs.window_end, (sid, gs.start)
            assert freeze_at(fleet.freezes, store, gs.start) is None
            if by_region:
                assert store.region == gs.group.region
        # The run-time check agrees with the plan at the planned instant.
        assert freeze_decision(fleet, gs.group.stores, gs.start, min_duration=min_duration).verdict is FreezeVerdict.go


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleet=fleets(), after=after_st)
def test_upcoming_starts_one_per_occurrence(fleet: Fleet, after: datetime) -> None:
    for group in group_stores(fleet):
        starts = upcoming_starts(fleet, group, after, 6, horizon=timedelta(days=20))
        assert starts == sorted(set(starts))  # strictly increasing: no duplicate
        store = fleet.stores[group.stores[0]]
        occs = [window_at(store, s) for s in starts]
        assert all(o is not None for o in occs)
        assert len({o for o in occs}) == len(starts)  # never two starts in one occurrence
        # None missed: between two consecutive starts, every occurrence is wholly frozen.
        for prev, nxt in itertools.pairwise(occs):
            assert prev is not None and nxt is not None
            mid = next_group_start(fleet, group, prev[1])
            assert mid.start == nxt[0] or (mid.start is not None and window_at(store, mid.start) == nxt)


@settings(max_examples=80, deadline=None)
@given(fleet=fleets(), now=after_st, wait_h=st.sampled_from([0, 3, 30]))
def test_freeze_decision_wait_lands_on_an_allowed_instant(fleet: Fleet, now: datetime, wait_h: int) -> None:
    stores = sorted(fleet.stores)
    d = freeze_decision(fleet, stores, now, max_wait=timedelta(hours=wait_h))
    if d.verdict is FreezeVerdict.go:
        assert d.until is None
        assert all(in_window(fleet.stores[s], now) and freeze_at(fleet.freezes, fleet.stores[s], now) is None
                   for s in stores)
    elif d.verdict is FreezeVerdict.wait:
        assert d.until is not None and now < d.until <= now + timedelta(hours=wait_h)
        assert freeze_decision(fleet, stores, d.until).verdict is FreezeVerdict.go
    else:
        assert d.until is None and "reschedule" in d.reason
