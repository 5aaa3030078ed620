"""Window groups: which stores can start together, when each group's next run starts, and whether a
run that has started may go ahead.

Pure: no clock, no I/O; ``now``/``after`` are aware datetimes passed in; results are UTC. The rules
for windows, freezes and daylight-saving edges are those of ``edgefleet.schedule.windows``.

A *window group* is a set of stores that share one time zone, one set of weekly maintenance windows
and one set of applicable freezes (optionally also one region, when runs go to a work pool per
region). Members of a group are interchangeable for scheduling: an instant that is inside the window
and outside every freeze for one member is so for all of them, so one flow run per group, started at
the group's next allowed instant, starts every member inside its own local window. Splitting on the
freezes as well as on (zone, windows) keeps a freeze scoped to one country or group from holding back
stores it does not cover.

Daylight saving, per window occurrence: a window whose local start falls in the spring-forward gap
starts at the transition (a "02:30" window starts at 03:00 that night: not missed); a start in the
fall-back fold is its first occurrence (not run twice). ``upcoming_starts`` yields exactly one start
per window occurrence that is not wholly frozen.

Group ids are ``<zone-slug>-<8 hex digits>`` from a hash of what defines the group, so the same
inventory gives the same ids on every machine; they change when a member's windows or applicable
freezes change.

``freeze_decision`` is the run-time check for the rollout flow: a run scheduled days ago may land in
a freeze declared since, or start late. It says go, wait until T, or skip, with a reason a person
can read in the run's record.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from edgefleet.errors import InputError
from edgefleet.inventory.model import Fleet, Freeze, MaintenanceWindow, Store, Weekday
from edgefleet.schedule.windows import (
    applicable_freezes,
    freeze_at,
    next_allowed_start,
    window_at,
)

__all__ = [
    "DEFAULT_HORIZON",
    "DEFAULT_MAX_WAIT",
    "FreezeDecision",
    "FreezeVerdict",
    "GroupStart",
    "WindowGroup",
    "freeze_decision",
    "group_stores",
    "next_group_start",
    "plan_schedule",
    "upcoming_starts",
    "window_key",
]

DEFAULT_HORIZON = timedelta(days=60)
"""How far ahead ``plan_schedule`` looks for a group's next allowed start."""

DEFAULT_MAX_WAIT = timedelta(hours=12)
"""How long ``freeze_decision`` lets a started run wait for a freeze to end or a window to open."""

_DAY_ORDER = {d: i for i, d in enumerate(Weekday)}
_EPS = timedelta(microseconds=1)


def _fmt_window(w: MaintenanceWindow) -> str:
    days = ",".join(d.value for d in sorted(set(w.days), key=_DAY_ORDER.__getitem__))
    return f"{days} {w.start:%H:%M}-{w.end:%H:%M}"


def window_key(windows: Iterable[MaintenanceWindow]) -> tuple[str, ...]:
    """A canonical form of a set of weekly windows: order and repeated days do not matter."""
    return tuple(sorted({_fmt_window(w) for w in windows}))


def _freeze_key(freezes: Sequence[tuple[Freeze, object]]) -> tuple[str, ...]:
    return tuple(sorted(f.model_dump_json() for f, _ in freezes))


@dataclass(frozen=True)
class WindowGroup:
    """Stores that share a time zone, weekly windows and applicable freezes (and a region, if asked)."""

    id: str
    timezone: str
    windows: tuple[str, ...]  # canonical, e.g. ("mon,tue,wed 22:00-05:00",)
    freezes: tuple[str, ...]  # names of the freezes covering the members
    region: str | None
    stores: tuple[str, ...]  # sorted store ids

    @property
    def label(self) -> str:
        where = f"{self.region} " if self.region else ""
        return f"{where}{self.timezone} {' + '.join(self.windows)}"

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "timezone": self.timezone, "windows": list(self.windows),
                "freezes": list(self.freezes), "region": self.region, "stores": list(self.stores)}


# (zone, canonical windows, applicable freezes as JSON, region or None)
_GroupKey = tuple[str, tuple[str, ...], tuple[str, ...], str | None]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "zone"


