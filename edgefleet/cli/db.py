"""``edgefleet db``: the state store's schema. ``status`` compares its revision with this
edgefleet's head; ``upgrade`` migrates it to head (every other command refuses a store behind head
and names this one). Back a production store up before upgrading it.

Exit codes: ``status`` 0 at head (or empty: the first command creates it at head), 1 behind or
ahead; ``upgrade`` 0 done, 1 refused (a store written by a newer edgefleet) or failed.
"""

from __future__ import annotations

import typer

from edgefleet.cli._common import JsonOpt, console, default_state_url, print_json

app = typer.Typer(no_args_is_help=True, help="The state store's schema: status and upgrade.")

_SAYS = {
    "empty": "has no edgefleet tables yet: the first command creates them at head",
    "current": "is at head",
    "behind": "is behind: run `edgefleet db upgrade` (back it up first)",
    "ahead": "was written by a newer edgefleet: use that version",
}
_DONE = {
    "current": "already at head: nothing to do",
    "created": "created at head",
    "adopted": "written before schema revisions existed: stamped at the baseline, then upgraded to head",
    "upgraded": "upgraded to head",
}


@app.command()
def status(json_out: JsonOpt = False) -> None:
    """The store's schema revision against this edgefleet's head (EDGEFLEET_STATE_URL / EDGEFLEET_HOME)."""
    from edgefleet.errors import SchemaOutOfDate
    from edgefleet.state.db import state_schema

    report = state_schema(default_state_url())
    says = (f"state store {report.store}: revision {report.revision or 'none'}, head {report.head}: "
            f"{_SAYS[report.state.value]}")
    if json_out:
        print_json(report.to_json())
    if report.state.value in ("behind", "ahead"):  # exit 1, the status on stderr
        raise SchemaOutOfDate(says, store=report.store, revision=report.revision, head=report.head)
    if not json_out:
        console.print(says, soft_wrap=True)


@app.command()
def upgrade(json_out: JsonOpt = False) -> None:
    """Migrate the store to this edgefleet's head revision (once, however many run it at once)."""
    from edgefleet.state.db import upgrade_state

    report = upgrade_state(default_state_url())
    if json_out:
        print_json(report.to_json())
        return
    done = report.done.value if report.done else "current"
    console.print(f"state store {report.store}: revision {report.revision or 'none'} -> {report.head}: "
                  f"{_DONE[done]}", soft_wrap=True)
