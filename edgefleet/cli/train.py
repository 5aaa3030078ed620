"""``edgefleet train``: release trains from the command line: start (or plan with ``--dry-run``),
list, status (``--watch``), pause, resume, approve, abort (``--rollback``), and run one in this
process (``train run``: the embedded controller, one machine, no server).

A train carries one release across the fleet stage by stage (default: the inventory's rings,
``canary`` first), each store in its own maintenance window; a stage's gate and soak pass before
the next stage starts. ``start`` records the train; a controller moves it: ``train run ID`` here,
or the ``train-tick`` deployment on Prefect. Exit codes: 0 done, 1 a train halted, paused, aborted
or was refused, 2 bad input.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from edgefleet.cli._common import (
    App,
    InventoryOpt,
    JsonOpt,
    console,
    default_state_url,
    edgefleet_home,
    err_console,
    parse_instant,
    print_json,
)
from edgefleet.cli._limit import LimitOpt
from edgefleet.cli.rollout import (
    BmcAttemptsOpt,
    GateOpt,
    NodeMinOpt,
    NodeTimeoutOpt,
    PollOpt,
    PostHookOpt,
    PreHookOpt,
    QuorumOpt,
    ReimageAttemptsOpt,
    ReleaseOpt,
    SeedUrlOpt,
    SimOpt,
)
from edgefleet.cli.train_deploy import deploy_cmd
from edgefleet.errors import InputError, OperationFailed

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy import Engine

    from edgefleet.inventory.model import Fleet
    from edgefleet.trains.service import Started
    from edgefleet.trains.store import TrainRecord

app = App(help="Release trains: one release across the fleet, stage by stage, each "
                      "store in its own window, gated and soaked between stages.")

IdArg = Annotated[str, typer.Argument(help="Train id (see `edgefleet train list`)")]
StagesOpt = Annotated[str | None, typer.Option(
    "--stages", help="Stages as plain ring or group names, in order: canary,ring1,ring2 (default: the "
                     "inventory's rings, canary first)")]
StageOpt = Annotated[list[str] | None, typer.Option(
    "--stage", help="One stage (repeat, in order): a group, an Ansible-style pattern like "
                    "'country_dk:&ring_ring1', or N% of the stores left; NAME=SELECTOR names it")]
SoakOpt = Annotated[str | None, typer.Option("--soak", help="Fleet time after a stage's last store finished "
                                                            "before the next stage starts, e.g. 24h (default 24h)")]
StageSoakOpt = Annotated[list[str] | None, typer.Option("--stage-soak", help="One stage's soak: NAME=12h (repeat)")]
BudgetOpt = Annotated[str | None, typer.Option("--failure-budget", help="Stores of a stage that may fail or roll "
                                                                        "back: a count or N% (default 10%)")]
StageBudgetOpt = Annotated[list[str] | None, typer.Option("--stage-budget", help="One stage's budget: NAME=2 or "
                                                                                 "NAME=5% (repeat)")]
ApproveOpt = Annotated[str | None, typer.Option("--approve-stages", help="Stages a person must approve after "
                                                                         "their gate and soak: NAME,NAME")]
MaxOpt = Annotated[int | None, typer.Option("--max-concurrent", min=1, help="Stores of a stage at once")]
RegionOpt = Annotated[int | None, typer.Option("--max-per-region", min=1, help="Stores at once per region")]
CountryOpt = Annotated[int | None, typer.Option("--max-per-country", min=1, help="Stores at once per country")]
ManualOpt = Annotated[bool, typer.Option("--manual-promote", help="Do not promote the release to stable when the "
                                                                  "canary stage passes: wait for `train approve`")]
DryOpt = Annotated[bool, typer.Option("--dry-run", help="Show the stage plan (stores per stage, first windows); "
                                                        "record nothing")]
FromOpt = Annotated[str | None, typer.Option("--from", help="Plan as of this ISO 8601 instant (with --dry-run; "
                                                            "default: now)")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation")]


def _engine() -> Engine:
    from edgefleet.state.db import open_state

    return open_state(default_state_url())


def _fleet(inventory: Path) -> Fleet:
    from edgefleet.inventory.load import load_fleet

    return load_fleet(inventory)


def _fleet_clock(fleet: Fleet, sim: str | None) -> Callable[[], datetime]:
    """Fleet time: the simulator's clock with ``--sim``, the wall clock otherwise."""
    if sim is None:
        return lambda: datetime.now(UTC)
    from edgefleet.cli.rollout import _endpoints

    return asyncio.run(_endpoints(fleet, sim)).clock


def _operator() -> str:
    from edgefleet.cli.rollout import _operator as who

    return who()


