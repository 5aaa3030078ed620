"""The rollout report: one self-contained HTML page (inline CSS, an inline SVG chart, no script)
telling what the ledger says happened: a summary per operation, the release trains with their
stages, stores per release over time (each train's stages drawn below on the same time axis: run,
then soak), the stores that failed or were rolled back, and the event log.

Three parts, kept apart:

* ``collect_report(engine, ...)`` is the only function here that reads the ledger; it returns a
  plain ``ReportData``.
* ``render_report(data)`` is pure: ReportData in, HTML text out (no clock: the generation time is
  in the data), through the jinja2 templates in ``edgefleet/templates`` (autoescaped). Every value
  they print is scrubbed (``edgefleet.redact.redact``: seed tokens, URL query strings, PEM blocks
  and ``token=...``-like pairs removed, though the ledger promises to hold none) and escaped.
* ``write_report(path, html)`` writes the file atomically (a temporary file, then a rename).

Stores per release come from the events that change the ``store_release`` table: ``store_succeeded``
(the store is now on ``detail.release``, the run's target) and ``store_rolled_back`` (the store is
back on ``detail.release``, its previous release). Replaying them from the stores' initial releases
(nothing, for the whole ledger; each store's ``from_release`` in the first selected operation, for a
selection) ends on what ``store_release`` holds.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from markupsafe import Markup

from edgefleet.atomic import write_atomic
from edgefleet.errors import InputError, ReportError
from edgefleet.redact import redact
from edgefleet.trains.timeline import TrainSummary, collect_trains, expand_trains

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = [
    "RELEASE_CHANGE_KINDS",
    "OperationSummary",
    "ReleaseChange",
    "ReportData",
    "ReportEvent",
    "StoreOutcome",
    "WaveSummary",
    "collect_report",
    "release_timeline",
    "render_report",
    "write_report",
]

RELEASE_CHANGE_KINDS = ("store_succeeded", "store_rolled_back")
"""Event kinds written together with a ``store_release`` row; ``detail.release`` is the store's new release."""

PROBLEM_STATUSES = ("split", "failed", "rolled_back", "refused")  # RunState values; split first
DEFAULT_MAX_EVENTS = 1000


# -- the data -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class WaveSummary:
    index: int
    name: str
    status: str
    budget: int
    failures: int
    stores: int


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    rollout: str
    store: str
    status: str
    from_release: str | None
    to_release: str
    reason: str


@dataclass(frozen=True, slots=True)
class OperationSummary:
    id: str
    kind: str
    release: str
    status: str
    reason: str
    operator: str
    created_at: datetime
    updated_at: datetime
    counts: Mapping[str, int]
    """Store runs by status (succeeded, rolled_back, failed, skipped, ...)."""
    waves: tuple[WaveSummary, ...]
    problems: tuple[StoreOutcome, ...]
    """Store runs that failed, were rolled back or were refused."""


@dataclass(frozen=True, slots=True)
class ReleaseChange:
    ts: datetime
    store: str
    release: str | None
    rollout: str | None
    kind: str


@dataclass(frozen=True, slots=True)
class ReportEvent:
    ts: datetime
    rollout: str | None
    store: str | None
    node: str | None
    kind: str
    reason: str


@dataclass(frozen=True, slots=True)
class ReportData:
    title: str
    generated_at: datetime
    operations: tuple[OperationSummary, ...]
    changes: tuple[ReleaseChange, ...]
    """Release changes in time order."""
    events: tuple[ReportEvent, ...]
    """The event log in time order (possibly the first part of it: see ``events_total``)."""
    events_total: int
    initial: Mapping[str, str | None] = field(default_factory=dict)
    """store -> its release before the first change shown (absent: on no release)."""
    current: Mapping[str, str | None] = field(default_factory=dict)
    """store -> current release from the ``store_release`` table (what the fleet is on now)."""
    trains: tuple[TrainSummary, ...] = ()
    """Release trains, oldest first (``edgefleet.trains.timeline``)."""


# -- collecting (the only ledger reader) ------------------------------------------------------------

