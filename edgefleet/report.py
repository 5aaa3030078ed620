"""The rollout report: one self-contained HTML page (inline CSS, an inline SVG chart, no script)
telling what the ledger says happened. At the top a headline: stores per release now, the active
release trains, the stores needing attention (split across releases, last run failed, locked by an
operation no executor works on any more), each listed below with what to do. Then a summary per
operation, the release trains with their stages, stores per release over time (each train's stages
drawn below on the same time axis: run, then soak), the stores that failed or were rolled back,
and the event log, newest first, in pages.

The event log holds every event (``--max-events N`` keeps only the newest N, and says so). Pages
are server-side: one ``<tbody>`` of ``EVENTS_PER_PAGE`` rows each, the first (newest) shown, the
others shown when their anchor (``#events-pN``) is the URL's fragment, through the stylesheet's
``:target``; printing shows them all. Operations link to their newest event (``#ev-ID``) and
each event to its operation's row (``#op-ID``): plain anchors, no script. The page fits a phone:
tables scroll sideways in their own box, the chart scales with the viewport.

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
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from markupsafe import Markup

from edgefleet.atomic import write_atomic
from edgefleet.errors import InputError, ReportError
from edgefleet.redact import redact
from edgefleet.report_chart import draw_chart
from edgefleet.report_data import (
    DeadLock,
    OperationSummary,
    ReleaseChange,
    ReportData,
    ReportEvent,
    StoreOutcome,
    WaveSummary,
)
from edgefleet.report_view import EVENTS_PER_PAGE, page_context
from edgefleet.trains.timeline import collect_trains, expand_trains

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from edgefleet.rollout.ledger import Ledger

__all__ = [
    "RELEASE_CHANGE_KINDS",
    "DeadLock",
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
DECISIVE_STATUSES = ("succeeded", "failed", "rolled_back", "split")
"""RunState values that say where a store stands (skipped, refused, pending or running ones do not)."""


# -- collecting (the only ledger reader) ------------------------------------------------------------

def _ts(text: str) -> datetime:
    dt = datetime.fromisoformat(text)
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def collect_report(engine: Engine, *, rollout_ids: Sequence[str] | None = None, now: datetime | None = None,
                   title: str = "edgefleet rollout report", max_events: int | None = None,
                   max_operations: int = 500, stores: Collection[str] | None = None,
                   wall: datetime | None = None) -> ReportData:
    """Read operations, release changes and events from the ledger on ``engine``: every operation
    (the most recent ``max_operations``) or only ``rollout_ids`` (a train id among them stands for
    the train's child rollouts and its own events); with ``stores``, only those stores' runs,
    release changes and events, the operations that had any, and the trains that hold any (their
    stages counting those stores). Every event, or the newest ``max_events``. ``now`` is the
    generation time shown on the page (default: the newest ledger time, so the same ledger gives
    the same page). ``wall`` is the real time against which running operations' heartbeats are
    judged (None: a running operation counts as live)."""
    from edgefleet.rollout.ledger import Ledger

    if max_events is not None and max_events < 0:
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
    latest: dict[str, StoreOutcome] = {}  # store -> its latest decisive run
    for rec in records:
        runs = [r for r in ledger.runs(rec.id) if chosen is None or r.store in chosen]
        if chosen is not None and not runs:
            continue
        counts: dict[str, int] = {}
        for run in runs:
            counts[run.status.value] = counts.get(run.status.value, 0) + 1
            if selected is not None and run.store not in initial:
                initial[run.store] = run.from_release
            if run.status.value in DECISIVE_STATUSES:
                latest[run.store] = StoreOutcome(rec.id, run.store, run.status.value, run.from_release,
                                                 run.to_release, run.reason)
        waves = tuple(WaveSummary(w.index, w.name, w.status, w.budget, w.failures,
                                  sum(1 for r in runs if r.wave == w.index)) for w in ledger.waves(rec.id))
        problems = tuple(StoreOutcome(rec.id, r.store, r.status.value, r.from_release, r.to_release, r.reason)
                         for r in runs if r.status.value in PROBLEM_STATUSES)
        operations.append(OperationSummary(rec.id, rec.kind.value, rec.release, rec.status.value, rec.reason,
                                           rec.operator, rec.created_at, rec.updated_at, counts, waves, problems))

    rids = [*(o.id for o in operations), *named] if selected is not None else [None]
    changes, events, total = _changes_and_events(ledger, rids, chosen, max_events)
    current = {s: cur for s, (cur, _lkg) in ledger.store_releases(chosen).items()}
    trains = collect_trains(engine, rollout_ids=None if selected is None else [*selected, *named], stores=chosen)
    if now is None:
        stamps = [e.ts for e in events] + [o.updated_at for o in operations] + [t.updated_at for t in trains]
        now = max(stamps) if stamps else datetime(1970, 1, 1, tzinfo=UTC)
    return ReportData(title=title, generated_at=now, operations=tuple(operations), changes=changes,
                      events=events, events_total=total, initial=initial, current=current, trains=trains,
                      failed=tuple(o for _s, o in sorted(latest.items()) if o.status == "failed"),
                      dead_locks=_dead_locks(engine, chosen, wall))


def _changes_and_events(ledger: Ledger, rids: Sequence[str | None], chosen: Collection[str] | None,
                        max_events: int | None) -> tuple[tuple[ReleaseChange, ...], tuple[ReportEvent, ...], int]:
    """The release changes (in time order), the events (in time order: all, or the newest
    ``max_events``) and how many events there are, of the operations ``rids`` (None: all)."""
    raw_changes: list[dict[str, Any]] = []
    raw_events: list[dict[str, Any]] = []
    total = 0
    for rid in rids:
        for kind in RELEASE_CHANGE_KINDS:
            raw_changes += ledger.events(rid, kind=kind, limit=None, stores=chosen)
        raw_events += ledger.events(rid, limit=max_events, stores=chosen, newest_first=True)
        total += ledger.count_events(rid, stores=chosen)
    changes = sorted((ReleaseChange(_ts(e["ts"]), str(e["store"]), _release_of(e["detail"]), e["rollout"], e["kind"])
                      for e in raw_changes if e["store"]), key=lambda c: c.ts)
    raw_events.sort(key=lambda e: (_ts(e["ts"]), e["id"]))
    if max_events is not None:
        raw_events = raw_events[len(raw_events) - max_events:] if max_events else []
    events = tuple(ReportEvent(_ts(e["ts"]), e["rollout"], e["store"], e["node"], e["kind"], e["reason"] or "")
                   for e in raw_events)
    return tuple(changes), events, total


def _dead_locks(engine: Engine, chosen: Collection[str] | None, wall: datetime | None) -> tuple[DeadLock, ...]:
    """The stores (of ``chosen``) whose lock holder no executor works on (``edgefleet.rollout.liveness``)."""
    from edgefleet.rollout.liveness import dead_locks

    return tuple(DeadLock(h.store, h.holder, h.since, h.record.status.value if h.record else "unknown",
                          h.record.heartbeat_at if h.record else None) for h in dead_locks(engine, chosen, wall=wall))


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


def render_report(data: ReportData, *, max_events: int | None = None, page_size: int = EVENTS_PER_PAGE) -> str:
    """The whole page for ``data`` (templates ``report.html.j2`` and ``chart.svg.j2`` in
    ``edgefleet/templates``); the event log shows the newest ``max_events`` events (None: all of
    ``data.events``), newest first, ``page_size`` to a page."""
    return _templates().get_template("report.html.j2").render(
        **page_context(data, max_events=max_events, page_size=page_size), chart=_chart_of(data))


# -- the chart --------------------------------------------------------------------------------------

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
    return draw_chart(releases, points, start=min([*(t for t, _c in points[:1]), *spans]),
                  end=max([*(t for t, _c in points[-1:]), *ends]), trains=data.trains, now=data.generated_at)


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

