"""A test-only flow with the rollout flow's parameters (release, stores), deployed by the integration
tests to check what a scheduled run sees when a worker starts it.

At run time it does what the rollout flow does first: load the inventory (EDGEFLEET_INVENTORY) and
ask ``freeze_decision`` whether the stores may be changed now. It writes that decision, with the
instant it observed, to ``$EDGEFLEET_PROBE_OUT/<flow run id>.json`` for the test to check.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run
from prefect.states import Cancelled

from edgefleet.inventory.load import load_fleet
from edgefleet.schedule.groups import freeze_decision


@flow(name="schedule_probe", retries=0)
def schedule_probe(release: str, stores: list[str]) -> dict[str, object] | State[Any]:
    """Record the freeze decision for ``stores`` at the instant the run starts; a skipped run ends
    Cancelled with the reason, as the rollout flow's should (so scheduling again retries it)."""
    now = datetime.now(UTC)
    fleet = load_fleet(os.environ["EDGEFLEET_INVENTORY"])
    decision = freeze_decision(fleet, stores, now)
    get_run_logger().info("release %s stores %s: %s (%s)", release, stores, decision.verdict, decision.reason)
    record: dict[str, object] = {"release": release, "stores": stores, "observed_at": now.isoformat(),
                                 "flow_run_id": str(flow_run.id), **decision.to_json()}
    out = Path(os.environ["EDGEFLEET_PROBE_OUT"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{flow_run.id}.json").write_text(json.dumps(record))
    if decision.verdict == "skip":
        return Cancelled(message=f"skipped: {decision.reason}")
    return record
