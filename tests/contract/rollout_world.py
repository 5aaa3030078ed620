"""Shared by the rollout engine's contract tests: a small fleet for the simulator, real releases
built with the real Packer template, the end-of-run ledger-versus-simulator check
(``ledger_matches_sim``), and the release-train declarations the simulator's oracle checks
(``declare_train``, ``declare_spec``, ``assert_oracle_clean``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, select

from edgefleet.inventory.generate import write_inventory
from edgefleet.inventory.load import load_fleet
from edgefleet.inventory.model import Fleet
from edgefleet.releases.build import ReleaseSpec, build_release
from edgefleet.releases.catalog import ReleaseCatalog
from edgefleet.releases.upstream import write_fake_upstream
from edgefleet.rollout.endpoints import Endpoints, from_simulator
from edgefleet.rollout.ledger import Ledger, RolloutRow, StoreRunRow
from edgefleet.sim.build import build_sim
from edgefleet.sim.scenario import parse_scenario
from edgefleet.sim.server import running_server
from edgefleet.sim.talos_serve import running_talos_api
from edgefleet.state.db import create_state_engine, session_scope
from edgefleet.trains.model import TrainSpec
from tests.helpers import make_stable

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


def release_home(tmp: Path, names: list[str], *, stable: bool = True) -> tuple[Path, Engine]:
    """``tmp/home`` with its SQLite ledger and the releases ``names`` built into its catalog (and
    promoted to stable, unless ``stable`` is false: see ``build_releases``)."""
    home = tmp / "home"
    home.mkdir()
    engine = create_state_engine(ledger_url(home))
    build_releases(home, tmp, ReleaseCatalog(engine), names, stable=stable)
    return home, engine


def build_releases(home: Path, tmp: Path, catalog: ReleaseCatalog, names: list[str], *, stable: bool = True) -> None:
    """Build ``names`` with the real Packer template; ``stable``: promote each to stable (these tests
    roll releases out to whole fleets and are not about the release lifecycle)."""
    up = tmp / "upstream.iso"
    sha = write_fake_upstream(up, "v1.12.6")
    for name in names:
        build_release(ReleaseSpec(name=name, talos_version="v1.12.6", upstream_iso=str(up), upstream_sha256=sha,
                                  kernel_args=("talos.platform=nocloud",)), home=home, catalog=catalog)
        if stable:
            make_stable(catalog, name)


async def get_json(url: str) -> Any:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as c:
        r = await c.get(url)
        r.raise_for_status()
        return r.json()


async def declare_train(url: str, release: str, stages: Sequence[Sequence[str]] | Mapping[str, int],
                        soak_s: float = 0, *, budgets: Sequence[int | str] | None = None,
                        names: Sequence[str] | None = None) -> Any:
    """Declare a release train to the simulator's oracle (``POST /sim/oracle/train``), so that its
    rules ``stage_order`` and ``release_state`` watch it: ``stages`` are lists of store ids, the
    canary stage first, or store -> stage index (what ``TrainStore.create`` takes); ``soak_s``: fleet
    seconds after a stage's last store came up before the next stage may start; ``budgets``: per
    stage, the stores that may fail (a count or ``N%``; default 0). Returns ``/sim/oracle``."""
    if isinstance(stages, Mapping):
        lists: list[list[str]] = [[] for _ in range(max(stages.values(), default=-1) + 1)]
        for store, index in sorted(stages.items()):
            lists[index].append(store)
        stages = [lst for lst in lists if lst]
    body = [{"stores": list(stores), **({"name": names[i]} if names else {}),
             **({"failure_budget": budgets[i]} if budgets else {})} for i, stores in enumerate(stages)]
    async with httpx.AsyncClient(trust_env=False, timeout=10) as c:
        r = await c.post(f"{url}/sim/oracle/train", json={"release": release, "stages": body, "soak_s": soak_s})
        assert r.status_code == 200, r.text
        return r.json()


async def declare_spec(url: str, spec: TrainSpec, assignments: Mapping[str, int]) -> Any:
    """``declare_train`` for a train as recorded: its stages' names, soaks and failure budgets from
    ``spec``, its stores from ``assignments`` (store -> stage index). Stages left empty are skipped,
    and with them their soak (the next stage waits for the soak of the last non-empty one)."""
    stages: list[dict[str, Any]] = []
    for i, st in enumerate(spec.stages):
        stores = sorted(s for s, k in assignments.items() if k == i)
        if stores:
            stages.append({"name": st.name, "stores": stores, "soak_s": st.policy.soak.total_seconds(),
                           "failure_budget": st.policy.failure_budget})
    async with httpx.AsyncClient(trust_env=False, timeout=10) as c:
        r = await c.post(f"{url}/sim/oracle/train", json={"release": spec.release, "stages": stages})
        assert r.status_code == 200, r.text
        return r.json()


async def assert_oracle_clean(url: str) -> None:
    """No rule of the simulator's oracle (the train rules included) was broken."""
    v = await get_json(f"{url}/sim/violations")
    assert v["total"] == 0, f"the simulator's oracle found violations: {v['by_rule']}: {v['violations'][:5]}"


