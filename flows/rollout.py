"""Prefect flows ``rollout``, ``rollback`` and ``provision_store``: thin over
``edgefleet.rollout.operations``.

What Prefect adds here: the run record and logs, scheduling (``edgefleet schedule rollout`` creates
runs of the ``rollout`` deployment), workers, artifacts (the plan, live progress per wave, the final
summary) and pause/resume with input when a wave's result is inconclusive. What it does not add:
task runs per store or per node. The engine runs a whole rollout in one task, under its own caps,
retries and ledger: on this machine a Prefect task run costs 10-20 ms and its event queue drops
messages past a few thousand task runs, so a task per store would slow a 3,400-store rollout down
and lose its record. Per-store progress lives in the ledger and in the progress artifact.

Where a run reads and writes: parameters ``inventory``, ``home`` and ``state_url`` when given, else the
worker's ``EDGEFLEET_INVENTORY``, ``EDGEFLEET_HOME`` and ``EDGEFLEET_STATE_URL`` (as the CLI); with
``sim_url`` the run drives that fleet simulator (and its clock) instead of the inventory's addresses.
``seed_public_url`` is the CLI's ``--seed-public-url``; it, the timeouts and the retry budgets are saved
with the operation (its ``RolloutRequest``) and kept on resume.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact, acreate_progress_artifact, aupdate_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.flow_runs import apause_flow_run
from prefect.input import RunInput
from prefect.states import Cancelled, Completed, Failed

from edgefleet.inventory.load import load_fleet
from edgefleet.inventory.model import Fleet
from edgefleet.rollout import operations as ops
from edgefleet.rollout.endpoints import Endpoints, from_inventory, from_simulator
from edgefleet.rollout.ledger import Ledger, RolloutRecord, RolloutStatus
from edgefleet.rollout.plan import RolloutPlan, RolloutPolicy
from edgefleet.rollout.request import RolloutRequest
from edgefleet.rollout.settings import EngineSettings
from edgefleet.schedule.groups import freeze_decision
from edgefleet.settings import load_settings
from edgefleet.state.db import open_state

PROGRESS_EVERY_S = 5.0
PAUSE_TIMEOUT_S = 12 * 3600


class WaveAnswer(RunInput):
    """What a person decides when a wave's result is inconclusive."""

    approve: bool
    note: str = ""


def _serial(entries: list[str]) -> tuple[int | str, ...]:
    return tuple(int(e) if str(e).strip().isdigit() else str(e).strip() for e in entries)


def _budget(text: str) -> int | str:
    return int(text) if text.strip().isdigit() else text.strip()


def _settings(**fields: Any) -> EngineSettings:
    """The flow's engine parameters, validated (InputError naming the bad ones)."""
    return RolloutRequest.build(release="-", settings=fields).settings


def _fleet(inventory: str | None) -> Fleet:
    """The ``inventory`` parameter, else the worker's EDGEFLEET_INVENTORY (else ./inventory), as the CLI:
    a scheduled run carries no inventory path, and the worker's working directory is the checkout."""
    return load_fleet(inventory or load_settings().inventory)


async def _endpoints(fleet: Fleet, sim_url: str | None) -> Endpoints:
    return await from_simulator(sim_url) if sim_url else from_inventory(fleet)


def _plan_markdown(plan: RolloutPlan) -> str:
    lines = [f"## Rollout plan: {plan.release}\n", "| wave | store | earliest start (UTC) | local | from |",
             "|---|---|---|---|---|"]
    for w in plan.waves:
        for s in w.stores:
            lines.append(f"| {w.index} {w.name} | {s.store_id} | {s.start:%Y-%m-%d %H:%M} | "
                         f"{s.local_start():%Y-%m-%d %H:%M %Z} | {s.from_release or '-'} |")
    if plan.skipped:
        lines.append(f"\nAlready on {plan.release}: {len(plan.skipped)} store(s).")
    for sid, why in plan.unschedulable:
        lines.append(f"\nUnschedulable: {sid}: {why}")
    return "\n".join(lines) + "\n"


