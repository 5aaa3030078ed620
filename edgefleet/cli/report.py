"""``edgefleet report``: write the rollout report (one self-contained HTML page) from the ledger.

Exit codes: 0 written, 1 the ledger could not be read or the file not written, 2 bad input (an
unknown rollout id is a ledger refusal, exit 1, naming the recent ids).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from edgefleet.cli._common import InventoryOpt, console, default_state_url
from edgefleet.cli._limit import LimitOpt, limit_stores

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Where to write the HTML page")]
IdsArg = Annotated[list[str] | None, typer.Argument(help="Operation or train ids to report on (a train: its child "
                                                         "operations; default: every operation)",
                                                    show_default=False)]
MaxEventsOpt = Annotated[int | None, typer.Option("--max-events", min=0, show_default=False,
                                                  help="Keep only the newest N events in the log (default: every "
                                                       "event, newest first, in pages)")]
TitleOpt = Annotated[str, typer.Option("--title", help="The page title")]


def report_cmd(rollout_ids: IdsArg = None, out: OutOpt = Path("out/report.html"), max_events: MaxEventsOpt = None,
               title: TitleOpt = "edgefleet rollout report", limit: LimitOpt = None,
               inventory: InventoryOpt = Path("inventory")) -> None:
    """Write an HTML report: a headline (stores per release now, active trains, stores needing
    attention), operations, release trains, stores per release over time, failed stores, the event
    log newest first in pages (with --limit, of the stores it selects only)."""
    from edgefleet.outpaths import check_output_file
    from edgefleet.report import collect_report, render_report, write_report
    from edgefleet.state.db import open_state

    stores = None
    if limit is not None:
        from edgefleet.inventory.load import load_fleet

        stores = limit_stores(load_fleet(inventory), limit, allow_empty=True)
    check_output_file(out, "--out", create_parents=True)
    now = datetime.now(UTC)
    data = collect_report(open_state(default_state_url()), rollout_ids=rollout_ids or None,
                          now=now, title=title, max_events=max_events, stores=stores, wall=now)
    path = write_report(out, render_report(data, max_events=max_events))
    shown = len(data.events)
    console.print(f"wrote {path}: {len(data.operations)} operation(s), {len(data.changes)} release change(s), "
                  f"{shown} of {data.events_total} event(s)")
