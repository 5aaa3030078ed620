"""The HTML report in a real browser: Debian's chromium driven by Playwright (no browser download).

A real ledger in a SQLite file holds a fleet's story (provisionings, a rollout with a failed and
rolled-back stores, a halted rollback, a store left split, a release train still running) and an
operation killed mid-way: running, its heartbeat long stale, still holding a store's lock, with
hundreds of events (several pages of the log), the newest with a long reason. The page it renders
is opened at 1400 and 420 px wide (screenshots under the test's tmp dir) and checked as a person
sees it: the headline above the fold, no sideways scrolling of the page (tables scroll in their own
box, the chart scales), the newest event on the first page, every page and every operation's
events reachable through their anchors, long reasons wrapped between words and never cut.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from edgefleet.report import collect_report, render_report, write_report
from edgefleet.rollout.ledger import Kind, Ledger, stmt_event
from edgefleet.rollout.states import RunEvent
from edgefleet.state.db import create_state_engine
from tests.unit.test_report import _fleet_story, _operation, _store_done
from tests.unit.test_report_trains import _train_story

pytestmark = pytest.mark.slow

DEAD_AT = datetime(2026, 12, 11, 8, 0, tzinfo=UTC)
STEPS = 290  # events of the killed operation: four pages of 100 with the rest of the story
LONG = ("node s6-n1 did not come back after the reimage: the BMC accepted the virtual media insert and the "
        "one-time boot override, then reported the system powered on while the Talos API never answered on "
        "port 50000 within the node timeout; check the console of s6-n1 through its BMC, the boot order in "
        "its firmware setup and whether the seed server address is reachable from the store's network "
        "(image sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08, checked)")
WIDTHS = ((1400, 900), (420, 860))


def _chromium() -> str:
    """Debian's chromium; skipped when it is missing, unless CI is set (then the test fails)."""
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if Path(path).exists():
        return path
    msg = f"Debian's chromium is not installed ({path}): apt-get install chromium"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = create_state_engine(f"sqlite:///{tmp_path / 'edgefleet.db'}")
    yield e
    e.dispose()


def _story(engine: Engine) -> datetime:
    """The fleet's story (see the module docstring); returns the wall-clock time to judge it at."""
    ledger = Ledger(engine)
    _fleet_story(ledger)
    _train_story(engine)
    ro = "ro-split"
    _operation(ledger, ro, Kind.rollout, "v2", DEAD_AT - timedelta(hours=3), [("s7", "v1", "v2"), ("s8", "v1", "v2")])
    _store_done(ledger, ro, "s8", "v2", "v1", DEAD_AT - timedelta(hours=2))
    s7 = next(r for r in ledger.runs(ro) if r.store == "s7")
    ledger.advance(s7, RunEvent.start, rollout=ro)
    s7 = next(r for r in ledger.runs(ro) if r.store == "s7")
    ledger.advance(s7, RunEvent.split_, rollout=ro, reason="gate failed; rolling back to v1 failed too")
    ledger.acquire_lock("s7", ro, DEAD_AT - timedelta(hours=2))
    dead = "ro-killed"
    _operation(ledger, dead, Kind.rollout, "v3", DEAD_AT, [("s6", "v1", "v3")])
    ledger.set_rollout(dead, DEAD_AT, heartbeat_at=DEAD_AT)
    ledger.acquire_lock("s6", dead, DEAD_AT)
    ledger.write(*(stmt_event(DEAD_AT + timedelta(seconds=10 * i), "reimage_step", rollout=dead, store="s6",
                              node="s6-n1", reason=f"step {i} of the reimage") for i in range(STEPS)))
    ledger.write(stmt_event(DEAD_AT + timedelta(hours=1), "node_not_ready", rollout=dead, store="s6", node="s6-n1",
                            reason=LONG))
    return DEAD_AT + timedelta(hours=2)  # the executor died: its heartbeat is two hours old


def _page_file(engine: Engine, tmp_path: Path) -> Path:
    wall = _story(engine)
    data = collect_report(engine, now=wall, wall=wall)
    assert [d.store for d in data.dead_locks] == ["s6"] and data.events_total > 300
    return write_report(tmp_path / "report.html", render_report(data))


