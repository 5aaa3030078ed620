"""``edgefleet schedule``: ``list`` and ``cancel`` the runs edgefleet scheduled on a Prefect server;
``schedule rollout`` is an alias of ``edgefleet train start``.

``schedule rollout`` used to create one scheduled run per window group, each planning its own canary,
so the canary ring got a release the same night as everyone else. It now starts a release train (the
same options as ``train start``): stores still go in their own windows, but stage by stage, each
stage after the earlier one's gate and soak. Runs scheduled by an earlier edgefleet are still listed
and cancelled here; only these two commands import prefect (through
``edgefleet.schedule.prefect_schedule``).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from edgefleet.cli import train as _train
from edgefleet.cli._common import JsonOpt, console, err_console, print_json

if TYPE_CHECKING:
    from edgefleet.schedule.prefect_schedule import ScheduledRun

app = typer.Typer(no_args_is_help=True,
                  help="Scheduled runs on a Prefect server (list, cancel); `schedule rollout` starts a release train.")


_ALIAS_NOTICE = ("`schedule rollout` now starts a release train (`edgefleet train start`): each store in its own "
                 "window, stage by stage, no stage before the earlier stage's gate and soak")


def _rollout_alias(*args: Any, **kwargs: Any) -> None:
    err_console.print(f"[yellow]note[/yellow] {_ALIAS_NOTICE}", markup=True, soft_wrap=True)
    _train.start(*args, **kwargs)


rollout = app.command("rollout", help=f"{_ALIAS_NOTICE}. Takes the options of `train start`.")(
    functools.wraps(_train.start)(_rollout_alias))


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
