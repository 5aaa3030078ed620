"""edgefleet on a real Prefect server, twice: with SQLite, and with PostgreSQL 15 holding both
Prefect's database (asyncpg) and edgefleet's state store (pg8000).

Per backend (one server per backend for the whole module): ``prefect server start`` on 127.0.0.1,
a process work pool, ``build-release`` deployed from ``flows/prefect.yaml`` and a probe flow with
the rollout flow's parameters deployed with ``from_source``, one ``prefect worker start``. Then:

* a build_release run scheduled a few seconds ahead is run by the worker; the release shows up in
  the catalog and the run as Completed through the API;
* one scheduled run per window group over stores in seven time zones (what ``schedule rollout``
  created before it became an alias of ``train start``; ``schedule list``/``cancel`` still manage
  such runs): due groups start inside every member's local window; a freeze declared after
  scheduling is seen at run time; a group whose window is hours away stays scheduled until
  ``schedule cancel``; scheduling again creates nothing new;
* 30 window groups are scheduled, listed and cancelled (the small version of bench_schedule);
* window-group runs with ``sim_url`` over six stores in six time zones: the worker runs the real
  ``rollout`` deployment against a fleet simulator process (real time, maintenance windows enforced
  by its oracle); every run Completed at or after its group's start, every store on the new release
  in the ledger and the simulator, each reimage inside the store's local window, no violation.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from edgefleet.errors import InputError
from edgefleet.inventory.load import load_fleet
from edgefleet.releases.catalog import Release, ReleaseCatalog, ReleaseState
from edgefleet.releases.upstream import sha256_file, write_fake_upstream
from edgefleet.rollout import operations as ops
from edgefleet.rollout.endpoints import from_simulator
from edgefleet.rollout.executor import EngineSettings
from edgefleet.rollout.ledger import Ledger, RolloutStatus
from edgefleet.schedule.windows import freeze_at, in_window
from edgefleet.state.db import create_state_engine
from tests.contract.rollout_world import PASSWORD, PASSWORD_ENV, build_releases, ledger_matches_sim
from tests.helpers import REPO, require_tool
from tests.integration.prefect_server import PrefectServer
from tests.pg import require_postgres, start_postgres

pytestmark = pytest.mark.slow

POOL = "edgefleet"
PROBE = "schedule_probe/probe"
RUN_WAIT_S = 150  # bound on waiting for scheduled runs to finish


@dataclass
class Stack:
    server: PrefectServer
    backend: str
    state_url: str
    inventory: Path
    probe_out: Path
    work: Path


def _write_inventory(inv: Path, stores: list[dict[str, Any]], freezes: list[dict[str, Any]] | None = None, *,
                     wipe_method: str = "talos-api") -> None:
    (inv / "stores").mkdir(parents=True, exist_ok=True)
    (inv / "fleet.yml").write_text(yaml.safe_dump({"fleet": {"name": "integration"},
                                                   "defaults": {"network": {"dns": ["10.0.0.53"]},
                                                                "wipe_method": wipe_method},
                                                   "freezes": freezes or []}, sort_keys=False))
    (inv / "stores" / "all.yml").write_text(yaml.safe_dump({"stores": stores}, sort_keys=False))


def _store(i: int, sid: str, tz: str, country: str, window: dict[str, Any]) -> dict[str, Any]:
    return {"id": sid, "name": sid, "country": country, "region": "r1", "timezone": tz, "maintenance_windows": [window],
            "network": {"subnet": f"10.20.{i}.0/24", "gateway": f"10.20.{i}.1"}, "cluster": {"name": sid},
            "nodes": [{"name": f"{sid}-n1", "role": "controlplane", "mac": f"02:ef:00:00:{i:02x}:01",
                       "ip": f"10.20.{i}.11"}]}


def _window_around(tz: str, now: datetime, opens_in: timedelta, length: timedelta) -> dict[str, Any]:
    """A weekly window in ``tz`` whose occurrence this week opens at ``now + opens_in`` (to the minute)."""
    start = (now + opens_in).astimezone(ZoneInfo(tz)).replace(second=0, microsecond=0)
    end = start + length
    return {"days": [start.strftime("%a").lower()], "start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    backend: str = request.param
    work = tmp_path_factory.mktemp(f"prefect-{backend}")
    with _database(backend, work) as (database_url, state_url):
        server = PrefectServer.start(work / "prefect-home", database_url=database_url)
        try:
            from prefect.settings import PREFECT_API_URL, temporary_settings

            server.prefect("work-pool", "create", POOL, "--type", "process")
            server.prefect("--no-prompt", "deploy", "--prefect-file", "flows/prefect.yaml", "--name", "build-release")
            inventory = work / "inventory"
            _write_inventory(inventory, [_store(1, "placeholder", "UTC", "DK",
                                                {"days": ["mon"], "start": "01:00", "end": "02:00"})])
            with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
                from prefect import Flow

                probe = Flow.from_source(source=str(REPO), entrypoint="tests/integration/probe_flow.py:schedule_probe")
                probe.deploy(name="probe", work_pool_name=POOL, print_next_steps=False)  # type: ignore[union-attr]
                # The BMC password of the simulated stores' inventory (password_env), as a real worker
                # gets its BMC credentials: from its environment.
                server.start_worker(POOL, EDGEFLEET_REPO=str(REPO), EDGEFLEET_INVENTORY=str(inventory),
                                    EDGEFLEET_STATE_URL=state_url, EDGEFLEET_HOME=str(work / "edgefleet-home"),
                                    EDGEFLEET_PROBE_OUT=str(work / "probe"), **{PASSWORD_ENV: PASSWORD})
                with pytest.MonkeyPatch.context() as mp:
                    mp.setenv("EDGEFLEET_STATE_URL", state_url)
                    mp.setenv("EDGEFLEET_HOME", str(work / "edgefleet-home"))
                    yield Stack(server, backend, state_url, inventory, work / "probe", work)
        finally:
            server.stop()  # workers first, then the server


class _database:
    """SQLite: nothing to start. PostgreSQL: one private server with a database for each side."""

    def __init__(self, backend: str, work: Path):
        self.backend, self.work = backend, work
        self._pg: Any = None

    def __enter__(self) -> tuple[str | None, str]:
        if self.backend == "sqlite":
            return None, f"sqlite:///{self.work / 'edgefleet.db'}"
        require_postgres("pg8000")
        require_postgres("asyncpg")
        self._pg = start_postgres()
        pg = self._pg.__enter__()
        pg.createdb("prefect")
        pg.createdb("edgefleet")
        return pg.url("prefect", "asyncpg"), pg.url("edgefleet", "pg8000")

    def __exit__(self, *exc: object) -> None:
        if self._pg is not None:
            self._pg.__exit__(None, None, None)


def _read_runs(ids: list[str]) -> dict[str, Any]:
    import asyncio
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def go() -> dict[str, Any]:
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[uuid.UUID(i) for i in ids])))
            return {str(r.id): r for r in runs}

    return asyncio.run(go())


def _wait_final(stack: Stack, ids: list[str], timeout: float = RUN_WAIT_S) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    runs: dict[str, Any] = {}
    while time.monotonic() < deadline:
        runs = _read_runs(ids)
        if len(runs) == len(ids) and all(r.state is not None and r.state.is_final() for r in runs.values()):
            return runs
        time.sleep(1)
    states = {i: (r.state.type.value if r.state else None) for i, r in runs.items()}
    raise AssertionError(f"runs not finished within {timeout} s: {states}\nworker log:\n"
                         f"{stack.server.worker_logs()}")


def _cli(*args: str) -> Any:
    from edgefleet.cli.schedule import app

    result = CliRunner().invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def _schedule_groups(release: str, deployment: str, inventory: Path, after: datetime, *, dry_run: bool = False,
                     extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One scheduled run of ``deployment`` per window group, at the group's next allowed start (what
    ``schedule rollout`` did before it started release trains): the groups as JSON, each with its run."""
    from edgefleet.schedule.groups import plan_schedule
    from edgefleet.schedule.prefect_schedule import RunRequest, create_runs

    ready = [gs for gs in plan_schedule(load_fleet(inventory), after, min_duration=timedelta(minutes=20))
             if gs.start is not None]
    if dry_run:
        return [{**gs.to_json(), "run": None} for gs in ready]
    runs = {r.group: r for r in create_runs([
        RunRequest(deployment, release, gs.group.id, gs.start, {"release": release, "stores": list(gs.group.stores),
                                                                  **(extra or {})}, stores=gs.group.stores)
        for gs in ready if gs.start is not None])}
    return [{**gs.to_json(), "run": runs[gs.group.id].to_json()} for gs in ready]