SPLIT = "split"  # the store-run state of a store that could not be repaired (it runs two releases)


def _latest_runs(ledger: Ledger) -> dict[str, tuple[str, str]]:
    """store -> (status, rollout id) of its newest store run that started (raw strings, so a
    state this module does not know yet is read too)."""
    with session_scope(ledger.engine) as s:
        rows = s.execute(select(StoreRunRow.store, StoreRunRow.status, StoreRunRow.rollout)
                         .join(RolloutRow, RolloutRow.id == StoreRunRow.rollout)
                         .where(StoreRunRow.started_at.is_not(None))
                         .order_by(RolloutRow.created_at, StoreRunRow.started_at)).all()
    return {store: (status, rollout) for store, status, rollout in rows}


def ledger_mismatches(sim_nodes: Mapping[str, Mapping[str, Any]], ledger: Ledger, fleet: Fleet, *,
                      initial_release: str) -> list[str]:
    """Where the ledger disagrees with what the simulator's nodes run, one line each (empty: it
    matches). ``sim_nodes``: ``/sim/state``'s ``nodes``. For each store of ``fleet``:

    * every node the ledger has a ``node_state`` row for runs the row's release, Ready or not;
    * a store whose newest store run is ``split`` does not have its current release claimed
      (``store_release.current`` is empty) and has a ``node_state`` row for every node;
    * any other store the ledger has a release for: its current release is what every one of its
      nodes runs (a store whose nodes run different releases is a mismatch unless reported split);
    * a store the ledger has no release for: every node runs the simulator's initial release;
    * ``stores_on(r)`` lists the store exactly when one of its nodes runs ``r`` (for the stores
      the ledger has a release or a node for).

    Readiness is not compared (the scenario may break a node after the ledger saw it), but every
    line shows it."""
    rows = ledger.node_states()
    releases = ledger.store_releases()
    latest = _latest_runs(ledger)
    out: list[str] = []
    running: dict[str, set[str]] = {}
    for sid, store in sorted(fleet.stores.items()):
        actual = {n.name: sim_nodes[n.name] for n in store.nodes}
        on = ", ".join(f"{n} {v['release']}{'' if v['ready'] else ' NotReady'}" for n, v in actual.items())
        if sid in releases or any(n in rows for n in actual):  # stores_on knows only what the ledger knows
            for r in {v["release"] for v in actual.values()}:
                running.setdefault(r, set()).add(sid)
        current, lkg = releases.get(sid, (None, None))
        status, rid = latest.get(sid, ("-", "-"))
        said = f"ledger: current {current}, last known good {lkg}, last run {status} ({rid})"
        for n, v in actual.items():
            if n in rows and rows[n][1] != v["release"]:
                out.append(f"{sid}: node {n} runs {v['release']}{'' if v['ready'] else ' (NotReady)'}, the ledger's "
                           f"node_state says {rows[n][1]}")
        if status == SPLIT:
            if current is not None:
                out.append(f"{sid}: reported split but its current release is claimed as {current} (nodes: {on})")
            missing = sorted(n for n in actual if n not in rows)
            if missing:
                out.append(f"{sid}: reported split without the release of {', '.join(missing)} (nodes: {on})")
        elif sid in releases:
            wrong = {n: v["release"] for n, v in actual.items() if v["release"] != current}
            if wrong:
                kind = "split across releases and not reported split" if len(
                    {v["release"] for v in actual.values()}) > 1 else "not on its recorded release"
                out.append(f"{sid}: {kind}: nodes {on}; {said}")
        elif any(v["release"] != initial_release for v in actual.values()):
            out.append(f"{sid}: the ledger has no release for it, but its nodes run {on}")
    for r in sorted(set(running) | {c for c, _l in releases.values() if c is not None}):
        listed = set(ledger.stores_on(r)) & set(fleet.stores)
        want = running.get(r, set())
        if listed != want:
            out.append(f"stores_on({r!r}) lists {sorted(listed)}, but the stores with a node on {r} are {sorted(want)}")
    return out


async def ledger_matches_sim(url: str, ledger: Ledger, fleet: Fleet) -> None:
    """The end-of-run check every rollout, provision, rollback and crash test asserts: the
    ledger agrees with the simulator node by node (``ledger_mismatches``)."""
    state = (await get_json(f"{url}/sim/state"))["nodes"]
    initial = (await get_json(f"{url}/sim/scenario"))["initial_release"]
    assert_ledger_matches(state, ledger, fleet, initial_release=initial)


def assert_ledger_matches(sim_nodes: Mapping[str, Mapping[str, Any]], ledger: Ledger, fleet: Fleet, *,
                          initial_release: str) -> None:
    """``ledger_matches_sim`` for a caller that read the simulator's state itself."""
    bad = ledger_mismatches(sim_nodes, ledger, fleet, initial_release=initial_release)
    assert not bad, "the ledger disagrees with the simulator:\n  " + "\n  ".join(bad)


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
