"""A train's stages from the command line, and each store frozen into exactly one stage.

Two steps, both pure (no I/O, no clock):

* ``parse_stages(fleet, options)`` reads the stage options (``StageOptions``: ``--stages``,
  ``--stage``, ``--soak``, ``--stage-soak``, ``--failure-budget``, ``--stage-budget``,
  ``--approve-stages``, the caps) into ``StageSpec``s. Without ``--stages``/``--stage`` the stages
  are the inventory's rings in order: ``canary`` first, then the other rings sorted.
* ``assign(fleet, stages, ...)`` resolves each stage's selector once, in stage order, over the
  stores no earlier stage took: a plain name (a ring such as ``canary`` or ``ring1``, an inventory
  group, ``all``, a store id), an Ansible-style host pattern (``country_dk:&ring_ring1``, through
  ``edgefleet.inventory.patterns.select``, as ``--limit`` is), or ``N%`` of the stores left that still need the release.
  A stage that takes no store is dropped, with a note.

``plan_stages`` is the window-bound plan of a train (the dry run of ``train start``): each stage's
stores at their first feasible window after the previous stage's last store finished and its soak.

Every bad input is an ``InputError`` naming the option and the value.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from edgefleet.errors import InputError
from edgefleet.inventory.model import Fleet, Store
from edgefleet.inventory.patterns import select
from edgefleet.schedule.windows import next_allowed_start
from edgefleet.trains.model import StagePolicy, StageSpec

__all__ = [
    "CANARY",
    "Assignment",
    "PlannedStage",
    "StageOptions",
    "StorePlan",
    "assign",
    "default_stages",
    "parse_duration",
    "parse_stages",
    "percent_size",
    "plan_stages",
]

CANARY = "canary"
"""The canary ring: stores with ``canary: true`` or ``ring: canary``."""

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")
_PLAIN = re.compile(r"^[A-Za-z0-9_.-]+$")
_HORIZON = timedelta(days=400)


@dataclass(frozen=True)
class StageOptions:
    """The stage options of ``train start`` as given (texts, parsed by ``parse_stages``)."""

    stages: str | None = None
    """``--stages canary,ring1,ring2``: plain names (rings, groups), one stage each."""
    stage: Sequence[str] = ()
    """``--stage SELECTOR`` (repeated): a name, a pattern or ``N%``; ``NAME=SELECTOR`` names it."""
    soak: str | None = None
    stage_soak: Sequence[str] = ()
    failure_budget: str | None = None
    stage_budget: Sequence[str] = ()
    approve_stages: str | None = None
    max_concurrent: int | None = None
    max_per_region: int | None = None
    max_per_country: int | None = None


def parse_duration(text: str, option: str) -> timedelta:
    """``24h``, ``90m``, ``1h30m``, ``2d``, ``45s``, ``1w`` or ``0``: a duration; InputError otherwise."""
    value = text.strip().lower()
    if value == "0":
        return timedelta(0)
    if not value or _DURATION.sub("", value):
        raise InputError(f"{option} {text!r} is not a duration; write e.g. 24h, 90m, 1h30m or 2d")
    seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(value))
    if seconds > 365 * 86400:
        raise InputError(f"{option} {text!r} is longer than a year; write e.g. 24h")
    return timedelta(seconds=seconds)


def duration_text(value: timedelta) -> str:
    """``value`` as ``parse_duration`` reads it: ``1d12h``, ``12h``, ``90m`` -> ``1h30m``, ``0``."""
    seconds = int(value.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0"


def _budget(text: str, option: str) -> int | str:
    value = text.strip()
    if value.isdigit():
        return int(value)
    m = _PERCENT.match(value)
    if m and float(m.group(1)) <= 100:
        return value
    raise InputError(f"{option} {text!r} is not a count of stores or a percentage like 10%")


def _pairs(items: Sequence[str], option: str, example: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise InputError(f"{option} {item!r}: write NAME=VALUE with NAME a stage, e.g. {option} {example}")
        out.append((name.strip(), value.strip()))
    return out


def _names(text: str | None, option: str) -> list[str]:
    if text is None:
        return []
    names = [p.strip() for p in text.split(",")]
    if not any(names) or "" in names:
        raise InputError(f"{option} {text!r}: an empty name; write e.g. {option} canary,ring1,ring2")
    return names


def _did_you_mean(name: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _known_stage(name: str, names: Sequence[str], option: str, value: str) -> None:
    if name not in names:
        raise InputError(f"{option} {value!r}: no stage named {name!r} (the stages: {', '.join(names)})"
                         + _did_you_mean(name, names))


def _rings(fleet: Fleet) -> list[str]:
    """The inventory's rings in train order: ``canary`` first (when any store is a canary), then the
    other rings sorted by name."""
    stores = fleet.stores.values()
    rings = sorted({s.ring for s in stores} - {CANARY})
    return ([CANARY] if any(_is_canary(s) for s in stores) else []) + rings


def _is_canary(store: Store) -> bool:
    return store.canary or store.ring == CANARY


def default_stages(fleet: Fleet, policy: StagePolicy | None = None) -> tuple[StageSpec, ...]:
    """One stage per ring of the inventory, canary first (no store: no stage)."""
    return tuple(StageSpec(name=r, selector=r, policy=policy or StagePolicy()) for r in _rings(fleet))


def _given_stages(options: StageOptions) -> list[tuple[str, str]] | None:
    """(name, selector) of the stages the options give; None: the default stages."""
    if options.stages is not None and options.stage:
        raise InputError("give --stages NAME,NAME,... or --stage SELECTOR (repeated), not both")
    if options.stages is not None:
        out = []
        for name in _names(options.stages, "--stages"):
            if not _PLAIN.match(name):
                raise InputError(f"--stages {options.stages!r}: {name!r} is not a plain group or ring name; give "
                                 f"patterns and percentages with --stage (e.g. --stage '{name}')")
            out.append((name, name))
        return out
    if not options.stage:
        return None
    out = []
    for item in options.stage:
        name, sep, selector = item.partition("=")
        if sep and _PLAIN.match(name.strip()) and selector.strip():
            out.append((name.strip(), selector.strip()))
        elif not item.strip():
            raise InputError("--stage '': give a group, a pattern or a percentage, e.g. --stage 25%")
        else:
            out.append((item.strip(), item.strip()))
    return out


def _base_policy(options: StageOptions) -> StagePolicy:
    caps = {"max_concurrent": options.max_concurrent, "max_per_region": options.max_per_region,
            "max_per_country": options.max_per_country}
    for name, value in caps.items():
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} {value}: give at least 1 (or leave it out: no cap)")
    policy = StagePolicy(max_concurrent=options.max_concurrent, max_per_region=options.max_per_region,
                         max_per_country=options.max_per_country)
    if options.soak is not None:
        policy = replace(policy, soak=parse_duration(options.soak, "--soak"))
    if options.failure_budget is not None:
        policy = replace(policy, failure_budget=_budget(options.failure_budget, "--failure-budget"))
    return policy


def parse_stages(fleet: Fleet, options: StageOptions) -> tuple[StageSpec, ...]:
    """The stages ``options`` ask for, each with its policy (see ``StageOptions``)."""
    base = _base_policy(options)
    given = _given_stages(options)
    stages = list(default_stages(fleet, base)) if given is None else [
        StageSpec(name=n, selector=s, policy=base) for n, s in given]
    if not stages:
        raise InputError(f"the inventory {fleet.source or ''} has no store: no stage to run".replace("  ", " "))
    names = [s.name for s in stages]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"stage name {twice[0]!r} given twice; name stages with --stage NAME=SELECTOR")
    option = "--stages" if options.stages is not None else "--stage"
    for selector in (s.selector for s in stages):
        m = _PERCENT.match(selector)
        if (m and not 0 < float(m.group(1)) <= 100) or (not m and selector.endswith("%")):
            raise InputError(f"--stage {selector!r}: a percentage must be a number in (0%, 100%], like 25%")
        if not m and given is not None:
            _members(fleet, selector, option)  # an unknown name or a bad pattern: refused here, by option
    by_name = {s.name: s for s in stages}
    for name, value in _pairs(options.stage_soak, "--stage-soak", "canary=12h"):
        _known_stage(name, names, "--stage-soak", f"{name}={value}")
        by_name[name] = replace(by_name[name], policy=replace(by_name[name].policy,
                                                              soak=parse_duration(value, "--stage-soak")))
    for name, value in _pairs(options.stage_budget, "--stage-budget", "canary=0"):
        _known_stage(name, names, "--stage-budget", f"{name}={value}")
        by_name[name] = replace(by_name[name], policy=replace(by_name[name].policy,
                                                              failure_budget=_budget(value, "--stage-budget")))
    for name in _names(options.approve_stages, "--approve-stages"):
        _known_stage(name, names, "--approve-stages", options.approve_stages or "")
        by_name[name] = replace(by_name[name], policy=replace(by_name[name].policy, approve=True))
    return tuple(by_name[n] for n in names)


# -- assignment --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assignment:
    """Each store of a train frozen into one stage."""

    stores: dict[str, int]
    """store -> index into ``stages``."""
    stages: tuple[StageSpec, ...]
    """The stages that took at least one store, in the order given."""
    notes: tuple[str, ...] = ()
    """Stages dropped because they took no store; stores that need the release but no stage took."""
    done: frozenset[str] = field(default_factory=frozenset)
    """Stores of the train already on the release (recorded succeeded at start)."""

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    def members(self, index: int) -> list[str]:
        return [s for s, i in self.stores.items() if i == index]


def _select(fleet: Fleet, pattern: str, option: str) -> list[str]:
    """Store ids an Ansible-style host pattern selects; its InputError prefixed by the option."""
    try:
        return select(fleet, pattern)
    except InputError as e:
        raise InputError(f"{option} {pattern!r}: {e}") from None


def _members(fleet: Fleet, selector: str, option: str) -> list[str]:
    """Store ids (inventory order) a plain name or a pattern selects."""
    if not _PLAIN.match(selector):
        return _select(fleet, selector, option)
    if selector == CANARY:
        return [s.id for s in fleet.stores.values() if _is_canary(s)]
    if selector == "all":
        return list(fleet.stores)
    groups = fleet.groups()
    if selector in {s.ring for s in fleet.stores.values()}:
        return list(groups[f"ring_{selector}"])
    if selector in groups:
        return list(groups[selector])
    if selector in fleet.stores:
        return [selector]
    known = {CANARY, "all", *groups, *(s.ring for s in fleet.stores.values())}
    raise InputError(f"{option} {selector!r}: no ring, group or store of that name in the inventory "
                     f"{fleet.source or ''}".rstrip() + _did_you_mean(selector, known | set(fleet.stores)))


def _spread(stores: Sequence[Store]) -> list[Store]:
    """``stores`` taken one region after another (round robin, inventory order within a region), so a
    percentage stage samples every region rather than the first ones."""
    by_region: dict[str, list[Store]] = {}
    for s in stores:
        by_region.setdefault(s.region, []).append(s)
    queues = list(by_region.values())
    out: list[Store] = []
    for i in range(max((len(q) for q in queues), default=0)):
        out.extend(q[i] for q in queues if i < len(q))
    return out


def percent_size(percent: float, left: int) -> int:
    """How many of ``left`` stores ``percent`` takes: at least one when any is left."""
    return 0 if left == 0 else min(left, max(1, math.floor(left * percent / 100 + 1e-9)))


def assign(fleet: Fleet, stages: Sequence[StageSpec], *, limit: str | None = None,
           current: Mapping[str, str | None] | None = None, release: str | None = None) -> Assignment:
    """Freeze each store into one stage: stage by stage, over the stores no earlier stage took.

    ``limit``: only the stores this pattern selects. ``current`` (store -> its release per the
    ledger) and ``release``: stores already on the release count as done; a percentage stage counts
    and takes only stores that still need the release (a ``100%`` stage takes the done ones too)."""
    pool = list(fleet.stores) if limit is None else _select(fleet, limit, "--limit")
    if not pool:
        raise InputError(f"--limit {limit!r} selects no store")
    on = current or {}
    done = {s for s in pool if release is not None and on.get(s) == release}
    left = dict.fromkeys(pool)  # ordered set of the stores no stage took yet
    taken: list[tuple[StageSpec, list[str]]] = []
    for stage in stages:
        m = _PERCENT.match(stage.selector)
        if m:
            need = _spread([fleet.stores[s] for s in left if s not in done])
            chosen = {s.id for s in need[:percent_size(float(m.group(1)), len(need))]}
            if float(m.group(1)) >= 100:
                chosen |= set(left)
        else:
            chosen = set(_members(fleet, stage.selector, f"stage {stage.name}")) & set(left)
        members = [s for s in left if s in chosen]
        for s in members:
            del left[s]
        taken.append((stage, members))
    return _assignment(taken, left, done)


def _assignment(taken: Sequence[tuple[StageSpec, list[str]]], left: Mapping[str, None],
                done: set[str]) -> Assignment:
    notes = [f"stage {st.name} ({st.selector}) takes no store: dropped" for st, members in taken if not members]
    kept = [(st, members) for st, members in taken if members]
    missed = [s for s in left if s not in done]
    if missed:
        some = ", ".join(missed[:5]) + (", ..." if len(missed) > 5 else "")
        notes.append(f"{len(missed)} store(s) need the release but no stage takes them ({some}): not in this "
                     "train; add a last stage like --stage 100%")
    if not kept:
        raise InputError("no stage takes any store: check --stages/--stage and --limit against the inventory")
    stores = {s: i for i, (_st, members) in enumerate(kept) for s in members}
    return Assignment(stores=stores, stages=tuple(st for st, _m in kept), notes=tuple(notes),
                      done=frozenset(done & set(stores)))


# -- the window-bound plan ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StorePlan:
    store: str
    start: datetime | None
    """First feasible window start (UTC) after the stage unlocks; None: none within the horizon."""
    end: datetime | None
    timezone: str
    done: bool = False
    """Already on the release: nothing to do."""

    def local_start(self) -> datetime | None:
        from zoneinfo import ZoneInfo

        return self.start.astimezone(ZoneInfo(self.timezone)) if self.start else None


@dataclass(frozen=True)
class PlannedStage:
    index: int
    stage: StageSpec
    unlocks: datetime
    """When the stage may start: now for stage 0, else the previous stage's end plus its soak."""
    stores: tuple[StorePlan, ...]

    @property
    def end(self) -> datetime | None:
        """When its last store finishes (None: no store has a window)."""
        ends = [p.end for p in self.stores if p.end is not None]
        return max(ends) if ends else None


def plan_stages(fleet: Fleet, assignment: Assignment, now: datetime, *, node_duration: timedelta
                ) -> tuple[PlannedStage, ...]:
    """Each stage's stores at their first window (with room for all their nodes, outside freezes)
    after the stage unlocks; stage N+1 unlocks at stage N's last finish plus its soak. Caps are not
    applied: this is the window-bound lower bound of the train's duration."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    unlocks = now.astimezone(UTC)
    out: list[PlannedStage] = []
    for index, stage in enumerate(assignment.stages):
        plans = []
        for sid in assignment.members(index):
            store = fleet.stores[sid]
            if sid in assignment.done:
                plans.append(StorePlan(sid, None, None, store.timezone, done=True))
                continue
            duration = node_duration * len(store.nodes)
            start = next_allowed_start(store, fleet.freezes, unlocks, duration, horizon=_HORIZON)
            plans.append(StorePlan(sid, start, start + duration if start else None, store.timezone))
        plans.sort(key=lambda p: (p.start is None, p.start or unlocks, p.store))
        planned = PlannedStage(index, stage, unlocks, tuple(plans))
        out.append(planned)
        unlocks = max(unlocks, planned.end or unlocks) + stage.policy.soak
    return tuple(out)