def start(release: ReleaseOpt, inventory: InventoryOpt = Path("inventory"), stages: StagesOpt = None,
          stage: StageOpt = None, soak: SoakOpt = None, stage_soak: StageSoakOpt = None,
          failure_budget: BudgetOpt = None, stage_budget: StageBudgetOpt = None, approve_stages: ApproveOpt = None,
          max_concurrent: MaxOpt = None, max_per_region: RegionOpt = None, max_per_country: CountryOpt = None,
          manual_promote: ManualOpt = False, limit: LimitOpt = None, node_minutes: NodeMinOpt = 20.0,
          node_timeout: NodeTimeoutOpt = 1800.0, quorum_timeout: QuorumOpt = 600.0, gate_timeout: GateOpt = 600.0,
          poll: PollOpt = 2.0, bmc_attempts: BmcAttemptsOpt = 4, reimage_attempts: ReimageAttemptsOpt = 3,
          pre_hook: PreHookOpt = None,
          post_hook: PostHookOpt = None, seed_public_url: SeedUrlOpt = None, dry_run: DryOpt = False,
          from_: FromOpt = None, sim: SimOpt = None, json_out: JsonOpt = False) -> None:
    """Start a release train of RELEASE (or show its stage plan with --dry-run). `train run ID` (or the
    train-tick deployment on Prefect) then carries it out.

    Examples:

      edgefleet train start -r v2 --dry-run
      edgefleet train start -r v2 --stages canary,ring1,ring2 --soak 24h"""
    from datetime import timedelta

    from edgefleet.cli.rollout import _settings
    from edgefleet.trains import service
    from edgefleet.trains.model import TrainSpec
    from edgefleet.trains.stages import StageOptions, parse_stages

    if from_ is not None and not dry_run:
        raise InputError("--from plans as of another instant: give it with --dry-run (a train starts now)")
    fleet = _fleet(inventory)
    options = StageOptions(stages=stages, stage=tuple(stage or ()), soak=soak, stage_soak=tuple(stage_soak or ()),
                           failure_budget=failure_budget, stage_budget=tuple(stage_budget or ()),
                           approve_stages=approve_stages, max_concurrent=max_concurrent,
                           max_per_region=max_per_region, max_per_country=max_per_country)
    settings = _settings(node_timeout, 0.0, poll, pre_hook, post_hook, seed_public_url, quorum_timeout=quorum_timeout,
                         gate_timeout=gate_timeout, bmc_attempts=bmc_attempts, reimage_attempts=reimage_attempts)
    settings = settings.model_copy(update={"node_duration": timedelta(minutes=node_minutes)})
    spec = TrainSpec(release=release, stages=parse_stages(fleet, options), manual_promote=manual_promote,
                     limit=limit, settings=settings.model_dump(mode="json"))
    now = parse_instant(from_, "--from") if from_ is not None else _fleet_clock(fleet, sim)()
    made = service.start(fleet, _engine(), spec, now, dry_run=dry_run, operator=_operator())
    if json_out:
        print_json(made.to_json())
        return
    _print_plan(made)


def _print_plan(made: Started) -> None:
    from edgefleet.trains.stages import duration_text

    rec = made.train
    title = (f"train {rec.id} of {rec.release}" if rec else f"train plan of {made.spec.release} (dry run: nothing "
                                                            "recorded)")
    t = Table("stage", "store", "first window (local)", "UTC", "policy", title=title)
    for ps in made.plan:
        pol = ps.stage.policy
        policy = (f"budget {pol.failure_budget}, soak {duration_text(pol.soak)}" + (", approve" if pol.approve else ""))
        for i, p in enumerate(ps.stores):
            local = p.local_start()
            when = "already on the release" if p.done else (f"{local:%a %Y-%m-%d %H:%M %Z}" if local else
                                                              "no window within the horizon")
            t.add_row(f"{ps.index} {ps.stage.name}" if i == 0 else "", p.store, when,
                      f"{p.start:%Y-%m-%d %H:%M}Z" if p.start else "-", policy if i == 0 else "")
        t.add_section()
    console.print(t)
    for note in made.assignment.notes:
        err_console.print(f"[yellow]note[/yellow] {note}", markup=True, soft_wrap=True)
    if rec:
        console.print(f"started train [bold]{rec.id}[/bold]: run it with `edgefleet train run {rec.id}` (or the "
                      "train-tick deployment); watch it with `edgefleet train status " + rec.id + " --watch`")


