"""``edgefleet serve`` scraped by a real Prometheus (Debian's ``prometheus``) during a simulated
rollout: the server runs as its own process (``edgefleet --log-format json serve``) on the test's
SQLite ledger, Prometheus on 127.0.0.1 with a generated config (scrape interval 1 s) and a
temporary storage directory. Five stores are provisioned on v1, then v2 is rolled out while one
worker never becomes Ready (its store's gate fails and the store is rolled back) and one BMC
answers a reset with a 500 (the reimage starts its sequence again). Prometheus's HTTP query API
must then return what the ledger says: stores per release, store runs by status, gate outcomes,
BMC errors by kind, reimage and boot histograms with one observation per reimaged node; and it must
have seen the fleet move (the v1 count rose to five, v2's went from 0 up). The live page's
server-sent events announce the ledger's changes, and the server's stderr is JSON lines.

Skipped when prometheus is not installed, unless CI=true (there it is a failure)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet.rollout import operations as ops
from edgefleet.rollout.executor import EngineSettings
from edgefleet.rollout.ledger import Ledger, RolloutStatus
from edgefleet.rollout.plan import RolloutPolicy
from tests.contract.rollout_world import PASSWORD, PASSWORD_ENV, make_inventory, release_home, running_world
from tests.helpers import REPO, require_tool

pytestmark = pytest.mark.slow

START = datetime(2026, 11, 3, 21, 30, tzinfo=UTC)  # inside the stores' 22:00-05:00 window
SETTINGS = EngineSettings(node_ready_timeout_s=4.0, quorum_timeout_s=10.0, store_gate_timeout_s=6.0,
                          window_wait_max_s=5.0, poll_s=0.05, heartbeat_s=0.5, power_deadline_s=5.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{what} did not answer {url} within {timeout} s: {log.read_text()[-3000:]}")


@contextmanager
def _serve(home: Path, port: int, log: Path) -> Iterator[str]:
    env = {**os.environ, "EDGEFLEET_HOME": str(home), "PYTHONPATH": str(REPO)}
    env.pop("EDGEFLEET_STATE_URL", None)
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "edgefleet.cli", "--log-format", "json", "serve",
                                 "--port", str(port), "--refresh", "1"], env=env, cwd=home,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz", proc, "edgefleet serve", log)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


@contextmanager
def _prometheus(tmp: Path, target_port: int) -> Iterator[str]:
    port = _free_port()
    config = tmp / "prometheus.yml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "edgefleet", "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}]}))
    log = tmp / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(shutil.which("prometheus")), f"--config.file={config}",
                                 f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
    try:
        _wait_http(f"http://127.0.0.1:{port}/-/ready", proc, "prometheus", log)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


def _query(prom: str, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Prometheus's answer to an instant query: the labels of each series (less name, job, instance)
    -> its value."""
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10, trust_env=False)
    r.raise_for_status()
    body = r.json()
    assert body["status"] == "success", body
    drop = ("__name__", "job", "instance")
    return {tuple(sorted((k, v) for k, v in s["metric"].items() if k not in drop)): float(s["value"][1])
            for s in body["data"]["result"]}


def _by(prom: str, expr: str, label: str) -> dict[str, float]:
    return {dict(k)[label]: v for k, v in _query(prom, expr).items()}


