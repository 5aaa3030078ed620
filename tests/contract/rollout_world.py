"""Shared by the rollout engine's contract tests: a small fleet for the simulator, real releases
built with the real Packer template, and the ledger-versus-simulator check."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine

from edgefleet.inventory.generate import write_inventory
from edgefleet.inventory.load import load_fleet
from edgefleet.inventory.model import Fleet
from edgefleet.releases.build import ReleaseSpec, build_release
from edgefleet.releases.catalog import ReleaseCatalog
from edgefleet.releases.upstream import write_fake_upstream
from edgefleet.rollout.endpoints import Endpoints, from_simulator
from edgefleet.rollout.ledger import Ledger
from edgefleet.sim.build import build_sim
from edgefleet.sim.scenario import parse_scenario
from edgefleet.sim.server import running_server
from edgefleet.sim.talos_serve import running_talos_api
from edgefleet.state.db import create_state_engine

PASSWORD_ENV = "ROLLOUT_TEST_BMC_PASSWORD"
PASSWORD = "rollout-bmc-pw-7f3a"


def _store(sid: str, cc: str, index: int, roles: list[str], *, in_band: bool = False,
           creds: bool = False) -> dict[str, Any]:
    """A store; ``in_band``: no BMCs, ``wipe_method: talos-api`` (reimaged through the Talos API);
    ``creds``: BMC credentials on each node (instead of from node_defaults)."""
    prefix = f"10.{16 + index // 256}.{index % 256}"
    return {"id": sid, "name": f"Store {sid}", "country": cc, "region": "nordics",
            "network": {"subnet": f"{prefix}.0/24", "gateway": f"{prefix}.1"},
            "cluster": {"name": sid, **({"vip": f"{prefix}.9"} if roles.count("controlplane") > 1 else {})},
            **({"wipe_method": "talos-api"} if in_band else {}),
            "nodes": [{"name": f"{sid}-n{k + 1}", "role": role, "mac": f"02:ef:00:01:{index:02x}:{k + 1:02x}",
                       "ip": f"{prefix}.{10 + k}",
                       **({} if in_band else {"bmc": {"url": f"https://{prefix}.{100 + k}", **(
                           {"credentials": {"username": "admin", "password_env": PASSWORD_ENV}} if creds else {})}})}
                      for k, role in enumerate(roles)]}


def make_inventory(root: Path) -> Fleet:
    cp3 = ["controlplane"] * 3
    fleet = {"fleet": {"name": "rollouttest"},
             "defaults": {"maintenance_windows": [{"days": ["daily"], "start": "22:00", "end": "05:00"}],
                          "network": {"dns": ["10.0.0.53"]},
                          "node_defaults": {"bmc": {"credentials": {"username": "admin",
                                                                    "password_env": PASSWORD_ENV}}}},
             "freezes": [{"name": "black-friday", "start": "2026-11-23", "end": "2026-11-30", "reason": "trading"}]}
    gv = {"country_dk": {"timezone": "Europe/Copenhagen"}, "country_no": {"timezone": "Europe/Oslo"}}
    stores = {"dk": [_store("dk-0001", "DK", 1, cp3), _store("dk-0002", "DK", 2, ["controlplane"]),
                     _store("dk-0003", "DK", 3, ["controlplane", "worker"])],
              "no": [_store("no-0001", "NO", 4, [*cp3, "worker"]), _store("no-0002", "NO", 5, ["controlplane"])]}
    return load_fleet(write_inventory(root, fleet, gv, stores))


def make_mixed_inventory(root: Path) -> Fleet:
    """One store with BMCs and two without (``wipe_method: talos-api``): a 1-node store (its only
    etcd member is wiped: Bootstrap) and a 3-control-plane store (quorum gate, graceful resets)."""
    fleet = {"fleet": {"name": "inbandtest"},
             "defaults": {"maintenance_windows": [{"days": ["daily"], "start": "22:00", "end": "05:00"}],
                          "network": {"dns": ["10.0.0.53"]}},
             "freezes": [{"name": "black-friday", "start": "2026-11-23", "end": "2026-11-30", "reason": "trading"}]}
    gv = {"country_dk": {"timezone": "Europe/Copenhagen"}}
    stores = {"dk": [_store("dk-0001", "DK", 1, ["controlplane"], creds=True),
                     _store("dk-0101", "DK", 11, ["controlplane"], in_band=True),
                     _store("dk-0102", "DK", 12, ["controlplane"] * 3, in_band=True)]}
    return load_fleet(write_inventory(root, fleet, gv, stores))


def ledger_url(home: Path) -> str:
    return f"sqlite:///{home / 'edgefleet.db'}"


def release_home(tmp: Path, names: list[str]) -> tuple[Path, Engine]:
    """``tmp/home`` with its SQLite ledger and the releases ``names`` built into its catalog."""
    home = tmp / "home"
    home.mkdir()
    engine = create_state_engine(ledger_url(home))
    build_releases(home, tmp, ReleaseCatalog(engine), names)
    return home, engine


def build_releases(home: Path, tmp: Path, catalog: ReleaseCatalog, names: list[str]) -> None:
    up = tmp / "upstream.iso"
    sha = write_fake_upstream(up, "v1.12.6")
    for name in names:
        build_release(ReleaseSpec(name=name, talos_version="v1.12.6", upstream_iso=str(up), upstream_sha256=sha,
                                  kernel_args=("talos.platform=nocloud",)), home=home, catalog=catalog)


async def get_json(url: str) -> Any:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as c:
        r = await c.get(url)
        r.raise_for_status()
        return r.json()


async def ledger_matches_sim(url: str, ledger: Ledger, fleet: Fleet) -> None:
    state = (await get_json(f"{url}/sim/state"))["nodes"]
    nodes = ledger.node_states()
    releases = ledger.store_releases()
    for sid, store in fleet.stores.items():
        current = releases[sid][0]
        for n in store.nodes:
            assert state[n.name]["release"] == current, (n.name, state[n.name], current)
            if n.name in nodes:
                assert nodes[n.name][1] == state[n.name]["release"], (n.name, nodes[n.name], state[n.name])


@asynccontextmanager
async def running_world(fleet: Fleet, home: Path, *, boot_seconds: float, time_scale: float, clock: datetime,
                        ca_out: Path) -> AsyncIterator[tuple[str, Endpoints]]:
    """The in-process fleet simulator with its Talos API, served on 127.0.0.1: its URL and the
    engine's endpoints for it (BMC password from ``PASSWORD_ENV``)."""
    sim = build_sim(fleet, scenario=parse_scenario({"boot_seconds": boot_seconds}), time_scale=time_scale,
                    clock=clock, home=home, environ={PASSWORD_ENV: PASSWORD})
    async with running_talos_api(sim, ca_out=ca_out) as api:
        talos = {"endpoint": api.endpoint, "ca_pem": api.ca_pem.decode()}
        async with running_server(sim, talos=talos) as url:
            yield url, await from_simulator(url)
