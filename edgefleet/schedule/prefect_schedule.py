"""Scheduled flow runs on a Prefect server: create one per window group, list them, cancel them.

The adapter between edgefleet's window groups and the Prefect API, through prefect's own client.
Only ``edgefleet.cli.schedule`` imports it (lazily, inside the commands that talk to the server), so
the rest of the library stays free of prefect.

Why scheduled flow runs rather than deployment schedules (cron + IANA zone): a group's next start is
computed by ``edgefleet.schedule.groups`` and is a single instant that already honours freezes,
DST gaps and folds, and the group's own parameters (release, stores). A cron schedule would need a
deployment per group (200 groups: 200 deployments, 38 s on SQLite), would repeat every week after
the rollout is done, cannot express freezes, and leaves DST edges to the cron library instead of the
rules the planner and the simulator's oracle share. One scheduled run per group is one API call;
cancelling it is one state change.

Every run created here carries the tags ``edgefleet-schedule``, ``edgefleet-release:<R>`` and
``edgefleet-group:<G>``; listing and cancelling filter on them. Scheduling is idempotent per
release and store: a store that already has a scheduled, running or completed run of the release is
not scheduled again (a freeze declared since may have split its group, so group ids alone would not
do); failed, crashed and cancelled runs do not count. Concurrent invocations are deduplicated by
the server through an idempotency key.

A rollout run that its run-time freeze check skips should end Cancelled (with the reason as the
state message), not Completed, so that scheduling the release again picks its stores up.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from edgefleet.errors import EdgefleetError, InputError, ScheduleError, SchedulerBusy
from edgefleet.retry import RetryPolicy, retrying

__all__ = [
    "SCHEDULE_TAG",
    "RunRequest",
    "ScheduledRun",
    "api_url",
    "cancel_runs",
    "create_runs",
    "group_tag",
    "list_runs",
    "release_tag",
]

SCHEDULE_TAG = "edgefleet-schedule"
_PAGE = 200  # the Prefect API's default (and maximum) page size
_BULK = 100  # the most runs the server creates in one bulk call
# A SQLite-backed server refuses a transaction while another writer holds the file; the
# idempotency keys make a retry of the whole batch safe.
_BULK_RETRY = RetryPolicy(attempts=4, backoff_s=0.5, backoff_max_s=2.0)
_BULK_STATE = 50  # the most runs the server changes the state of in one bulk call
_FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
_NOT_STARTED = {"SCHEDULED", "PENDING"}
_RETRYABLE = {"FAILED", "CANCELLED", "CRASHED"}  # runs that do not keep a store from being scheduled again

T = TypeVar("T")


async def _create_bulk(client: Any, deployment: str, deployment_id: Any, items: list[tuple[int, dict[str, Any]]],
                       requests: Sequence[RunRequest]) -> list[dict[str, Any]]:
    """One bulk create of ``items`` (index into ``requests``, run body); the server's per-run
    results. A run refused because the server's database was busy: ``SchedulerBusy`` (transient);
    refused otherwise: ``ScheduleError``."""
    resp = await client.request("POST", cast(Any, f"/deployments/{deployment_id}/create_flow_run/bulk"),
                                json=[body for _, body in items])
    resp.raise_for_status()
    outcome: list[dict[str, Any]] = resp.json()["results"]
    failed = [(requests[i].group_id, str(o.get("error")))
              for (i, _), o in zip(items, outcome, strict=True) if o["status"] != "CREATED"]
    if failed:
        busy = any("database is locked" in e for _, e in failed)
        raise (SchedulerBusy if busy else ScheduleError)(
            f"deployment {deployment!r} refused {len(failed)} run(s): "
            + "; ".join(f"group {g}: {e}" for g, e in failed[:5]))
    return outcome


def release_tag(release: str) -> str:
    return f"edgefleet-release:{release}"


def group_tag(group_id: str) -> str:
    return f"edgefleet-group:{group_id}"


@dataclass(frozen=True)
class RunRequest:
    """One run to schedule: deployment ``flow/deployment`` at ``start`` (aware) with ``parameters``.

    ``stores`` (optional) are the stores the run changes: stores already in a scheduled, running or
    completed run of the same release are left out of the new run (and out of its ``stores``
    parameter); when none is left, the existing run is returned instead."""

    deployment: str
    release: str
    group_id: str
    start: datetime
    parameters: dict[str, Any] = field(default_factory=dict)
    stores: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScheduledRun:
    """A flow run created by edgefleet's scheduler, as the Prefect API reports it."""

    id: str
    name: str
    deployment_id: str | None
    state: str  # SCHEDULED, PENDING, RUNNING, COMPLETED, CANCELLED, ...
    scheduled_start: datetime | None  # UTC
    release: str | None
    group: str | None
    parameters: dict[str, Any]
    created: bool = False  # True when this call created it (False: it already existed)

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "deployment_id": self.deployment_id, "state": self.state,
                "scheduled_start": self.scheduled_start.isoformat() if self.scheduled_start else None,
                "release": self.release, "group": self.group, "parameters": self.parameters,
                "created": self.created}


