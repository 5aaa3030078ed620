"""``edgefleet schedule``: schedule a rollout per window group on a Prefect server, list and cancel.

``schedule rollout`` groups the chosen stores by time zone, maintenance windows and applicable freezes
(``edgefleet.schedule.groups``) and creates one scheduled run of the rollout deployment per group, at
the group's next allowed start, with parameters ``release`` and ``stores``, plus ``sim_url`` with
``--sim`` (the run drives a fleet simulator instead of the inventory's BMCs) and any other flow
parameter given as ``--param KEY=VALUE``. ``--dry-run`` prints the groups, their starts and the
parameters without talking to Prefect; only the commands that do talk to it import prefect (through
``edgefleet.schedule.prefect_schedule``).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

import typer
from rich.markup import escape
from rich.table import Table

from edgefleet.cli._common import (
    InventoryOpt,
    JsonOpt,
    console,
    default_state_url,
    err_console,
    parse_instant,
    print_json,
)
from edgefleet.errors import InputError

if TYPE_CHECKING:
    from edgefleet.schedule.groups import GroupStart
    from edgefleet.schedule.prefect_schedule import ScheduledRun

app = typer.Typer(no_args_is_help=True,
                  help="Schedule rollouts inside each store's maintenance window (on a Prefect server).")

DEFAULT_DEPLOYMENT = "rollout/rollout"
RESERVED_PARAMS = ("release", "stores")  # set per run by the scheduler


def parse_params(items: list[str] | None, sim: str | None = None) -> dict[str, Any]:
    """The extra flow parameters of every scheduled run: ``--param KEY=VALUE`` (VALUE read as JSON when
    it is JSON: numbers, true/false, lists; otherwise as a string) and ``--sim URL`` as ``sim_url``."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise InputError(f"--param {item!r}: write KEY=VALUE with KEY a flow parameter name, e.g. poll_s=0.5")
        if key in RESERVED_PARAMS:
            raise InputError(f"--param {key}: the scheduler sets {' and '.join(RESERVED_PARAMS)} itself "
                             "(use --release, --stores or --group)")
        if key in out:
            raise InputError(f"--param {key} given twice")
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    if sim is not None:
        if "sim_url" in out:
            raise InputError("give --sim or --param sim_url=..., not both")
        parts = urlsplit(sim)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"--sim {sim!r} is not a simulator URL like http://127.0.0.1:8700 "
                             "(as `edgefleet sim serve` prints it)")
        out["sim_url"] = sim.rstrip("/")
    return out


def _check_release(release: str) -> None:
    from edgefleet.releases.catalog import ReleaseCatalog
    from edgefleet.state.db import open_state

    ReleaseCatalog(open_state(default_state_url())).require_rollable(release)


def _local(gs: GroupStart) -> str:
    local = gs.local_start()
    return f"{local:%a %Y-%m-%d %H:%M %Z}" if local else "-"


@app.command()
def rollout(release: Annotated[str, typer.Option("--release", help="Release to roll out (from the catalog)")],
            stores: Annotated[str | None, typer.Option("--stores", help="Comma-separated store ids "
                                                                        "(default: every store)")] = None,
            group: Annotated[list[str] | None, typer.Option(
                "--group", help="Window group id (repeat); see --dry-run for the ids")] = None,
            from_: Annotated[str | None, typer.Option("--from", help="Schedule from this ISO instant "
                                                                     "(default: now)")] = None,
            deployment: Annotated[str, typer.Option(
                "--deployment", envvar="EDGEFLEET_ROLLOUT_DEPLOYMENT",
                help="Prefect deployment <flow>/<name>; a '{region}' in it sends each region's groups to "
                     "its own deployment (work pool)")] = DEFAULT_DEPLOYMENT,
            min_minutes: Annotated[float, typer.Option(
                "--min-minutes", min=0, help="Start only where the window has this many minutes left "
                                             "(default: one node's reimage)")] = 20,
            sim: Annotated[str | None, typer.Option(
                "--sim", help="Fleet simulator URL the runs drive instead of the inventory's BMCs "
                              "(flow parameter sim_url)")] = None,
            param: Annotated[list[str] | None, typer.Option(
                "--param", help="Extra flow parameter KEY=VALUE for every run (repeat); VALUE is JSON "
                                "or a string, e.g. poll_s=0.5")] = None,
            dry_run: Annotated[bool, typer.Option("--dry-run", help="Show groups and starts; create nothing")] = False,
            inventory: InventoryOpt = Path("inventory"), json_out: JsonOpt = False) -> None:
    """One scheduled run per window group, at the group's next window start outside every freeze.

    A store that already has a scheduled, running or completed run of the release keeps it, with the
    parameters it was scheduled with: to change them, cancel and schedule again."""
    from edgefleet.inventory.load import load_fleet
    from edgefleet.schedule.groups import plan_schedule

    if stores and group:
        raise InputError("give --stores or --group, not both")
    store_ids = [s.strip() for s in stores.split(",") if s.strip()] if stores else None
    if stores is not None and not store_ids:
        raise InputError("--stores is empty; give store ids like dk-001,dk-002")
    after = parse_instant(from_, "--from")
    extra = parse_params(param, sim)
    by_region = "{region}" in deployment
    _check_release(release)
    fleet = load_fleet(inventory)
    plan = plan_schedule(fleet, after, stores=store_ids, group_ids=group or None, by_region=by_region,
                         min_duration=timedelta(minutes=min_minutes))
    ready = [gs for gs in plan if gs.start is not None]
    blocked = [gs for gs in plan if gs.start is None]
    runs = {} if dry_run else _create_runs(ready, deployment, by_region, release, extra)
    _print_schedule(release, deployment, after, dry_run, extra, ready, blocked, runs, json_out)
    _warn_kept(runs, extra)
    for gs in blocked:
        err_console.print(f"[yellow]unschedulable[/yellow] group {gs.group.id} ({', '.join(gs.group.stores)}): "
                          f"{gs.reason}", markup=True, soft_wrap=True)
    if blocked:
        raise typer.Exit(1)


