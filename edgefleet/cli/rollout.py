"""``edgefleet rollout`` (plan, start, status, resume, abort), ``edgefleet rollback`` and
``edgefleet provision``: the rollout engine from the command line, without prefect.

Exit codes: 0 done, 1 a rollout failed, halted, paused or was refused, 2 bad input. ``--sim URL``
runs against a fleet simulator (its endpoints and its clock) instead of the inventory's addresses.
"""

from __future__ import annotations

import asyncio
import getpass
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table

from edgefleet.cli._common import (
    InventoryOpt,
    JsonOpt,
    console,
    default_state_url,
    edgefleet_home,
    parse_instant,
    print_json,
)
from edgefleet.cli._limit import LimitOpt, alias_pattern, limit_stores
from edgefleet.errors import EdgefleetError, InputError, OperationFailed

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from edgefleet.inventory.model import Fleet
    from edgefleet.rollout.endpoints import Endpoints
    from edgefleet.rollout.ledger import RolloutRecord
    from edgefleet.rollout.plan import RolloutPlan, RolloutPolicy
    from edgefleet.rollout.settings import EngineSettings

app = typer.Typer(no_args_is_help=True, help="Plan, run, watch, resume and abort rollouts of a release.")

SimOpt = Annotated[str | None, typer.Option("--sim", help="Run against the fleet simulator at this URL")]
ReleaseOpt = Annotated[str, typer.Option("--release", "-r", help="Release name from the catalog")]
CanaryOpt = Annotated[int | None, typer.Option("--canary", min=0, help="Number of canary stores (from the "
                                                                       "canary ring/group)")]
CanaryStoresOpt = Annotated[str | None, typer.Option("--canary-stores", help="Canary stores, as a pattern like "
                                                                          "--limit's: a,b,c or canary:ring_canary")]
WavesOpt = Annotated[str, typer.Option("--waves", help="Wave sizes after the canary, like 1,5,20%,100%")]
GroupsOpt = Annotated[str | None, typer.Option("--wave-groups", help="Waves as inventory groups: g1,g2")]
MaxOpt = Annotated[int, typer.Option("--max-concurrent", min=1, help="Stores at once, fleet-wide")]
RegionOpt = Annotated[int | None, typer.Option("--max-per-region", min=1, help="Stores at once per region")]
CountryOpt = Annotated[int | None, typer.Option("--max-per-country", min=1, help="Stores at once per country")]
BudgetOpt = Annotated[str, typer.Option("--failure-budget", help="Failed stores a wave may have: a count or "
                                                                 "a percentage like 10%")]
NodeMinOpt = Annotated[float, typer.Option("--node-minutes", min=0.01, help="Planned minutes per node "
                                                                            "(window fitting)")]
NodeTimeoutOpt = Annotated[float, typer.Option("--node-timeout", min=0.1, help="Seconds a node may take to be "
                                                                               "Ready after its reset")]
SoakOpt = Annotated[float, typer.Option("--soak", min=0, help="Seconds (rollout clock) a store must stay "
                                                              "healthy before it passes")]
PollOpt = Annotated[float, typer.Option("--poll", min=0.01, help="Seconds between health polls")]
PreHookOpt = Annotated[Path | None, typer.Option("--pre-hook", help="Ansible playbook run before each store is "
                                                                   "touched (failing: the store fails)")]
SeedUrlOpt = Annotated[str | None, typer.Option(
    "--seed-public-url", help="The address BMCs and nodes reach this run's seed server under (e.g. through a "
                              "store VPN or a reverse proxy), like https://seeds.example.net:8443; a store's "
                              "seed_url takes precedence for its nodes. Recorded with the rollout")]
PostHookOpt = Annotated[Path | None, typer.Option("--post-hook", help="Ansible playbook run after each store "
                                                                     "passed its gate (failing: rolled back)")]
QuorumOpt = Annotated[float, typer.Option("--quorum-timeout", min=0.1, help="Seconds to wait for the other control "
                                                                            "planes to be Ready before one is wiped")]
GateOpt = Annotated[float, typer.Option("--gate-timeout", min=0.1, help="Seconds a store may take to pass its "
                                                                        "health gate after its last node")]
BmcAttemptsOpt = Annotated[int, typer.Option("--bmc-attempts", min=1, help="Tries of one BMC request that fails "
                                                                           "transiently")]
