"""The rollout report: pure rendering of hand-made ReportData (escaping, scrubbing, the chart, the
cut event log), then a real ledger in a SQLite file written the way the executor writes it,
collected, rendered, parsed and checked against the store_release table; and the CLI command."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
import typer
from sqlalchemy import Engine
from typer.testing import CliRunner

from edgefleet.cli.report import report_cmd
from edgefleet.errors import ReportError, UnknownRollout
from edgefleet.report import (
    OperationSummary,
    ReleaseChange,
    ReportData,
    ReportEvent,
    StoreOutcome,
    WaveSummary,
    collect_report,
    release_timeline,
    render_report,
    scrub,
    write_report,
)
from edgefleet.rollout.ledger import (
    Kind,
    Ledger,
    RolloutStatus,
    RunStatus,
    stmt_event,
    stmt_node,
    stmt_run,
    stmt_store_release,
    stmt_wave,
)
from edgefleet.state.db import close_all, create_state_engine

T0 = datetime(2026, 11, 3, 21, 30, tzinfo=UTC)
PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"
VOID = {"meta", "br", "hr", "img", "input", "link", "area", "base", "col", "embed", "source", "track", "wbr"}
SVG_LEAVES = {"line", "path", "rect", "circle"}


class Page(HTMLParser):
    """Parses the page and records every structural problem: unbalanced or misnested tags."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.rows: dict[str, list[list[str]]] = {}
        self._table: list[str] = []
        self._cell: list[str] | None = None
        self._row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self._table.append(dict(attrs).get("class") or "")
        elif tag == "tr" and self._table:
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            self.rows.setdefault(self._table[-1], []).append(self._row)
            self._row = None
        elif tag == "table":
            self._table.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse(page: str) -> Page:
    p = Page()
    p.feed(page)
    p.close()
    assert p.errors == [], p.errors[:5]
    assert p.stack == [], f"unclosed tags: {p.stack}"
    return p


def series(p: Page) -> dict[str, int]:
    return {str(a["data-release"]): int(str(a["data-final"])) for t, a in p.tags
            if t == "path" and a.get("class") == "series"}


def self_contained(page: str) -> None:
    low = page.lower()
    assert "<script" not in low and "<link" not in low and "<iframe" not in low and "<img" not in low
    assert not re.search(r"\bsrc\s*=", low)
    # links only to places on the page itself (anchors), never to anything outside it
    assert re.findall(r"\bhref\s*=\s*\"?([^\s\">]*)", low) == re.findall(r"\bhref=\"(#[a-z0-9_.:-]+)\"", low)
    assert "@import" not in low and "url(" not in low


def no_secrets(page: str) -> None:
    assert "PRIVATE KEY" not in page and "MIIEvQ" not in page
    assert "token" not in page.lower() and "hunter2" not in page
    assert not re.search(r"[a-z]+://[^\s\"'<>]*\?[^\s\"'<>\[]", page), "a URL with a query string"


# -- pure ---------------------------------------------------------------------------------------------

def _change(minutes: float, store: str, release: str | None, kind: str = "store_succeeded") -> ReleaseChange:
    return ReleaseChange(T0 + timedelta(minutes=minutes), store, release, "ro-1", kind)


def _data(**kw: object) -> ReportData:
    ops = (OperationSummary("ro-1", "rollout", "v2", "succeeded", "", "alice", T0, T0 + timedelta(hours=1),
                            {"succeeded": 2, "rolled_back": 1},
                            (WaveSummary(0, "canary", "passed", 0, 0, 1), WaveSummary(1, "wave 1", "passed", 1, 1, 2)),
                            (StoreOutcome("ro-1", "s3", "rolled_back", "v1", "v2", "node s3-n1 not Ready"),)),)
    events = tuple(ReportEvent(T0 + timedelta(minutes=i), "ro-1", f"s{i % 3 + 1}", None, "store_started", f"why {i}")
                   for i in range(5))
    base: dict[str, object] = {
        "title": "Demo <report>", "generated_at": T0 + timedelta(hours=2), "operations": ops,
        "changes": (_change(5, "s1", "v2"), _change(20, "s2", "v2"), _change(20, "s3", "v2"),
                    _change(40, "s3", "v1", "store_rolled_back")),
        "events": events, "events_total": 5, "initial": {"s1": "v1", "s2": "v1", "s3": "v1"},
        "current": {"s1": "v2", "s2": "v2", "s3": "v1"}}
    base.update(kw)
    return ReportData(**base)  # type: ignore[arg-type]