def group_stores(fleet: Fleet, stores: Sequence[str] | None = None, *, by_region: bool = False) -> list[WindowGroup]:
    """Partition ``stores`` (default: the whole fleet) into window groups, sorted by zone then id.

    Every store is in exactly one group. Unknown store ids raise ``InputError``."""
    ids = list(dict.fromkeys(stores)) if stores is not None else sorted(fleet.stores)
    unknown = [s for s in ids if s not in fleet.stores]
    if unknown:
        raise InputError(f"stores not in inventory {fleet.source or '<memory>'}: {', '.join(unknown)} "
                         "(see `edgefleet inventory list`)")
    buckets: dict[_GroupKey, list[Store]] = {}
    names: dict[_GroupKey, tuple[str, ...]] = {}
    for sid in ids:
        store = fleet.stores[sid]
        applicable = applicable_freezes(fleet.freezes, store)
        key: _GroupKey = (store.timezone, window_key(store.maintenance_windows), _freeze_key(applicable),
               store.region if by_region else None)
        buckets.setdefault(key, []).append(store)
        names.setdefault(key, tuple(sorted({f.name for f, _ in applicable})))
    groups: list[WindowGroup] = []
    for key, members in buckets.items():
        tz, windows, _, region = key
        digest = hashlib.sha256(repr(key).encode()).hexdigest()[:8]
        groups.append(WindowGroup(id=f"{_slug(tz)}-{digest}", timezone=tz, windows=windows, freezes=names[key],
                                  region=region,
                                  stores=tuple(sorted(s.id for s in members))))
    groups.sort(key=lambda g: (g.timezone, g.region or "", g.id))
    return groups


@dataclass(frozen=True)
class GroupStart:
    """When a group's next run may start: ``start`` (UTC) inside the window occurrence ending at
    ``window_end``; both None when there is no such instant within the horizon (``reason`` says why)."""

    group: WindowGroup
    start: datetime | None
    window_end: datetime | None
    reason: str = ""

    def local_start(self) -> datetime | None:
        return self.start.astimezone(ZoneInfo(self.group.timezone)) if self.start else None

    def to_json(self) -> dict[str, object]:
        local = self.local_start()
        return {**self.group.to_json(), "start_utc": self.start.isoformat() if self.start else None,
                "start_local": local.isoformat() if local else None,
                "window_end_utc": self.window_end.isoformat() if self.window_end else None, "reason": self.reason}


def _aware_utc(instant: datetime, what: str) -> datetime:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{what} must be an aware datetime (with a UTC offset), got {instant.isoformat()}")
    return instant.astimezone(UTC)


def next_group_start(fleet: Fleet, group: WindowGroup, after: datetime, *, min_duration: timedelta = timedelta(0),
                     horizon: timedelta = DEFAULT_HORIZON) -> GroupStart:
    """The group's earliest instant ``>= after`` inside a window occurrence with room for
    ``min_duration`` and free of every freeze covering its members."""
    after = _aware_utc(after, "after")
    rep = fleet.store(group.stores[0])  # members are interchangeable (see the module docstring)
    t = next_allowed_start(rep, fleet.freezes, after, min_duration, horizon=horizon)
    if t is None:
        frozen = f" (freezes: {', '.join(group.freezes)})" if group.freezes else ""
        return GroupStart(group, None, None,
                          f"no maintenance window with room for {min_duration} free of freezes within "
                          f"{horizon.days} days after {after.isoformat()}{frozen}")
    occ = window_at(rep, t)
    assert occ is not None, "next_allowed_start returned an instant outside every window"
    return GroupStart(group, t, occ[1])


def plan_schedule(fleet: Fleet, after: datetime, *, stores: Sequence[str] | None = None,
                  group_ids: Sequence[str] | None = None, by_region: bool = False,
                  min_duration: timedelta = timedelta(0), horizon: timedelta = DEFAULT_HORIZON) -> list[GroupStart]:
    """Each window group's next start after ``after``, for ``stores`` (default: the whole fleet),
    optionally only the groups in ``group_ids``. Sorted by start (unschedulable groups last)."""
    groups = group_stores(fleet, stores, by_region=by_region)
    if group_ids is not None:
        known = {g.id for g in groups}
        missing = [g for g in group_ids if g not in known]
        if missing:
            raise InputError(f"unknown window group(s): {', '.join(missing)}; groups of this inventory: "
                             f"{', '.join(sorted(known)) or 'none'} (see `edgefleet schedule rollout --dry-run`)")
        wanted = set(group_ids)
        groups = [g for g in groups if g.id in wanted]
    out = [next_group_start(fleet, g, after, min_duration=min_duration, horizon=horizon) for g in groups]
    far = datetime.max.replace(tzinfo=UTC)
    out.sort(key=lambda s: (s.start or far, s.group.id))
    return out


