"""Serving the simulator's Talos API: ``running_talos_api`` wires the node backend
(``edgefleet.sim.talos_wiring``), the nocloud-net seed fetcher (``edgefleet.sim.netseed``) and the
gRPC server (``edgefleet.sim.talosapi``) together for as long as a block runs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from edgefleet.sim import netseed
from edgefleet.sim.fleet import SimFleet
from edgefleet.sim.talos_wiring import SYNC_SECONDS, SimTalosBackend, install
from edgefleet.sim.talosapi import TalosApiServer, start_talos_api

__all__ = ["running_talos_api"]


@asynccontextmanager
async def running_talos_api(sim: SimFleet, *, port: int = 0, ca_out: Path | None = None,
                            announce: bool = False) -> AsyncIterator[TalosApiServer]:
    """Serve the Talos API of the simulator's nodes on 127.0.0.1:``port`` while the block runs.
    ``ca_out``: where to write the PEM of the CA clients must trust (default:
    ``<home>/sim-talos-ca.pem`` when the simulator has a home)."""
    backend = SimTalosBackend(sim)
    install(sim, backend)
    net_seeds = netseed.install(sim, backend)
    server = await start_talos_api(backend, now=datetime.now(UTC), port=port)
    out = ca_out or (sim.home / "sim-talos-ca.pem" if sim.home is not None else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(server.ca_pem)
    if announce:
        print(f"edgefleet sim: Talos API on {server.endpoint} (mTLS; trust {out or 'the CA from the API'}; "
              "target nodes with the 'nodes' gRPC metadata)", flush=True)

    async def follow() -> None:
        while True:
            await asyncio.sleep(SYNC_SECONDS)
            backend.sync()

    task = asyncio.create_task(follow())
    try:
        yield server
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await net_seeds.aclose()
        await server.stop(0)