def test_timeline_replays_changes_and_merges_one_instant() -> None:
    d = _data()
    releases, points = release_timeline(d.initial, d.changes, start=T0)
    assert releases == ["v1", "v2"]
    assert [(int((t - T0).total_seconds() // 60), c) for t, c in points] == [
        (0, {"v1": 3, "v2": 0}), (5, {"v1": 2, "v2": 1}), (20, {"v1": 0, "v2": 3}), (40, {"v1": 1, "v2": 2})]
    assert release_timeline({}, []) == ([], [])
    # provisioning: stores on no release are counted nowhere
    _rel, pts = release_timeline({}, [_change(1, "a", "v1"), _change(2, "b", "v1")])
    assert [c for _t, c in pts] == [{"v1": 0}, {"v1": 1}, {"v1": 2}]


def test_render_has_summary_chart_problems_and_log() -> None:
    page = render_report(_data())
    p = parse(page)
    self_contained(page)
    assert page.startswith("<!DOCTYPE html>") and "Demo &lt;report&gt;" in page
    assert "2026-11-03 23:30:00Z" in page  # the generation time given, not the clock
    assert series(p) == {"v1": 1, "v2": 2}
    text = " ".join(p.text)
    assert "time (UTC" in text and "stores" in text
    assert "v1: 1 store(s) at the end" in text and "v2: 2 store(s) at the end" in text
    op = p.rows["operations"][1]
    assert op[:4] == ["ro-1", "rollout", "v2", "succeeded"] and "rolled_back: 1" in op[5]
    assert "1 wave 1: passed, 2 store(s), 1 failed, budget 1" in op[6]
    assert p.rows["problems"][1] == ["ro-1", "s3", "rolled_back", "v1", "v2", "node s3-n1 not Ready"]
    assert [r[5] for r in p.rows["events"][1:]] == [f"why {i}" for i in reversed(range(5))]  # newest first
    assert "older ones are left out" not in page
    assert render_report(_data()) == page  # pure: same data, same page


def test_clean_provisionings_in_a_row_fold_into_one_row() -> None:
    def prov(i: int, status: str = "succeeded", release: str = "v1") -> OperationSummary:
        problems = () if status == "succeeded" else (StoreOutcome(f"pr-{i}", f"s{i}", "failed", None, release, "x"),)
        return OperationSummary(f"pr-{i}", "provision", release, status, "", "ops", T0 + timedelta(minutes=i),
                                T0 + timedelta(minutes=i), {status: 1}, (), problems)

    ro = _data().operations[0]
    ops = (*(prov(i) for i in range(4)), prov(4, "failed"), prov(5), prov(6), ro,
           *(prov(i, release="v2") for i in range(7, 10)))
    rows = parse(render_report(_data(operations=ops))).rows["operations"][1:]
    assert [r[:4] for r in rows] == [
        ["4 provisionings pr-0 pr-1 pr-2 pr-3", "provision", "v1", "succeeded"],
        ["pr-4", "provision", "v1", "failed"],  # a failure keeps its own row
        ["pr-5", "provision", "v1", "succeeded"], ["pr-6", "provision", "v1", "succeeded"],  # two: not folded
        ["ro-1", "rollout", "v2", "succeeded"],
        ["3 provisionings pr-7 pr-8 pr-9", "provision", "v2", "succeeded"]]
    assert rows[0][5] == "succeeded: 4" and "2026-11-03 21:30" in rows[0][7] and "2026-11-03 21:33" in rows[0][7]


def test_render_escapes_and_scrubs_every_string() -> None:
    nasty = ('<script>alert("x")</script> fetch http://10.0.0.1:8080/seed/s1?token=abc&sig=1 failed; '
             f"password=hunter2 {PEM}")
    ops = (OperationSummary("ro-<b>", "rollout", "v2\"><svg onload=1>", "failed", nasty, "eve", T0, T0, {}, (),
                            (StoreOutcome("ro-<b>", "s<1>", "failed", None, "v2", nasty),)),)
    d = _data(operations=ops, events=(ReportEvent(T0, "ro-<b>", "s<1>", "n&1", "store_gate_failed", nasty),),
              events_total=1)
    page = render_report(d)
    p = parse(page)
    self_contained(page)
    no_secrets(page)
    assert "&lt;script&gt;" in page and "ro-&lt;b&gt;" in page and "n&amp;1" in page
    assert "http://10.0.0.1:8080/seed/s1?[query removed]" in page and "[PEM block removed]" in page
    assert not [t for t, a in p.tags if t in ("b", "script") or "onload" in a]
    assert scrub("see https://h/x?a=1 and api_key: k1, api-token=abc") == \
        "see https://h/x?[query removed] and [secret removed], [secret removed]"


def test_event_log_is_cut_with_a_note() -> None:
    p = parse(render_report(_data(events_total=12), max_events=3))
    assert [r[5] for r in p.rows["events"][1:]] == ["why 4", "why 3", "why 2"]  # the newest kept
    assert "The log shows the newest 3 of 12 events; the 9 older ones are left out" in " ".join(p.text)
    empty = render_report(_data(changes=(), initial={}, events=(), events_total=0, operations=()))
    pe = parse(empty)
    assert series(pe) == {} and "<svg" not in empty
    assert "No store changed release" in empty and "The ledger has no operations." in empty


def test_write_report_is_atomic_and_names_the_path(tmp_path: Path) -> None:
    out = tmp_path / "out" / "report.html"
    write_report(out, "<p>one</p>")
    write_report(out, "<p>two</p>")
    assert out.read_text() == "<p>two</p>"
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]  # no temporary left behind
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReportError, match=r"file/report.html"):
        write_report(tmp_path / "file" / "report.html", "<p/>")