def _eventually(check: Any, timeout: float = 30.0) -> Any:
    """``check()`` until it returns without an AssertionError (Prometheus scrapes every second)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


async def _next_version(lines: Any, after: str | None, timeout: float) -> str:
    """The next ``event: ledger`` data of the server-sent events (``lines``: the stream's one line
    iterator) that differs from ``after``."""
    async def read() -> str:
        kind = ""
        async for line in lines:
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "ledger" and line[6:] != after:
                return str(line[6:])
        raise AssertionError("the event stream ended")
    return await asyncio.wait_for(read(), timeout)


def test_prometheus_scrapes_serve_during_a_simulated_rollout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_tool(shutil.which("prometheus"), "prometheus (Debian package `prometheus`)")
    require_tool(shutil.which("packer"), "packer (Debian package `packer`)")
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    fleet = make_inventory(tmp_path / "inventory")
    home, engine = release_home(tmp_path, ["v1", "v2"])
    ledger = Ledger(engine)
    port = _free_port()
    serve_log = tmp_path / "serve.log"
    with _serve(home, port, serve_log) as live, _prometheus(tmp_path, port) as prom:
        _eventually(lambda: _check_up(prom), 30)
        assert _by(prom, "edgefleet_release_stores", "release") == {"v1": 0, "v2": 0}

        async def rollout() -> None:
            async with running_world(fleet, home, boot_seconds=60, time_scale=600, clock=START,
                                     ca_out=tmp_path / "talos-ca.pem") as (url, ep), \
                    httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(10, read=30)) as client, \
                    client.stream("GET", f"{live}/events") as events:
                assert events.headers["content-type"].startswith("text/event-stream")
                lines = events.aiter_lines()
                first = await _next_version(lines, None, 10)
                created = [ops.create_provision(fleet, engine, home, sid, "v1", ep.clock(), settings=SETTINGS,
                                                operator="test") for sid in sorted(fleet.stores)]
                for rec in await asyncio.gather(*(ops.run(fleet, home, engine, ep, c.record.id, settings=SETTINGS)
                                                  for c in created)):
                    assert rec.status is RolloutStatus.succeeded
                assert await _next_version(lines, first, 10) != first  # the page is told to reload
                await asyncio.to_thread(_eventually, lambda: _check_on(prom, {"v1": 5, "v2": 0}))
                # one worker never comes up; one BMC answers its next reset with a 500 (the reimage retries)
                r = await client.post(f"{url}/sim/scenario", json={
                    "never_ready": ["no-0001-n4"], "bmc_bursts": [{"node": "dk-0001-n2", "method": "POST",
                                                                     "path": "ComputerSystem.Reset", "count": 1}]})
                assert r.status_code == 200, r.text
                policy = RolloutPolicy(canary=["dk-0002"], waves=(2, "100%"), failure_budget=1, max_concurrent=3,
                                       node_duration=timedelta(minutes=10), wave_soak=timedelta(minutes=5))
                made = ops.create_rollout(fleet, engine, "v2", policy, ep.clock(), settings=SETTINGS, operator="test")
                rec = await ops.run(fleet, home, engine, ep, made.record.id,
                                    settings=ops.settings_for(policy, SETTINGS))
                assert rec.status is RolloutStatus.succeeded, ops.status(engine, rec.id)

        asyncio.run(asyncio.wait_for(rollout(), 240))
        on = Counter(cur for cur, _lkg in ledger.store_releases().values())
        assert on == {"v2": 4, "v1": 1}  # no-0001 was rolled back
        _eventually(lambda: _check_on(prom, dict(on)))
        _eventually(lambda: _check_ledger(prom, ledger))
        # Prometheus saw the fleet move while the rollout ran, not only its end
        assert _by(prom, 'max_over_time(edgefleet_release_stores{release="v1"}[10m])', "release") == {"v1": 5}
        assert _by(prom, 'changes(edgefleet_release_stores{release="v2"}[10m]) > 0', "release")
        _check_dashboard(prom)
        page = httpx.get(f"{live}/", timeout=30, trust_env=False)
        assert page.status_code == 200 and 'name="edgefleet-ledger-version"' in page.text
        assert "EventSource" in page.text and "no-0001" in page.text
    _check_json_log(serve_log)
    engine.dispose()


def _check_up(prom: str) -> None:
    assert _query(prom, 'up{job="edgefleet"}') == {(): 1.0}
    assert _query(prom, "edgefleet_ledger_up") == {(): 1.0}


def _check_on(prom: str, want: dict[str, int]) -> None:
    got = {k: v for k, v in _by(prom, "edgefleet_release_stores", "release").items() if v or k in want}
    assert got == {k: float(v) for k, v in want.items()}, got


def _check_ledger(prom: str, ledger: Ledger) -> None:
    """Store runs, gate outcomes and the duration histograms as the ledger's rows and events say."""
    runs: Counter[tuple[str, str]] = Counter()
    for rec in ledger.rollouts(limit=100):
        runs.update((rec.kind.value, r.status.value) for r in ledger.runs(rec.id))
    got_runs = {(dict(k)["kind"], dict(k)["status"]): v for k, v in _query(prom, "edgefleet_store_runs").items()}
    assert got_runs == {k: float(v) for k, v in runs.items()}
    kinds = Counter(e["kind"] for e in ledger.events(limit=1_000_000))
    gates = {(dict(k)["gate"], dict(k)["outcome"]): v for k, v in _query(prom, "edgefleet_gate_outcomes_total").items()}
    assert gates[("node", "passed")] == kinds["node_done"] > 0
    assert gates[("store", "passed")] == kinds["store_gate_passed"] > 0
    assert gates[("store", "failed")] == kinds["store_gate_failed"] > 0  # no-0001's worker never came up
    assert gates.get(("node", "failed"), 0) == kinds["node_gate_failed"]
    bmc = Counter(e["detail"]["bmc_error"] for e in ledger.events(limit=1_000_000) if "bmc_error" in e["detail"])
    assert bmc["http_500"] >= 1  # the burst
    assert _by(prom, "edgefleet_bmc_errors_total", "kind") == {k: float(v) for k, v in bmc.items()}
    done = kinds["node_done"]
    assert _by(prom, "sum by (le) (edgefleet_reimage_duration_seconds_bucket)", "le")["+Inf"] == done
    assert _query(prom, "sum(edgefleet_boot_duration_seconds_count)") == {(): float(done)}
    # one node's reimage takes at least its boot (60 fleet seconds in this world)
    assert _query(prom, "sum(edgefleet_reimage_duration_seconds_sum)")[()] >= 60 * done


def _check_dashboard(prom: str) -> None:
    """Every query of the shipped Grafana dashboard is valid PromQL for this Prometheus, and the
    panels of what this rollout produced have data."""
    dashboard = json.loads((REPO / "docs" / "grafana-edgefleet.json").read_text())
    empty = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "10m")
            if not _query(prom, expr):  # _query fails on an invalid expression
                empty.append(panel["title"])
    # no train ran, no window was waited for and no Talos call failed in this world
    assert set(empty) <= {"Active trains", "Train stages", "Train stage stores", "Talos API errors by kind",
                          "Window waits"}, empty


def _check_json_log(log: Path) -> None:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert lines and all({"ts", "level", "logger", "message"} <= set(r) for r in lines)
    assert any(r["logger"] == "uvicorn.access" and "/metrics" in r["message"] for r in lines), lines[-5:]