def _summary_markdown(data: dict[str, Any]) -> str:
    r = data["rollout"]
    lines = [f"## {r['kind']} {r['id']} of {r['release']}: {r['status']}\n",
             f"{r['reason']}\n" if r["reason"] else "",
             "| wave | status | stores | done | failures | budget |", "|---|---|---|---|---|---|"]
    for w in data["waves"]:
        lines.append(f"| {w['index']} {w['name']} | {w['status']} | {w['stores']} | {w['done']} | "
                     f"{w['failures']} | {w['budget']} |")
    lines.append("\n| store | status | from | to | reason |\n|---|---|---|---|---|")
    for s in data["stores"]:
        if s["status"] != "succeeded" or len(data["stores"]) <= 50:
            lines.append(f"| {s['store']} | {s['status']} | {s['from_release'] or '-'} | {s['to_release']} | "
                         f"{s['reason'][:200]} |")
    lines.append("\ncounts: " + ", ".join(f"{k} {v}" for k, v in sorted(data["counts"].items())))
    return "\n".join(lines) + "\n"


def _artifact_key(prefix: str, rollout_id: str) -> str:
    return f"{prefix}-{rollout_id}".lower().replace("_", "-").replace(".", "-")


async def _watch_progress(engine: Any, rollout_id: str) -> None:
    """Keep a progress artifact at the share of the rollout's stores that are done."""
    artifact_id = await acreate_progress_artifact(0.0, key=_artifact_key("progress", rollout_id),
                                                 description=f"stores done in {rollout_id}")
    while True:
        data = ops.status(engine, rollout_id)
        total = max(1, len(data["stores"]))
        done = sum(1 for s in data["stores"] if s["status"] not in ("pending", "running"))
        await aupdate_progress_artifact(artifact_id, 100.0 * done / total)
        await asyncio.sleep(PROGRESS_EVERY_S)


@task(name="execute", retries=0, cache_policy=NO_CACHE, persist_result=False)
async def _execute(fleet: Fleet, home: Path, engine: Any, endpoints: Endpoints, rollout_id: str,
                   settings: EngineSettings | None, decision: str | None = None, resume: bool = False
                   ) -> RolloutRecord:
    """Run (or continue) one recorded operation to its end, a halt or a pause: the whole engine in
    one task (see the module docstring). ``resume``: continue one whose runner died (its saved
    settings, its locks taken over by the same rollout id)."""
    watcher = asyncio.create_task(_watch_progress(engine, rollout_id))
    try:
        if decision is None and not resume:
            return await ops.run(fleet, home, engine, endpoints, rollout_id, settings=settings)
        return await ops.resume(fleet, home, engine, endpoints, rollout_id, decision=decision)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher


async def _drive(fleet: Fleet, home: Path, engine: Any, endpoints: Endpoints, rollout_id: str,
                 settings: EngineSettings | None, *, resume: bool = False) -> State[Any]:
    """Execute; on a pause, wait for a person's decision (Prefect pause with input) and go on.
    ``resume``: the operation ran before (see ``_execute``); one that is paused waits for the
    decision at once."""
    logger = get_run_logger()
    rec = Ledger(engine).rollout(rollout_id)
    if not (resume and rec.status is RolloutStatus.paused):
        rec = await _execute(fleet, home, engine, endpoints, rollout_id, settings, resume=resume)
    while rec.status is RolloutStatus.paused:
        logger.warning("rollout %s paused: %s; waiting for a decision (approve or reject)", rollout_id, rec.reason)
        answer = await apause_flow_run(wait_for_input=WaveAnswer, timeout=PAUSE_TIMEOUT_S,
                                      key=_artifact_key("decision", rollout_id))
        decision = "approve" if answer is not None and answer.approve else "reject"
        logger.info("decision for %s: %s %s", rollout_id, decision, answer.note if answer is not None else "")
        rec = await _execute(fleet, home, engine, endpoints, rollout_id, None, decision)
    data = ops.status(engine, rollout_id)
    await acreate_markdown_artifact(markdown=_summary_markdown(data), key=_artifact_key("summary", rollout_id),
                                   description=f"{rec.kind.value} {rollout_id}: {rec.status.value}")
    message = f"{rec.kind.value} {rollout_id}: {rec.status.value}" + (f" ({rec.reason})" if rec.reason else "")
    if rec.status is RolloutStatus.succeeded:
        return Completed(message=message, data=data)
    return Failed(message=message, data=data)


