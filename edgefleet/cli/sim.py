"""``edgefleet sim``: run the fleet simulator (every BMC and every store's Kubernetes API on one
127.0.0.1 port) for tests, demos and benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Annotated

import typer

from edgefleet.cli._common import App, InventoryOpt, edgefleet_home, parse_instant

app = App(help="The fleet simulator: simulated BMCs and Kubernetes APIs.")


@app.callback()
def _sim() -> None:
    """The fleet simulator: simulated BMCs and Kubernetes APIs."""


@app.command()
def serve(inventory: InventoryOpt = Path("inventory"),
          scenario: Annotated[Path | None, typer.Option("--scenario", help="Scenario YAML (faults, caps)")] = None,
          time_scale: Annotated[float, typer.Option("--time-scale", min=0.001,
                                                    help="Simulated seconds per real second")] = 1.0,
          port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port on 127.0.0.1 (0: any)")] = 8700,
          home: Annotated[Path | None, typer.Option("--home", envvar="EDGEFLEET_HOME",
                                                    help="edgefleet home (cluster secrets)")] = None,
          clock: Annotated[str | None, typer.Option("--clock", help="Simulated start instant, ISO 8601 "
                                                    "with offset (default: now)")] = None,
          talos_port: Annotated[int, typer.Option("--talos-port", min=-1, max=65535,
                                                  help="Port of the nodes' Talos API (gRPC, mTLS) on "
                                                       "127.0.0.1; 0: any; -1: no Talos API")] = 8701) -> None:
    """Serve the simulator until interrupted; prints its base URL first."""
    from edgefleet.sim.build import build_sim, load_scenario
    from edgefleet.sim.server import serve as serve_sim

    sim = build_sim(inventory, scenario=load_scenario(scenario), time_scale=time_scale,
                    clock=parse_instant(clock, "--clock"), home=home or edgefleet_home())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_sim(sim, port, talos_port=None if talos_port < 0 else talos_port))