def api_url() -> str:
    """The Prefect API this process talks to; ScheduleError when none is configured (prefect would
    otherwise start a throw-away server whose scheduled runs vanish with the process)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise ScheduleError("no Prefect API configured: scheduled runs need a long-running Prefect server. Start "
                            "one (`prefect server start --host 127.0.0.1`) and set PREFECT_API_URL, e.g. "
                            "`export PREFECT_API_URL=http://127.0.0.1:4200/api`")
    return str(url)


def _run(make: Callable[[], Awaitable[T]]) -> T:
    url = api_url()
    try:
        return asyncio.run(_guard(make(), url))
    except EdgefleetError:
        raise
    except Exception as e:  # the client raises httpx, prefect and pydantic errors; name the server
        raise ScheduleError(f"Prefect API {url}: {type(e).__name__}: {e}") from e


async def _guard(aw: Awaitable[T], url: str) -> T:
    import httpx

    try:
        return await aw
    except httpx.TransportError as e:
        raise ScheduleError(f"cannot reach the Prefect API at {url} ({type(e).__name__}: {e}); is the server "
                            "running (`prefect server start`) and PREFECT_API_URL right?") from e


def _tag_value(tags: Sequence[str], prefix: str) -> str | None:
    return next((t[len(prefix):] for t in tags if t.startswith(prefix)), None)


def _to_run(fr: Any, created: bool = False) -> ScheduledRun:
    state = fr.state.type.value if fr.state is not None else "UNKNOWN"
    start = fr.next_scheduled_start_time or fr.expected_start_time
    return ScheduledRun(id=str(fr.id), name=fr.name, deployment_id=str(fr.deployment_id) if fr.deployment_id else None,
                        state=state, scheduled_start=start.astimezone(UTC) if start else None,
                        release=_tag_value(fr.tags, "edgefleet-release:"),
                        group=_tag_value(fr.tags, "edgefleet-group:"),
                        parameters=dict(fr.parameters), created=created)


async def _read_tagged(client: Any, tags: list[str]) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    out: list[Any] = []
    flt = FlowRunFilter(tags=FlowRunFilterTags(all_=tags))
    while True:
        page = await client.read_flow_runs(flow_run_filter=flt, sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                                           limit=_PAGE, offset=len(out))
        out.extend(page)
        if len(page) < _PAGE:
            return out


def _stores_of(fr: Any) -> list[str]:
    stores = fr.parameters.get("stores")
    return [str(s) for s in stores] if isinstance(stores, list) else []


async def _read_deployments(client: Any, names: list[str]) -> dict[str, Any]:
    from prefect.exceptions import ObjectNotFound

    deployments: dict[str, Any] = {}
    for name in names:
        try:
            deployments[name] = await client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise ScheduleError(
                f"deployment {name!r} not found on the Prefect API: deploy it first (`prefect --no-prompt "
                "deploy --prefect-file flows/prefect.yaml --all`), or pass --deployment "
                "<flow>/<deployment> as `prefect deployment ls` shows it") from None
    return deployments


def _covering_run(r: RunRequest, live: list[Any]) -> tuple[Any | None, list[str]]:
    """The live run of the release that already covers the request (one sharing a store with it,
    once all its stores are covered; without stores, one of its group), or None and the request's
    stores no live run covers yet."""
    if r.stores:
        covered = {s for fr in live for s in _stores_of(fr)}
        remaining = [s for s in r.stores if s not in covered]
        if not remaining:
            return next(fr for fr in live if set(_stores_of(fr)) & set(r.stores)), []
        return None, remaining
    done = [fr for fr in live if group_tag(r.group_id) in fr.tags]
    return (done[0] if done else None), []


def _run_body(r: RunRequest, dep: Any, remaining: list[str], earlier: int) -> dict[str, Any]:
    """The new scheduled run of a request (for the stores still ``remaining``), as the bulk endpoint
    takes it; ``earlier``: how many runs of the release the group had before, in any state."""
    from prefect.client.schemas.actions import DeploymentFlowRunCreate
    from prefect.states import Scheduled, to_state_create

    parameters = dict(r.parameters)
    if r.stores and "stores" in parameters:
        parameters["stores"] = remaining
    # Two invocations racing on the same group compute the same key, and the server keeps
    # one run; the count of the group's earlier runs makes a group rescheduled after a
    # cancel a new key.
    what = hashlib.sha256(",".join(remaining).encode()).hexdigest()[:12]
    key = (f"edgefleet:{dep.id}:{r.release}:{r.group_id}:{r.start.astimezone(UTC).isoformat()}:"
           f"{what}:{earlier}")
    body = DeploymentFlowRunCreate(
        name=f"{r.release}-{r.group_id}", parameters=parameters, idempotency_key=key,
        state=to_state_create(Scheduled(scheduled_time=r.start.astimezone(UTC))),
        tags=[SCHEDULE_TAG, release_tag(r.release), group_tag(r.group_id)])
    return body.model_dump(mode="json", exclude_unset=True)


def create_runs(requests: Sequence[RunRequest], *, concurrency: int = 1) -> list[ScheduledRun]:
    """Create one scheduled flow run per request, in bulk calls of up to 100 (``concurrency`` calls
    at a time).

    Idempotent per release: a request whose stores (or, without stores, whose group) already have a
    scheduled, running or completed run of the release gets that run back (``created`` False). Failed,
    crashed and cancelled runs do not count, so scheduling again retries them."""
    for r in requests:
        if r.start.tzinfo is None:
            raise InputError(f"group {r.group_id}: start {r.start.isoformat()} has no UTC offset")
    if not requests:
        return []

    async def go() -> list[ScheduledRun]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        async with get_client() as client:
            deployments = await _read_deployments(client, sorted({r.deployment for r in requests}))
            history: dict[str, list[Any]] = {}  # release -> its runs, any state
            for release in sorted({r.release for r in requests}):
                history[release] = await _read_tagged(client, [SCHEDULE_TAG, release_tag(release)])
            results: list[ScheduledRun | None] = [None] * len(requests)
            todo: dict[str, list[tuple[int, dict[str, Any]]]] = {}  # deployment -> (index, run body)
            for i, r in enumerate(requests):
                runs = history[r.release]
                live = [fr for fr in runs if fr.state is None or fr.state.type.value not in _RETRYABLE]
                existing, remaining = _covering_run(r, live)
                if existing is not None:
                    results[i] = _to_run(existing)
                    continue
                earlier = sum(1 for fr in runs if group_tag(r.group_id) in fr.tags)
                body = _run_body(r, deployments[r.deployment], remaining, earlier)
                todo.setdefault(r.deployment, []).append((i, body))
            sem = asyncio.Semaphore(concurrency)

            async def batch(deployment: str, items: list[tuple[int, dict[str, Any]]]) -> None:
                # The server's bulk endpoint creates up to _BULK runs in one transaction: one call
                # instead of one per group (per-run calls measured 0.1 s each on a 2-core machine).
                dep = deployments[deployment]
                async with sem:
                    outcome = await retrying(_BULK_RETRY, lambda: _create_bulk(client, deployment, dep.id, items,
                                                                               requests))
                    ids = [uuid.UUID(o["flow_run_id"]) for o in outcome]
                    made = {str(fr.id): fr for fr in await client.read_flow_runs(
                        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=len(ids))}
                for (i, _), fid in zip(items, ids, strict=True):
                    results[i] = _to_run(made[str(fid)], created=True)

            await asyncio.gather(*(batch(d, items[k:k + _BULK]) for d, items in todo.items()
                                   for k in range(0, len(items), _BULK)))
            return [r for r in results if r is not None]

    return _run(go)


def list_runs(release: str | None = None, *, include_finished: bool = False) -> list[ScheduledRun]:
    """edgefleet's scheduled runs (of ``release``, or all), by scheduled start; unfinished only unless
    ``include_finished``."""

    async def go() -> list[ScheduledRun]:
        from prefect.client.orchestration import get_client

        tags = [SCHEDULE_TAG] + ([release_tag(release)] if release else [])
        async with get_client() as client:
            runs = [_to_run(fr) for fr in await _read_tagged(client, tags)]
        return [r for r in runs if include_finished or r.state not in _FINAL]

    return _run(go)


def cancel_runs(release: str | None = None, ids: Sequence[str] = ()) -> list[ScheduledRun]:
    """Cancel edgefleet's unfinished scheduled runs of ``release`` and/or the runs ``ids``. A run not
    started yet becomes Cancelled; a running one Cancelling (its worker stops it). Returns the runs
    as they were before cancelling; runs already finished are left alone."""
    if not release and not ids:
        raise InputError("say what to cancel: --release R, or one or more flow run ids")
    parsed: list[uuid.UUID] = []
    for i in ids:
        try:
            parsed.append(uuid.UUID(i))
        except ValueError:
            raise InputError(f"{i!r} is not a flow run id (a UUID, as `edgefleet schedule list` shows)") from None

    async def go() -> list[ScheduledRun]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
        from prefect.client.schemas.objects import State
        from prefect.exceptions import ObjectNotFound
        from prefect.states import Cancelled, Cancelling, to_state_create

        async with get_client() as client:
            targets: dict[str, Any] = {}
            if release:
                for fr in await _read_tagged(client, [SCHEDULE_TAG, release_tag(release)]):
                    targets[str(fr.id)] = fr
            for u in parsed:
                try:
                    fr = await client.read_flow_run(u)
                except ObjectNotFound:
                    raise InputError(f"no flow run {u} on the Prefect API") from None
                if SCHEDULE_TAG not in fr.tags:
                    raise InputError(f"flow run {u} ({fr.name}) was not scheduled by edgefleet "
                                     f"(no tag {SCHEDULE_TAG}); cancel it with `prefect flow-run cancel {u}`")
                targets[str(u)] = fr
            msg = "cancelled by edgefleet schedule cancel"
            pending = [_to_run(fr) for fr in targets.values()]
            pending = [r for r in pending if r.state not in _FINAL]
            waiting = [r for r in pending if r.state in _NOT_STARTED]
            # Runs not started yet: Cancelled, _BULK_STATE per call (the server's bulk limit).
            body_state = to_state_create(Cancelled(message=msg)).model_dump(mode="json", exclude_unset=True)
            for k in range(0, len(waiting), _BULK_STATE):
                chunk = waiting[k:k + _BULK_STATE]
                flt = FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(r.id) for r in chunk]))
                resp = await client.request("POST", cast(Any, "/flow_runs/bulk_set_state"), json={
                    "flow_runs": flt.model_dump(mode="json", exclude_unset=True), "state": body_state,
                    "force": True, "limit": len(chunk)})
                resp.raise_for_status()
                refused = [o for o in resp.json()["results"] if o["status"] != "ACCEPT"]
                if refused:
                    raise ScheduleError(f"the Prefect API refused to cancel {len(refused)} run(s), e.g. "
                                        f"{refused[0]['flow_run_id']}: {refused[0].get('details')}")
            # Running (or paused) runs: Cancelling, so that their worker stops the process.
            for r in pending:
                if r.state not in _NOT_STARTED:
                    state: State[Any] = Cancelling(message=msg)
                    await client.set_flow_run_state(uuid.UUID(r.id), state, force=True)
            out = pending
        return sorted(out, key=lambda r: (r.scheduled_start or datetime.max.replace(tzinfo=UTC), r.id))

    return _run(go)