def _visible_rows(page: Any) -> list[str]:
    return list(page.eval_on_selector_all(
        "table.events tbody.page tr:not(.page-head)",
        "rows => rows.filter(r => r.getClientRects().length > 0).map(r => r.innerText)"))


def test_report_in_chromium_at_desktop_and_phone_width(engine: Engine, tmp_path: Path) -> None:
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    url = _page_file(engine, tmp_path).as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            for width, height in WIDTHS:
                page = browser.new_page(viewport={"width": width, "height": height})
                page.goto(url)
                page.screenshot(path=str(tmp_path / f"report-{width}.png"), full_page=True)
                page.screenshot(path=str(tmp_path / f"report-{width}-fold.png"))
                # the headline, whole, above the fold
                head = page.locator("#headline")
                assert head.is_visible()
                box = head.bounding_box()
                assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= height, (width, box)
                text = head.inner_text()
                assert "Stores per release now" in text and "Active release trains" in text, text
                assert "1 split across releases, 2 failed, 1 locked by a dead operation" in text, text
                # the page body does not overflow sideways; wide tables scroll in their own box
                assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), width
                if width < 500:
                    assert page.evaluate("""() => { const b = document.querySelector('.scroll.log');
                                              return b.scrollWidth > b.clientWidth; }""")
                # the chart scales with the viewport, its labels stay readable
                chart = page.locator("svg.chart").bounding_box()
                assert chart is not None and chart["width"] <= width - 8 and chart["width"] >= min(960, width) * 0.8
                tick = page.locator("svg.chart text.tick").first.bounding_box()
                assert tick is not None and tick["height"] >= 9, tick
                # the newest event first, on the first page; the oldest not shown
                rows = _visible_rows(page)
                assert len(rows) == 100 and "node_not_ready" in rows[0], rows[:2]
                assert f"step {STEPS - 1} of the reimage" in rows[1]
                page.close()
        finally:
            browser.close()


def test_every_page_and_every_operations_events_are_reachable(engine: Engine, tmp_path: Path) -> None:
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    url = _page_file(engine, tmp_path).as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 420, "height": 860})
            page.goto(url)
            pages = page.eval_on_selector_all("nav.pager a", "as => as.map(a => a.getAttribute('href'))")
            assert len(pages) >= 4, pages
            seen: list[str] = []
            for href in pages:  # the pager's links: each shows its page alone
                page.click(f"nav.pager a[href='{href}']")
                rows = _visible_rows(page)
                assert rows and not set(rows) & set(seen), href
                seen += rows
            total = page.eval_on_selector_all("table.events tbody.page tr:not(.page-head)", "rs => rs.length")
            assert len(seen) == total  # every event on exactly one page
            # an operation's id leads to its newest event, wherever its page is; the event back to it
            page.click("table.operations a[href='#ev-ro-v2']")
            assert page.evaluate("location.hash") == "#ev-ro-v2"
            target = page.locator("#ev-ro-v2")
            assert target.is_visible() and "ro-v2" in target.inner_text()
            assert "node_not_ready" not in " ".join(_visible_rows(page))  # another page than the first
            target.locator("a[href='#op-ro-v2']").click()
            assert page.locator("#op-ro-v2").is_visible()
            # the long reason wraps between words, never inside one, and is shown whole
            page.click("nav.pager a[href='#events-p1']")
            cell = page.locator("table.events tbody.page:first-of-type td.reason").first
            assert cell.inner_text() == LONG
            lines_and_cut_words = page.evaluate("""cell => {
                const text = cell.firstChild, words = [], range = document.createRange();
                let at = 0;
                for (const w of text.data.split(' ')) {  // a line may also break after a hyphen
                    range.setStart(text, at); range.setEnd(text, at + w.length);
                    const tops = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
                    if (tops.size !== 1 && !w.includes('-')) words.push(w);
                    at += w.length + 1;
                }
                range.setStart(text, 0); range.setEnd(text, text.data.length);
                const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top))).size;
                return [lines, words];
            }""", cell.element_handle())
            lines, cut = lines_and_cut_words
            assert lines >= 3 and cut == [], (lines, cut)
            page.screenshot(path=str(tmp_path / "report-420-long-reason.png"))
        finally:
            browser.close()