def _create_runs(ready: list[GroupStart], deployment: str, by_region: bool, release: str,
                 extra: dict[str, Any]) -> dict[str, ScheduledRun]:
    """One run per schedulable group on the Prefect server (or the one it already has), by group id."""
    if not ready:
        return {}
    from edgefleet.schedule.prefect_schedule import RunRequest, create_runs

    requests = []
    for gs in ready:
        assert gs.start is not None
        name = deployment.format(region=gs.group.region) if by_region else deployment
        requests.append(RunRequest(name, release, gs.group.id, gs.start,
                                   {"release": release, "stores": list(gs.group.stores), **extra},
                                   stores=gs.group.stores))
    return {r.group or "": r for r in create_runs(requests)}


def _print_schedule(release: str, deployment: str, after: datetime, dry_run: bool, extra: dict[str, Any],
                    ready: list[GroupStart], blocked: list[GroupStart], runs: dict[str, ScheduledRun],
                    json_out: bool) -> None:
    """The groups, their starts and runs: as JSON or as a table."""
    if json_out:
        print_json({"release": release, "deployment": deployment, "from": after.isoformat(), "dry_run": dry_run,
                    "parameters": extra,
                    "groups": [{**gs.to_json(), "run": runs[gs.group.id].to_json() if gs.group.id in runs else None}
                               for gs in ready],
                    "unschedulable": [gs.to_json() for gs in blocked]})
        return
    t = Table("group", "stores", "windows", "start (local)", "start (UTC)", "run", title=(
        f"{release}: {len(ready)} group(s)" + (" (dry run)" if dry_run else "")), caption=(
        "every run also gets " + ", ".join(f"{k}={json.dumps(v)}" for k, v in extra.items()) if extra else None))
    for gs in ready:
        run = runs.get(gs.group.id)
        assert gs.start is not None
        run_text = "-" if run is None else f"{run.id} ({'created' if run.created else 'exists: ' + run.state})"
        t.add_row(gs.group.id, str(len(gs.group.stores)), " + ".join(gs.group.windows), _local(gs),
                  f"{gs.start:%Y-%m-%d %H:%M}Z", run_text)
    console.print(t)


def _warn_kept(runs: dict[str, ScheduledRun], extra: dict[str, Any]) -> None:
    """A warning for each run kept with other parameters than those asked for now."""
    for run in runs.values():
        if run.created:
            continue
        # A deployment's own default parameters are merged into its runs: compare only what was asked,
        # and whether the run drives a simulator.
        differ = sorted({k for k, v in extra.items() if run.parameters.get(k) != v}
                        | ({"sim_url"} & (run.parameters.keys() - extra.keys())))
        if differ:
            shown = ", ".join(f"{k}={json.dumps(run.parameters.get(k))}" for k in differ)
            err_console.print(f"[yellow]kept[/yellow] run {run.id} (group {escape(run.group or '-')}, {run.state}) "
                              f"scheduled with {escape(shown)}: cancel it and schedule again to change its "
                              "parameters", markup=True, soft_wrap=True)


def _print_runs(runs: list[ScheduledRun], title: str, json_out: bool) -> None:
    if json_out:
        print_json([r.to_json() for r in runs])
        return
    t = Table("run id", "release", "group", "state", "scheduled (UTC)", "stores", title=title)
    for r in runs:
        stores = r.parameters.get("stores")
        t.add_row(r.id, r.release or "-", r.group or "-", r.state,
                  f"{r.scheduled_start:%Y-%m-%d %H:%M:%S}Z" if r.scheduled_start else "-",
                  str(len(stores)) if isinstance(stores, list) else "-")
    console.print(t)


@app.command("list")
def list_(release: Annotated[str | None, typer.Option("--release", help="Only this release")] = None,
          all_: Annotated[bool, typer.Option("--all", help="Include finished and cancelled runs")] = False,
          json_out: JsonOpt = False) -> None:
    """edgefleet's scheduled runs on the Prefect server, by scheduled start."""
    from edgefleet.schedule.prefect_schedule import list_runs

    runs = list_runs(release, include_finished=all_)
    _print_runs(runs, f"{len(runs)} scheduled run(s)", json_out)


@app.command()
def cancel(ids: Annotated[list[str] | None, typer.Argument(help="Flow run ids to cancel")] = None,
           release: Annotated[str | None, typer.Option("--release", help="Cancel every unfinished run of it")] = None,
           json_out: JsonOpt = False) -> None:
    """Cancel scheduled runs: all unfinished runs of --release, and/or the given run ids."""
    from edgefleet.schedule.prefect_schedule import cancel_runs

    runs = cancel_runs(release, ids or ())
    _print_runs(runs, f"cancelled {len(runs)} run(s)", json_out)
