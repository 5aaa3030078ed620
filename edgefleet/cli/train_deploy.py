"""``edgefleet train deploy``: make a Prefect server ready to run release trains on regional workers
(one process work pool ``edgefleet-<region>`` per inventory region, the ``rollout-<region>``
deployments and the ``train-tick`` schedule; see ``edgefleet.trains.prefect_deploy``).

Idempotent: run it again after adding a region to the inventory, or to change the interval. It
talks to the server ``PREFECT_API_URL`` names; prefect is imported only when it runs."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from edgefleet.cli._common import InventoryOpt, JsonOpt, console, print_json
from edgefleet.errors import InputError

__all__ = ["deploy_cmd"]


def _tick_params(items: list[str] | None, sim: str | None) -> dict[str, Any]:
    """``--param KEY=VALUE`` (VALUE read as JSON when it is JSON, else a string) and ``--sim URL``."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise InputError(f"--param {item!r}: write KEY=VALUE with KEY a train_tick parameter, e.g. state_url=...")
        try:
            out[key.strip()] = json.loads(text)
        except ValueError:
            out[key.strip()] = text
    if sim is not None:
        out["sim_url"] = sim.rstrip("/")
    return out


def deploy_cmd(inventory: InventoryOpt = Path("inventory"),
               interval: Annotated[float, typer.Option("--interval", min=1.0,
                                                       help="Seconds between two ticks of every active train")] = 60.0,
               tick_pool: Annotated[str, typer.Option("--tick-pool", help="Work pool of the train-tick runs")
                                    ] = "edgefleet",
               repo: Annotated[Path, typer.Option("--repo", help="The edgefleet checkout (its flows/), as on "
                                                  "the workers' EDGEFLEET_REPO")] = Path("."),
               sim: Annotated[str | None, typer.Option("--sim", help="Ticks drive this fleet simulator")] = None,
               param: Annotated[list[str] | None, typer.Option("--param", help="KEY=VALUE parameter of every "
                                                               "tick (e.g. state_url=...), repeatable")] = None,
               json_out: JsonOpt = False) -> None:
    """Create the work pools and deployments release trains run on (missing ones; the rest updated)."""
    import asyncio

    from edgefleet.inventory.load import load_fleet
    from edgefleet.trains.prefect_deploy import deploy_trains, operation_deployment, pool_name, regions_of

    fleet = load_fleet(inventory)
    regions = regions_of(fleet)
    done = asyncio.run(deploy_trains(regions, repo=repo.resolve(), interval=timedelta(seconds=interval),
                                     tick_pool=tick_pool, tick_parameters=_tick_params(param, sim)))
    if json_out:
        print_json({"regions": regions, **done.to_json()})
        return
    for pool in done.pools_created:
        console.print(f"created work pool {pool} (process)")
    for pool in done.pools_kept:
        console.print(f"work pool {pool} exists: kept")
    for d in done.deployments:
        console.print(f"deployment {d}")
    console.print(f"train-tick every {interval:g} s on pool {tick_pool}; children per region: "
                  + ", ".join(f"{operation_deployment(r)} on {pool_name(r)}" for r in regions))
    console.print("start one worker per region: EDGEFLEET_REPO=<checkout> prefect worker start --pool "
                  f"{pool_name(regions[0]) if regions else 'edgefleet-<region>'} (see flows/prefect.yaml)")