# -- a real ledger --------------------------------------------------------------------------------------

@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = create_state_engine(f"sqlite:///{tmp_path / 'edgefleet.db'}")
    yield e
    e.dispose()


def _operation(ledger: Ledger, rid: str, kind: Kind, release: str, at: datetime,
               runs: list[tuple[str, str | None, str]], budget: int = 1) -> None:
    ledger.create_rollout(rollout_id=rid, kind=kind, release=release, now=at, policy={}, plan={}, operator="test",
                          waves=[(0, "all", budget)], runs=[(s, 0, fr, to) for s, fr, to in runs])
    ledger.set_rollout(rid, at, status=RolloutStatus.running.value)


def _store_done(ledger: Ledger, rid: str, store: str, to: str, lkg: str | None, at: datetime) -> None:
    """As the executor records a store reaching its target: run, store_release and event together."""
    ledger.write(stmt_event(at - timedelta(minutes=3), "store_started", rollout=rid, store=store, detail={"to": to}),
                 stmt_run(rid, store, status=RunStatus.succeeded, started_at=at - timedelta(minutes=3), ended_at=at),
                 *stmt_store_release(store, to, lkg, at),
                 stmt_event(at, "store_succeeded", rollout=rid, store=store, detail={"release": to}))


def _fleet_story(ledger: Ledger) -> dict[str, str]:
    """Provision four stores on v1, roll v2 out to them and to s5 (s4 and s5 rolled back, s3
    failed), roll v2 back (halted after one store)."""
    ids = {}
    for i, s in enumerate(["s1", "s2", "s3", "s4"]):
        rid = ids[f"pr-{s}"] = f"pr-{s}"
        _operation(ledger, rid, Kind.provision, "v1", T0 + timedelta(minutes=i), [(s, None, "v1")])
        # finishing in a different order than started: the log must still be in time order
        _store_done(ledger, rid, s, "v1", "v1", T0 + timedelta(minutes=20 - 3 * i))
        ledger.set_rollout(rid, T0 + timedelta(minutes=21), status=RolloutStatus.succeeded.value)
    ro = ids["ro"] = "ro-v2"
    t = T0 + timedelta(hours=1)
    _operation(ledger, ro, Kind.rollout, "v2", t, [(s, "v1", "v2") for s in ("s1", "s2", "s3", "s4", "s5")],
               budget=2)
    _store_done(ledger, ro, "s1", "v2", "v1", t + timedelta(minutes=10))
    _store_done(ledger, ro, "s2", "v2", "v1", t + timedelta(minutes=30))
    why = "node s4-n2 not healthy on v2: NotReady (seed http://127.0.0.1:9/seed?token=abc)"
    ledger.write(stmt_event(t + timedelta(minutes=40), "store_gate_failed", rollout=ro, store="s4",
                            node="s4-n2", reason=why),
                 stmt_run(ro, "s4", status=RunStatus.rolled_back, ended_at=t + timedelta(minutes=50),
                          reason=f"{why}; rolled back to v1"),
                 *stmt_store_release("s4", "v1", "v1", t + timedelta(minutes=50)),
                 stmt_event(t + timedelta(minutes=50), "store_rolled_back", rollout=ro, store="s4", reason=why,
                            detail={"release": "v1"}))
    # s5 was never provisioned through edgefleet (no store_release row until its rollback)
    ledger.write(stmt_run(ro, "s5", status=RunStatus.rolled_back, reason="gate failed; rolled back to v1"),
                 *stmt_store_release("s5", "v1", "v1", t + timedelta(minutes=52)),
                 stmt_event(t + timedelta(minutes=52), "store_rolled_back", rollout=ro, store="s5",
                            reason="gate failed", detail={"release": "v1"}))
    ledger.write(stmt_run(ro, "s3", status=RunStatus.failed, ended_at=t + timedelta(minutes=55),
                          reason=f"reimage failed: BMC said {PEM}"),
                 stmt_event(t + timedelta(minutes=55), "reimage_failed", rollout=ro, store="s3", node="s3-n1",
                            reason="BMC 503 password=hunter2"))
    ledger.write(stmt_wave(ro, 0, status="passed", failures=2))
    ledger.set_rollout(ro, t + timedelta(hours=1), status=RolloutStatus.failed.value, reason="1 store failed")
    rb = ids["rb"] = "rb-v2"
    t = T0 + timedelta(hours=3)
    _operation(ledger, rb, Kind.rollback, "v2", t, [("s1", "v2", "v1"), ("s2", "v2", "v1")])
    _store_done(ledger, rb, "s2", "v1", "v1", t + timedelta(minutes=5))
    ledger.set_rollout(rb, t + timedelta(minutes=30), status=RolloutStatus.halted.value, reason="stopped")
    return ids


