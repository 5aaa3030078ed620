"""Assemble a simulator from files: the inventory, an optional scenario file, the edgefleet home."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from edgefleet.inventory.load import load_fleet
from edgefleet.inventory.model import Fleet
from edgefleet.safeyaml import load_yaml_file
from edgefleet.sim.fleet import SimClock, SimFleet, resolve_passwords
from edgefleet.sim.media import MediaFetcher
from edgefleet.sim.scenario import Scenario, parse_scenario
from edgefleet.sim.server import new_media_client

__all__ = ["build_sim", "load_scenario"]


def load_scenario(path: Path | None) -> Scenario:
    if path is None:
        return Scenario()
    data = load_yaml_file(path, source=f"scenario file {path}")
    return parse_scenario(data, source=str(path))


def build_sim(fleet: Fleet | Path, *, scenario: Scenario | None = None, time_scale: float = 1.0,
              clock: datetime | None = None, home: Path | None = None,
              environ: Mapping[str, str] | None = None) -> SimFleet:
    """A ready simulator (not yet serving). ``fleet``: a loaded Fleet or an inventory directory."""
    f = fleet if isinstance(fleet, Fleet) else load_fleet(fleet)
    env = os.environ if environ is None else environ
    if home is None and env.get("EDGEFLEET_HOME"):
        home = Path(env["EDGEFLEET_HOME"])
    sim_clock = SimClock(clock or datetime.now(UTC), time_scale)
    return SimFleet(f, scenario or Scenario(), sim_clock, MediaFetcher(new_media_client()), home=home,
                    passwords=resolve_passwords(f, environ=env))