def _add_release(state_url: str, tmp: Path, name: str) -> None:
    art = tmp / f"{name}.iso"
    art.write_bytes(b"image" * 100)
    now = datetime.now(UTC)
    engine = create_state_engine(state_url)
    try:
        ReleaseCatalog(engine).add(Release(
            name=name, artifact_path=art, sha256=sha256_file(art), size=art.stat().st_size, talos_version="v1.12.6",
            kubernetes_version="1.35.0", installer_image="ghcr.io/siderolabs/installer:v1.12.6", extensions=(),
            kernel_args=("talos.platform=nocloud",), upstream_sha256="a" * 64, template_hash="b" * 64,
            build_seconds=1.0, state=ReleaseState.built, created_at=now, state_changed_at=now))
    finally:
        engine.dispose()


def test_scheduled_build_release_runs_on_the_worker(stack: Stack) -> None:
    require_tool(shutil.which("packer"), "packer (Debian package `packer`)")
    from edgefleet.schedule.prefect_schedule import RunRequest, create_runs, list_runs

    upstream = stack.work / "upstream.iso"
    sha = write_fake_upstream(upstream, "v1.12.6")
    name = f"int-{stack.backend}"
    start = datetime.now(UTC) + timedelta(seconds=4)
    (run,) = create_runs([RunRequest("build_release/build-release", name, "build", start, {
        "name": name, "talos_version": "v1.12.6", "upstream_iso": str(upstream), "upstream_sha256": sha,
        "home": str(stack.work / "edgefleet-home")})])
    assert run.created and run.state == "SCHEDULED"
    assert run.scheduled_start is not None and abs(run.scheduled_start - start) < timedelta(seconds=1)
    assert [r.id for r in list_runs(name)] == [run.id]
    final = _wait_final(stack, [run.id])[run.id]
    assert final.state.is_completed(), f"{final.state}\n{stack.server.worker_logs()}"
    assert final.start_time >= start - timedelta(seconds=1)  # not before its scheduled time
    engine = create_state_engine(stack.state_url)
    try:
        release = ReleaseCatalog(engine).get(name)
    finally:
        engine.dispose()
    assert release.state is ReleaseState.built and release.artifact_path.exists()
    assert [r.id for r in list_runs(name)] == []  # finished runs are not listed by default
    assert [(r.id, r.state) for r in list_runs(name, include_finished=True)] == [(run.id, "COMPLETED")]


