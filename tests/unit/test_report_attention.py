"""The report's headline and the stores needing attention, from a real ledger in a SQLite file:
a store whose last decisive run failed (and not one that failed, then succeeded), a store locked
by an operation no executor works on (stale heartbeat, finished, gone) and not one held by a live
executor or kept by a split run; and the event log's pages, newest first, with their anchors."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from edgefleet.report import ReportData, ReportEvent, collect_report, render_report
from edgefleet.report_view import anchor
from edgefleet.rollout.ledger import Kind, Ledger, RolloutStatus, RunStatus, stmt_event, stmt_run
from edgefleet.rollout.liveness import EXECUTOR_STALE_AFTER
from edgefleet.rollout.states import RunEvent
from edgefleet.state.db import create_state_engine
from tests.unit.test_report import _operation, _store_done, parse, self_contained

T0 = datetime(2026, 11, 3, 21, 30, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = create_state_engine(f"sqlite:///{tmp_path / 'edgefleet.db'}")
    yield e
    e.dispose()


def _story(ledger: Ledger) -> None:
    """s1 failed in ro-1 then succeeded in ro-2; s2 failed in ro-2 (skipped in ro-3 after that);
    s3 split by ro-2 (its lock kept); s4 held by ro-live (fresh heartbeat), s5 by ro-stale
    (heartbeat older than the limit), s6 by ro-done (succeeded, the lock left behind), s7 by an
    operation the ledger does not know."""
    _operation(ledger, "ro-1", Kind.rollout, "v2", T0, [("s1", "v1", "v2")])
    ledger.write(stmt_run("ro-1", "s1", status=RunStatus.failed, ended_at=T0, reason="BMC 503"))
    _operation(ledger, "ro-2", Kind.rollout, "v2", T0 + timedelta(hours=1),
               [("s1", "v1", "v2"), ("s2", "v1", "v2"), ("s3", "v1", "v2")])
    _store_done(ledger, "ro-2", "s1", "v2", "v1", T0 + timedelta(hours=1, minutes=20))
    ledger.write(stmt_run("ro-2", "s2", status=RunStatus.failed, ended_at=T0 + timedelta(hours=1), reason="gate"))
    s3 = next(r for r in ledger.runs("ro-2") if r.store == "s3")
    ledger.advance(s3, RunEvent.start, rollout="ro-2")
    ledger.advance(next(r for r in ledger.runs("ro-2") if r.store == "s3"), RunEvent.split_, rollout="ro-2",
                   reason="rolling back failed too")
    ledger.acquire_lock("s3", "ro-2", T0 + timedelta(hours=1))
    _operation(ledger, "ro-3", Kind.rollout, "v2", T0 + timedelta(hours=2), [("s2", "v1", "v2")])
    ledger.write(stmt_run("ro-3", "s2", status=RunStatus.skipped, reason="window never opened"))
    wall = T0 + timedelta(hours=5)
    for rid, store, beat in (("ro-live", "s4", wall - timedelta(seconds=5)),
                             ("ro-stale", "s5", wall - EXECUTOR_STALE_AFTER - timedelta(seconds=1))):
        _operation(ledger, rid, Kind.rollout, "v2", T0 + timedelta(hours=3), [(store, "v1", "v2")])
        ledger.set_rollout(rid, T0 + timedelta(hours=3), heartbeat_at=beat)
        ledger.acquire_lock(store, rid, T0 + timedelta(hours=3))
    _operation(ledger, "ro-done", Kind.provision, "v2", T0 + timedelta(hours=4), [("s6", None, "v2")])
    ledger.set_rollout("ro-done", T0 + timedelta(hours=4), status=RolloutStatus.succeeded.value)
    ledger.acquire_lock("s6", "ro-done", T0 + timedelta(hours=4))
    ledger.acquire_lock("s7", "ro-gone", T0 + timedelta(hours=4))


def test_stores_needing_attention_and_the_headline(engine: Engine) -> None:
    ledger = Ledger(engine)
    _story(ledger)
    wall = T0 + timedelta(hours=5)
    data = collect_report(engine, now=wall, wall=wall)
    assert [(f.store, f.rollout, f.reason) for f in data.failed] == [("s2", "ro-2", "gate")]  # s1 recovered
    assert [(d.store, d.holder, d.holder_status) for d in data.dead_locks] == [
        ("s5", "ro-stale", "running"), ("s6", "ro-done", "succeeded"), ("s7", "ro-gone", "unknown")]
    # without a wall clock a running operation counts as live
    assert [d.store for d in collect_report(engine, now=wall).dead_locks] == ["s6", "s7"]
    # a selection of stores: only theirs
    assert [d.store for d in collect_report(engine, wall=wall, stores={"s4", "s5"}).dead_locks] == ["s5"]

    page = render_report(data)
    p = parse(page)
    self_contained(page)
    head = page[page.index('<section class="headline"'):page.index("</section>")]
    text = re.sub(r"<[^>]+>", "", head)
    assert "1 split across releases, 1 failed, 3 locked by a dead operation" in text
    assert page.index('id="headline"') < page.index('id="attention"') < page.index("<h2>Operations</h2>")
    assert [r[0] for r in p.rows["failed-stores"][1:]] == ["s2"]
    assert p.rows["failed-stores"][1][4] == "edgefleet rollout start -r v2 --limit s2"
    locked = {r[0]: r for r in p.rows["dead-locks"][1:]}
    assert set(locked) == {"s5", "s6", "s7"}
    assert "its executor stopped" in locked["s5"][3] and "the operation is succeeded" in locked["s6"][3]
    assert locked["s5"][4] == "edgefleet rollout resume ro-stale or edgefleet rollout abort ro-stale"
    assert 'href="#op-ro-stale"' in page and 'id="op-ro-stale"' in page


def test_a_quiet_fleet_has_a_calm_headline(engine: Engine) -> None:
    ledger = Ledger(engine)
    _operation(ledger, "pr-1", Kind.provision, "v1", T0, [("s1", None, "v1")])
    _store_done(ledger, "pr-1", "s1", "v1", "v1", T0 + timedelta(minutes=5))
    ledger.set_rollout("pr-1", T0 + timedelta(minutes=6), status=RolloutStatus.succeeded.value)
    page = render_report(collect_report(engine, wall=T0 + timedelta(days=1)))
    text = re.sub(r"<[^>]+>", "", page)
    assert "1 on v1" in text and "0 split across releases, 0 failed, 0 locked by a dead operation" in text
    assert 'id="attention"' not in page and "0 active" in text


def test_event_pages_newest_first_with_anchors() -> None:
    events = tuple(ReportEvent(T0 + timedelta(seconds=i), "ro-a" if i < 150 else "ro-b", f"s{i % 4}", None,
                               "step", f"event {i}") for i in range(250))
    data = ReportData(title="t", generated_at=T0 + timedelta(hours=1), operations=(), changes=(), events=events,
                      events_total=250)
    page = render_report(data, page_size=100)
    p = parse(page)
    bodies = re.findall(r'<tbody class="page" id="([^"]+)">', page)
    assert bodies == ["events-p1", "events-p2", "events-p3"]
    rows = [r for r in p.rows["events"][1:] if len(r) == 6]
    assert [r[5] for r in rows] == [f"event {i}" for i in reversed(range(250))]  # all, newest first
    heads = [r[0] for r in p.rows["events"][1:] if len(r) == 1]
    assert heads[0].startswith("Page 1 of 3: events 1 to 100") and "older" in heads[0] and "newer" not in heads[0]
    assert heads[2].startswith("Page 3 of 3: events 201 to 250") and "older" not in heads[2]
    # each operation's newest event carries its anchor; every link leads to an id on the page
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))
    assert all(h[1:] in ids for h in re.findall(r'href="(#[^"]+)"', page))
    assert re.search(r'<tr id="ev-ro-b"><td class="time">2026-11-03 21:34:09Z', page)  # event 249
    assert re.search(r'<tr id="ev-ro-a"><td class="time">2026-11-03 21:32:29Z', page)  # event 149, page 1
    assert "older ones are left out" not in page


def test_anchors_are_plain_tokens() -> None:
    assert anchor("op", "ro-20261203T175000-ab12cd") == "op-ro-20261203T175000-ab12cd"
    odd = anchor("op", 'ro "x" <y>')
    assert re.fullmatch(r"op-h[0-9a-f]{16}", odd) and odd != anchor("op", 'ro "x" <z>')


def test_the_newest_events_are_kept_when_cut(engine: Engine) -> None:
    ledger = Ledger(engine)
    _operation(ledger, "ro-1", Kind.rollout, "v2", T0, [("s1", "v1", "v2")])
    # written out of time order: the newest by time is not the last written
    ledger.write(*(stmt_event(T0 + timedelta(minutes=i), "step", rollout="ro-1", store="s1", reason=f"e{i}")
                   for i in (3, 1, 4, 0, 2)))
    data = collect_report(engine, max_events=2)
    assert [e.reason for e in data.events] == ["e3", "e4"]  # the newest two by time, in time order
    assert data.events_total == len(ledger.events()) == len(collect_report(engine).events) == 6