def upcoming_starts(fleet: Fleet, group: WindowGroup, after: datetime, count: int, *,
                    min_duration: timedelta = timedelta(0), horizon: timedelta = DEFAULT_HORIZON) -> list[datetime]:
    """The group's next ``count`` starts: one per window occurrence (the first allowed instant in it),
    skipping occurrences that are wholly frozen. Fewer when the horizon ends first."""
    after = _aware_utc(after, "after")
    limit = after + horizon
    out: list[datetime] = []
    while len(out) < count and after < limit:
        gs = next_group_start(fleet, group, after, min_duration=min_duration, horizon=limit - after)
        if gs.start is None or gs.window_end is None:
            break
        out.append(gs.start)
        after = gs.window_end  # the next occurrence: windows are half-open, merged when they touch
    return out


class FreezeVerdict(StrEnum):
    go = "go"
    wait = "wait"
    skip = "skip"


@dataclass(frozen=True)
class FreezeDecision:
    """What a started run does: ``go`` now, ``wait`` until ``until`` (UTC), or ``skip`` this window."""

    verdict: FreezeVerdict
    until: datetime | None
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"verdict": self.verdict.value, "until": self.until.isoformat() if self.until else None,
                "reason": self.reason}


def _blocker(fleet: Fleet, store: Store, now: datetime, min_duration: timedelta) -> str | None:
    """Why ``store`` may not start at ``now``; None when it may."""
    tz = ZoneInfo(store.timezone)
    f = freeze_at(fleet.freezes, store, now)
    if f is not None:
        end = next(iv[1] for g, iv in applicable_freezes([f], store))
        why = f" ({f.reason})" if f.reason else ""
        return f"store {store.id} is in freeze {f.name!r}{why} until {end.astimezone(tz).isoformat()}"
    occ = window_at(store, now)
    if occ is None:
        windows = " + ".join(window_key(store.maintenance_windows))
        return (f"store {store.id} is outside its maintenance window ({windows} {store.timezone}) "
                f"at {now.astimezone(tz).isoformat()}")
    if now + min_duration > occ[1]:
        return (f"store {store.id}: its window closes at {occ[1].astimezone(tz).isoformat()}, "
                f"too soon for a run of {min_duration}")
    for g, (s, _) in applicable_freezes(fleet.freezes, store):
        if now < s < now + min_duration:
            return (f"store {store.id}: freeze {g.name!r} starts at {s.astimezone(tz).isoformat()}, "
                    f"before a run of {min_duration} would end")
    return None


def freeze_decision(fleet: Fleet, stores: Sequence[str], now: datetime, *, min_duration: timedelta = timedelta(0),
                    max_wait: timedelta = DEFAULT_MAX_WAIT) -> FreezeDecision:
    """Whether a run over ``stores`` that starts at ``now`` may go ahead.

    ``go`` when every store is inside its window (with room for ``min_duration``) and in no freeze;
    ``wait`` until the earliest instant within ``max_wait`` that is so for every store at once;
    ``skip`` when there is none (the run should end and be rescheduled). The reason names the store
    and the freeze or window that blocked it."""
    now = _aware_utc(now, "now")
    ids = list(dict.fromkeys(stores))
    if not ids:
        raise InputError("freeze_decision needs at least one store")
    members = [fleet.store(s) for s in ids]
    if max_wait < timedelta(0):
        raise ValueError(f"max_wait must not be negative, got {max_wait}")
    blockers = [b for b in (_blocker(fleet, s, now, min_duration) for s in members) if b]
    if not blockers:
        return FreezeDecision(FreezeVerdict.go, None, f"all {len(members)} store(s) inside their maintenance window, "
                                                "no freeze")
    limit = now + max_wait
    t = now
    # Each round moves t to the latest "next allowed start" of the stores; it stops when all agree.
    # Stores whose windows never overlap would loop forever: the limit and the round cap stop that.
    for _ in range(64):
        starts: list[datetime] = []
        for s in members:
            nxt = next_allowed_start(s, fleet.freezes, t, min_duration, horizon=limit - t + _EPS)
            if nxt is None:
                return FreezeDecision(FreezeVerdict.skip, None,
                                      "; ".join(blockers) + f"; no common start within {max_wait} "
                                      f"(store {s.id} has none): skipped, reschedule the run")
            starts.append(nxt)
        latest = max(starts)
        if latest == t:
            return FreezeDecision(FreezeVerdict.wait, t, "; ".join(blockers) + f"; waiting until {t.isoformat()}")
        t = latest
        if t > limit:
            break
    return FreezeDecision(FreezeVerdict.skip, None, "; ".join(blockers) + f"; the stores' windows share no instant "
                                                                      f"within {max_wait}: skipped, reschedule the run")