def test_collected_ledger_renders_what_store_release_holds(engine: Engine) -> None:
    ledger = Ledger(engine)
    ids = _fleet_story(ledger)
    data = collect_report(engine, now=T0 + timedelta(days=1))
    page = render_report(data)
    p = parse(page)
    self_contained(page)
    no_secrets(page)

    current = Counter(cur for cur, _lkg in ledger.store_releases().values())
    assert current == {"v1": 4, "v2": 1}  # s1 stayed on v2: the rollback halted before it
    assert series(p) == dict(current)
    assert "v2: 1 store(s) at the end" in " ".join(p.text)

    log = p.rows["events"][1:]
    assert len(log) == data.events_total == ledger.count_events() == len(ledger.events())
    times = [r[0] for r in log]
    assert times == sorted(times, reverse=True)  # newest first
    assert times[::-1] != [r[0] for r in _by_id(ledger)]  # ordered by time, not by id
    assert [r[0] for r in p.rows["operations"][1:]] == ["4 provisionings pr-s1 pr-s2 pr-s3 pr-s4", "ro-v2", "rb-v2"]
    ro = next(r for r in p.rows["operations"][1:] if r[0] == ids["ro"])
    assert ro[3] == "failed" and "rolled_back: 2" in ro[5] and "failed: 1" in ro[5]
    assert "0 all: passed, 5 store(s), 2 failed, budget 2" in ro[6]
    problems = {r[1]: r for r in p.rows["problems"][1:]}
    assert set(problems) == {"s3", "s4", "s5"} and "s4-n2 not healthy" in problems["s4"][5]
    assert problems["s4"][2] == "rolled_back" and "[PEM block removed]" in problems["s3"][5]

    cut = render_report(collect_report(engine, max_events=7), max_events=7)
    pc = parse(cut)
    assert [r[0] for r in pc.rows["events"][1:]] == times[:7]  # the newest seven
    assert f"the newest 7 of {data.events_total} events" in " ".join(pc.text)