ReimageAttemptsOpt = Annotated[int, typer.Option("--reimage-attempts", min=1, help="Tries of a node's whole "
                                                                                   "reimage sequence")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Put a release that is not stable yet on non-canary "
                                                         "stores (needs --reason; recorded in the event log)")]
ForceReasonOpt = Annotated[str | None, typer.Option("--reason", help="Why --force is needed (recorded with the "
                                                                     "event release_forced)")]
StoresOpt = Annotated[list[str] | None, typer.Option("--store", help="Only this store (repeat for more): an alias "
                                                                     "of --limit; default: every store")]


def _engine() -> Engine:
    from edgefleet.state.db import open_state

    return open_state(default_state_url())


def _fleet(inventory: Path) -> Fleet:
    from edgefleet.inventory.load import load_fleet

    return load_fleet(inventory)


def _serial(text: str) -> list[int | str]:
    out: list[int | str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise InputError(f"--waves {text!r}: an empty entry; write e.g. 1,5,20%,100%")
        out.append(int(part) if part.isdigit() else part)
    return out


def _budget(text: str) -> int | str:
    return int(text) if text.strip().isdigit() else text.strip()


def _policy(canary: int | None, canary_stores: list[str] | None, waves: str, wave_groups: str | None,
            max_concurrent: int,
            max_per_region: int | None, max_per_country: int | None, failure_budget: str,
            node_minutes: float) -> RolloutPolicy:
    from edgefleet.rollout.plan import RolloutPolicy

    if canary is not None and canary_stores:
        raise InputError("give --canary N or --canary-stores a,b, not both")
    can: list[str] | int = canary_stores if canary_stores else (canary if canary is not None else 1)
    return RolloutPolicy(canary=can, waves=_serial(waves), max_concurrent=max_concurrent,
                         wave_groups=[g.strip() for g in wave_groups.split(",") if g.strip()] if wave_groups else (),
                         max_per_region=max_per_region, max_per_country=max_per_country,
                         failure_budget=_budget(failure_budget), node_duration=timedelta(minutes=node_minutes))


def _selected(fleet: Fleet, limit: str | None, store: list[str] | None, canary_stores: str | None
              ) -> tuple[list[str] | None, list[str] | None]:
    """``--limit`` (or its alias ``--store``) and ``--canary-stores``, both patterns, as store ids."""
    return (limit_stores(fleet, limit, aliases={"--store": alias_pattern(store)}),
            limit_stores(fleet, None, aliases={"--canary-stores": canary_stores}))


def _seed_url(url: str | None) -> str | None:
    from edgefleet.rollout.settings import SEED_URL_PATTERN

    if url is not None and not re.fullmatch(SEED_URL_PATTERN, url):
        raise InputError(f"--seed-public-url {url!r}: give an http:// or https:// URL with a host, like "
                         "https://seeds.example.net:8443")
    return url


def _settings(node_timeout: float, soak: float, poll: float, pre_hook: Path | None = None,
              post_hook: Path | None = None, seed_public_url: str | None = None, *, quorum_timeout: float = 600.0,
              gate_timeout: float = 600.0, bmc_attempts: int = 4, reimage_attempts: int = 3) -> EngineSettings:
    from edgefleet.rollout.settings import EngineSettings

    for flag, hook in (("--pre-hook", pre_hook), ("--post-hook", post_hook)):
        if hook is not None and not hook.is_file():
            raise InputError(f"{flag} {hook}: no such playbook")
    return EngineSettings(node_ready_timeout_s=node_timeout, soak=timedelta(seconds=soak), poll_s=poll,
                          quorum_timeout_s=quorum_timeout, store_gate_timeout_s=gate_timeout,
                          bmc_attempts=bmc_attempts, reimage_attempts=reimage_attempts,
                          pre_hook=str(pre_hook.resolve()) if pre_hook else None,
                          post_hook=str(post_hook.resolve()) if post_hook else None,
                          seed_public_url=_seed_url(seed_public_url))


async def _endpoints(fleet: Fleet, sim: str | None) -> Endpoints:
    from edgefleet.rollout.endpoints import from_inventory, from_simulator

    return await from_simulator(sim) if sim else from_inventory(fleet)


def _force_reason(force: bool, reason: str | None) -> str | None:
    """``--force --reason TEXT``: the reason a non-stable release may reach non-canary stores (None:
    not forced). Either option alone is bad input."""
    if force and (reason is None or not reason.strip()):
        raise InputError("--force needs --reason TEXT: say why a release that is not stable must reach "
                         "non-canary stores (it is recorded in the event log)")
    if reason is not None and not force:
        raise InputError("--reason goes with --force; without --force there is nothing to give a reason for")
    return reason.strip() if force and reason is not None else None


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _plan_table(p: RolloutPlan) -> Table:
    t = Table("wave", "store", "earliest start (UTC)", "local", "from", title=f"rollout plan: {p.release}")
    for w in p.waves:
        for s in w.stores:
            t.add_row(f"{w.index} {w.name}", s.store_id, f"{s.start:%Y-%m-%d %H:%M}",
                      f"{s.local_start():%Y-%m-%d %H:%M %Z}", s.from_release or "-")
    return t


def _print_status(data: dict[str, Any]) -> None:
    for sp in data.get("split", ()):  # first: a person must act on these
        nodes = ", ".join(f"{n} on {v['release'] or 'unknown'}{'' if v['ready'] else ' (NotReady)'}"
                          for n, v in sp["nodes"].items())
        console.print(f"[bold red]store {sp['store']} is SPLIT across releases[/bold red] ({nodes}); it is locked "
                      f"against other operations. Fix its nodes, then run: [bold]{sp['command']}[/bold]")
    r = data["rollout"]
    console.print(f"[bold]{r['id']}[/bold] {r['kind']} of {r['release']}: [bold]{r['status']}[/bold]"
                  + (f" ({r['reason']})" if r["reason"] else ""))
    waves = Table("wave", "status", "progress", "done", "failed", "budget")
    for w in data["waves"]:
        total = max(1, w["stores"])
        waves.add_row(f"{w['index']} {w['name']}", w["status"], ProgressBar(total=total, completed=w["done"], width=30),
                      f"{w['done']}/{w['stores']}", str(w["failures"]), str(w["budget"]))
    console.print(waves)
    stores = Table("store", "wave", "status", "from", "to", "step", "reason")
    for s in data["stores"]:
        if s["status"] in ("succeeded", "skipped") and len(data["stores"]) > 40:
            continue  # a large fleet: show what needs attention
        stores.add_row(s["store"], str(s["wave"]), s["status"], s["from_release"] or "-", s["to_release"],
                       s["step"], s["reason"][:120])
    console.print(stores)
    console.print("counts: " + ", ".join(f"{k} {v}" for k, v in sorted(data["counts"].items())))


def _finish(engine: Engine, rec: RolloutRecord, json_out: bool) -> None:
    from edgefleet.rollout import operations as ops
    from edgefleet.rollout.ledger import RolloutStatus

    data = ops.status(engine, rec.id)
    if json_out:
        print_json(data)
    else:
        _print_status(data)
    if rec.status is not RolloutStatus.succeeded:
        hint = (f"; decide with `edgefleet rollout resume {rec.id} --approve` or `--reject`"
                if rec.status is RolloutStatus.paused else "")
        raise OperationFailed(f"{rec.kind.value} {rec.id} is {rec.status.value}: {rec.reason}{hint}")


@app.command()
def plan(release: ReleaseOpt, inventory: InventoryOpt = Path("inventory"), canary: CanaryOpt = None,
         canary_stores: CanaryStoresOpt = None, waves: WavesOpt = "1,5,20%,100%", wave_groups: GroupsOpt = None,
         max_concurrent: MaxOpt = 100, max_per_region: RegionOpt = None, max_per_country: CountryOpt = None,
         failure_budget: BudgetOpt = "10%", node_minutes: NodeMinOpt = 20.0, limit: LimitOpt = None,
         store: StoresOpt = None,
         now: Annotated[str | None, typer.Option("--now", help="Plan as of this instant (ISO 8601)")] = None,
         json_out: JsonOpt = False) -> None:
    """Show the plan: waves, stores, earliest start per store in UTC and local time."""
    from edgefleet.rollout import operations as ops

    fleet = _fleet(inventory)
    stores, canaries = _selected(fleet, limit, store, canary_stores)
    p = ops.plan(fleet, _engine(), release,
                 _policy(canary, canaries, waves, wave_groups, max_concurrent, max_per_region, max_per_country,
                         failure_budget, node_minutes), parse_instant(now, "--now"), stores=stores)
    if json_out:
        print_json(p.to_dict())
        return
    console.print(_plan_table(p))
    if p.skipped:
        console.print(f"skipped (already on {release}): {len(p.skipped)}")
    for sid, why in p.unschedulable:
        console.print(f"[yellow]unschedulable[/yellow] {sid}: {why}")


@app.command()
def start(release: ReleaseOpt, inventory: InventoryOpt = Path("inventory"), canary: CanaryOpt = None,
          canary_stores: CanaryStoresOpt = None, waves: WavesOpt = "1,5,20%,100%", wave_groups: GroupsOpt = None,
          max_concurrent: MaxOpt = 100, max_per_region: RegionOpt = None, max_per_country: CountryOpt = None,
          failure_budget: BudgetOpt = "10%", node_minutes: NodeMinOpt = 20.0, node_timeout: NodeTimeoutOpt = 1800.0,
          quorum_timeout: QuorumOpt = 600.0, gate_timeout: GateOpt = 600.0, soak: SoakOpt = 0.0, poll: PollOpt = 2.0,
          bmc_attempts: BmcAttemptsOpt = 4, reimage_attempts: ReimageAttemptsOpt = 3, limit: LimitOpt = None,
          store: StoresOpt = None, pre_hook: PreHookOpt = None, post_hook: PostHookOpt = None,
          seed_public_url: SeedUrlOpt = None, force: ForceOpt = False, reason: ForceReasonOpt = None,
          sim: SimOpt = None, json_out: JsonOpt = False) -> None:
    """Plan, record and run a rollout of RELEASE to its end (or a halt, or a pause). A release that is
    not stable reaches only canary stores, unless --force --reason TEXT."""
    from edgefleet.rollout import operations as ops
    from edgefleet.rollout.request import RolloutRequest

    force_reason = _force_reason(force, reason)
    fleet, engine = _fleet(inventory), _engine()
    stores, canaries = _selected(fleet, limit, store, canary_stores)
    request = RolloutRequest.of(
        "rollout", release, _policy(canary, canaries, waves, wave_groups, max_concurrent, max_per_region,
                                    max_per_country, failure_budget, node_minutes),
        _settings(node_timeout, soak, poll, pre_hook, post_hook, seed_public_url, quorum_timeout=quorum_timeout,
                  gate_timeout=gate_timeout, bmc_attempts=bmc_attempts, reimage_attempts=reimage_attempts),
        stores=stores)

    async def main() -> RolloutRecord:
        ep = await _endpoints(fleet, sim)
        made = ops.record_rollout(fleet, engine, request, ep.clock(), operator=_operator(), force_reason=force_reason)
        if not json_out:
            console.print(f"rollout [bold]{made.record.id}[/bold]: {sum(len(w.stores) for w in made.plan.waves)} "
                          f"stores in {len(made.plan.waves)} waves" if made.plan else made.record.id)
        return await ops.run(fleet, edgefleet_home(), engine, ep, made.record.id, settings=request.settings)

    _finish(engine, asyncio.run(main()), json_out)


@app.command()
def status(rollout_id: Annotated[str | None, typer.Argument(help="Rollout id (default: the latest)")] = None,
           limit: LimitOpt = None, inventory: InventoryOpt = Path("inventory"), json_out: JsonOpt = False) -> None:
    """A rollout's state: waves with progress, stores needing attention, counts (of the whole
    rollout; --limit lists only the stores it selects)."""
    from edgefleet.rollout import operations as ops

    data = ops.status(_engine(), rollout_id)
    if limit is not None:
        chosen = set(limit_stores(_fleet(inventory), limit, allow_empty=True) or ())
        data["stores"] = [s for s in data["stores"] if s["store"] in chosen]
        data["split"] = [s for s in data.get("split", ()) if s["store"] in chosen]
    if json_out:
        print_json(data)
    else:
        _print_status(data)


@app.command()
def resume(rollout_id: Annotated[str, typer.Argument(help="Rollout id")], inventory: InventoryOpt = Path("inventory"),
           approve: Annotated[bool, typer.Option("--approve", help="Go on past a paused wave")] = False,
           reject: Annotated[bool, typer.Option("--reject", help="Halt at a paused wave")] = False,
           node_timeout: Annotated[float | None, typer.Option("--node-timeout", min=0.1, help="Override the "
                                                              "saved node timeout (seconds)")] = None,
           quorum_timeout: Annotated[float | None, typer.Option("--quorum-timeout", min=0.1, help="Override the "
                                                                "saved quorum timeout (seconds)")] = None,
           gate_timeout: Annotated[float | None, typer.Option("--gate-timeout", min=0.1, help="Override the "
                                                              "saved store gate timeout (seconds)")] = None,
           soak: Annotated[float | None, typer.Option("--soak", min=0, help="Override the saved soak (seconds, "
                                                      "rollout clock)")] = None,
           poll: Annotated[float | None, typer.Option("--poll", min=0.01, help="Override the saved "
                                                      "poll interval (seconds)")] = None,
           bmc_attempts: Annotated[int | None, typer.Option("--bmc-attempts", min=1, help="Override the saved "
                                                            "BMC request tries")] = None,
           reimage_attempts: Annotated[int | None, typer.Option("--reimage-attempts", min=1, help="Override the "
                                                                "saved reimage sequence tries")] = None,
           seed_public_url: Annotated[str | None, typer.Option("--seed-public-url", help="Override the recorded "
                                                               "seed server address (see rollout start)")] = None,
           sim: SimOpt = None, json_out: JsonOpt = False) -> None:
    """Continue a rollout exactly where the ledger says (after a crash, or a pause)."""
    from edgefleet.rollout import operations as ops

    if approve and reject:
        raise InputError("give --approve or --reject, not both")
    fleet, engine = _fleet(inventory), _engine()

    async def main() -> RolloutRecord:
        ep = await _endpoints(fleet, sim)
        return await ops.resume(fleet, edgefleet_home(), engine, ep, rollout_id,
                                decision="approve" if approve else "reject" if reject else None,
                                overrides={"node_ready_timeout_s": node_timeout, "quorum_timeout_s": quorum_timeout,
                                           "store_gate_timeout_s": gate_timeout,
                                           "soak": timedelta(seconds=soak) if soak is not None else None,
                                           "poll_s": poll, "bmc_attempts": bmc_attempts,
                                           "reimage_attempts": reimage_attempts,
                                           "seed_public_url": _seed_url(seed_public_url)})

    _finish(engine, asyncio.run(main()), json_out)


@app.command()
def abort(rollout_id: Annotated[str, typer.Argument(help="Rollout id")], json_out: JsonOpt = False) -> None:
    """Stop starting stores; stores being reimaged finish their current node safely."""
    from edgefleet.rollout import operations as ops

    engine = _engine()
    rec = ops.abort(engine, rollout_id, datetime.now(UTC))
    if json_out:
        print_json(rec.to_json())
    else:
        console.print(f"{rec.id}: {rec.status.value}" + (" (abort requested; the running executor stops starting "
                                                           "stores)" if rec.status.value == "running" else ""))


def rollback_cmd(release: ReleaseOpt, inventory: InventoryOpt = Path("inventory"),
                 reason: Annotated[str, typer.Option("--reason", help="Why (recorded with the revocation)")] = "",
                 max_concurrent: MaxOpt = 100, max_per_region: RegionOpt = None, max_per_country: CountryOpt = None,
                 failure_budget: BudgetOpt = "10%", node_minutes: NodeMinOpt = 20.0,
                 node_timeout: NodeTimeoutOpt = 1800.0, quorum_timeout: QuorumOpt = 600.0,
                 gate_timeout: GateOpt = 600.0, poll: PollOpt = 2.0, bmc_attempts: BmcAttemptsOpt = 4,
                 reimage_attempts: ReimageAttemptsOpt = 3, seed_public_url: SeedUrlOpt = None,
                 limit: LimitOpt = None, sim: SimOpt = None, json_out: JsonOpt = False) -> None:
    """Revoke RELEASE and bring every store on it back to its last known-good release (with --limit,
    only the stores the pattern selects; the release is revoked all the same)."""
    from edgefleet.rollout import operations as ops

    fleet, engine = _fleet(inventory), _engine()
    stores = limit_stores(fleet, limit)
    policy = _policy(None, None, "100%", None, max_concurrent, max_per_region, max_per_country, failure_budget,
                     node_minutes)
    settings = _settings(node_timeout, 0.0, poll, seed_public_url=seed_public_url, quorum_timeout=quorum_timeout,
                         gate_timeout=gate_timeout, bmc_attempts=bmc_attempts, reimage_attempts=reimage_attempts)

    async def main() -> RolloutRecord:
        ep = await _endpoints(fleet, sim)
        made = ops.create_rollback(fleet, engine, release, ep.clock(), reason=reason or f"rollback by {_operator()}",
                                   policy=policy, settings=settings, operator=_operator(), stores=stores)
        for sid, why in made.skipped:
            console.print(f"[yellow]not rolled back[/yellow] {sid}: {why}")
        return await ops.run(fleet, edgefleet_home(), engine, ep, made.record.id)  # the saved request's settings

    _finish(engine, asyncio.run(main()), json_out)


def provision_cmd(release: ReleaseOpt, store: Annotated[str | None, typer.Argument(
                      metavar="STORES", help="Store id, or a pattern of stores as --limit takes",
                      show_default=False)] = None,
                  inventory: InventoryOpt = Path("inventory"), limit: LimitOpt = None,
                  max_concurrent: Annotated[int, typer.Option("--max-concurrent", min=1, help="Stores provisioned "
                                                              "at once (default: one after another)")] = 1,
                  node_timeout: NodeTimeoutOpt = 1800.0,
                  quorum_timeout: QuorumOpt = 600.0, gate_timeout: GateOpt = 600.0, poll: PollOpt = 2.0,
                  bmc_attempts: BmcAttemptsOpt = 4, reimage_attempts: ReimageAttemptsOpt = 3,
                  seed_public_url: SeedUrlOpt = None, force: ForceOpt = False, reason: ForceReasonOpt = None,
                  sim: SimOpt = None, json_out: JsonOpt = False) -> None:
    """Provision stores on RELEASE: secrets on first use, seeds, reimage every node, bootstrap. One
    provision (one rollout id) per store; several stores go one after another, or --max-concurrent
    at once. A release that is not stable provisions only canary stores, unless --force --reason TEXT."""
    from edgefleet.rollout import operations as ops

    force_reason = _force_reason(force, reason)
    fleet, engine = _fleet(inventory), _engine()
    stores = limit_stores(fleet, limit, aliases={"STORE": store})
    if stores is None:
        raise InputError("give the stores to provision: a store id, or --limit PATTERN (e.g. -l country_dk)")
    settings = _settings(node_timeout, 0.0, poll, seed_public_url=seed_public_url, quorum_timeout=quorum_timeout,
                         gate_timeout=gate_timeout, bmc_attempts=bmc_attempts, reimage_attempts=reimage_attempts)
    # every store within the release's reach, or none is provisioned
    ops.check_provision_reach(fleet, engine, release, stores, force_reason=force_reason)

    async def main() -> list[RolloutRecord | BaseException]:
        ep = await _endpoints(fleet, sim)
        gate = asyncio.Semaphore(max_concurrent)

        async def one(sid: str) -> RolloutRecord:
            async with gate:
                made = ops.create_provision(fleet, engine, edgefleet_home(), sid, release, ep.clock(),
                                            settings=settings, operator=_operator(), force_reason=force_reason)
                if len(stores) > 1 and not json_out:
                    console.print(f"provision [bold]{made.record.id}[/bold]: {sid}")
                return await ops.run(fleet, edgefleet_home(), engine, ep, made.record.id, settings=settings)

        return await asyncio.gather(*(one(s) for s in stores), return_exceptions=True)

    results = asyncio.run(main())
    if len(results) == 1:
        if isinstance(results[0], BaseException):
            raise results[0]
        _finish(engine, results[0], json_out)
        return
    _finish_many(engine, dict(zip(stores, results, strict=True)), json_out)


def _finish_many(engine: Engine, results: dict[str, RolloutRecord | BaseException], json_out: bool) -> None:
    """The outcome of several provisions: one line (or JSON status) each, then OperationFailed (or,
    when every failure was bad input, InputError) naming the stores that did not succeed."""
    from edgefleet.rollout import operations as ops
    from edgefleet.rollout.ledger import RolloutStatus

    for err in results.values():
        if isinstance(err, BaseException) and not isinstance(err, EdgefleetError):
            raise err  # a bug, not an outcome
    if json_out:
        print_json({sid: ops.status(engine, r.id) if not isinstance(r, BaseException) else {"error": str(r)}
                    for sid, r in results.items()})
    failed: dict[str, str] = {}
    for sid, r in results.items():
        if isinstance(r, BaseException):
            failed[sid] = str(r)
        elif r.status is not RolloutStatus.succeeded:
            failed[sid] = f"{r.id} is {r.status.value}: {r.reason}"
        ok = "" if isinstance(r, BaseException) else f"{r.id} succeeded"
        if not json_out:
            console.print(f"{sid}: " + (f"[red]{escape(failed[sid])}[/red]" if sid in failed else ok))
    if failed:
        only_input = all(isinstance(results[s], InputError) for s in failed)
        raise (InputError if only_input else OperationFailed)(
            f"{len(failed)} of {len(results)} provisions did not succeed: "
            + "; ".join(f"{s}: {why}" for s, why in failed.items()))
