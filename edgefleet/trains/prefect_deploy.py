"""Release trains on a Prefect server: one work pool per inventory region, the deployments the
trains run through, and the dispatcher that hands a train's child operations to them.

The adapter between trains and the Prefect API, through prefect's own client; only the train
commands (``edgefleet train deploy``) and the flows (``flows/train.py``) use it, so the rest of the
library stays free of prefect.

What ``deploy_trains`` creates, idempotently (what exists is updated in place, nothing twice):

* a process work pool ``edgefleet-<region>`` per region of the inventory (kept when it exists);
* ``run-operation/rollout-<region>`` per region, on that region's pool: ``flows/train.py:
  run_operation`` runs or resumes one recorded child operation of a train;
* ``train-tick/train-tick`` with an interval schedule, on the tick's pool (``edgefleet`` unless
  told otherwise): ``flows/train.py:train_tick`` ticks every active train. Its concurrency limit is
  one run, and a tick that would start while the previous one still runs is cancelled: two ticks
  of one train must never decide at once, and a late tick is replaced by the next one anyway.

Every deployment pulls its code with ``set_working_directory`` to ``{{ $EDGEFLEET_REPO }}``, read on
the worker at run time, as ``flows/prefect.yaml`` does: each worker machine has the checkout where
its own ``EDGEFLEET_REPO`` says.

``PrefectDispatcher.launch(rollout_id, region)`` (the controller's ``Dispatcher``) creates a run of
that region's deployment and returns at once (``run_deployment(..., timeout=0)``): the tick does not
wait for its children; the next tick reads their outcome from the ledger. Each run is tagged with
the train, the region and the rollout, so ``prefect flow-run ls`` and the UI find every child of a
train.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from edgefleet.errors import InputError, ScheduleError
from edgefleet.inventory.model import Fleet

__all__ = [
    "OPERATION_ENTRYPOINT",
    "OPERATION_FLOW",
    "POOL_PREFIX",
    "TICK_DEPLOYMENT",
    "TICK_ENTRYPOINT",
    "TICK_POOL",
    "TRAIN_TAG",
    "Deployed",
    "PrefectDispatcher",
    "deploy_trains",
    "operation_deployment",
    "pool_name",
    "regions_of",
    "run_tags",
]

POOL_PREFIX = "edgefleet-"
TICK_POOL = "edgefleet"
OPERATION_FLOW = "run-operation"
TICK_DEPLOYMENT = "train-tick"
OPERATION_ENTRYPOINT = "flows/train.py:run_operation"
TICK_ENTRYPOINT = "flows/train.py:train_tick"
TRAIN_TAG = "edgefleet-train"
REPO_ENV = "EDGEFLEET_REPO"
_PULL_STEPS = [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $" + REPO_ENV + " }}"}}]
# A region becomes part of a work pool's and a deployment's name: keep it to what both accept
# unquoted in the prefect CLI and in URLs.
_REGION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def pool_name(region: str) -> str:
    """The work pool of ``region``'s workers."""
    return f"{POOL_PREFIX}{region}"


def operation_deployment(region: str) -> str:
    """``flow/deployment`` of the child operations of ``region``."""
    return f"{OPERATION_FLOW}/rollout-{region}"


def run_tags(train_id: str, region: str, rollout_id: str) -> list[str]:
    return [TRAIN_TAG, f"{TRAIN_TAG}:{train_id}", f"edgefleet-region:{region}", f"edgefleet-rollout:{rollout_id}"]


def regions_of(fleet: Fleet) -> list[str]:
    """The inventory's regions, sorted; InputError naming a store whose region cannot name a pool."""
    regions: dict[str, str] = {}
    for sid in sorted(fleet.stores):
        region = fleet.stores[sid].region
        if not _REGION.match(region):
            raise InputError(f"store {sid}: region {region!r} cannot name a Prefect work pool "
                             f"({pool_name(region)!r}); use letters, digits, '.', '_' and '-' (at most 63)")
        regions.setdefault(region, sid)
    return sorted(regions)


@dataclass(frozen=True)
class Deployed:
    """What ``deploy_trains`` found and did: pools created or kept, deployments (``flow/name``) made."""

    pools_created: tuple[str, ...]
    pools_kept: tuple[str, ...]
    deployments: tuple[str, ...]
    interval: timedelta

    def to_json(self) -> dict[str, Any]:
        return {"pools_created": list(self.pools_created), "pools_kept": list(self.pools_kept),
                "deployments": list(self.deployments), "interval_s": self.interval.total_seconds()}


def _api_error(what: str, e: Exception) -> ScheduleError:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value() or "(no PREFECT_API_URL set)"
    return ScheduleError(f"{what}: the Prefect API at {url} failed: {e}; check that the server runs and "
                         f"PREFECT_API_URL points at it")


