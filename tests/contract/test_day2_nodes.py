"""Day-2 node operations against the fleet simulator: its Talos API over real mutual TLS, its
Kubernetes API over HTTP, a real SQLite ledger. Each test checks the oracle (no violation), the
per-node request counts (no other node written to) and the ledger (the operation, its end, the
store's lock released)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edgefleet.day2.drain import DrainPolicy
from edgefleet.day2.nodes import NodeOpRun, run_remove
from edgefleet.day2.plan import NodeOpKind, plan_node_op
from edgefleet.errors import NodeOperationRefused, QuorumAtRisk, WindowClosed
from edgefleet.inventory.model import Fleet, Store
from edgefleet.rollout.endpoints import Endpoints, from_simulator
from edgefleet.rollout.journal import stmt_store_release
from edgefleet.rollout.ledger import Ledger
from edgefleet.secrets import generate_secrets, store_secrets
from edgefleet.sim.build import build_sim
from edgefleet.sim.fleet import SimFleet
from edgefleet.sim.scenario import Scenario
from edgefleet.sim.server import running_server
from edgefleet.sim.talos_serve import running_talos_api
from edgefleet.sim.views import node_view
from edgefleet.state.db import create_state_engine
from tests.contract.rollout_world import assert_ledger_matches

pytestmark = pytest.mark.clock  # client certificates meet the real clock in every TLS handshake

INSIDE = datetime(2026, 11, 3, 21, 30, tzinfo=UTC)  # Tuesday 22:30 in Copenhagen: inside 22:00-05:00
OUTSIDE = datetime(2026, 11, 4, 12, 0, tzinfo=UTC)
FAST = DrainPolicy(attempts=3, backoff_s=0.01, backoff_max_s=0.02)
READS = {"talos Version", "talos ServiceList", "talos EtcdMemberList", "bmc GET"}


def _store(sid: str, index: int, roles: list[str]) -> Store:
    return Store.model_validate({
        "id": sid, "name": sid.upper(), "country": "DK", "region": "nordics", "timezone": "Europe/Copenhagen",
        "maintenance_windows": [{"days": ["daily"], "start": "22:00", "end": "05:00"}],
        "network": {"subnet": f"10.40.{index}.0/24", "gateway": f"10.40.{index}.1", "dns": ["10.0.0.53"]},
        "cluster": {"name": sid},
        "nodes": [{"name": f"{sid}-n{k + 1}", "role": r, "mac": f"02:ed:00:00:{index:02x}:{k + 1:02x}",
                   "ip": f"10.40.{index}.{10 + k}"} for k, r in enumerate(roles)]})


def fleet() -> Fleet:
    return Fleet(name="day2", stores={
        "aa": _store("aa", 1, ["controlplane", "controlplane", "controlplane", "worker", "worker"]),
        "bb": _store("bb", 2, ["controlplane", "worker"])})


@dataclass
class Rig:
    fleet: Fleet
    home: Path
    sim: SimFleet
    endpoints: Endpoints
    ledger: Ledger
    engine: Any

    def op(self, kind: NodeOpKind, store: str, node: str) -> NodeOpRun:
        return NodeOpRun(self.fleet, self.home, self.engine, self.endpoints, plan_node_op(self.fleet, kind, store,
                                                                                         node), operator="test")

    def writes(self) -> dict[str, dict[str, int]]:
        """node -> the requests that could change it (reads left out)."""
        out: dict[str, dict[str, int]] = {}
        for (node, kind), n in self.sim.node_requests.items():
            if kind not in READS:
                out.setdefault(node, {})[kind] = n
        return out

    def violations(self) -> list[dict[str, Any]]:
        return [v.as_dict() for v in self.sim.violations]


@asynccontextmanager
async def rig(tmp: Path, *, clock: datetime = INSIDE, scenario: Scenario | None = None) -> AsyncIterator[Rig]:
    f = fleet()
    home = tmp / "home"
    for sid in f.stores:
        store_secrets(home, sid, generate_secrets(datetime.now(UTC)))
    sim = build_sim(f, scenario=scenario or Scenario(boot_seconds=60), time_scale=600.0, clock=clock, home=home)
    engine = create_state_engine(f"sqlite:///{tmp / 'state.db'}")
    for sid in f.stores:  # running stores: provisioned on the release the simulator starts them on
        Ledger(engine).write(*stmt_store_release(sid, "initial", "initial", clock))
    try:
        async with running_talos_api(sim) as api:
            talos = {"endpoint": api.endpoint, "ca_pem": api.ca_pem.decode()}
            async with running_server(sim, talos=talos) as url:
                yield Rig(f, home, sim, await from_simulator(url), Ledger(engine), engine)
    finally:
        sim.close()
        engine.dispose()


def run(tmp: Path, body: Callable[[Rig], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        async with rig(tmp, **kw) as r:
            await asyncio.wait_for(body(r), 60)
    asyncio.run(main())


def test_remove_a_worker_drains_and_wipes_it_alone(tmp_path: Path) -> None:
    async def body(r: Rig) -> None:
        rec = await run_remove(r.op(NodeOpKind.remove, "aa", "aa-n4"), drain_policy=FAST)
        assert (rec.kind.value, rec.status.value) == ("node_remove", "succeeded")
        ns = r.sim.nodes["aa-n4"]
        assert (ns.power, ns.joined) == ("Off", False)
        assert r.writes() == {"aa-n4": {"k8s cordon": 1, "k8s evict": 1, "talos Reset": 1}}
        assert r.violations() == []
        kinds = [e["kind"] for e in r.ledger.events(rec.id)]
        assert {"node_drained", "node_reset", "node_remove_done"} <= set(kinds)
        assert r.ledger.lock_holder("aa") is None
        assert [run.status.value for run in r.ledger.runs(rec.id)] == ["succeeded"]
        assert [w.status for w in r.ledger.waves(rec.id)] == ["passed"]
        assert_ledger_matches({n: node_view(r.sim, ns) for n, ns in r.sim.nodes.items()}, r.ledger, r.fleet,
                              initial_release="initial")

    run(tmp_path, body)


def test_remove_a_control_plane_leaves_etcd_first(tmp_path: Path) -> None:
    async def body(r: Rig) -> None:
        rec = await run_remove(r.op(NodeOpKind.remove, "aa", "aa-n2"), drain_policy=FAST)
        assert rec.status.value == "succeeded"
        assert r.writes() == {"aa-n2": {"k8s cordon": 1, "talos EtcdLeaveCluster": 1, "talos Reset": 1}}
        leave = next(e for e in r.sim.events if e["kind"] == "etcd_member_removed")
        reset = next(e for e in r.sim.events if e["kind"] == "talos_reset")
        assert leave["node"] == reset["node"] == "aa-n2" and leave["seq"] < reset["seq"]
        assert r.violations() == []
        assert r.sim.store_up("aa")  # the two control planes left serve the store

    run(tmp_path, body)


def test_removal_that_would_break_quorum_is_refused_before_anything(tmp_path: Path) -> None:
    async def body(r: Rig) -> None:
        down = r.sim.nodes["aa-n3"]
        down.joined, down.reason = False, "dead (test)"
        with pytest.raises(QuorumAtRisk, match=r"etcd would lose quorum without aa-n2: .* aa-n3 down"):
            await run_remove(r.op(NodeOpKind.remove, "aa", "aa-n2"), drain_policy=FAST)
        assert r.writes() == {}
        (rec,) = r.ledger.rollouts(limit=5)
        assert (rec.kind.value, rec.status.value) == ("node_remove", "failed") and "quorum" in rec.reason
        assert [(w.status, w.failures) for w in r.ledger.waves(rec.id)] == [("halted", 1)]
        assert [run.status.value for run in r.ledger.runs(rec.id)] == ["failed"]
        assert r.ledger.lock_holder("aa") is None

    run(tmp_path, body)


def test_a_blocked_drain_stops_before_etcd_and_reset(tmp_path: Path) -> None:
    async def body(r: Rig) -> None:
        from edgefleet.errors import DrainBlocked

        with pytest.raises(DrainBlocked, match="disruption budget web"):
            await run_remove(r.op(NodeOpKind.remove, "aa", "aa-n5"), drain_policy=FAST)
        assert r.writes() == {"aa-n5": {"k8s cordon": 1, "k8s evict": 3}}
        assert r.sim.nodes["aa-n5"].joined

    run(tmp_path, body, scenario=Scenario(boot_seconds=60, strict_pdbs=["aa"]))


def test_outside_the_window_nothing_is_recorded_or_touched(tmp_path: Path) -> None:
    async def body(r: Rig) -> None:
        with pytest.raises(WindowClosed, match="outside its maintenance windows"):
            await run_remove(r.op(NodeOpKind.remove, "aa", "aa-n4"), drain_policy=FAST)
        assert r.writes() == {} and r.ledger.rollouts(limit=5) == []

    run(tmp_path, body, clock=OUTSIDE)


def test_the_last_control_plane_is_not_removed() -> None:
    with pytest.raises(NodeOperationRefused, match=r"bb-n1 is the store's last control plane.*decommission"):
        plan_node_op(fleet(), NodeOpKind.remove, "bb", "bb-n1")
    with pytest.raises(NodeOperationRefused, match="no node 'bb-n9'"):
        plan_node_op(fleet(), NodeOpKind.remove, "bb", "bb-n9")
