"""What every part of one rollout execution shares: the rollout's id, settings and clocks, the
ledger and its group-commit journal, the release catalog (each release read once per run, its
image hashed once), and the run's clients (store APIs, BMC pools, the seed server)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from edgefleet.errors import ArtifactError
from edgefleet.inventory.model import Fleet, Node, Store
from edgefleet.redfish.connector import BmcClients
from edgefleet.releases.catalog import Release, ReleaseCatalog, verify_artifact
from edgefleet.rollout.endpoints import Endpoints, StoreApi
from edgefleet.rollout.journal import Journal, stmt_event
from edgefleet.rollout.ledger import Ledger
from edgefleet.rollout.settings import EngineSettings, redact
from edgefleet.seeds.netseed import NetSeeds
from edgefleet.seeds.server import SeedServer

__all__ = ["EngineContext"]


@dataclass
class EngineContext:
    """One execution's shared state; the run's clients are set once they are open (``attach``)."""

    rollout_id: str
    fleet: Fleet
    home: Path
    settings: EngineSettings
    ledger: Ledger
    journal: Journal
    catalog: ReleaseCatalog
    endpoints: Endpoints
    wall: Callable[[], datetime]
    abort: bool = False
    _releases: dict[str, Release] = field(default_factory=dict)
    _verified: dict[str, Path] = field(default_factory=dict)
    api: StoreApi | None = None
    clients: BmcClients | None = None
    seeds: SeedServer | None = None
    netseeds: NetSeeds | None = None
    step_latency_s: float = 0.0
    """A decaying maximum of how long recent BMC steps took, in real seconds, across the run's
    stores (``reimage.base.WindowGuard``: the room the next step needs in its window)."""

    def now(self) -> datetime:
        return self.endpoints.clock()

    def attach(self, api: StoreApi, clients: BmcClients, seeds: SeedServer) -> None:
        self.api, self.clients, self.seeds = api, clients, seeds
        self.netseeds = NetSeeds.attach(seeds)

    @property
    def store_api(self) -> StoreApi:
        assert self.api is not None, "the run's clients are not open"
        return self.api

    @property
    def seed_server(self) -> SeedServer:
        assert self.seeds is not None, "the run's clients are not open"
        return self.seeds

    async def event(self, kind: str, *, store: str | None = None, node: str | None = None, reason: str = "",
                    detail: dict[str, Any] | None = None, extra: tuple[Any, ...] = ()) -> None:
        """Record an event (with ``extra`` statements in the same commit), its reason redacted."""
        await self.journal.write(*extra, stmt_event(self.now(), kind, rollout=self.rollout_id, store=store,
                                                     node=node, reason=redact(reason), detail=detail))

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def release(self, name: str) -> Release:
        rel = self._releases.get(name)
        if rel is None:
            rel = self._releases[name] = self.catalog.get(name)
        return rel

    def artifact(self, rel: Release) -> str:
        """The image's path relative to the seed server root, after checking its sha256 (once per
        run per release, before the first BMC call that uses it)."""
        path = self._verified.get(rel.name)
        if path is None:
            path = self._verified[rel.name] = verify_artifact(rel)
        try:
            return path.resolve().relative_to(self.home.resolve()).as_posix()
        except ValueError:
            raise ArtifactError(f"release {rel.name}: artifact {path} is outside the edgefleet home {self.home}; "
                                "the seed server only serves files under it") from None

    def talos(self, store: Store, node: Node) -> Any:
        """An ``os:admin`` Talos API client for ``node`` (an async context manager)."""
        from edgefleet.talos.api import client_for
        from edgefleet.talos.certs import TalosRole

        t = self.endpoints.talos
        return client_for(self.home, store, node, TalosRole.admin, now=self.wall(),
                          endpoint=t.endpoint if t else None, ca_pem=t.ca_pem if t else None,
                          server_name=t.server_name if t else None, timeout_s=5.0)