async def _await_window(fleet: Fleet, stores: list[str], endpoints: Endpoints, min_duration: timedelta,
                        max_wait: timedelta) -> str | None:
    """A scheduled group run starts inside its window; check again now (freezes may have been
    declared since it was scheduled) and wait, bounded, if the window has not opened yet. Returns
    the reason to skip the run, or None to go ahead."""
    logger = get_run_logger()
    for _ in range(1000):
        d = freeze_decision(fleet, stores, endpoints.clock(), min_duration=min_duration, max_wait=max_wait)
        logger.info("freeze/window check: %s (%s)", d.verdict.value, d.reason)
        if d.verdict.value == "go":
            return None
        if d.verdict.value == "skip" or d.until is None:
            return d.reason
        real_s = (d.until - endpoints.clock()).total_seconds() / max(endpoints.time_scale, 1e-9)
        await asyncio.sleep(min(max(real_s, 0.05), 60.0))
    return "the window did not open after 1000 checks"


@flow(name="rollout", retries=0)
async def rollout(release: str, stores: list[str] | None = None, canary: int = 1,
                  canary_stores: list[str] | None = None, waves: list[str] | None = None,
                  wave_groups: list[str] | None = None, max_concurrent: int = 100, max_per_region: int | None = None,
                  max_per_country: int | None = None, failure_budget: str = "10%", node_minutes: float = 20.0,
                  node_timeout_s: float = 1800.0, quorum_timeout_s: float = 600.0, gate_timeout_s: float = 600.0,
                  poll_s: float = 2.0, soak_s: float = 0.0, bmc_attempts: int = 4, reimage_attempts: int = 3,
                  wave_soak_minutes: float = 30.0, gate_on_window: bool = True,
                  max_wait_hours: float = 12.0, seed_public_url: str | None = None, sim_url: str | None = None,
                  inventory: str | None = None,
                  home: str | None = None, state_url: str | None = None, force_reason: str | None = None
                  ) -> State[Any]:
    """Roll ``release`` out to ``stores`` (default: the whole fleet) as canary + waves.

    The parameters make one ``RolloutRequest`` (validated here, saved whole with the rollout): the
    quorum, node-ready, gate and soak timeouts and the retry budgets are the CLI's options of the
    same names (``rollout start --quorum-timeout ...``).

    ``gate_on_window``: first wait (at most ``max_wait_hours``) until every store of the run is inside
    its maintenance window and in no freeze, or skip the run (ends Cancelled with the reason, so
    scheduling again retries it). That is what a scheduled window-group run wants; a manual run
    over stores in many time zones sets it false and lets the engine time each store.

    A release that is not stable reaches only canary stores: the run fails at once (before any wait)
    when it would put it on others, unless ``force_reason`` says why (recorded as ``release_forced``)."""
    fleet = _fleet(inventory)
    engine = open_state(state_url or load_settings().state_store_url)
    home_dir = Path(home) if home else load_settings().home
    endpoints = await _endpoints(fleet, sim_url)
    request = RolloutRequest.build(
        kind="rollout", release=release, stores=stores or None,
        canary=tuple(canary_stores) if canary_stores else canary, waves=_serial(waves or ["1", "5", "20%", "100%"]),
        wave_groups=tuple(wave_groups or ()), failure_budget=_budget(failure_budget),
        settings=_settings(max_concurrent=max_concurrent, max_per_region=max_per_region,
                           max_per_country=max_per_country, node_duration=timedelta(minutes=node_minutes),
                           wave_soak=timedelta(minutes=wave_soak_minutes), node_ready_timeout_s=node_timeout_s,
                           quorum_timeout_s=quorum_timeout_s, store_gate_timeout_s=gate_timeout_s, poll_s=poll_s,
                           soak=timedelta(seconds=soak_s), bmc_attempts=bmc_attempts,
                           reimage_attempts=reimage_attempts, seed_public_url=seed_public_url))
    ops.check_request_reach(fleet, engine, request, endpoints.clock(), force_reason=force_reason)
    if gate_on_window:
        skip = await _await_window(fleet, list(request.stores or fleet.stores), endpoints,
                                   request.settings.node_duration, timedelta(hours=max_wait_hours))
        if skip is not None:
            return Cancelled(message=f"skipped: {skip}")
    made = ops.record_rollout(fleet, engine, request, endpoints.clock(), operator="prefect",
                              force_reason=force_reason)
    if made.plan is not None:
        await acreate_markdown_artifact(markdown=_plan_markdown(made.plan), key=_artifact_key("plan", made.record.id),
                                       description=f"plan of rollout {made.record.id}")
    return await _drive(fleet, home_dir, engine, endpoints, made.record.id, request.settings)