def test_window_group_runs_in_seven_time_zones(stack: Stack) -> None:
    release = f"rel-{stack.backend}"
    _add_release(stack.state_url, stack.work, release)
    now = datetime.now(UTC)
    due = [("cph-1", "Europe/Copenhagen", "DK"), ("cph-2", "Europe/Copenhagen", "DK"),
           ("nyc-1", "America/New_York", "US"), ("dxb-1", "Asia/Dubai", "AE"), ("sgn-1", "Asia/Ho_Chi_Minh", "VN"),
           ("yyz-1", "America/Toronto", "CA"), ("osl-1", "Europe/Oslo", "NO")]
    stores = [_store(i, sid, tz, cc, _window_around(tz, now, -timedelta(minutes=10), timedelta(hours=2)))
              for i, (sid, tz, cc) in enumerate(due, start=1)]
    stores.append(_store(9, "syd-1", "Australia/Sydney", "AU",
                         _window_around("Australia/Sydney", now, timedelta(hours=6), timedelta(hours=1))))
    _write_inventory(stack.inventory, stores)
    from_ = now + timedelta(seconds=5)

    planned = _schedule_groups(release, PROBE, stack.inventory, from_, dry_run=True)
    assert len(planned) == 7 and all(g["run"] is None for g in planned)
    assert _cli("list", "--release", release, "--json").stdout.strip() == "[]"  # nothing created yet

    groups = _schedule_groups(release, PROBE, stack.inventory, from_)
    assert sorted(g["id"] for g in groups) == sorted(g["id"] for g in planned)
    assert all(g["run"]["created"] and g["run"]["state"] == "SCHEDULED" for g in groups)
    by_store = {s: g for g in groups for s in g["stores"]}
    assert by_store["cph-1"] is by_store["cph-2"]  # same zone and window: one run
    # A freeze declared after scheduling (Norway, from now on): the Oslo run must see it at run time.
    frozen = {"name": "stocktake", "start": (now - timedelta(hours=1)).isoformat(),
              "end": (now + timedelta(days=1)).isoformat(), "countries": ["NO"], "reason": "annual stocktake"}
    _write_inventory(stack.inventory, stores, [frozen])

    due_runs = [g["run"]["id"] for g in groups if "syd-1" not in g["stores"]]
    later = by_store["syd-1"]["run"]
    runs = _wait_final(stack, due_runs)
    fleet = load_fleet(stack.inventory)
    for g in groups:
        if g["run"]["id"] not in runs:
            continue
        fr = runs[g["run"]["id"]]
        assert fr.parameters == {"release": release, "stores": g["stores"]}
        started = fr.start_time.astimezone(UTC)
        assert started >= datetime.fromisoformat(g["start_utc"]) - timedelta(seconds=1)
        record = json.loads((stack.probe_out / f"{fr.id}.json").read_text())
        observed = datetime.fromisoformat(record["observed_at"])
        for sid in g["stores"]:  # inside each member's local window, by the simulator's rules
            assert in_window(fleet.stores[sid], started) and in_window(fleet.stores[sid], observed), sid
        if g["stores"] == ["osl-1"]:  # frozen since it was scheduled: skipped at run time, with the reason
            assert freeze_at(fleet.freezes, fleet.stores["osl-1"], observed) is not None
            assert record["verdict"] == "skip" and "freeze 'stocktake' (annual stocktake)" in record["reason"]
            assert fr.state.is_cancelled() and "stocktake" in (fr.state.message or "")
        else:
            assert fr.state.is_completed(), f"{g['id']}: {fr.state}\n{stack.server.worker_logs()}"
            assert record["verdict"] == "go", record
    # Sydney's window is hours away: still scheduled, at that window's start.
    expected = datetime.fromisoformat(by_store["syd-1"]["start_utc"])
    assert expected > now + timedelta(hours=5)
    listed = json.loads(_cli("list", "--release", release, "--json").stdout)
    assert [(r["id"], r["state"]) for r in listed] == [(later["id"], "SCHEDULED")]
    assert datetime.fromisoformat(listed[0]["scheduled_start"]) == expected

    # Scheduling again: stores with a scheduled or completed run are not scheduled twice; the skipped
    # Oslo store gets a new run after its freeze.
    again_by_store = {s: g for g in _schedule_groups(release, PROBE, stack.inventory, from_) for s in g["stores"]}
    assert sorted(again_by_store) == sorted(by_store)
    for sid, g in again_by_store.items():
        assert g["run"]["created"] is (sid == "osl-1"), (sid, g["run"])
        if sid != "osl-1":
            assert g["run"]["id"] == by_store[sid]["run"]["id"]
    osl = again_by_store["osl-1"]
    assert datetime.fromisoformat(osl["start_utc"]) >= now + timedelta(days=1)  # after the freeze

    table = _cli("list", "--release", release)
    assert table.exit_code == 0 and later["id"] in table.stdout and "2 scheduled run(s)" in table.stdout

    cancelled = _cli("cancel", "--release", release, "--json")
    assert cancelled.exit_code == 0, cancelled.output
    assert sorted(r["id"] for r in json.loads(cancelled.stdout)) == sorted([later["id"], osl["run"]["id"]])
    assert _cli("list", "--release", release, "--json").stdout.strip() == "[]"
    states = {r["id"]: r["state"] for r in json.loads(_cli("list", "--release", release, "--all", "--json").stdout)}
    assert states[later["id"]] == "CANCELLED" and states[osl["run"]["id"]] == "CANCELLED" and len(states) == 8