def _ts(text: str) -> datetime:
    dt = datetime.fromisoformat(text)
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def collect_report(engine: Engine, *, rollout_ids: Sequence[str] | None = None, now: datetime | None = None,
                   title: str = "edgefleet rollout report", max_events: int = DEFAULT_MAX_EVENTS,
                   max_operations: int = 500, stores: Collection[str] | None = None) -> ReportData:
    """Read operations, release changes and events from the ledger on ``engine``: every operation
    (the most recent ``max_operations``) or only ``rollout_ids`` (a train id among them stands for
    the train's child rollouts and its own events); with ``stores``, only those stores' runs,
    release changes and events, the operations that had any, and the trains that hold any (their
    stages counting those stores). ``now`` is the generation time shown on the page (default: the
    newest ledger time, so the same ledger gives the same page)."""
    from edgefleet.rollout.ledger import Ledger

    if max_events < 0:
        raise InputError(f"max_events must be 0 or more, not {max_events}")
    ledger = Ledger(engine)
    named: list[str] = []
    if rollout_ids:
        ids, named = expand_trains(engine, list(dict.fromkeys(rollout_ids)))  # a train: its child rollouts
        records = [ledger.rollout(rid) for rid in dict.fromkeys(ids)]  # StateError names unknown ids
    else:
        records = ledger.rollouts(limit=max_operations)
    records.sort(key=lambda r: (r.created_at, r.id))
    selected = [r.id for r in records] if rollout_ids else None
    chosen = set(stores) if stores is not None else None

    operations: list[OperationSummary] = []
    initial: dict[str, str | None] = {}
    for rec in records:
        runs = [r for r in ledger.runs(rec.id) if chosen is None or r.store in chosen]
        if chosen is not None and not runs:
            continue
        counts: dict[str, int] = {}
        for run in runs:
            counts[run.status.value] = counts.get(run.status.value, 0) + 1
            if selected is not None and run.store not in initial:
                initial[run.store] = run.from_release
        waves = tuple(WaveSummary(w.index, w.name, w.status, w.budget, w.failures,
                                  sum(1 for r in runs if r.wave == w.index)) for w in ledger.waves(rec.id))
        problems = tuple(StoreOutcome(rec.id, r.store, r.status.value, r.from_release, r.to_release, r.reason)
                         for r in runs if r.status.value in PROBLEM_STATUSES)
        operations.append(OperationSummary(rec.id, rec.kind.value, rec.release, rec.status.value, rec.reason,
                                           rec.operator, rec.created_at, rec.updated_at, counts, waves, problems))

    raw_changes: list[dict[str, Any]] = []
    raw_events: list[dict[str, Any]] = []
    total = 0
    for rid in ([*(o.id for o in operations), *named] if selected is not None else [None]):
        for kind in RELEASE_CHANGE_KINDS:
            raw_changes += ledger.events(rid, kind=kind, limit=10_000_000, stores=chosen)
        raw_events += ledger.events(rid, limit=max_events, stores=chosen)
        total += ledger.count_events(rid, stores=chosen)
    changes = sorted((ReleaseChange(_ts(e["ts"]), str(e["store"]), _release_of(e["detail"]), e["rollout"], e["kind"])
                      for e in raw_changes if e["store"]), key=lambda c: c.ts)
    raw_events.sort(key=lambda e: (_ts(e["ts"]), e["id"]))
    events = tuple(ReportEvent(_ts(e["ts"]), e["rollout"], e["store"], e["node"], e["kind"], e["reason"] or "")
                   for e in raw_events[:max_events])
    current = {s: cur for s, (cur, _lkg) in ledger.store_releases(chosen).items()}
    trains = collect_trains(engine, rollout_ids=None if selected is None else [*selected, *named], stores=chosen)
    if now is None:
        stamps = [e.ts for e in events] + [o.updated_at for o in operations] + [t.updated_at for t in trains]
        now = max(stamps) if stamps else datetime(1970, 1, 1, tzinfo=UTC)
    return ReportData(title=title, generated_at=now, operations=tuple(operations), changes=tuple(changes),
                      events=events, events_total=total, initial=initial, current=current, trains=trains)


def _release_of(detail: Any) -> str | None:
    rel = detail.get("release") if isinstance(detail, dict) else None
    return str(rel) if rel is not None else None


# -- the timeline (pure) ----------------------------------------------------------------------------

