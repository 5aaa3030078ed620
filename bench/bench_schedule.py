"""Scheduling: one scheduled run per window group for 200 window groups of a generated fleet, on a
real Prefect server (SQLite, and PostgreSQL 15 when installed): create, list (and check), cancel.

Baseline: what a user would otherwise do with Prefect alone, one deployment per group with a cron
schedule in the group's IANA zone (created through the same client, 20 at a time).

The servers are started and stopped here, on 127.0.0.1, with the test suite's helpers; nothing is
run (the runs are a week ahead and cancelled at the end).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import write_result
from edgefleet.inventory.generate import generate_fleet
from edgefleet.inventory.load import load_fleet
from edgefleet.schedule.groups import GroupStart, plan_schedule
from edgefleet.schedule.prefect_schedule import RunRequest, cancel_runs, create_runs, list_runs

REPO = Path(__file__).resolve().parent.parent
GOAL_S = 10.0
POOL = "bench"
PROBE = "schedule_probe/probe"


def _cron(gs: GroupStart) -> str:
    days, span = gs.group.windows[0].split(" ")
    hh, mm = span.split("-")[0].split(":")
    return f"{int(mm)} {int(hh)} * * {days}"


async def _baseline(groups: list[GroupStart], concurrency: int = 20) -> float:
    """Seconds to create one cron-scheduled deployment per group (the Prefect-only way)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import CronSchedule

    async with get_client() as client:
        flow_id = await client.create_flow_from_name("schedule_probe")
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int, gs: GroupStart) -> None:
            async with sem:
                await client.create_deployment(
                    flow_id, f"group-{i:04d}", work_pool_name=POOL, entrypoint="tests/integration/probe_flow.py:"
                    "schedule_probe", parameters={"release": "bench", "stores": list(gs.group.stores)},
                    schedules=[DeploymentScheduleCreate(schedule=CronSchedule(cron=_cron(gs),
                                                                              timezone=gs.group.timezone),
                                                        active=True)])

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i, gs) for i, gs in enumerate(groups)))
        return time.perf_counter() - t0


def _measure(backend: str, database_url: str | None, work: Path, groups: list[GroupStart]) -> dict[str, object]:
    from prefect import Flow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.integration.prefect_server import PrefectServer

    server = PrefectServer.start(work / f"home-{backend}", database_url=database_url)
    try:
        server.prefect("work-pool", "create", POOL, "--type", "process")
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            probe = Flow.from_source(source=str(REPO), entrypoint="tests/integration/probe_flow.py:schedule_probe")
            probe.deploy(name="probe", work_pool_name=POOL, print_next_steps=False)  # type: ignore[union-attr]
            requests = [RunRequest(PROBE, "bench", gs.group.id, gs.start, {"release": "bench",
                                                                          "stores": list(gs.group.stores)},
                                   stores=gs.group.stores) for gs in groups if gs.start is not None]
            t0 = time.perf_counter()
            created = create_runs(requests)
            t_create = time.perf_counter() - t0
            t0 = time.perf_counter()
            listed = list_runs("bench")
            t_list = time.perf_counter() - t0
            want = sorted((q.group_id, q.start) for q in requests)
            lists_ok = (all(r.created for r in created)
                        and sorted((r.group or "", r.scheduled_start) for r in listed) == want)
            t0 = time.perf_counter()
            cancelled = cancel_runs("bench")
            t_cancel = time.perf_counter() - t0
            lists_ok = lists_ok and len(cancelled) == len(requests) and list_runs("bench") == []
            t_base = asyncio.run(_baseline(groups))
    finally:
        server.stop()
    n = len(requests)
    print(f"schedule {backend}: {n} groups created {t_create:.2f} s, listed {t_list:.2f} s, cancelled "
          f"{t_cancel:.2f} s, list correct: {lists_ok}; baseline {n} cron deployments {t_base:.2f} s")
    return {"measure": f"schedule {n} window groups, Prefect server on {backend} (s)",
            "edgefleet": round(t_create, 2),
            "baseline": f"{n} cron deployments {t_base:.2f}",
            "ratio": f"{t_base / t_create:.1f}x faster",
            "goal": f"< {GOAL_S:.0f} s, lists correctly (list {t_list:.2f} s, cancel {t_cancel:.2f} s)",
            "met": t_create < GOAL_S and lists_ok}


def run(groups: int = 200, stores: int = 3400) -> list[dict[str, object]]:
    from tests.pg import PG_BIN, start_postgres

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        fleet = load_fleet(generate_fleet(Path(tmp) / "inv", stores, seed=1))
        after = datetime.now(UTC) + timedelta(days=7)
        plan = [gs for gs in plan_schedule(fleet, after) if gs.start is not None][:groups]
        rows.append(_measure("SQLite", None, Path(tmp), plan))
        if (PG_BIN / "initdb").exists():
            with start_postgres() as pg:
                pg.createdb("prefect")
                rows.append(_measure("PostgreSQL", pg.url("prefect", "asyncpg"), Path(tmp), plan))
        else:
            print("schedule: PostgreSQL 15 not installed, PostgreSQL row skipped")
    write_result("schedule", rows, notes=f"{len(fleet.stores)} generated stores; runs a week ahead; "
                                         "baseline creates one cron deployment per group")
    return rows


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