def test_thirty_window_groups_schedule_list_and_cancel(stack: Stack) -> None:
    from edgefleet.schedule.prefect_schedule import RunRequest, cancel_runs, create_runs, list_runs

    release = f"bulk-{stack.backend}"
    base = datetime.now(UTC).replace(microsecond=0) + timedelta(days=7)
    requests = [RunRequest(PROBE, release, f"g{i:03d}", base + timedelta(minutes=i),
                           {"release": release, "stores": [f"s{i:03d}"]}) for i in range(30)]
    t0 = time.perf_counter()
    created = create_runs(requests)
    elapsed = time.perf_counter() - t0
    assert all(r.created for r in created) and len({r.id for r in created}) == 30
    assert elapsed < 30, f"30 scheduled runs took {elapsed:.1f} s"
    listed = list_runs(release)
    assert [(r.group, r.scheduled_start) for r in listed] == [(q.group_id, q.start) for q in requests]
    assert all(r.state == "SCHEDULED" and r.parameters["stores"] == [f"s{r.group[1:]}"] for r in listed if r.group)
    assert [r.created for r in create_runs(requests)] == [False] * 30  # idempotent
    by_id = cancel_runs(ids=[created[0].id, created[1].id])
    assert [r.id for r in by_id] == [created[0].id, created[1].id]
    with pytest.raises(InputError, match=r"no flow run 00000000-0000-0000-0000-000000000001"):
        cancel_runs(ids=["00000000-0000-0000-0000-000000000001"])
    assert len(cancel_runs(release)) == 28
    assert list_runs(release) == []
    assert {r.state for r in list_runs(release, include_finished=True)} == {"CANCELLED"}