def _by_id(ledger: Ledger) -> list[list[str]]:
    return [[e["ts"][:19].replace("T", " ") + "Z"] for e in ledger.events()]


def test_a_selection_starts_from_the_stores_previous_releases(engine: Engine) -> None:
    ledger = Ledger(engine)
    ids = _fleet_story(ledger)
    data = collect_report(engine, rollout_ids=[ids["ro"]])
    assert [op.id for op in data.operations] == ["ro-v2"]
    assert dict(data.initial) == {"s1": "v1", "s2": "v1", "s3": "v1", "s4": "v1", "s5": "v1"}
    p = parse(render_report(data))
    assert series(p) == {"v1": 3, "v2": 2}  # after ro-v2: s1, s2 on v2; s3 untouched, s4 and s5 back on v1
    assert {r[1] for r in p.rows["events"][1:]} == {"ro-v2"}
    assert data.generated_at == T0 + timedelta(hours=2)  # no clock: the newest ledger time
    with pytest.raises(UnknownRollout, match=r"no rollout 'nope'.*rb-v2"):
        collect_report(engine, rollout_ids=["nope"])


def test_report_command_writes_the_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: Engine) -> None:
    _fleet_story(Ledger(engine))
    monkeypatch.setenv("EDGEFLEET_STATE_URL", f"sqlite:///{tmp_path / 'edgefleet.db'}")
    app = typer.Typer()
    app.command()(report_cmd)
    out = tmp_path / "out" / "report.html"
    try:
        res = CliRunner().invoke(app, ["--out", str(out), "--max-events", "5", "ro-v2", "rb-v2"])
        assert res.exit_code == 0, res.output
        assert "wrote" in res.output and "2 operation(s)" in res.output and "5 of " in res.output
        p = parse(out.read_text())
        assert [r[0] for r in p.rows["operations"][1:]] == ["ro-v2", "rb-v2"] and len(p.rows["events"]) == 6
        bad = CliRunner().invoke(app, ["--out", str(out), "nope"])
        assert isinstance(bad.exception, UnknownRollout) and bad.exception.exit_code == 2
    finally:
        close_all()


def test_a_split_store_is_at_the_top_of_the_report_and_status_with_the_command(engine: Engine) -> None:
    from edgefleet.rollout import operations as ops
    from edgefleet.rollout.states import RunEvent

    ledger = Ledger(engine)
    ro = "ro-split"
    _operation(ledger, ro, Kind.rollout, "v2", T0, [("s1", "v1", "v2"), ("s2", "v1", "v2")])
    _store_done(ledger, ro, "s2", "v2", "v1", T0 + timedelta(minutes=5))
    s1 = next(r for r in ledger.runs(ro) if r.store == "s1")
    ledger.advance(s1, RunEvent.start, rollout=ro)
    s1 = next(r for r in ledger.runs(ro) if r.store == "s1")
    ledger.advance(s1, RunEvent.split_, rollout=ro, reason="gate failed; rolling back to v1 failed too")
    ledger.write(*stmt_node("s1-n1", "s1", "v2", True, T0), *stmt_node("s1-n2", "s1", "v1", False, T0))
    page = render_report(collect_report(engine, now=T0 + timedelta(hours=1)))
    split_at, ops_at = page.index("Stores split across releases"), page.index("<h2>Operations</h2>")
    assert split_at < ops_at
    assert f"<code>edgefleet rollout resume {ro}</code>" in page[split_at:ops_at]
    st = ops.status(engine, ro)
    assert st["split"] == [{"store": "s1", "from_release": "v1", "to_release": "v2",
                            "reason": "gate failed; rolling back to v1 failed too",
                            "command": f"edgefleet rollout resume {ro}",
                            "nodes": {"s1-n1": {"release": "v2", "ready": True},
                                      "s1-n2": {"release": "v1", "ready": False}}}]