@flow(name="rollback", retries=0)
async def rollback(release: str, reason: str = "", max_concurrent: int = 100, max_per_region: int | None = None,
                   max_per_country: int | None = None, failure_budget: str = "10%", node_minutes: float = 20.0,
                   node_timeout_s: float = 1800.0, quorum_timeout_s: float = 600.0, gate_timeout_s: float = 600.0,
                   poll_s: float = 2.0, bmc_attempts: int = 4, reimage_attempts: int = 3,
                   seed_public_url: str | None = None, sim_url: str | None = None,
                   inventory: str | None = None, home: str | None = None,
                   state_url: str | None = None) -> State[Any]:
    """Revoke ``release`` and bring every store on it (wholly or partly) back to its last known-good
    release, with the same gates and caps as a rollout."""
    fleet = _fleet(inventory)
    engine = open_state(state_url or load_settings().state_store_url)
    endpoints = await _endpoints(fleet, sim_url)
    policy = RolloutPolicy(canary=0, waves=("100%",), max_concurrent=max_concurrent, max_per_region=max_per_region,
                           max_per_country=max_per_country, failure_budget=_budget(failure_budget),
                           node_duration=timedelta(minutes=node_minutes))
    settings = _settings(node_ready_timeout_s=node_timeout_s, quorum_timeout_s=quorum_timeout_s,
                         store_gate_timeout_s=gate_timeout_s, poll_s=poll_s, bmc_attempts=bmc_attempts,
                         reimage_attempts=reimage_attempts, seed_public_url=seed_public_url)
    made = ops.create_rollback(fleet, engine, release, endpoints.clock(), reason=reason or "rollback flow",
                               policy=policy, settings=settings, operator="prefect")
    for sid, why in made.skipped:
        get_run_logger().warning("not rolled back: %s: %s", sid, why)
    assert made.request is not None
    return await _drive(fleet, Path(home) if home else load_settings().home, engine, endpoints, made.record.id,
                        made.request.settings)


@flow(name="provision_store", retries=0)
async def provision_store(store: str, release: str, node_timeout_s: float = 1800.0, quorum_timeout_s: float = 600.0,
                          gate_timeout_s: float = 600.0, poll_s: float = 2.0, bmc_attempts: int = 4,
                          reimage_attempts: int = 3, seed_public_url: str | None = None,
                          sim_url: str | None = None, inventory: str | None = None, home: str | None = None,
                          state_url: str | None = None, force_reason: str | None = None) -> State[Any]:
    """Provision ``store`` on ``release``: cluster secrets on first use, seeds, every node reimaged,
    the cluster bootstrapped once and gated, recorded in the ledger. A release that is not stable
    provisions only a canary store, unless ``force_reason`` (recorded as ``release_forced``)."""
    fleet = _fleet(inventory)
    engine = open_state(state_url or load_settings().state_store_url)
    home_dir = Path(home) if home else load_settings().home
    endpoints = await _endpoints(fleet, sim_url)
    settings = _settings(node_ready_timeout_s=node_timeout_s, quorum_timeout_s=quorum_timeout_s,
                         store_gate_timeout_s=gate_timeout_s, poll_s=poll_s, bmc_attempts=bmc_attempts,
                         reimage_attempts=reimage_attempts, seed_public_url=seed_public_url)
    made = ops.create_provision(fleet, engine, home_dir, store, release, endpoints.clock(), settings=settings,
                                operator="prefect", force_reason=force_reason)
    return await _drive(fleet, home_dir, engine, endpoints, made.record.id, settings)


__all__ = ["WaveAnswer", "provision_store", "rollback", "rollout"]
