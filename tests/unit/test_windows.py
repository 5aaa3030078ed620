"""Maintenance windows and freezes as instants: DST edges, midnight crossings, freezes, properties."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.inventory.model import Freeze, MaintenanceWindow, Store, Weekday
from edgefleet.schedule import (
    freeze_at,
    in_window,
    next_allowed_start,
    next_window,
    resolve_local,
    window_at,
)

CPH = ZoneInfo("Europe/Copenhagen")
NYC = ZoneInfo("America/New_York")
DAYS = list(Weekday)


def make_store(tz: str, windows: list[dict[str, Any]], *, country: str = "DK", groups: list[str] | None = None,
               ring: str = "ring2") -> Store:
    return Store.model_validate({
        "id": "s1", "name": "Store 1", "country": country, "region": "nordics", "timezone": tz, "ring": ring,
        "groups": groups or [], "maintenance_windows": windows,
        "network": {"subnet": "10.16.0.0/24", "gateway": "10.16.0.1", "dns": ["10.0.0.53"]},
        "cluster": {"name": "s1"},
        "nodes": [{"name": "s1-n1", "role": "controlplane", "mac": "02:ef:00:00:00:01", "ip": "10.16.0.10"}],
    })


def local(tz: ZoneInfo, y: int, mo: int, d: int, h: int, mi: int = 0, fold: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=tz, fold=fold).astimezone(UTC)


# --- resolve_local ---------------------------------------------------------------------------------

def test_resolve_plain_gap_and_fold() -> None:
    assert resolve_local(datetime(2026, 6, 1, 12, 0), CPH) == datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
    # Spring forward in Copenhagen, 2026-03-29 02:00 -> 03:00 (01:00 UTC): 02:30 does not exist.
    assert resolve_local(datetime(2026, 3, 29, 2, 30), CPH) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert resolve_local(datetime(2026, 3, 29, 2, 0), CPH) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    # Fall back, 2026-10-25 03:00 -> 02:00: 02:30 happens twice; the first is 00:30 UTC.
    assert resolve_local(datetime(2026, 10, 25, 2, 30), CPH) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    # New York: 2026-03-08 02:00 -> 03:00 (07:00 UTC), 2026-11-01 02:00 -> 01:00 (01:30 twice).
    assert resolve_local(datetime(2026, 3, 8, 2, 15), NYC) == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)
    assert resolve_local(datetime(2026, 11, 1, 1, 30), NYC) == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)


def test_naive_instant_is_refused() -> None:
    s = make_store("Europe/Copenhagen", [{"days": ["mon"], "start": "22:00", "end": "04:00"}])
    with pytest.raises(ValueError, match="aware"):
        in_window(s, datetime(2026, 6, 1, 23, 0))


# --- windows ---------------------------------------------------------------------------------------

def test_window_crossing_midnight() -> None:
    s = make_store("Europe/Copenhagen", [{"days": ["fri"], "start": "22:00", "end": "04:00"}])
    # Friday 2026-06-05 22:00 CEST = 20:00 UTC to Saturday 04:00 CEST = 02:00 UTC.
    occ = (datetime(2026, 6, 5, 20, 0, tzinfo=UTC), datetime(2026, 6, 6, 2, 0, tzinfo=UTC))
    assert window_at(s, local(CPH, 2026, 6, 6, 1)) == occ
    assert window_at(s, local(CPH, 2026, 6, 5, 22)) == occ
    assert window_at(s, local(CPH, 2026, 6, 6, 4)) is None  # end is exclusive
    assert window_at(s, local(CPH, 2026, 6, 5, 21, 59)) is None
    assert not in_window(s, local(CPH, 2026, 6, 6, 23))  # Saturday night: no window
    assert next_window(s, local(CPH, 2026, 6, 6, 4)) == (occ[0] + timedelta(days=7), occ[1] + timedelta(days=7))
    assert next_window(s, local(CPH, 2026, 6, 6, 3)) == occ


def test_all_day_window_and_adjacent_windows_merge() -> None:
    s = make_store("Europe/Copenhagen", [{"days": ["sat"], "start": "00:00", "end": "00:00"},
                                          {"days": ["fri"], "start": "20:00", "end": "24:00"}])
    occ = window_at(s, local(CPH, 2026, 6, 6, 12))
    assert occ == (local(CPH, 2026, 6, 5, 20), local(CPH, 2026, 6, 7, 0))


def test_every_day_around_the_clock_is_cut_at_max_span() -> None:
    s = make_store("Europe/Copenhagen", [{"days": ["daily"], "start": "00:00", "end": "00:00"}])
    t = local(CPH, 2026, 6, 10, 12)
    occ = window_at(s, t)
    assert occ is not None and occ[0] <= t < occ[1] and occ[1] - occ[0] <= timedelta(days=7)
    assert next_allowed_start(s, [], t, timedelta(hours=3)) == t


def test_copenhagen_spring_forward_night() -> None:
    # Sunday 2026-03-29: a window 02:30-05:00 starts at 03:00 CEST (the first valid instant).
    s = make_store("Europe/Copenhagen", [{"days": ["sun"], "start": "02:30", "end": "05:00"}])
    occ = next_window(s, datetime(2026, 3, 28, 12, 0, tzinfo=UTC))
    assert occ == (datetime(2026, 3, 29, 1, 0, tzinfo=UTC), datetime(2026, 3, 29, 3, 0, tzinfo=UTC))
    assert occ[1] - occ[0] == timedelta(hours=2)
    # A window wholly inside the gap has no occurrence that night; the next is a week later.
    g = make_store("Europe/Copenhagen", [{"days": ["sun"], "start": "02:10", "end": "02:50"}])
    nxt = next_window(g, datetime(2026, 3, 28, 12, 0, tzinfo=UTC))
    assert nxt == (local(CPH, 2026, 4, 5, 2, 10), local(CPH, 2026, 4, 5, 2, 50))


def test_copenhagen_fall_back_night_crossing_midnight() -> None:
    # Saturday 22:00 CEST to Sunday 04:00 CET on 2026-10-24/25: seven real hours.
    s = make_store("Europe/Copenhagen", [{"days": ["sat"], "start": "22:00", "end": "04:00"}])
    occ = window_at(s, datetime(2026, 10, 25, 1, 30, tzinfo=UTC))  # the second 02:30 local
    assert occ == (datetime(2026, 10, 24, 20, 0, tzinfo=UTC), datetime(2026, 10, 25, 3, 0, tzinfo=UTC))
    assert occ[1] - occ[0] == timedelta(hours=7)
    # Ambiguous start: the first 02:30 (CEST, 00:30 UTC); ambiguous end 02:45: the first too.
    a = make_store("Europe/Copenhagen", [{"days": ["sun"], "start": "02:30", "end": "02:45"}])
    assert next_window(a, datetime(2026, 10, 24, 0, 0, tzinfo=UTC)) == (
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC), datetime(2026, 10, 25, 0, 45, tzinfo=UTC))
    assert not in_window(a, datetime(2026, 10, 25, 1, 35, tzinfo=UTC))  # the second 02:35


def test_new_york_transition_nights() -> None:
    s = make_store("America/New_York", [{"days": ["sat"], "start": "23:00", "end": "03:00"}])
    # Spring: Sat 2026-03-07 23:00 EST (04:00 UTC) to Sun 03:00 EDT (07:00 UTC): three real hours.
    spring = window_at(s, datetime(2026, 3, 8, 6, 30, tzinfo=UTC))
    assert spring == (datetime(2026, 3, 8, 4, 0, tzinfo=UTC), datetime(2026, 3, 8, 7, 0, tzinfo=UTC))
    # Fall: Sat 2026-10-31 23:00 EDT (03:00 UTC) to Sun 03:00 EST (08:00 UTC): five real hours.
    fall = window_at(s, datetime(2026, 11, 1, 6, 30, tzinfo=UTC))  # the second 01:30
    assert fall == (datetime(2026, 11, 1, 3, 0, tzinfo=UTC), datetime(2026, 11, 1, 8, 0, tzinfo=UTC))
    # A window 02:00-02:59 on the spring-forward day is wholly in the gap: skipped that week.
    g = make_store("America/New_York", [{"days": ["sun"], "start": "02:00", "end": "02:59"}])
    assert next_window(g, datetime(2026, 3, 7, 0, 0, tzinfo=UTC))[0] == local(NYC, 2026, 3, 15, 2)


# --- freezes ---------------------------------------------------------------------------------------

def test_date_freeze_is_whole_local_days_inclusive() -> None:
    s = make_store("America/New_York", [{"days": ["daily"], "start": "22:00", "end": "05:00"}], country="US")
    f = Freeze(name="bf", start=date(2026, 11, 23), end=date(2026, 11, 30))
    assert freeze_at([f], s, local(NYC, 2026, 11, 23, 0)) == f
    assert freeze_at([f], s, local(NYC, 2026, 11, 30, 23, 59)) == f
    assert freeze_at([f], s, local(NYC, 2026, 12, 1, 0)) is None
    assert freeze_at([f], s, local(NYC, 2026, 11, 22, 23, 59)) is None
    # The same UTC instant is frozen in Copenhagen (already Monday there) but not in New York.
    cph = make_store("Europe/Copenhagen", [{"days": ["daily"], "start": "22:00", "end": "05:00"}])
    t = datetime(2026, 11, 23, 0, 30, tzinfo=UTC)
    assert freeze_at([f], cph, t) == f and freeze_at([f], s, t) is None


def test_freeze_naive_local_and_aware_absolute() -> None:
    s = make_store("Europe/Copenhagen", [{"days": ["daily"], "start": "22:00", "end": "05:00"}])
    naive = Freeze(name="n", start=datetime(2026, 6, 1, 22, 0), end=datetime(2026, 6, 2, 2, 0))
    aware = Freeze(name="a", start=datetime(2026, 6, 1, 22, 0, tzinfo=UTC), end=datetime(2026, 6, 2, 2, 0, tzinfo=UTC))
    assert freeze_at([naive], s, local(CPH, 2026, 6, 1, 22, 30)) == naive
    assert freeze_at([aware], s, local(CPH, 2026, 6, 1, 22, 30)) is None  # 20:30 UTC
    assert freeze_at([aware], s, datetime(2026, 6, 1, 22, 30, tzinfo=UTC)) == aware
    assert freeze_at([aware], s, datetime(2026, 6, 2, 2, 0, tzinfo=UTC)) is None  # end exclusive


def test_freeze_scope_by_country_and_group() -> None:
    dk = make_store("Europe/Copenhagen", [{"days": ["daily"], "start": "22:00", "end": "05:00"}],
                    groups=["pilot"], ring="canary")
    t = local(CPH, 2026, 6, 1, 23)
    day = {"start": date(2026, 6, 1), "end": date(2026, 6, 1)}
    assert freeze_at([Freeze(name="x", countries=["SE"], **day)], dk, t) is None
    assert freeze_at([Freeze(name="x", countries=["DK"], **day)], dk, t) is not None
    assert freeze_at([Freeze(name="x", groups=["pilot"], **day)], dk, t) is not None
    assert freeze_at([Freeze(name="x", groups=["ring_canary"], **day)], dk, t) is not None
    assert freeze_at([Freeze(name="x", groups=["country_se"], **day)], dk, t) is None
    assert freeze_at([Freeze(name="x", countries=["DK"], groups=["other"], **day)], dk, t) is None
    first, second = Freeze(name="1", **day), Freeze(name="2", **day)
    assert freeze_at([first, second], dk, t) is first


# --- next_allowed_start ----------------------------------------------------------------------------

def test_next_allowed_start_skips_freeze_and_short_windows() -> None:
    s = make_store("Europe/Copenhagen", [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "22:00",
                                           "end": "02:00"}, {"days": ["sat"], "start": "20:00", "end": "21:00"}])
    after = local(CPH, 2026, 11, 20, 12)  # Friday
    f = Freeze(name="bf", start=date(2026, 11, 23), end=date(2026, 11, 30))
    # Without the freeze: Friday 22:00. With it: Friday 22:00 too, but a 3 h job would run into Saturday
    # 00:00..01:00 which is fine; a 5 h job fits no window at all.
    assert next_allowed_start(s, [], after, timedelta(hours=3)) == local(CPH, 2026, 11, 20, 22)
    assert next_allowed_start(s, [], after, timedelta(hours=5)) is None
    # 2 h starting Saturday 20:00 does not fit (1 h window); a week-long freeze from Monday pushes
    # a Sunday-after request to the first window after it: Monday 2026-11-30 is frozen (inclusive),
    # so Tuesday 2026-12-01 00:00 local ... the Monday-night window 22:00-02:00 starts frozen, and the
    # freeze ends at Tuesday 00:00 local: the job may start then and run to 02:00.
    assert next_allowed_start(s, [f], local(CPH, 2026, 11, 21, 21), timedelta(hours=2)) == \
        local(CPH, 2026, 12, 1, 0)
    assert next_allowed_start(s, [f], local(CPH, 2026, 11, 21, 21), timedelta(hours=3)) == \
        local(CPH, 2026, 12, 1, 22)


def test_next_allowed_start_inside_a_window_is_now() -> None:
    s = make_store("Europe/Copenhagen", [{"days": ["daily"], "start": "22:00", "end": "05:00"}])
    t = local(CPH, 2026, 6, 2, 1)
    assert next_allowed_start(s, [], t, timedelta(hours=1)) == t
    assert next_allowed_start(s, [], t, timedelta(hours=5)) == local(CPH, 2026, 6, 2, 22)


def test_next_allowed_start_none_under_endless_freeze() -> None:
    s = make_store("Europe/Copenhagen", [{"days": ["daily"], "start": "22:00", "end": "05:00"}])
    f = Freeze(name="forever", start=date(2026, 1, 1), end=date(2030, 1, 1))
    assert next_allowed_start(s, [f], local(CPH, 2026, 6, 2, 1), timedelta(minutes=30)) is None


# --- properties ------------------------------------------------------------------------------------

ZONES = ["Europe/Copenhagen", "America/New_York", "Europe/London", "Asia/Tbilisi", "America/Halifax",
         "Australia/Lord_Howe", "Asia/Kolkata", "UTC"]
hhmm = st.builds(time, st.integers(0, 23), st.sampled_from([0, 15, 30, 45]))


@st.composite
def windows(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for _ in range(draw(st.integers(1, 3))):
        days = draw(st.lists(st.sampled_from(DAYS), min_size=1, max_size=7, unique=True))
        start, end = draw(hhmm), draw(hhmm)
        if start == end:
            end = time(0, 0) if start == time(0, 0) else time((start.hour + 1) % 24, start.minute)
        out.append({"days": [d.value for d in days], "start": start, "end": end})
    return out


instants = st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2028, 12, 31),
                        timezones=st.just(UTC))


def wall_clock_in_window(ws: list[MaintenanceWindow], tz: ZoneInfo, t: datetime) -> bool:
    """Brute force on the local wall clock (valid away from fold=1 instants)."""
    wall = t.astimezone(tz)
    wd, tod = wall.weekday(), wall.time().replace(tzinfo=None)
    for w in ws:
        idx = {list(Weekday).index(d) for d in w.days}
        if w.crosses_midnight:
            if (wd in idx and tod >= w.start) or ((wd - 1) % 7 in idx and tod < w.end):
                return True
        elif wd in idx and w.start <= tod < w.end:
            return True
    return False


@settings(max_examples=300, deadline=None)
@given(tz=st.sampled_from(ZONES), ws=windows(), t=instants)
def test_property_membership_matches_wall_clock(tz: str, ws: list[dict[str, Any]], t: datetime) -> None:
    s = make_store(tz, ws)
    zone = ZoneInfo(tz)
    occ = window_at(s, t)
    assert (occ is not None) == in_window(s, t)
    if occ is not None:
        assert occ[0] <= t < occ[1]
        assert occ[0].tzinfo is UTC and occ[1].tzinfo is UTC
    if t.astimezone(zone).fold == 0 and (t - timedelta(hours=3)).astimezone(zone).utcoffset() == \
            (t + timedelta(hours=3)).astimezone(zone).utcoffset():
        # Away from transitions, the instant rules agree with reading the wall clock.
        assert in_window(s, t) == wall_clock_in_window(s.maintenance_windows, zone, t)


@settings(max_examples=200, deadline=None)
@given(tz=st.sampled_from(ZONES), ws=windows(), t=instants)
def test_property_next_window_is_the_earliest(tz: str, ws: list[dict[str, Any]], t: datetime) -> None:
    s = make_store(tz, ws)
    start, end = next_window(s, t)
    assert end > t and start < end
    if start <= t:
        assert window_at(s, t) == (start, end)
    else:
        # Nothing in between is inside a window (sampled every 15 minutes and just before start).
        probe = t
        while probe < start:
            assert not in_window(s, probe), (probe, start)
            probe += timedelta(minutes=15)
        assert not in_window(s, start - timedelta(seconds=1))
        assert in_window(s, start)


@settings(max_examples=150, deadline=None)
@given(tz=st.sampled_from(ZONES), ws=windows(), t=instants, minutes=st.integers(0, 600),
       fdays=st.integers(0, 20), flen=st.integers(0, 10))
def test_property_next_allowed_start_is_safe(tz: str, ws: list[dict[str, Any]], t: datetime, minutes: int,
                                             fdays: int, flen: int) -> None:
    s = make_store(tz, ws)
    d0 = t.astimezone(ZoneInfo(tz)).date() + timedelta(days=fdays)
    freezes = [Freeze(name="f", start=d0, end=d0 + timedelta(days=flen))]
    dur = timedelta(minutes=minutes)
    got = next_allowed_start(s, freezes, t, dur)
    if got is None:
        return
    assert got >= t
    occ = window_at(s, got)
    assert occ is not None and got + dur <= occ[1]
    assert freeze_at(freezes, s, got) is None
    if dur:
        assert freeze_at(freezes, s, got + dur - timedelta(seconds=1)) is None