@app.command("list")
def list_(json_out: JsonOpt = False) -> None:
    """Release trains, newest first."""
    from edgefleet.trains.store import TrainStore

    trains = TrainStore(_engine()).list()
    if json_out:
        print_json([r.to_json() for r in trains])
        return
    t = Table("train", "release", "status", "stages", "created (UTC)", "operator", "reason", title="release trains")
    for r in trains:
        t.add_row(r.id, r.release, r.status.value, ", ".join(s.name for s in r.spec.stages),
                  f"{r.created_at:%Y-%m-%d %H:%M}", r.operator, r.reason[:80])
    console.print(t)


def _local_text(window: dict[str, Any] | None) -> str:
    if not window:
        return ""
    if window.get("local") is None:
        return str(window.get("note", "-"))
    local = datetime.fromisoformat(window["local"])
    return f"{local:%a %Y-%m-%d %H:%M} {window['timezone']}"


def _status_view(data: dict[str, Any]) -> Table:
    tr = data["train"]
    outer = Table.grid()
    outer.add_row(f"[bold]{tr['id']}[/bold] train of {tr['release']}: [bold]{tr['status']}[/bold]"
                  + (f" ({tr['reason']})" if tr["reason"] else "")
                  + (" [yellow]pause requested[/yellow]" if tr["pause_requested"] and tr["status"] == "running" else "")
                  + (" [yellow]abort requested[/yellow]" if tr["abort_requested"] else ""))
    stages = Table("stage", "status", "done", "failed", "finished (UTC)", "soak until (UTC)", "reason")
    for s in data["stages"]:
        stages.add_row(f"{s['index']} {s['name']}", s["status"], f"{s['done']}/{s['stores']}", str(s["failed"]),
                       (s["finished_at"] or "-")[:16], (s["soak_until"] or "-")[:16], s["reason"][:80])
    outer.add_row(stages)
    stores = Table("store", "stage", "state", "next window (local)", "rollout")
    big = len(data["stores"]) > 40
    for s in data["stores"]:
        if big and s["state"] == "succeeded":
            continue  # a large fleet: what still needs doing or attention
        stores.add_row(s["store"], s["stage_name"], s["state"], _local_text(s["next_window"]), s["rollout"] or "-")
    outer.add_row(stores)
    outer.add_row("counts: " + ", ".join(f"{k} {v}" for k, v in sorted(data["counts"].items())))
    for w in data["waiting"]:
        outer.add_row(f"[cyan]waiting:[/cyan] {w['reason']}")
    return outer


@app.command()
def status(train_id: IdArg, inventory: InventoryOpt = Path("inventory"),
           watch: Annotated[bool, typer.Option("--watch", help="Refresh until the train stops")] = False,
           interval: Annotated[float, typer.Option("--interval", min=0.2, help="Seconds between refreshes "
                                                                               "(--watch)")] = 2.0,
           sim: SimOpt = None, json_out: JsonOpt = False) -> None:
    """A train's stages, each store's state and next window in local time, and what it waits for.

    Examples:

      edgefleet train status tr-20261207T120000-1a2b3c --watch
      edgefleet train status tr-20261207T120000-1a2b3c --json"""
    from edgefleet.trains import service
    from edgefleet.trains.model import ACTIVE

    fleet, engine = _fleet(inventory), _engine()
    clock = _fleet_clock(fleet, sim)

    def read() -> dict[str, Any]:
        return service.status(engine, fleet, train_id, clock())

    data = read()
    if json_out:
        print_json(data)
        return
    if not watch:
        console.print(_status_view(data))
        return
    with Live(_status_view(data), console=console, auto_refresh=False) as live:
        while data["train"]["status"] in {s.value for s in ACTIVE}:
            time.sleep(interval)
            data = read()
            live.update(_status_view(data), refresh=True)


def _show(rec: TrainRecord, json_out: bool, what: str) -> None:
    if json_out:
        print_json(rec.to_json())
    else:
        console.print(f"{rec.id}: {rec.status.value} ({what})")


@app.command()
def pause(train_id: IdArg, json_out: JsonOpt = False) -> None:
    """Dispatch no more stores (stores being worked on finish); `train resume` goes on."""
    from edgefleet.trains import service

    _show(service.pause(_engine(), train_id, datetime.now(UTC), operator=_operator()), json_out,
          "pause requested: the next tick dispatches nothing more")


@app.command()
def resume(train_id: IdArg, json_out: JsonOpt = False) -> None:
    """Lift a pause: the train dispatches again from its next tick."""
    from edgefleet.trains import service

    _show(service.resume(_engine(), train_id, datetime.now(UTC), operator=_operator()), json_out, "resumed")