async def _ensure_pool(client: Any, name: str) -> bool:
    """Create process work pool ``name`` unless it exists; True when it was created."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    try:
        await client.read_work_pool(name)
        return False
    except ObjectNotFound:
        pass
    try:
        await client.create_work_pool(WorkPoolCreate(
            name=name, type="process", base_job_template=ProcessWorker.get_default_base_job_template()))
    except ObjectAlreadyExists:  # created meanwhile by another deploy or a worker
        return False
    return True


async def _deploy_one(client: Any, repo: Path, flow: str, entrypoint: str, name: str, pool: str, *,
                      description: str, tags: list[str], schedules: list[Any] | None = None,
                      concurrency: Any = None) -> str:
    """Create or update deployment ``flow/name``; its parameter schema is read from the entrypoint's
    source (not imported: deploying runs none of the flow's imports)."""
    from prefect.utilities.callables import parameter_schema_from_entrypoint

    path, _, fn = entrypoint.partition(":")
    schema = parameter_schema_from_entrypoint(f"{repo / path}:{fn}")
    flow_id = await client.create_flow_from_name(flow)
    await client.create_deployment(
        flow_id=flow_id, name=name, entrypoint=entrypoint, path=".", work_pool_name=pool,
        work_queue_name="default", pull_steps=_PULL_STEPS, description=description, tags=tags,
        parameter_openapi_schema=schema.model_dump_for_openapi(),
        enforce_parameter_schema=True, schedules=schedules,
        concurrency_limit=1 if concurrency is not None else None, concurrency_options=concurrency)
    return f"{flow}/{name}"


async def deploy_trains(regions: Sequence[str], *, repo: Path, interval: timedelta, tick_pool: str = TICK_POOL,
                        tick_parameters: Mapping[str, Any] | None = None) -> Deployed:
    """Create what trains need on the Prefect server ``PREFECT_API_URL`` names (see the module
    docstring). ``repo``: the checkout whose ``flows/`` holds the entrypoints (for their parameter
    schemas; workers find their own through ``EDGEFLEET_REPO``). ``tick_parameters``: defaults of
    the ``train-tick`` runs (e.g. ``state_url``), else the worker's environment decides."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy, ConcurrencyOptions
    from prefect.client.schemas.schedules import IntervalSchedule

    if interval < timedelta(seconds=1):
        raise InputError(f"--interval {interval.total_seconds():g}: a tick interval is at least 1 second")
    if not (repo / "flows" / "train.py").is_file():
        raise InputError(f"{repo}: no flows/train.py here; run from the edgefleet checkout or give --repo")
    created: list[str] = []
    kept: list[str] = []
    made: list[str] = []
    try:
        async with get_client() as client:
            for pool in [*(pool_name(r) for r in regions), tick_pool]:
                if pool in created or pool in kept:
                    continue
                (created if await _ensure_pool(client, pool) else kept).append(pool)
            for region in regions:
                made.append(await _deploy_one(
                    client, repo, OPERATION_FLOW, OPERATION_ENTRYPOINT, f"rollout-{region}", pool_name(region),
                    description=f"Run or resume one child operation of a release train in region {region}.",
                    tags=["edgefleet", TRAIN_TAG, f"edgefleet-region:{region}"]))
            schedule = DeploymentScheduleCreate(schedule=IntervalSchedule(interval=interval), active=True,
                                                parameters=dict(tick_parameters or {}))
            made.append(await _deploy_one(
                client, repo, TICK_DEPLOYMENT, TICK_ENTRYPOINT, TICK_DEPLOYMENT, tick_pool,
                description="Tick every active release train: dispatch the stores due now, read outcomes.",
                tags=["edgefleet", TRAIN_TAG], schedules=[schedule],
                concurrency=ConcurrencyOptions(collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)))
    except (InputError, ScheduleError):
        raise
    except Exception as e:  # the client's transport and HTTP errors, whatever their class
        raise _api_error("deploying the train flows", e) from e
    return Deployed(tuple(created), tuple(kept), tuple(made), interval)


@dataclass
class PrefectDispatcher:
    """Hands a train's child operations to the region deployments (see the module docstring).

    ``parameters``: added to every run's ``rollout_id`` (``inventory``, ``home``, ``state_url``,
    ``sim_url`` of the tick, when it was given them; None values are left out so the worker's
    environment decides). ``launched``: rollout id -> flow run id of the runs created here."""

    train_id: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    launched: dict[str, str] = field(default_factory=dict)

    def launch(self, rollout_id: str, region: str) -> None:
        """Create a run of ``rollout-<region>`` for ``rollout_id`` and return without waiting for it
        (``edgefleet.trains.controller.Dispatcher``). Synchronous, as the controller's tick is: call
        it from a thread, not from inside an event loop (the tick flow runs the tick in a thread)."""
        from prefect.client.schemas.objects import FlowRun
        from prefect.deployments import run_deployment

        params = {"rollout_id": rollout_id, **{k: v for k, v in self.parameters.items() if v is not None}}
        try:
            # _sync: the synchronous variant whatever the calling thread (prefect's async_dispatch)
            run = run_deployment(operation_deployment(region), parameters=params, timeout=0,  # type: ignore[call-arg]
                                 flow_run_name=f"{rollout_id}-{uuid.uuid4().hex[:6]}",
                                 tags=run_tags(self.train_id, region, rollout_id), _sync=True)
            assert isinstance(run, FlowRun)
        except Exception as e:
            raise _api_error(f"train {self.train_id}: launching {rollout_id} on {operation_deployment(region)}",
                             e) from e
        self.launched[rollout_id] = str(run.id)