def release_timeline(initial: Mapping[str, str | None], changes: Iterable[ReleaseChange], *,
                     start: datetime | None = None) -> tuple[list[str], list[tuple[datetime, dict[str, int]]]]:
    """Releases (sorted) and the stores-per-release counts: first the initial counts at ``start``
    (default: the first change), then the counts after each instant at which a store changed
    release (changes at the same instant are one point). No changes: no points."""
    on = dict(initial)
    ordered = sorted(changes, key=lambda c: c.ts)
    releases = sorted({r for r in on.values() if r} | {c.release for c in ordered if c.release})
    if not ordered:
        return releases, []

    def counts() -> dict[str, int]:
        out = dict.fromkeys(releases, 0)
        for rel in on.values():
            if rel:
                out[rel] += 1
        return out

    first = ordered[0].ts if start is None else min(start, ordered[0].ts)
    points: list[tuple[datetime, dict[str, int]]] = [(first, counts())]
    for i, c in enumerate(ordered):
        on[c.store] = c.release
        if i > 0 and ordered[i - 1].ts == c.ts:
            points[-1] = (c.ts, counts())
        else:
            points.append((c.ts, counts()))
    return releases, points


# -- rendering (pure) -----------------------------------------------------------------------------

scrub = redact  # the one redactor (edgefleet.redact); the report applies it to every string it shows


def _when(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") + "Z"


def _finalize(value: Any) -> Any:
    """Every value a template prints is scrubbed (then autoescaped); markup from macros is not text."""
    if isinstance(value, Markup) or not isinstance(value, str):
        return value
    return scrub(value)


@functools.cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("edgefleet", "templates"), autoescape=True,
                              finalize=_finalize, undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True, keep_trailing_newline=True)


def render_report(data: ReportData, *, max_events: int = DEFAULT_MAX_EVENTS) -> str:
    """The whole page for ``data`` (templates ``report.html.j2`` and ``chart.svg.j2`` in
    ``edgefleet/templates``); the event log shows at most ``max_events`` rows."""
    now: dict[str, int] = {}
    for rel in data.current.values():
        now[rel or "(none)"] = now.get(rel or "(none)", 0) + 1
    events = [{"when": _when(ev.ts), "rollout": ev.rollout, "store": ev.store, "node": ev.node, "kind": ev.kind,
               "reason": ev.reason} for ev in data.events[:max(0, max_events)]]
    return _templates().get_template("report.html.j2").render(
        title=data.title, generated=_when(data.generated_at), operations_count=len(data.operations),
        events_total=data.events_total, operations=[_operation_row(item) for item in _fold_provisions(data.operations)],
        fleet_now=sorted(now.items()), chart=_chart_of(data), trains=[_train_row(t) for t in data.trains],
        problems=[p for op in data.operations for p in op.problems], split=_split_rows(data), events=events)


def _split_rows(data: ReportData) -> list[dict[str, str]]:
    """Stores left split across releases: shown at the top, with the command that continues the repair."""
    from edgefleet.rollout.ledger import repair_command
    from edgefleet.rollout.states import RunState

    return [{"store": p.store, "rollout": p.rollout, "reason": p.reason, "command": repair_command(p.rollout)}
            for op in data.operations for p in op.problems if p.status == RunState.split_.value]


def _train_row(t: TrainSummary) -> dict[str, Any]:
    def when(dt: datetime | None) -> str:
        return _when(dt) if dt is not None else "-"

    return {"id": t.id, "release": t.release, "status": t.status, "reason": t.reason, "created": _when(t.created_at),
            "problem": t.status in ("halted", "aborted", "rolling_back"),
            "stages": [{"index": st.index, "name": st.name, "status": st.status, "stores": st.stores,
                        "counts": sorted(st.counts.items()), "started": when(st.started_at),
                        "finished": when(st.finished_at), "soak_until": when(st.soak_until), "reason": st.reason}
                       for st in t.stages]}


def _operation_row(item: OperationSummary | list[OperationSummary]) -> dict[str, Any]:
    if isinstance(item, list):
        return {"folded": True, "ids": [o.id for o in item], "release": item[0].release,
                "stores": sum(sum(o.counts.values()) for o in item),
                "first": _when(min(o.created_at for o in item)), "last": _when(max(o.created_at for o in item))}
    return {"folded": False, "op": item, "counts": sorted(item.counts.items()), "created": _when(item.created_at),
            "problem": bool(item.problems) or item.status in ("failed", "halted", "aborted")}