def test_rollout_deployment_from_prefect_yaml(stack: Stack) -> None:
    entry = REPO / "flows" / "rollout.py"
    if not entry.exists():
        reason = "flows/rollout.py is not written yet: the `rollout` deployment of flows/prefect.yaml has no flow"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    stack.server.prefect("--no-prompt", "deploy", "--prefect-file", "flows/prefect.yaml", "--name", "rollout")
    out = stack.server.prefect("deployment", "inspect", "rollout/rollout").stdout
    assert "'entrypoint': 'flows/rollout.py:rollout'" in out
    assert "'release'" in out and "'stores'" in out  # the parameters a window-group run passes



# -- a scheduled rollout run by the worker against the fleet simulator ---------------------------------

SIM_ZONES = [("cph-1", "Europe/Copenhagen", "DK"), ("nyc-1", "America/New_York", "US"), ("dxb-1", "Asia/Dubai", "AE"),
             ("del-1", "Asia/Kolkata", "IN"), ("syd-1", "Australia/Sydney", "AU"), ("gru-1", "America/Sao_Paulo", "BR")]
SIM_LEAD = timedelta(seconds=40)  # releases, simulator start, provisioning and scheduling fit in this
SIM_WINDOW = timedelta(hours=1)
SIM_SETTINGS = EngineSettings(node_ready_timeout_s=60.0, quorum_timeout_s=60.0, store_gate_timeout_s=60.0,
                              poll_s=0.1, heartbeat_s=0.5, power_deadline_s=10.0)
REIMAGE_KINDS = ("insert", "boot_override", "reset", "power_off")  # the simulator's events of disruptive steps


def _sim_store(i: int, sid: str, tz: str, country: str, window: dict[str, Any]) -> dict[str, Any]:
    """A one-node store with a BMC (Redfish virtual media): its credentials come from PASSWORD_ENV."""
    return {"id": sid, "name": sid, "country": country, "region": "r1", "timezone": tz, "maintenance_windows": [window],
            "network": {"subnet": f"10.30.{i}.0/24", "gateway": f"10.30.{i}.1"}, "cluster": {"name": sid},
            "nodes": [{"name": f"{sid}-n1", "role": "controlplane", "mac": f"02:ef:00:02:{i:02x}:01",
                       "ip": f"10.30.{i}.10", "bmc": {"url": f"https://10.30.{i}.100", "credentials": {
                           "username": "admin", "password_env": PASSWORD_ENV}}}]}