@app.command()
def approve(train_id: IdArg, stage: Annotated[str | None, typer.Option(
        "--stage", help="The stage to approve, by name or index (default: the one awaiting approval)")] = None,
            json_out: JsonOpt = False) -> None:
    """Approve a stage awaiting a person (after its gate and soak, or --manual-promote's canary stage)."""
    from edgefleet.trains import service

    _show(service.approve(_engine(), train_id, datetime.now(UTC), stage=stage, operator=_operator()), json_out,
          "approved")


@app.command()
def abort(train_id: IdArg, rollback: Annotated[bool, typer.Option(
        "--rollback", help="Bring the train's stores back to their last known-good release (same windows, "
                           "gates and caps) and revoke the release")] = False,
          yes: YesOpt = False, json_out: JsonOpt = False) -> None:
    """Stop a train for good (destructive: asks first; --yes when not on a terminal)."""
    from edgefleet.trains import service

    what = f"abort train {train_id}" + (" and roll its stores back, revoking its release" if rollback else "")
    if not yes:
        if not sys.stdin.isatty():
            raise InputError(f"refusing to {what} without confirmation: not on a terminal; add --yes")
        typer.confirm(f"{what[0].upper()}{what[1:]}?", abort=True)
    _show(service.abort(_engine(), train_id, datetime.now(UTC), rollback=rollback, operator=_operator()), json_out,
          "abort requested" + (" with rollback" if rollback else "") + ": the next tick carries it out")


class _Progress:
    """What `train run` shows after each tick: stores done per stage, failed, what it waits for (a
    live table on a terminal, one plain line per change otherwise)."""

    def __init__(self, engine: Engine, train_id: str, live: Live | None):
        self.engine, self.train_id, self.live = engine, train_id, live
        self.last = ""

    def __call__(self, *args: object) -> None:
        from edgefleet.trains.model import Decision, StoreState
        from edgefleet.trains.store import TrainStore

        trains = TrainStore(self.engine)
        rec, stages, stores = trains.get(self.train_id), trains.stages(self.train_id), trains.stores(self.train_id)
        waiting = [w.reason for a in args if isinstance(a, Decision) for w in a.waiting]
        parts = []
        for st in stages:
            mine = [s for s in stores.values() if s.stage == st.index]
            done = sum(1 for s in mine if s.state is StoreState.succeeded)
            bad = sum(1 for s in mine if s.state in (StoreState.failed, StoreState.rolled_back))
            parts.append(f"{st.name} {st.status.value} {done}/{len(mine)}" + (f" failed {bad}" if bad else ""))
        line = f"{rec.status.value}: " + "; ".join(parts) + (f" | waiting: {waiting[0]}" if waiting else "")
        if self.live is not None:
            self.live.update(line, refresh=True)
        elif line != self.last:
            console.print(line, markup=False, soft_wrap=True)
        self.last = line


@app.command()
def run(train_id: IdArg, inventory: InventoryOpt = Path("inventory"), sim: SimOpt = None,
        poll: Annotated[float, typer.Option("--poll", min=0.01, help="Seconds between ticks")] = 5.0,
        json_out: JsonOpt = False) -> None:
    """Carry a train out in this process: tick until it succeeds, halts, pauses or is aborted.

    Examples:

      edgefleet train run tr-20261207T120000-1a2b3c
      edgefleet train run tr-20261207T120000-1a2b3c --json"""
    from edgefleet.cli.rollout import _endpoints
    from edgefleet.trains.controller import run_embedded
    from edgefleet.trains.model import TrainStatus

    fleet, engine = _fleet(inventory), _engine()

    async def main(live: Live | None) -> TrainRecord:
        ep = await _endpoints(fleet, sim)
        return await run_embedded(fleet, edgefleet_home(), engine, ep, train_id, poll_s=poll,
                                  on_tick=None if json_out else _Progress(engine, train_id, live))

    if sys.stdout.isatty() and not json_out:
        with Live("starting", console=console, auto_refresh=False) as live:
            rec = asyncio.run(main(live))
    else:
        rec = asyncio.run(main(None))
    if json_out:
        print_json(rec.to_json())
    else:
        console.print(f"train {rec.id}: {rec.status.value}" + (f" ({rec.reason})" if rec.reason else ""))
    if rec.status is not TrainStatus.succeeded:
        hint = (f"; see `edgefleet train status {rec.id}`" if rec.status is not TrainStatus.paused else
                f"; `edgefleet train approve {rec.id}` or `train resume {rec.id}`, then run it again")
        raise OperationFailed(f"train {rec.id} is {rec.status.value}: {rec.reason}{hint}")


app.command("start")(start)
app.command("deploy")(deploy_cmd)