FOLD_PROVISIONS_AT = 3
"""This many or more clean one-store provisionings in a row show as one row of the table."""


def _clean_provision(op: OperationSummary) -> bool:
    return op.kind == "provision" and op.status == "succeeded" and not op.problems


def _fold_provisions(ops: Sequence[OperationSummary]) -> list[OperationSummary | list[OperationSummary]]:
    """Runs of ``FOLD_PROVISIONS_AT`` or more consecutive succeeded provisionings of one release
    become one list each (a fleet's first day would otherwise push the rollouts off the page);
    anything failed or with a problem keeps its own row."""
    out: list[OperationSummary | list[OperationSummary]] = []
    run: list[OperationSummary] = []

    def flush() -> None:
        if len(run) >= FOLD_PROVISIONS_AT:
            out.append(list(run))
        else:
            out.extend(run)
        run.clear()

    for op in ops:
        if _clean_provision(op) and (not run or run[0].release == op.release):
            run.append(op)
            continue
        flush()
        if _clean_provision(op):
            run.append(op)
        else:
            out.append(op)
    flush()
    return out


# -- the chart --------------------------------------------------------------------------------------

# Okabe-Ito: distinguishable with common colour blindness; dashes tell series apart on grey paper.
_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
_DASHES = ("", "6 3", "2 3", "8 3 2 3")
_W, _H = 960, 360
_LEFT, _RIGHT, _TOP, _BOTTOM = 60, 20, 20, 60


def _time_ticks(t0: datetime, t1: datetime, n: int = 6) -> list[datetime]:
    span = (t1 - t0).total_seconds()
    steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
             172800, 604800]
    step = next((s for s in steps if span / s <= n), steps[-1])
    first = math.ceil(t0.timestamp() / step) * step
    out = []
    t = first
    while t <= t1.timestamp() + 1e-6:
        out.append(datetime.fromtimestamp(t, UTC))
        t += step
    return out


def _chart_of(data: ReportData) -> dict[str, Any] | None:
    """The chart's coordinates, or None when no store changed release and there is no train."""
    begin = [op.created_at for op in data.operations] + [ev.ts for ev in data.events[:1]]
    releases, points = release_timeline(data.initial, data.changes, start=min(begin) if begin else None)
    last = [ev.ts for ev in data.events[-1:]] + [op.updated_at for op in data.operations]
    if not releases:
        points = []
    if not points and not data.trains:
        return None
    spans = [t for train in data.trains for t in train.times]
    if data.trains:  # a stage still running is drawn up to now
        spans.append(data.generated_at)
    ends = [*last, *spans] if points else spans
    return _chart(releases, points, start=min([*(t for t, _c in points[:1]), *spans]),
                  end=max([*(t for t, _c in points[-1:]), *ends]), trains=data.trains, now=data.generated_at)


_LANE = 40  # height of one train's lane below the chart
_STAGE_FILLS = {"passed": "#009E73", "failed": "#D55E00"}  # Okabe-Ito, as the series; other stages blue


def _lanes(trains: Sequence[TrainSummary], x: Any, y0: float, now: datetime) -> list[dict[str, Any]]:
    """One lane per train: each stage's run (first store started to last store finished, or now)
    and its soak (to ``soak_until``) as bars on the chart's time axis."""
    lanes = []
    for k, t in enumerate(trains):
        y = y0 + _LANE * k
        bars = []
        for st in t.stages:
            if st.started_at is None:
                continue
            end = st.finished_at or now
            bars.append({"kind": "run", "name": st.name, "status": st.status, "x": f"{x(st.started_at):.1f}",
                         "w": f"{max(2.0, x(end) - x(st.started_at)):.1f}", "wide": x(end) - x(st.started_at) > 48,
                         "tx": f"{x(st.started_at) + 3:.1f}", "fill": _STAGE_FILLS.get(st.status, "#0072B2"),
                         "title": f"{st.name}: {st.status}, {_when(st.started_at)} to "
                                  f"{_when(st.finished_at) if st.finished_at else 'now'}"})
            if st.finished_at is not None and st.soak_until is not None:
                bars.append({"kind": "soak", "name": st.name, "status": st.status, "x": f"{x(st.finished_at):.1f}",
                             "w": f"{max(2.0, x(st.soak_until) - x(st.finished_at)):.1f}", "wide": False,
                             "tx": "", "fill": "#dcecf8",
                             "title": f"{st.name}: soak until {_when(st.soak_until)}"})
        lanes.append({"label": f"train {t.id}: {t.release}, {t.status}", "label_y": f"{y + 12:.1f}",
                      "bar_y": f"{y + 17:.1f}", "text_y": f"{y + 28:.1f}", "bars": bars})
    return lanes