def _start_simulator(inventory: Path, home: Path, clock: datetime, scenario: Path, log: Path, *,
                     time_scale: float = 1.0) -> tuple[subprocess.Popen[str], str]:
    """``edgefleet sim serve`` as its own process (BMCs, Kubernetes and Talos APIs on 127.0.0.1); its URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEFLEET_", "PREFECT_"))}
    env.update({PASSWORD_ENV: PASSWORD, "PYTHONPATH": str(REPO)})
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "edgefleet.cli", "sim", "serve", "-i", str(inventory),
                                 "--port", "0", "--talos-port", "0", "--time-scale", str(time_scale),
                                 "--clock", clock.isoformat(), "--home", str(home), "--scenario", str(scenario)],
                                env=env, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the first line names the URL (or the process ended)
    m = re.search(r"http://127\.0\.0\.1:\d+", line)
    if not m:
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"simulator did not start: {line!r}\n{log.read_text()[-3000:]}")
    url = m.group(0)
    for _ in range(200):  # the Talos API starts after the HTTP line; /sim/endpoints lists it then
        if "talos" in httpx.get(f"{url}/sim/endpoints", trust_env=False, timeout=5).json():
            return proc, url
        time.sleep(0.05)
    proc.kill()
    proc.wait(10)
    raise AssertionError(f"simulator at {url} never served the Talos API\n{log.read_text()[-3000:]}")


def _stop_simulator(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_window_group_rollout_runs_on_the_worker_against_the_simulator_in_six_time_zones(stack: Stack) -> None:
    """One window-group run (with ``sim_url``) per store over six stores in six zones whose windows open at two
    distinct instants a minute apart, all closed when the runs are scheduled: the worker runs the real
    ``rollout`` deployment against a simulator (its own process, real time), every store ends on v2
    inside its local window, and the simulator's oracle (maintenance windows enforced) finds nothing.

    Provisioning on v1 must itself happen inside the windows: the simulator starts one week back, at
    an instant inside every store's (weekly) window, the stores are provisioned there, and its clock
    is then set to the real time, before any window opens."""
    require_tool(shutil.which("packer"), "packer (Debian package `packer`)")
    t_begin = time.monotonic()
    home = stack.work / "edgefleet-home"
    engine = create_state_engine(stack.state_url)
    sim: subprocess.Popen[str] | None = None
    try:
        build_releases(home, stack.work, ReleaseCatalog(engine), ["v1", "v2"])
        stack.server.prefect("--no-prompt", "deploy", "--prefect-file", "flows/prefect.yaml", "--name", "rollout")

        # Windows: three stores open at m0, three at m0 + 1 min; a minute boundary far enough ahead.
        m0 = (datetime.now(UTC) + SIM_LEAD + timedelta(seconds=59)).replace(second=0, microsecond=0)
        opens = {sid: m0 + timedelta(minutes=k // 3) for k, (sid, _, _) in enumerate(SIM_ZONES)}
        stores = [_sim_store(k + 1, sid, tz, cc, _window_around(tz, opens[sid], timedelta(0), SIM_WINDOW))
                  for k, (sid, tz, cc) in enumerate(SIM_ZONES)]
        _write_inventory(stack.inventory, stores, wipe_method="bmc")
        fleet = load_fleet(stack.inventory)
        last_open = max(opens.values())
        provision_at = last_open + timedelta(seconds=5) - timedelta(days=7)  # inside every window, a week back
        assert all(in_window(s, provision_at) for s in fleet.stores.values()), "windows do not recur weekly"
        scenario = stack.work / "sim-scenario.yaml"
        scenario.write_text("boot_seconds: 2\nenforce_maintenance: true\n")
        sim, url = _start_simulator(stack.inventory, home, provision_at, scenario, stack.work / "sim.log")

        ledger = Ledger(engine)

        async def provision() -> None:
            ep = await from_simulator(url)
            made = [ops.create_provision(fleet, engine, home, sid, "v1", ep.clock(), settings=SIM_SETTINGS,
                                         operator="test") for sid in sorted(fleet.stores)]
            recs = await asyncio.wait_for(asyncio.gather(*(ops.run(fleet, home, engine, ep, c.record.id,
                                                                   settings=SIM_SETTINGS) for c in made)), 90)
            for r in recs:
                assert r.status is RolloutStatus.succeeded, ops.status(engine, r.id)

        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(PASSWORD_ENV, PASSWORD)
            asyncio.run(provision())
        assert {s: c for s, (c, _) in ledger.store_releases().items()} == {s: "v1" for s in fleet.stores}
        provisioned_s = time.monotonic() - t_begin

        # The simulator's clock to the real time: every window is shut now, so a run started now would
        # be an oracle violation.
        jump = httpx.post(f"{url}/sim/clock", json={"now": datetime.now(UTC).isoformat()}, trust_env=False)
        assert jump.status_code == 200, jump.text
        sim_now = datetime.fromisoformat(jump.json()["now"])
        assert abs(sim_now - datetime.now(UTC)) < timedelta(seconds=2)
        assert sim_now < m0 - timedelta(seconds=5), f"setup took {provisioned_s:.0f} s: longer than SIM_LEAD"
        assert not any(in_window(s, sim_now) for s in fleet.stores.values())
        jumped_seq = httpx.get(f"{url}/sim/events?kind=clock_set", trust_env=False).json()["events"][-1]["seq"]

        extra = {"sim_url": url, "poll_s": 0.2, "node_timeout_s": 60, "gate_timeout_s": 60}
        groups = _schedule_groups("v2", "rollout/rollout", stack.inventory, datetime.now(UTC), extra=extra)
        assert sorted(s for g in groups for s in g["stores"]) == sorted(fleet.stores)
        assert len(groups) == 6  # one zone each
        start_of = {g["stores"][0]: datetime.fromisoformat(g["start_utc"]) for g in groups}
        assert start_of == opens  # each group at its own window's opening
        assert all(g["run"]["created"] and g["run"]["state"] == "SCHEDULED" for g in groups)
        run_ids = [g["run"]["id"] for g in groups]

        timeout = (last_open - datetime.now(UTC)).total_seconds() + 120
        runs = _wait_final(stack, run_ids, timeout=timeout)
        rollout_of: dict[str, str] = {}
        for g in groups:
            fr = runs[g["run"]["id"]]
            sid = g["stores"][0]
            assert fr.state.is_completed(), f"{sid}: {fr.state}\n{stack.server.worker_logs()}"
            assert fr.parameters == {"release": "v2", "stores": [sid], "sim_url": url, "poll_s": 0.2,
                                     "node_timeout_s": 60, "gate_timeout_s": 60}
            assert fr.start_time >= start_of[sid] - timedelta(seconds=1), (sid, fr.start_time, start_of[sid])
            m = re.match(r"rollout (\S+): succeeded", fr.state.message or "")
            assert m, fr.state.message
            rollout_of[sid] = m.group(1)
        assert len(set(rollout_of.values())) == 6  # one rollout per group run

        # The ledger: every store on v2, and it agrees with the simulator.
        assert {s: c for s, (c, _) in ledger.store_releases().items()} == {s: "v2" for s in fleet.stores}
        for sid, rid in rollout_of.items():
            assert [(r.store, r.status.value) for r in ledger.runs(rid)] == [(sid, "succeeded")]
        asyncio.run(ledger_matches_sim(url, ledger, fleet))
        violations = httpx.get(f"{url}/sim/violations", trust_env=False).json()
        assert violations["total"] == 0, violations

        # Each store's disruptive steps after the clock was set: the rollout's own, inside its window.
        events = httpx.get(f"{url}/sim/events?since={jumped_seq}&limit=100000", trust_env=False).json()["events"]
        for sid in fleet.stores:
            steps = [e for e in events if e["store"] == sid and e["kind"] in REIMAGE_KINDS]
            assert {e["kind"] for e in steps} >= {"insert", "reset"}, (sid, steps)
            for e in steps:
                at = datetime.fromisoformat(e["time"])
                assert at >= start_of[sid] and in_window(fleet.stores[sid], at), (sid, e)
                assert e["operation"] in (None, rollout_of[sid]), (sid, e)
            assert any(e["operation"] == rollout_of[sid] for e in steps), (sid, steps)

        # Scheduling again creates nothing new: every store has its completed run.
        again = _schedule_groups("v2", "rollout/rollout", stack.inventory, datetime.now(UTC), extra=extra)
        assert sorted((g["run"]["id"], g["run"]["created"]) for g in again) == sorted((i, False) for i in run_ids)
        print(f"simulated rollout: provisioned {provisioned_s:.0f} s after start, "
              f"whole test {time.monotonic() - t_begin:.0f} s")
    finally:
        if sim is not None:
            _stop_simulator(sim)
        engine.dispose()
