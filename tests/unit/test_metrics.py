"""The metrics of ``edgefleet serve``: the event tally (pure), error kinds, the ledger collector on
a real SQLite ledger (incremental: an event is counted once however many scrapes see it), the
live app's routes, JSON logs, and the Grafana dashboard in docs/ querying only exported metrics."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text

from edgefleet.errors import BmcError, NetworkSeedError, SecretsError, TalosUnavailable, error_kind
from edgefleet.live import LiveOptions, build_live_app, live_page
from edgefleet.logs import JsonLogFormatter, LogFormat, configure_logging
from edgefleet.metrics.collector import METRICS, LedgerCollector, sample_names
from edgefleet.metrics.tally import EventTally, TalliedEvent
from edgefleet.rollout.ledger import Kind, Ledger, stmt_run, stmt_store_release
from edgefleet.rollout.states import SkipCause
from edgefleet.state.db import create_state_engine
from edgefleet.trains.model import StageSpec, StoreState, TrainSpec
from edgefleet.trains.store import TrainStore
from tests.helpers import REPO, record_release

T0 = datetime(2026, 11, 3, 22, 0, tzinfo=UTC)
DASHBOARD = REPO / "docs" / "grafana-edgefleet.json"


def _ev(i: int, seconds: float, kind: str, node: str | None = "n1", rollout: str = "ro-1",
        **detail: object) -> TalliedEvent:
    return TalliedEvent(i, T0 + timedelta(seconds=seconds), rollout, node, kind, detail)


# -- error kinds and the tally (pure) ---------------------------------------------------------------

def test_error_kind_is_short_and_bounded() -> None:
    assert error_kind(BmcError("x", status=503, transient=True)) == "http_503"
    assert error_kind(BmcError("no answer", transient=True)) == "unreachable"
    assert error_kind(BmcError("TLS fingerprint mismatch")) == "refused"
    assert error_kind(TalosUnavailable("down", code="UNAVAILABLE")) == "unavailable"
    assert error_kind(NetworkSeedError("gone", status=404)) == "http_404"
    assert error_kind(SecretsError("missing")) == "secrets_error"


def test_tally_times_reimages_and_boots_from_their_events() -> None:
    t = EventTally()
    t.add([_ev(1, 0, "reimage_started"), _ev(2, 30, "reimage_booting"), _ev(3, 150, "node_done"),
           # n2 in band: its window closed, it started again later; timed from the latest start
           _ev(4, 0, "reimage_started", node="n2", method="talos-api"),
           _ev(5, 10, "window_closing", node="n2"),
           _ev(6, 3600, "reimage_started", node="n2", method="talos-api"),
           _ev(7, 3620, "reimage_booting", node="n2", method="talos-api"),
           _ev(8, 3700, "node_done", node="n2"),
           # n3 failed: not timed; its node_done in a later rollout has no start there: not timed
           _ev(9, 0, "reimage_started", node="n3"), _ev(10, 50, "reimage_failed", node="n3", bmc_error="http_500"),
           _ev(11, 900, "node_done", node="n3", rollout="ro-2")])
    assert t.reimage["bmc"].count == 1 and t.reimage["bmc"].total == 150
    assert t.boot["bmc"].total == 120
    assert t.reimage["talos-api"].total == 100 and t.boot["talos-api"].total == 80
    assert t.reimage["bmc"].cumulative()[:2] == [("60", 0.0), ("120", 0.0)]
    assert t.reimage["bmc"].cumulative()[2] == ("300", 1.0) and t.reimage["bmc"].cumulative()[-1] == ("+Inf", 1.0)
    assert t.window_waits == {"node_reset_postponed": 1}
    assert t.bmc_errors == {"http_500": 1}
    assert t.gates == {("node", "passed"): 3}


def test_tally_counts_errors_gates_and_old_events_without_a_kind() -> None:
    t = EventTally()
    t.add([_ev(1, 0, "reimage_retry", bmc_error="unreachable"), _ev(2, 1, "reimage_retry"),
           _ev(3, 2, "eject_failed", bmc_error="http_400"),
           _ev(4, 3, "bootstrap_refused", talos_error="already_exists"),
           _ev(5, 4, "talos_version_mismatch"), _ev(6, 5, "talos_version_checked"),
           _ev(7, 6, "store_gate_failed", node=None), _ev(8, 7, "store_gate_passed", node=None),
           _ev(9, 8, "pre_hook_passed", node=None), _ev(10, 9, "post_hook_failed", node=None),
           _ev(11, 10, "node_gate_failed"), _ev(12, 11, "repair_not_started", node=None)])
    assert t.bmc_errors == {"unreachable": 1, "unknown": 1, "http_400": 1}
    assert t.talos_errors == {"already_exists": 1, "version_mismatch": 1}
    assert t.gates == {("talos_version", "failed"): 1, ("talos_version", "passed"): 1, ("store", "failed"): 1,
                       ("store", "passed"): 1, ("pre_hook", "passed"): 1, ("post_hook", "failed"): 1,
                       ("node", "failed"): 1}
    assert t.window_waits == {"repair_not_started": 1}
    assert t.events == 12


# -- the collector on a real ledger -----------------------------------------------------------------

@pytest.fixture
def home(tmp_path: Path) -> Iterator[tuple[Path, Engine]]:
    engine = create_state_engine(f"sqlite:///{tmp_path / 'edgefleet.db'}")
    yield tmp_path, engine
    engine.dispose()


def _scrape(reg: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _by(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> dict[str, float]:
    return {",".join(v for _k, v in labels): value for (n, labels), value in samples.items() if n == name}


def _rollout(ledger: Ledger, rid: str, stores: list[str], to: str) -> None:
    ledger.create_rollout(rollout_id=rid, kind=Kind.rollout, release=to, now=T0, policy={}, plan={}, operator="t",
                          waves=[(0, "all", 1)], runs=[(s, 0, None, to) for s in stores])


def test_collector_reads_tables_and_counts_each_event_once(home: tuple[Path, Engine]) -> None:
    tmp, engine = home
    record_release(tmp, "v1")
    record_release(tmp, "v2")
    ledger = Ledger(engine)
    _rollout(ledger, "ro-1", ["s1", "s2", "s3"], "v2")
    ledger.write(*stmt_store_release("s1", "v2", "v1", T0), *stmt_store_release("s2", "v1", None, T0))
    ledger.event(T0, "reimage_started", rollout="ro-1", store="s1", node="s1-n1", detail={"release": "v2"})
    ledger.event(T0 + timedelta(seconds=40), "reimage_booting", rollout="ro-1", store="s1", node="s1-n1")
    ledger.event(T0 + timedelta(seconds=200), "node_done", rollout="ro-1", store="s1", node="s1-n1")
    ledger.event(T0, "reimage_retry", rollout="ro-1", store="s2", node="s2-n1", detail={"bmc_error": "http_503"})
    reg = CollectorRegistry(auto_describe=False)
    reg.register(LedgerCollector(engine))

    first = _scrape(reg)
    assert _by(first, "edgefleet_release_stores") == {"v1": 1, "v2": 1}
    assert _by(first, "edgefleet_releases") == {"stable": 2}
    assert _by(first, "edgefleet_store_runs") == {"rollout,pending": 3}
    assert _by(first, "edgefleet_operations") == {"rollout,planned": 1}
    assert _by(first, "edgefleet_reimage_duration_seconds_count") == {"bmc": 1}
    assert _by(first, "edgefleet_reimage_duration_seconds_sum") == {"bmc": 200}
    assert _by(first, "edgefleet_boot_duration_seconds_sum") == {"bmc": 160}
    assert _by(first, "edgefleet_bmc_errors_total") == {"http_503": 1}
    assert _by(first, "edgefleet_gate_outcomes_total") == {"node,passed": 1}
    assert _by(first, "edgefleet_ledger_up") == {"": 1}
    assert _by(first, "edgefleet_ledger_last_event_timestamp_seconds") == {"": T0.timestamp()}  # the last written

    again = _scrape(reg)  # nothing new: the same numbers, not twice as many
    assert _by(again, "edgefleet_bmc_errors_total") == {"http_503": 1}
    assert _by(again, "edgefleet_reimage_duration_seconds_count") == {"bmc": 1}

    ledger.event(T0, "reimage_retry", rollout="ro-1", store="s2", node="s2-n1", detail={"bmc_error": "http_503"})
    ledger.event(T0, "store_gate_failed", rollout="ro-1", store="s2")
    later = _scrape(reg)
    assert _by(later, "edgefleet_bmc_errors_total") == {"http_503": 2}
    assert _by(later, "edgefleet_gate_outcomes_total") == {"node,passed": 1, "store,failed": 1}


def test_window_waits_count_stores_skipped_for_want_of_a_window(home: tuple[Path, Engine]) -> None:
    _tmp, engine = home
    ledger = Ledger(engine)
    _rollout(ledger, "ro-1", ["s1", "s2", "s3"], "v2")
    ledger.write(stmt_run("ro-1", "s1", status="skipped", detail={"skipped": SkipCause.window.value}),
                 stmt_run("ro-1", "s2", status="skipped", detail={"skipped": SkipCause.aborted.value}))
    ledger.event(T0, "window_closing", rollout="ro-1", store="s3", node="s3-n1")
    reg = CollectorRegistry(auto_describe=False)
    reg.register(LedgerCollector(engine))
    assert _by(_scrape(reg), "edgefleet_window_waits_total") == {"node_reset_postponed": 1, "store_skipped": 1}


def test_collector_reads_events_in_chunks_and_catches_late_commits(home: tuple[Path, Engine]) -> None:
    _tmp, engine = home
    ledger = Ledger(engine)
    for i in range(25):
        ledger.event(T0, "store_gate_passed", rollout="ro-1", store=f"s{i}")
    # Id 20 handed out but not committed yet at the first scrape (PostgreSQL's sequences do this):
    # deleted here, then written again with that id below the collector's cursor.
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM events WHERE id = 20"))
    collector = LedgerCollector(engine)
    collector.CHUNK = 10  # three chunks
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    assert _by(_scrape(reg), "edgefleet_gate_outcomes_total") == {"store,passed": 24}
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO events (id, ts, rollout, store, kind, reason, detail) "
                          "VALUES (20, :ts, 'ro-1', 's99', 'store_gate_failed', '', '{}')"), {"ts": T0})
    assert _by(_scrape(reg), "edgefleet_gate_outcomes_total") == {"store,passed": 24, "store,failed": 1}
    assert _by(_scrape(reg), "edgefleet_gate_outcomes_total") == {"store,passed": 24, "store,failed": 1}


def test_collector_shows_active_trains_and_their_stages(home: tuple[Path, Engine]) -> None:
    _tmp, engine = home
    trains = TrainStore(engine)
    spec = TrainSpec(release="v2", stages=(StageSpec("canary", "canary"), StageSpec("rest", "100%")))
    rec = trains.create(spec, {"s1": 0, "s2": 1, "s3": 1}, ["canary", "rest"], T0)
    trains.set_stores(rec.id, {"s1": (StoreState.dispatched, None)}, T0)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(LedgerCollector(engine))
    got = _scrape(reg)
    assert _by(got, "edgefleet_train_active") == {f"v2,running,{rec.id}": 1}
    assert _by(got, "edgefleet_train_stage") == {f"0,canary,running,{rec.id}": 1, f"1,rest,locked,{rec.id}": 1}
    assert _by(got, "edgefleet_train_stage_stores") == {f"canary,dispatched,{rec.id}": 1, f"rest,pending,{rec.id}": 2}


def test_an_unreadable_ledger_says_so_and_keeps_its_totals(home: tuple[Path, Engine]) -> None:
    _tmp, engine = home
    Ledger(engine).event(T0, "store_gate_passed", rollout="ro-1", store="s1")
    reg = CollectorRegistry(auto_describe=False)
    reg.register(LedgerCollector(engine))
    assert _by(_scrape(reg), "edgefleet_ledger_up") == {"": 1}
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE events RENAME TO events_gone"))
    got = _scrape(reg)
    assert _by(got, "edgefleet_ledger_up") == {"": 0}
    assert _by(got, "edgefleet_gate_outcomes_total") == {"store,passed": 1}


# -- the live app -------------------------------------------------------------------------------------

@contextlib.contextmanager
def _served(engine: Engine, opts: LiveOptions) -> Iterator[tuple[httpx.Client, uvicorn.Server, threading.Thread]]:
    """The live app on uvicorn on 127.0.0.1 (a free port) in a thread, and a client for it."""
    server: uvicorn.Server
    app = build_live_app(engine, opts, stopping=lambda: server.should_exit)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off",
                                           timeout_graceful_shutdown=30))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=30) as client:
            yield client, server, thread
    finally:
        server.should_exit = True
        thread.join(10)


def test_live_page_adds_its_version_reload_script_and_a_refresh_without_script() -> None:
    page = live_page("<html><head><title>t</title></head><body><p>x</p></body></html>", 'v"1', 7)
    assert '<meta name="edgefleet-ledger-version" content="v&quot;1">' in page
    assert '<noscript><meta http-equiv="refresh" content="7"></noscript>\n</head>' in page
    assert page.index("EventSource") > page.index("<p>x</p>") and page.endswith("</script>\n</body></html>")


def test_live_app_serves_report_metrics_and_health(home: tuple[Path, Engine]) -> None:
    tmp, engine = home
    record_release(tmp, "v1")
    ledger = Ledger(engine)
    _rollout(ledger, "ro-1", ["s1"], "v1")
    with _served(engine, LiveOptions(title="fleet now")) as (client, _server, _thread):
        page = client.get("/")
        assert page.status_code == 200 and "fleet now" in page.text and "ro-1" in page.text
        version = re.search(r'name="edgefleet-ledger-version" content="([^"]+)"', page.text)
        assert version is not None
        ledger.event(T0, "store_gate_passed", rollout="ro-1", store="s1")
        newer = client.get("/")
        assert f'content="{version.group(1)}"' not in newer.text  # rendered again: the ledger changed
        metrics = client.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        assert 'edgefleet_release_stores{release="v1"} 0.0' in metrics.text
        assert client.get("/healthz").json() == {"status": "ok"}
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE events RENAME TO events_gone"))
        broken = client.get("/healthz")
        assert broken.status_code == 503 and "events" in broken.json()["error"]
        assert client.get("/").status_code == 503


def test_event_streams_announce_changes_and_end_when_the_server_stops(home: tuple[Path, Engine]) -> None:
    _tmp, engine = home
    ledger = Ledger(engine)
    with _served(engine, LiveOptions(poll_s=0.2)) as (client, server, thread), \
            client.stream("GET", "/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        ledger.event(T0, "store_gate_passed", rollout="ro-1", store="s1")
        second = next(line for line in lines if line.startswith("data: "))
        assert first != second
        server.should_exit = True  # Ctrl-C: an open page does not hold the shutdown up
        started = time.monotonic()
        list(lines)  # returns once the stream ends (the server's grace for it is 30 s)
        assert time.monotonic() - started < 5
        thread.join(10)
        assert not thread.is_alive()


# -- logs -----------------------------------------------------------------------------------------------

def test_json_logs_are_one_object_per_line_with_extras_and_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    out = io.StringIO()
    configure_logging(LogFormat.json, stream=out)
    log = logging.getLogger("edgefleet.test")
    log.info("fetched %s", "https://bmc/x?token=abc123", extra={"store": "dk-001"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2  # alembic's INFO chatter is left out
    assert lines[0]["level"] == "info" and lines[0]["logger"] == "edgefleet.test" and lines[0]["store"] == "dk-001"
    assert "abc123" not in lines[0]["message"] and lines[0]["ts"].endswith("Z")
    assert lines[1]["level"] == "error" and "ValueError: boom" in lines[1]["exc"]
    assert isinstance(JsonLogFormatter().format(logging.makeLogRecord({"msg": "x"})), str)


def test_serve_refuses_a_missing_state_store(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "edgefleet.cli", "--log-format", "json", "serve", "--port", "1"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "EDGEFLEET_HOME": str(tmp_path / "nowhere"),
                            "PYTHONPATH": str(REPO)})
    assert r.returncode == 2, r.stderr
    assert "no state store at" in r.stderr and not (tmp_path / "nowhere").exists()


# -- the dashboard ------------------------------------------------------------------------------------

def test_grafana_dashboard_queries_only_exported_metrics_and_shows_every_one() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert all(p["targets"] for p in dashboard["panels"])
    used = {m for e in exprs for m in re.findall(r"\bedgefleet_[a-z_]+", e)}
    assert used <= sample_names(), sorted(used - sample_names())
    families = {name for name in METRICS if any(u == name or u.startswith(name + "_") for u in used)}
    assert families == set(METRICS), sorted(set(METRICS) - families)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
