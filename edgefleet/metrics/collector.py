"""``LedgerCollector``: the Prometheus metrics of ``edgefleet serve``'s ``/metrics``, read from the
ledger (``edgefleet.rollout.ledger``) and the release trains (``edgefleet.trains.store``) at scrape
time through prometheus-client's custom-collector interface.

A scrape stays cheap at fleet size: the tables give their numbers through ``GROUP BY`` queries
(stores per release, store runs and operations by status, trains' stages), and the event log is
read incrementally: each scrape folds only the events written since the previous one into an
``EventTally`` (``edgefleet.metrics.tally``), which keeps the histograms and counters. Events
whose id was handed out before a slower transaction committed (PostgreSQL) are caught by reading
the last ``TAIL`` ids again and skipping those already folded.

A ledger that cannot be read answers ``edgefleet_ledger_up 0`` and the totals folded so far; the
scrape itself does not fail.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, Row, func, select
from sqlalchemy.exc import SQLAlchemyError

from edgefleet.errors import EdgefleetError
from edgefleet.metrics.tally import TALLIED_KINDS, DurationHistogram, EventTally, TalliedEvent
from edgefleet.releases.catalog import ReleaseRow
from edgefleet.rollout.ledger import EventRow, RolloutRow, StoreReleaseRow, StoreRunRow
from edgefleet.rollout.states import SkipCause
from edgefleet.state.db import session_scope
from edgefleet.trains.model import ACTIVE
from edgefleet.trains.store import TrainRow, TrainStore, TrainStoreRow

__all__ = ["METRICS", "LedgerCollector", "sample_names"]

METRICS: dict[str, tuple[str, str]] = {
    "edgefleet_ledger_up": ("gauge", "1 when the last scrape read the ledger, 0 when it could not"),
    "edgefleet_ledger_last_event_timestamp_seconds": ("gauge", "Time of the last event written to the ledger "
                                                               "(ledger clock)"),
    "edgefleet_release_stores": ("gauge", "Stores whose current release is this one (release=none: no release)"),
    "edgefleet_releases": ("gauge", "Releases in the catalog by state"),
    "edgefleet_operations": ("gauge", "Operations (rollouts, rollbacks, provisionings) by kind and status"),
    "edgefleet_store_runs": ("gauge", "Store runs of every operation by the operation's kind and the run's status"),
    "edgefleet_reimage_duration_seconds": ("histogram", "A node's reimage, started to Ready on the release (fleet "
                                                        "seconds), by reimage method"),
    "edgefleet_boot_duration_seconds": ("histogram", "A node's boot, reset (or in-band wipe) to Ready on the "
                                                     "release (fleet seconds), by reimage method"),
    "edgefleet_bmc_errors": ("counter", "BMC (Redfish) errors recorded in the ledger, by kind"),
    "edgefleet_talos_errors": ("counter", "Talos API errors recorded in the ledger, by kind"),
    "edgefleet_gate_outcomes": ("counter", "Health gate outcomes: node, store, pre/post hook, Talos version"),
    "edgefleet_window_waits": ("counter", "Waits for a maintenance window: a node reset put off to the next "
                                          "window, a store skipped or a repair not started as none opened"),
    "edgefleet_train_active": ("gauge", "1 for each active release train (running, paused, halted, rolling back)"),
    "edgefleet_train_stage": ("gauge", "1 for each stage of an active train, labelled with its status"),
    "edgefleet_train_stage_stores": ("gauge", "Stores of an active train's stage by their state"),
}
"""Every metric family ``/metrics`` exports: name -> (type, help)."""

_SUFFIXES = {"gauge": ("",), "counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


def sample_names() -> set[str]:
    """Every sample name the exposition can carry (a counter's ``_total``, a histogram's
    ``_bucket``/``_sum``/``_count``): what a dashboard may query."""
    return {name + suffix for name, (kind, _doc) in METRICS.items() for suffix in _SUFFIXES[kind]}


def _gauge(name: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, METRICS[name][1], labels=labels)


def _counter(name: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(name, METRICS[name][1], labels=labels)


def _histogram(name: str, per_method: dict[str, DurationHistogram]) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, METRICS[name][1], labels=["method"])
    for method, h in sorted(per_method.items()):
        fam.add_metric([method], h.cumulative(), sum_value=h.total)
    return fam


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


class LedgerCollector(Collector):
    """The metrics of the state store behind ``engine`` (register it on a ``CollectorRegistry``)."""

    TAIL = 1000
    """Ids below the newest one read again on each scrape (see the module docstring)."""
    CHUNK = 20_000

    def __init__(self, engine: Engine):
        self.engine = engine
        self.tally = EventTally()
        self._cursor = 0
        self._seen: set[int] = set()
        self._lock = threading.Lock()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # nothing is read at registration

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            try:
                families = self._read()
                up = 1.0
            except (SQLAlchemyError, EdgefleetError):
                families, up = [], 0.0
            yield from families
            if not up:  # the totals folded so far
                yield from self._event_families()
            g = _gauge("edgefleet_ledger_up", [])
            g.add_metric([], up)
            yield g

    # -- reading ----------------------------------------------------------------------------------

    def _read(self) -> list[Metric]:
        last = self._fold_new_events()
        out = [*self._table_families(), *self._train_families(), *self._event_families()]
        if last is not None:
            g = _gauge("edgefleet_ledger_last_event_timestamp_seconds", [])
            g.add_metric([], _utc(last).timestamp())
            out.append(g)
        return out

    def _fold_new_events(self) -> datetime | None:
        """Fold the events written since the last scrape (and any that committed late within the
        last ``TAIL`` ids); the newest event's time."""
        cols = (EventRow.id, EventRow.ts, EventRow.rollout, EventRow.node, EventRow.kind, EventRow.detail)
        tallied = EventRow.kind.in_(TALLIED_KINDS)
        with session_scope(self.engine) as s:
            newest = s.execute(select(EventRow.id, EventRow.ts).order_by(EventRow.id.desc()).limit(1)).first()
            self._fold(s.execute(select(*cols).where(tallied, EventRow.id > self._cursor - self.TAIL,
                                                     EventRow.id <= self._cursor)).all())
            while True:
                rows = s.execute(select(*cols).where(tallied, EventRow.id > self._cursor)
                                 .order_by(EventRow.id).limit(self.CHUNK)).all()
                self._fold(rows)
                if len(rows) < self.CHUNK:
                    break
            if newest is not None:  # events of other kinds move the cursor too
                self._cursor = max(self._cursor, newest.id)
            self._seen = {i for i in self._seen if i > self._cursor - self.TAIL}
        return newest.ts if newest is not None else None

    def _fold(self, rows: Sequence[Row[int, datetime, str | None, str | None, str, str]]) -> None:
        fresh = [r for r in rows if r.id not in self._seen]
        self.tally.add(TalliedEvent(r.id, _utc(r.ts), r.rollout, r.node, r.kind, json.loads(r.detail or "{}"))
                       for r in fresh)
        self._seen.update(r.id for r in fresh)
        if rows:
            self._cursor = max(self._cursor, max(r.id for r in rows))

    def _table_families(self) -> list[Metric]:
        stores = _gauge("edgefleet_release_stores", ["release"])
        releases = _gauge("edgefleet_releases", ["state"])
        ops = _gauge("edgefleet_operations", ["kind", "status"])
        runs = _gauge("edgefleet_store_runs", ["kind", "status"])
        waits = _counter("edgefleet_window_waits", ["cause"])
        with session_scope(self.engine) as s:
            on = {rel or "none": n for rel, n in s.execute(
                select(StoreReleaseRow.current, func.count()).group_by(StoreReleaseRow.current))}
            by_state: dict[str, int] = {}
            for name, state in s.execute(select(ReleaseRow.name, ReleaseRow.state)):
                on.setdefault(name, 0)  # a release no store runs yet shows 0, not nothing
                by_state[state] = by_state.get(state, 0) + 1
            for kind, status, n in s.execute(select(RolloutRow.kind, RolloutRow.status, func.count())
                                             .group_by(RolloutRow.kind, RolloutRow.status)):
                ops.add_metric([kind, status], n)
            for kind, status, n in s.execute(select(RolloutRow.kind, StoreRunRow.status, func.count())
                                             .join(RolloutRow, RolloutRow.id == StoreRunRow.rollout)
                                             .group_by(RolloutRow.kind, StoreRunRow.status)):
                runs.add_metric([kind, status], n)
            skipped = s.scalar(select(func.count()).select_from(StoreRunRow).where(
                StoreRunRow.detail.like(f'%"skipped":"{SkipCause.window.value}"%')))
        for rel, n in sorted(on.items()):
            stores.add_metric([rel], n)
        for state, n in sorted(by_state.items()):
            releases.add_metric([state], n)
        for cause, n in sorted({**self.tally.window_waits, "store_skipped": int(skipped or 0)}.items()):
            waits.add_metric([cause], n)
        return [stores, releases, ops, runs, waits]

    def _train_families(self) -> list[Metric]:
        active = _gauge("edgefleet_train_active", ["train", "release", "status"])
        stage = _gauge("edgefleet_train_stage", ["train", "index", "stage", "status"])
        counts = _gauge("edgefleet_train_stage_stores", ["train", "stage", "state"])
        trains = TrainStore(self.engine)
        with session_scope(self.engine) as s:
            rows = s.execute(select(TrainRow.id, TrainRow.release, TrainRow.status)
                             .where(TrainRow.status.in_([a.value for a in ACTIVE])).order_by(TrainRow.id)).all()
            per_stage = s.execute(select(TrainStoreRow.train, TrainStoreRow.stage, TrainStoreRow.state, func.count())
                                  .where(TrainStoreRow.train.in_([r.id for r in rows]))
                                  .group_by(TrainStoreRow.train, TrainStoreRow.stage, TrainStoreRow.state)).all()
        names: dict[tuple[str, int], str] = {}
        for r in rows:
            active.add_metric([r.id, r.release, r.status], 1)
            for st in trains.stages(r.id):
                names[(r.id, st.index)] = st.name
                stage.add_metric([r.id, str(st.index), st.name, st.status.value], 1)
        for train, index, state, n in per_stage:
            counts.add_metric([train, names.get((train, index), str(index)), state], n)
        return [active, stage, counts]

    def _event_families(self) -> list[Metric]:
        t = self.tally
        bmc = _counter("edgefleet_bmc_errors", ["kind"])
        for kind, n in sorted(t.bmc_errors.items()):
            bmc.add_metric([kind], n)
        talos = _counter("edgefleet_talos_errors", ["kind"])
        for kind, n in sorted(t.talos_errors.items()):
            talos.add_metric([kind], n)
        gates = _counter("edgefleet_gate_outcomes", ["gate", "outcome"])
        for (gate, outcome), n in sorted(t.gates.items()):
            gates.add_metric([gate, outcome], n)
        return [_histogram("edgefleet_reimage_duration_seconds", t.reimage),
                _histogram("edgefleet_boot_duration_seconds", t.boot), bmc, talos, gates]