def _chart(releases: Sequence[str], points: Sequence[tuple[datetime, dict[str, int]]], *, start: datetime,
           end: datetime, trains: Sequence[TrainSummary] = (), now: datetime | None = None) -> dict[str, Any]:
    t0, t1 = start, end
    if t1 - t0 < timedelta(seconds=60):  # a single instant still needs a width to draw on
        t0, t1 = t0 - timedelta(seconds=30), t1 + timedelta(seconds=30)
    top = max(1, max((max(c.values(), default=0) for _t, c in points), default=0))
    ystep = max(1, math.ceil(top / 8))
    ymax = math.ceil(top / ystep) * ystep
    pw, ph = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    span = (t1 - t0).total_seconds()

    def x(t: datetime) -> float:
        return _LEFT + pw * (t - t0).total_seconds() / span

    def y(v: int) -> float:
        return _TOP + ph * (1 - v / ymax)

    multi_day = t0.date() != t1.date()
    fmt = "%m-%d %H:%M" if multi_day else "%H:%M:%S" if span < 600 else "%H:%M"
    series = []
    for i, rel in enumerate(releases if points else ()):
        (ts0, c0), rest = points[0], points[1:]
        d = [f"M{x(ts0):.1f},{y(c0[rel]):.1f}"] + [f"H{x(t):.1f}V{y(c[rel]):.1f}" for t, c in rest]
        d.append(f"H{x(t1):.1f}")
        series.append({"release": rel, "final": points[-1][1][rel], "d": "".join(d),
                       "colour": _COLOURS[i % len(_COLOURS)],
                       "dash": _DASHES[(i // len(_COLOURS) + i) % len(_DASHES)],
                       # offset overlapping lines by a pixel per series so equal counts stay visible
                       "shift": f"{(i - (len(releases) - 1) / 2) * 1.5:.1f}",
                       "lx": _LEFT + 220 * (i % 4), "ly": _H + 22 * (i // 4) - 8})
    below = _H + 22 * math.ceil(len(series) / 4)
    lanes = _lanes(trains, x, below + 8, now or t1)
    return {"width": _W, "height": below + (_LANE * len(lanes) + 16 if lanes else 0), "left": _LEFT,
            "right": _W - _RIGHT, "top": _TOP, "bottom": _TOP + ph, "x_label_x": f"{_LEFT + pw / 2:.1f}",
            "y_label_y": f"{_TOP + ph / 2:.1f}",
            "dates": t0.strftime("%Y-%m-%d") + (" to " + t1.strftime("%Y-%m-%d") if multi_day else ""),
            "gridlines": [{"y": f"{y(v):.1f}", "label_y": f"{y(v) + 4:.1f}", "value": v}
                          for v in range(0, ymax + 1, ystep)],
            "ticks": [{"x": f"{x(t):.1f}", "label": t.strftime(fmt)} for t in _time_ticks(t0, t1)],
            "series": series, "lanes": lanes, "lanes_top": below, "lanes_bottom": below + _LANE * len(lanes) + 8}


# -- writing --------------------------------------------------------------------------------------

def write_report(path: Path, html_text: str) -> Path:
    """Write ``html_text`` to ``path`` atomically (readers see the old page or the new one)."""
    path = Path(path)
    try:
        write_atomic(path, html_text, mode=0o644, make_parents=True)
    except OSError as e:
        raise ReportError(f"cannot write the report to {path}: {e.strerror or e}; "
                               "choose another --out or fix the directory's permissions") from e
    return path

