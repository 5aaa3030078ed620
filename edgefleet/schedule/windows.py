"""Maintenance windows and change freezes as absolute instants: when may a store be touched?

Pure: no clock, no I/O. Every instant is an aware ``datetime`` passed in by the caller; results are
aware UTC datetimes. The rollout planner and the fleet simulator's safety oracle both use these
rules, so "inside the window" means the same thing to the one that plans and the one that checks.

Local wall times become instants with ``zoneinfo`` and two rules for the daylight-saving edges:

* a wall time that does not exist (the spring-forward gap) resolves to the first valid instant
  after it, which is the transition itself: a window "02:30" on that night starts at 03:00 local;
* a wall time that exists twice (the fall-back fold) resolves to its first occurrence.

A window occurrence is half-open ``[start, end)``. Occurrences that overlap or touch (Friday
22:00-24:00 and Saturday 00:00-04:00) are merged into one, because a reimage may run across the
join. Merging looks back at most two local days before the instant asked about and a merged
occurrence is cut at ``MAX_SPAN``, so a store whose windows cover the whole week still gets finite
occurrences.

Freezes: a ``date`` is a whole local day (``end`` inclusive), a naive ``datetime`` is local wall
time, an aware ``datetime`` is an absolute instant (``[start, end)``). A freeze applies to a store
when the store is in one of its ``countries`` (if any are given) and in one of its ``groups`` (if
any are given; any name from ``Store.all_groups``); a freeze with neither applies fleet-wide.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo

from edgefleet.inventory.model import Freeze, MaintenanceWindow, Store, Weekday

__all__ = [
    "MAX_SPAN",
    "applicable_freezes",
    "freeze_applies",
    "freeze_at",
    "freeze_interval",
    "in_window",
    "iter_windows",
    "next_allowed_start",
    "next_window",
    "resolve_local",
    "window_at",
]

Interval = tuple[datetime, datetime]

MAX_SPAN = timedelta(days=7)
"""A merged window occurrence is cut at this length (stores open around the clock)."""

_WEEKDAY = {d: i for i, d in enumerate(Weekday)}  # Monday is 0, like date.weekday()
_LOOKBACK_DAYS = 2  # a raw occurrence lasts at most 24 h (+1 h on a fall-back night)
_DEFAULT_HORIZON = timedelta(days=400)


def _zone(store: Store) -> ZoneInfo:
    return ZoneInfo(store.timezone)  # ZoneInfo caches instances per key


def _aware(instant: datetime, what: str) -> datetime:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{what} must be an aware datetime (with a UTC offset), got naive {instant.isoformat()}")
    return instant.astimezone(UTC)


def resolve_local(wall: datetime, tz: tzinfo) -> datetime:
    """The UTC instant of a naive local wall time in ``tz``: the first occurrence when the wall time
    is ambiguous, the first valid instant after it when it falls in a gap."""
    if wall.tzinfo is not None:
        raise ValueError(f"resolve_local takes a naive wall time, got {wall.isoformat()}")
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == wall:
        return first
    # In a gap: fold=0 reads the wall time with the offset from before the transition (an instant
    # after it), fold=1 with the offset after it (an instant before it). The transition lies
    # between; find the first instant whose wall time is not before ``wall``.
    other = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    lo, hi = min(first, other), max(first, other)
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).replace(tzinfo=None) >= wall:
            hi = mid
        else:
            lo = mid
    hi = hi.replace(microsecond=0)
    if hi.astimezone(tz).replace(tzinfo=None) < wall:  # pragma: no cover - transitions are whole seconds
        hi += timedelta(seconds=1)
    return hi


def _raw_occurrences(windows: Sequence[MaintenanceWindow], tz: tzinfo, day: date) -> list[Interval]:
    """Occurrences of ``windows`` whose local start date is ``day``, unmerged, sorted."""
    out: list[Interval] = []
    wd = day.weekday()
    for w in windows:
        if not any(_WEEKDAY[d] == wd for d in w.days):
            continue
        start = resolve_local(datetime.combine(day, w.start), tz)
        end_day = day + timedelta(days=1) if w.crosses_midnight else day
        end = resolve_local(datetime.combine(end_day, w.end), tz)
        if end > start:  # a short window wholly inside a DST gap has no occurrence that night
            out.append((start, end))
    out.sort()
    return out


def iter_windows(store: Store, after: datetime) -> Iterator[Interval]:
    """Merged window occurrences of ``store`` that end after ``after``, in time order, without end.

    The caller bounds the iteration (every store has at least one weekly window, so each week
    yields at least one occurrence, unless its only windows fall wholly inside DST gaps)."""
    after = _aware(after, "after")
    tz = _zone(store)
    day = after.astimezone(tz).date() - timedelta(days=_LOOKBACK_DAYS)
    pending: Interval | None = None
    while True:
        for s, e in _raw_occurrences(store.maintenance_windows, tz, day):
            if pending is not None and s <= pending[1] and pending[1] - pending[0] < MAX_SPAN:
                pending = (pending[0], min(max(pending[1], e), pending[0] + MAX_SPAN))
                continue
            if pending is not None:
                if pending[1] > after:
                    yield pending
                s = max(s, pending[1])  # the rest of an occurrence cut at MAX_SPAN
                if e <= s:
                    pending = None
                    continue
            pending = (s, e)
        day += timedelta(days=1)
        # Occurrences of later days start at or after local midnight of ``day``: none can join a
        # pending occurrence that ends before that.
        if pending is not None and pending[1] < resolve_local(datetime.combine(day, time(0, 0)), tz):
            if pending[1] > after:
                yield pending
            pending = None


def window_at(store: Store, instant: datetime) -> Interval | None:
    """The (merged) window occurrence of ``store`` containing ``instant``, as UTC ``(start, end)``;
    None outside every window."""
    instant = _aware(instant, "instant")
    for s, e in iter_windows(store, instant):
        return (s, e) if s <= instant < e else None
    return None  # pragma: no cover - iter_windows does not end


def in_window(store: Store, instant: datetime) -> bool:
    """Whether ``instant`` lies inside one of ``store``'s maintenance windows."""
    return window_at(store, instant) is not None


