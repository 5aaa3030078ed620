"""Adding a worker and replacing nodes against the fleet simulator, through the rollout engine
restricted to the node: a real release built with the real Packer template, real seeds, the
simulator's BMCs, Talos API (mutual TLS) and Kubernetes API, a real SQLite ledger. The oracle
stays clean, the per-node request counts show no other node written to, and the ledger matches
the simulator."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edgefleet.day2.nodes import NodeOpRun, run_join
from edgefleet.day2.plan import NodeOpKind, plan_node_op
from edgefleet.errors import EdgefleetError, InventoryError, NodeOperationRefused
from edgefleet.inventory.generate import write_inventory
from edgefleet.inventory.load import load_fleet
from edgefleet.inventory.model import Fleet
from edgefleet.rollout.endpoints import from_simulator
from edgefleet.rollout.executor import EngineSettings
from edgefleet.rollout.journal import stmt_store_release
from edgefleet.rollout.ledger import Ledger, RolloutStatus
from edgefleet.secrets import generate_secrets, store_secrets
from edgefleet.sim.build import build_sim
from edgefleet.sim.scenario import parse_scenario
from edgefleet.sim.server import running_server
from edgefleet.sim.talos_serve import running_talos_api
from edgefleet.sim.views import node_view
from tests.contract.rollout_world import (
    PASSWORD,
    PASSWORD_ENV,
    _store,
    assert_ledger_matches,
    ledger_url,
    release_home,
)
from tests.helpers import require_tool

pytestmark = pytest.mark.clock

START = datetime(2026, 11, 3, 21, 30, tzinfo=UTC)  # Tuesday 22:30 in Copenhagen: inside 22:00-05:00
SETTINGS = EngineSettings(node_ready_timeout_s=6.0, quorum_timeout_s=10.0, store_gate_timeout_s=6.0,
                          window_wait_max_s=5.0, poll_s=0.05, heartbeat_s=0.5, power_deadline_s=5.0)
READS = {"talos Version", "talos ServiceList", "talos EtcdMemberList"}
CLI_ARGS: list[str] = []  # the inventory and --sim of the running world, for tests of the CLI


def inventory(root: Path) -> Fleet:
    fleet = {"fleet": {"name": "day2join"},
             "defaults": {"maintenance_windows": [{"days": ["daily"], "start": "22:00", "end": "05:00"}],
                          "network": {"dns": ["10.0.0.53"]},
                          "node_defaults": {"bmc": {"credentials": {"username": "admin",
                                                                    "password_env": PASSWORD_ENV}}}}}
    cp3 = ["controlplane"] * 3
    stores = {"dk": [_store("dk-0001", "DK", 1, [*cp3, "worker", "worker"]), _store("dk-0002", "DK", 2, [*cp3])]}
    return load_fleet(write_inventory(root, fleet, {"country_dk": {"timezone": "Europe/Copenhagen"}}, stores))


def run(tmp: Path, monkeypatch: pytest.MonkeyPatch, body: Callable[[NodeOpRun, Any], Awaitable[None]],
        kind: NodeOpKind, store: str, node: str, scenario: dict[str, Any]) -> None:
    require_tool(shutil.which("packer"), "packer (Debian package `packer`)")
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    fleet = inventory(tmp / "inventory")
    home, engine = release_home(tmp, ["v1"])
    for sid in fleet.stores:  # running stores, provisioned on v1 (the simulator starts them on it)
        Ledger(engine).write(*stmt_store_release(sid, "v1", "v1", START))
        store_secrets(home, sid, generate_secrets(datetime.now(UTC)))
    sim = build_sim(fleet, scenario=parse_scenario({"boot_seconds": 60, "initial_release": "v1", **scenario}),
                    time_scale=600.0, clock=START, home=home, environ={PASSWORD_ENV: PASSWORD})

    async def main() -> None:
        async with running_talos_api(sim) as api:
            talos = {"endpoint": api.endpoint, "ca_pem": api.ca_pem.decode()}
            async with running_server(sim, talos=talos) as url:
                op = NodeOpRun(fleet, home, engine, await from_simulator(url), plan_node_op(fleet, kind, store, node),
                               operator="test")
                CLI_ARGS[:] = ["-i", str(tmp / "inventory"), "--sim", url]
                await asyncio.wait_for(body(op, sim), 50)

    try:
        asyncio.run(main())
    finally:
        sim.close()
        engine.dispose()


def _ledger_matches(op: NodeOpRun, sim: Any) -> None:
    assert_ledger_matches({n: node_view(sim, ns) for n, ns in sim.nodes.items()}, op.ledger, op.fleet,
                          initial_release="v1")


def _writes(sim: Any) -> set[str]:
    return {node for (node, kind), _n in sim.node_requests.items() if kind not in READS}


def test_add_a_worker_boots_it_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(op: NodeOpRun, sim: Any) -> None:
        rec = await run_join(op, settings=SETTINGS)
        events = [(e["kind"], e["node"], e["reason"]) for e in op.ledger.events(rec.id)]
        assert (rec.kind.value, rec.status) == ("node_add", RolloutStatus.succeeded), events
        ns = sim.nodes["dk-0001-n5"]
        assert ns.joined and ns.release == "v1" and sim.readiness(ns)[0]
        assert _writes(sim) == {"dk-0001-n5"}  # BMC requests and Talos writes: the new node only
        assert not any(n != "dk-0001-n5" and k.startswith("bmc") for n, k in sim.node_requests)
        assert sim.violations == []
        assert op.ledger.lock_holder("dk-0001") is None
        assert op.ledger.store_releases(["dk-0001"])["dk-0001"][0] == "v1"
        _ledger_matches(op, sim)

    run(tmp_path, monkeypatch, body, NodeOpKind.add, "dk-0001", "dk-0001-n5", {"new_nodes": ["dk-0001-n5"]})


def test_replace_a_control_plane_removes_its_old_member_first(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(op: NodeOpRun, sim: Any) -> None:
        rec = await run_join(op, settings=SETTINGS)
        assert rec.status is RolloutStatus.succeeded, op.ledger.events(rec.id)
        assert sim.violations == []  # no stale_etcd_member, no control_planes_down
        removed = [e for e in sim.events if e["kind"] == "etcd_member_removed"]
        boots = [e for e in sim.events if e["kind"] == "boot_done" and e["node"] == "dk-0002-n2"]
        assert [e["node"] for e in removed] == ["dk-0002-n2"] and removed[0]["seq"] < boots[0]["seq"]
        assert _writes(sim) == {"dk-0002-n2", "dk-0002-n1"}  # n1 carried the EtcdRemoveMemberByID
        assert {k for (n, k) in sim.node_requests if n == "dk-0002-n1"} - READS == {"talos EtcdRemoveMemberByID"}
        kinds = [e["kind"] for e in op.ledger.events(rec.id)]
        assert "etcd_member_removed" in kinds and "store_succeeded" in kinds
        _ledger_matches(op, sim)

    run(tmp_path, monkeypatch, body, NodeOpKind.replace, "dk-0002", "dk-0002-n2",
        {"replaced_nodes": ["dk-0002-n2"]})


def test_replacement_mac_already_used_is_refused(tmp_path: Path) -> None:
    fleet = inventory(tmp_path / "inv")
    store = fleet.stores["dk-0002"]
    dup = store.nodes[1].model_copy(update={"mac": fleet.stores["dk-0001"].nodes[0].mac})
    bad = fleet.model_copy(update={"stores": {**fleet.stores, "dk-0002": store.model_copy(
        update={"nodes": [store.nodes[0], dup, store.nodes[2]]})}})
    with pytest.raises(NodeOperationRefused, match=r"node dk-0002-n2: mac .* is already node dk-0001-n1's") as e:
        plan_node_op(bad, NodeOpKind.replace, "dk-0002", "dk-0002-n2")
    assert e.value.exit_code == 2
    # the inventory itself, as the CLI reads it, says so too, located
    old_mac, used = fleet.stores["dk-0002"].nodes[1].mac, fleet.stores["dk-0001"].nodes[0].mac
    (hosts,) = [f for f in (tmp_path / "inv").rglob("*.y*ml") if old_mac in f.read_text()]
    hosts.write_text(hosts.read_text().replace(old_mac, used))
    with pytest.raises(InventoryError, match="already used by store dk-0001") as inv:
        load_fleet(tmp_path / "inv")
    assert inv.value.exit_code == 2 and hosts.name in str(inv.value)


def test_cli_removes_a_worker_through_the_simulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``edgefleet node remove`` as a user runs it: a dry run first (nothing touched), then --yes."""
    from typer.testing import CliRunner

    from edgefleet.cli import app

    def cli(*args: str) -> tuple[int, str]:
        r = CliRunner().invoke(app, list(args), env={"EDGEFLEET_HOME": str(tmp_path / "home"),
                                                     "EDGEFLEET_STATE_URL": ledger_url(tmp_path / "home")})
        code = r.exception.exit_code if isinstance(r.exception, EdgefleetError) else r.exit_code
        return code, r.output + (str(r.exception) if r.exception else "")

    async def body(op: NodeOpRun, sim: Any) -> None:
        code, out = await asyncio.to_thread(cli, "node", "remove", "dk-0001", "dk-0001-n4", "--dry-run", *CLI_ARGS)
        assert code == 0 and "drain dk-0001-n4" in out and _writes(sim) == set(), out
        code, out = await asyncio.to_thread(cli, "node", "remove", "dk-0001", "dk-0001-n4", "--yes", "--json",
                                            *CLI_ARGS)
        assert code == 0, out
        assert _writes(sim) == {"dk-0001-n4"} and sim.violations == []
        (rec,) = [r for r in op.ledger.rollouts(limit=5) if r.kind.value == "node_remove"]
        assert rec.status is RolloutStatus.succeeded and rec.operator

    run(tmp_path, monkeypatch, body, NodeOpKind.remove, "dk-0001", "dk-0001-n4", {})
