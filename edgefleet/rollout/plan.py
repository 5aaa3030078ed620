"""The wave planner: which stores go in which wave, and the earliest instant each may start.

Pure: the fleet, the policy, the stores' current releases and ``now`` come in; a ``RolloutPlan``
comes out. Nothing here reads a clock or a file.

Rules, in order:

1. A revoked release is refused. Stores already on the target release are skipped.
2. Waves: first the canary wave (``policy.canary``: a list of store ids, or a count taken from the
   stores in the ``canary`` ring/group), then either one wave per named inventory group
   (``policy.wave_groups``, in order; stores left over go in a last wave), or batches sized like
   Ansible's ``serial: [1, 5, "20%", "100%"]`` over the remaining stores: a percentage is of the
   remaining (non-canary) stores, at least 1; the last size repeats until every store is placed.
   Remaining stores are ordered by ring, then id, so ring1 goes before ring2.
3. Timing: a wave starts when the previous one has ended plus ``policy.wave_soak``. Inside a wave
   each store gets the earliest start ``t`` at which ``[t, t + duration)`` lies inside one of its
   maintenance-window occurrences (its own time zone), overlaps no freeze covering it, and keeps
   every concurrency cap (global, per region, per country) at or below its limit for the whole
   interval. A store's duration is ``policy.node_duration`` per node (nodes are reimaged one at a
   time). Stores with no such start before the horizon are reported as unschedulable, with the
   reason.

The caps are checked conservatively: a store may start only if the stores whose intervals overlap
its own are fewer than the cap, which can never let the running count exceed it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from edgefleet.errors import ReleaseInputError
from edgefleet.inventory.model import Fleet, Store
from edgefleet.schedule.windows import freeze_applies, next_allowed_start

Serial = int | str


@dataclass(frozen=True)
class RolloutPolicy:
    canary: Sequence[str] | int = 1
    waves: Sequence[Serial] = (1, 5, "20%", "100%")
    wave_groups: Sequence[str] = ()
    max_concurrent: int = 100
    max_per_region: int | None = None
    max_per_country: int | None = None
    node_duration: timedelta = timedelta(minutes=20)
    wave_soak: timedelta = timedelta(minutes=30)
    failure_budget: int | str = "10%"
    horizon: timedelta = timedelta(days=60)

    def __post_init__(self) -> None:
        for s in self.waves:
            _serial_size(s, 100)  # raises on a malformed entry
        if not self.waves and not self.wave_groups:
            raise ReleaseInputError("policy: give waves (serial sizes) or wave_groups")
        if self.max_concurrent < 1:
            raise ReleaseInputError("policy: max_concurrent must be at least 1")
        for name in ("max_per_region", "max_per_country"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ReleaseInputError(f"policy: {name} must be at least 1 (or unset)")
        if self.node_duration <= timedelta(0):
            raise ReleaseInputError("policy: node_duration must be positive")
        budget_allowed(self.failure_budget, 10)

    def store_duration(self, store: Store) -> timedelta:
        return self.node_duration * len(store.nodes)


def _count_or_percent(value: int | str, what: str, *, zero_percent: bool) -> int | float:
    """``value`` as a count (an int) or a percentage (a float, from ``"N%"``): the one reading of
    Ansible-like sizes (wave sizes and failure budgets). ``zero_percent``: whether ``"0%"`` is allowed."""
    if isinstance(value, bool):
        raise ReleaseInputError(f"policy: {what} {value!r} is not a count or a percentage")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.endswith("%"):
        try:
            pct = float(text[:-1])
        except ValueError:
            raise ReleaseInputError(f"policy: {what} {value!r} is not a percentage like '20%'") from None
        if not 0 <= pct <= 100 or (pct == 0 and not zero_percent):  # NaN too
            raise ReleaseInputError(f"policy: {what} {value!r} must be in {'[' if zero_percent else '('}0%, 100%]")
        return pct
    if text.isdigit():
        return int(text)
    raise ReleaseInputError(f"policy: {what} {value!r} is not a count or a percentage like '20%'")


def _serial_size(entry: Serial, total: int) -> int:
    size = _count_or_percent(entry, "wave size", zero_percent=False)
    if isinstance(size, float):
        return max(1, int(total * size / 100))
    if size < 1:
        raise ReleaseInputError(f"policy: wave size {size} must be at least 1")
    return size


def budget_allowed(budget: int | str, wave_size: int) -> int:
    """How many failed stores a wave of ``wave_size`` may have: exceeding it halts, equalling it does not."""
    allowed = _count_or_percent(budget, "failure budget", zero_percent=True)
    if isinstance(allowed, float):
        return math.floor(wave_size * allowed / 100)
    if allowed < 0:
        raise ReleaseInputError("policy: failure budget must not be negative")
    return allowed


@dataclass(frozen=True)
class PlannedStore:
    store_id: str
    wave: int
    start: datetime  # UTC
    end: datetime  # UTC: start + duration
    timezone: str
    from_release: str | None

    def local_start(self) -> datetime:
        return self.start.astimezone(ZoneInfo(self.timezone))


@dataclass(frozen=True)
class Wave:
    index: int
    name: str
    stores: tuple[PlannedStore, ...]
    failure_budget: int

    @property
    def start(self) -> datetime | None:
        return min((s.start for s in self.stores), default=None)

    @property
    def end(self) -> datetime | None:
        return max((s.end for s in self.stores), default=None)


@dataclass(frozen=True)
class RolloutPlan:
    release: str
    now: datetime
    waves: tuple[Wave, ...]
    skipped: tuple[tuple[str, str], ...]  # (store id, reason): already on the target
    unschedulable: tuple[tuple[str, str], ...]  # (store id, reason)

    def stores(self) -> list[PlannedStore]:
        return [s for w in self.waves for s in w.stores]

    def to_dict(self) -> dict[str, object]:
        return {
            "release": self.release,
            "now": self.now.isoformat(),
            "waves": [
                {"index": w.index, "name": w.name, "failure_budget": w.failure_budget,
                 "start": w.start.isoformat() if w.start else None, "end": w.end.isoformat() if w.end else None,
                 "stores": [{"store": s.store_id, "start_utc": s.start.isoformat(),
                             "start_local": s.local_start().isoformat(), "timezone": s.timezone,
                             "end_utc": s.end.isoformat(), "from_release": s.from_release} for s in w.stores]}
                for w in self.waves
            ],
            "skipped": [{"store": s, "reason": r} for s, r in self.skipped],
            "unschedulable": [{"store": s, "reason": r} for s, r in self.unschedulable],
        }


@dataclass
class _Load:
    """Scheduled intervals of one cap key, as sorted starts and sorted ends.

    The intervals overlapping ``[t, e)`` number ``#(start < e) - #(end <= t)``: every interval that
    ended by ``t`` also started before ``e``. Both counts are bisections, so checking a cap costs
    O(log n) however many stores are already placed."""

    starts: list[datetime] = field(default_factory=list)
    ends: list[datetime] = field(default_factory=list)

    def add(self, s: datetime, e: datetime) -> None:
        bisect.insort(self.starts, s)
        bisect.insort(self.ends, e)

    def room_at(self, t: datetime, e: datetime, cap: int) -> datetime | None:
        """None when one more interval ``[t, e)`` keeps the overlap below ``cap``; otherwise a
        later instant worth trying (no earlier instant can have room)."""
        done = bisect.bisect_right(self.ends, t)
        n = bisect.bisect_left(self.starts, e) - done
        if n < cap:
            return None
        # At least n - cap + 1 of the running intervals must end first: the (n-cap+1)-th earliest
        # end after t is a lower bound for that moment.
        return self.ends[done + n - cap]


class _Fit:
    """``next_allowed_start`` memoised on what it depends on: the zone, the windows and the freezes
    that apply. Stores of one country mostly share all three."""

    def __init__(self, fleet: Fleet):
        self.fleet = fleet
        self.memo: dict[tuple[object, ...], datetime | None] = {}

    def __call__(self, store: Store, after: datetime, dur: timedelta, horizon: timedelta) -> datetime | None:
        key = (store.timezone, tuple((tuple(w.days), w.start, w.end) for w in store.maintenance_windows),
               tuple(i for i, f in enumerate(self.fleet.freezes) if freeze_applies(f, store)), after, dur, horizon)
        if key not in self.memo:
            self.memo[key] = next_allowed_start(store, self.fleet.freezes, after, dur, horizon=horizon)
        return self.memo[key]


def _assign_waves(fleet: Fleet, eligible: list[Store], policy: RolloutPolicy) -> list[tuple[str, list[Store]]]:
    by_id = {s.id: s for s in eligible}
    waves: list[tuple[str, list[Store]]] = []
    if isinstance(policy.canary, int):
        pool = sorted((s for s in eligible if "canary" in s.all_groups or s.ring == "canary"), key=lambda s: s.id)
        canary = pool[: policy.canary]
    else:
        unknown = [c for c in policy.canary if c not in fleet.stores]
        if unknown:
            raise ReleaseInputError(f"policy: canary stores not in the inventory: {', '.join(unknown)}")
        canary = [by_id[c] for c in policy.canary if c in by_id]
    if canary:
        waves.append(("canary", canary))
    taken = {s.id for s in canary}
    rest = sorted((s for s in eligible if s.id not in taken), key=lambda s: (s.ring, s.id))
    if policy.wave_groups:
        groups = fleet.groups()
        for g in policy.wave_groups:
            if g not in groups:
                raise ReleaseInputError(f"policy: wave group {g!r} is not a group of the inventory")
            members = set(groups[g])
            batch = [s for s in rest if s.id in members and s.id not in taken]
            if batch:
                waves.append((g, batch))
                taken.update(s.id for s in batch)
        left = [s for s in rest if s.id not in taken]
        if left:
            waves.append(("rest", left))
        return waves
    total, i, k = len(rest), 0, 0
    while i < total:
        entry = policy.waves[min(k, len(policy.waves) - 1)]
        size = _serial_size(entry, total)
        waves.append((f"wave {len(waves) + (0 if canary else 1)}", rest[i: i + size]))
        i += size
        k += 1
    return waves


def _candidates(fleet: Fleet, stores: Sequence[str] | None) -> list[Store]:
    """The stores asked for, in order and once each (default: the whole fleet); unknown ids raise."""
    if stores is None:
        return list(fleet.stores.values())
    unknown = [s for s in stores if s not in fleet.stores]
    if unknown:
        raise ReleaseInputError(f"stores not in the inventory {fleet.source or ''}: {', '.join(unknown)}; "
                                "check the store ids (or the inventory path)")
    return [fleet.stores[s] for s in dict.fromkeys(stores)]


def plan_rollout(fleet: Fleet, release: str, policy: RolloutPolicy, now: datetime, *,
                 current: Mapping[str, str | None] | None = None, release_state: str = "built",
                 stores: Sequence[str] | None = None) -> RolloutPlan:
    """Plan the rollout of ``release`` over ``stores`` (default: the whole fleet)."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    now = now.astimezone(UTC)
    if release_state == "revoked":
        raise ReleaseInputError(f"release {release} is revoked: it can never be rolled out again")
    current = current or {}
    candidates = _candidates(fleet, stores)
    skipped = tuple((s.id, f"already on {release}") for s in candidates if current.get(s.id) == release)
    eligible = [s for s in candidates if current.get(s.id) != release]

    fit = _Fit(fleet)
    glob, regions, countries = _Load(), dict[str, _Load](), dict[str, _Load]()
    waves: list[Wave] = []
    unschedulable: list[tuple[str, str]] = []
    wave_start = now
    for name, members in _assign_waves(fleet, eligible, policy):
        planned: list[PlannedStore] = []
        for s in members:
            dur = policy.store_duration(s)
            limit = wave_start + policy.horizon
            t: datetime | None = fit(s, wave_start, dur, policy.horizon)
            reason = "no maintenance window free of freezes within the horizon"
            reg = regions.setdefault(s.region, _Load())
            cty = countries.setdefault(s.country, _Load())
            guard = 0
            while t is not None and t < limit:
                guard += 1
                if guard > 100_000:  # pragma: no cover - a bug, not an input: fail loudly
                    raise RuntimeError(f"planner did not converge for store {s.id}")
                end = t + dur
                blocking: list[datetime] = []
                for load, cap in ((glob, policy.max_concurrent), (reg, policy.max_per_region),
                                  (cty, policy.max_per_country)):
                    if cap is not None:
                        later = load.room_at(t, end, cap)
                        if later is not None:
                            blocking.append(later)
                if not blocking:
                    break
                t = fit(s, max(blocking), dur, limit - max(blocking))
                reason = "concurrency caps leave no room inside its windows within the horizon"
            if t is None or t >= limit:
                unschedulable.append((s.id, reason))
                continue
            end = t + dur
            for load in (glob, reg, cty):
                load.add(t, end)
            planned.append(PlannedStore(s.id, len(waves), t, end, s.timezone, current.get(s.id)))
        planned.sort(key=lambda p: (p.start, p.store_id))
        wave = Wave(len(waves), name, tuple(planned), budget_allowed(policy.failure_budget, len(planned)))
        waves.append(wave)
        if wave.end is not None:
            wave_start = max(wave_start, wave.end + policy.wave_soak)
    return RolloutPlan(release, now, tuple(waves), skipped, tuple(unschedulable))