def next_window(store: Store, after: datetime) -> Interval:
    """The earliest window occurrence that contains ``after`` or starts after it (UTC)."""
    for occ in iter_windows(store, after):
        return occ
    raise AssertionError("unreachable: iter_windows does not end")  # pragma: no cover


def freeze_applies(freeze: Freeze, store: Store) -> bool:
    """Whether ``freeze`` covers ``store`` (its country and group scopes, each optional)."""
    if freeze.countries and store.country not in freeze.countries:
        return False
    return not freeze.groups or any(g in store.all_groups for g in freeze.groups)


def freeze_interval(freeze: Freeze, store: Store) -> Interval:
    """``freeze`` as UTC ``[start, end)`` for ``store`` (dates and naive times read in its zone)."""
    tz = _zone(store)
    s, e = freeze.start, freeze.end
    if isinstance(s, datetime) and isinstance(e, datetime):
        if s.tzinfo is not None:
            return s.astimezone(UTC), e.astimezone(UTC)
        return resolve_local(s, tz), resolve_local(e, tz)
    assert not isinstance(s, datetime) and not isinstance(e, datetime)
    return (resolve_local(datetime.combine(s, time(0, 0)), tz),
            resolve_local(datetime.combine(e + timedelta(days=1), time(0, 0)), tz))


def applicable_freezes(freezes: Sequence[Freeze], store: Store) -> list[tuple[Freeze, Interval]]:
    """The freezes covering ``store`` with their UTC intervals, in the given order."""
    return [(f, freeze_interval(f, store)) for f in freezes if freeze_applies(f, store)]


def freeze_at(fleet_freezes: Sequence[Freeze], store: Store, instant: datetime) -> Freeze | None:
    """The first freeze (in fleet order) covering ``store`` at ``instant``; None when not frozen."""
    instant = _aware(instant, "instant")
    for f, (s, e) in applicable_freezes(fleet_freezes, store):
        if s <= instant < e:
            return f
    return None


def next_allowed_start(store: Store, freezes: Sequence[Freeze], after: datetime, min_duration: timedelta,
                       *, horizon: timedelta = _DEFAULT_HORIZON) -> datetime | None:
    """The earliest instant ``t >= after`` such that ``[t, t + min_duration)`` lies inside one
    window occurrence of ``store`` and overlaps no freeze covering it. None when there is no such
    instant before ``after + horizon`` (a freeze for the whole horizon, a duration longer than
    every window)."""
    after = _aware(after, "after")
    if min_duration < timedelta(0):
        raise ValueError(f"min_duration must not be negative, got {min_duration}")
    limit = after + horizon
    blocks = sorted(iv for _, iv in applicable_freezes(freezes, store))
    for s, e in iter_windows(store, after):
        if s >= limit:
            return None
        t = max(s, after)
        while t < e and t + min_duration <= e:
            hit = [fe for fs, fe in blocks if fs < t + min_duration and t < fe] if min_duration else \
                [fe for fs, fe in blocks if fs <= t < fe]
            if not hit:
                return t if t < limit else None
            t = max(hit)
    return None  # pragma: no cover - iter_windows does not end
