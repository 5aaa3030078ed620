"""Two rollouts started at once on overlapping stores, against the fleet simulator: both are
recorded before either runs, then both run together on one event loop. Each overlapping store is
reimaged by exactly one of them; the other's run for it ends ``refused`` with a message naming the
holder, and its BMCs never see that other operation at all (the simulator counts BMC requests per
operation and store from the ``X-Edgefleet-Operation`` header). Stores only one of them names all
succeed, no node is changed by both, and the oracle reports zero violations."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from edgefleet.rollout import operations as ops
from edgefleet.rollout.endpoints import Endpoints
from edgefleet.rollout.ledger import Ledger, RolloutStatus, RunStatus
from edgefleet.rollout.plan import RolloutPolicy
from tests.contract.rollout_world import get_json, ledger_matches_sim
from tests.contract.test_rollout_sim import SETTINGS, World, run_world

pytestmark = pytest.mark.slow

MUTATING = frozenset({"insert", "eject", "boot_override", "reset"})  # simulator events that change a node
A_STORES = ["dk-0001", "dk-0002", "dk-0003", "no-0001"]
B_STORES = ["dk-0003", "no-0001", "no-0002"]


def test_two_rollouts_at_once_on_overlapping_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(w: World, ep: Endpoints, engine: Any) -> None:
        ledger = Ledger(engine)
        provisions = [ops.create_provision(w.fleet, engine, w.home, sid, "v1", ep.clock(), settings=SETTINGS,
                                           operator="test") for sid in sorted(w.fleet.stores)]
        recs = await asyncio.gather(*(ops.run(w.fleet, w.home, engine, ep, c.record.id, settings=SETTINGS)
                                      for c in provisions))
        assert all(r.status is RolloutStatus.succeeded for r in recs), [ops.status(engine, r.id) for r in recs]
        since = (await get_json(f"{w.url}/sim/events?limit=1"))["last_seq"]

        policy = RolloutPolicy(canary=0, waves=("100%",), failure_budget=0, max_concurrent=10,
                               node_duration=timedelta(minutes=10))
        settings = ops.settings_for(policy, SETTINGS)
        a = ops.create_rollout(w.fleet, engine, "v2", policy, ep.clock(), settings=settings, operator="alice",
                               stores=A_STORES).record
        b = ops.create_rollout(w.fleet, engine, "v3", policy, ep.clock(), settings=settings, operator="bob",
                               stores=B_STORES).record
        assert ledger.locks_held_by(a.id) == ledger.locks_held_by(b.id) == []
        ra, rb = await asyncio.gather(ops.run(w.fleet, w.home, engine, ep, a.id, settings=settings),
                                      ops.run(w.fleet, w.home, engine, ep, b.id, settings=settings))

        runs = {op.id: {r.store: r for r in ledger.runs(op.id)} for op in (a, b)}
        release = {a.id: "v2", b.id: "v3"}
        current = {s: c for s, (c, _l) in ledger.store_releases().items()}
        reached = await get_json(f"{w.url}/sim/operations")
        winners: dict[str, str] = {}
        for sid in sorted(set(A_STORES) & set(B_STORES)):
            ok = [op for op in (a.id, b.id) if runs[op][sid].status is RunStatus.succeeded]
            assert len(ok) == 1, {op: runs[op][sid] for op in (a.id, b.id)}
            winner, loser = ok[0], b.id if ok[0] == a.id else a.id
            refused = runs[loser][sid]
            assert refused.status is RunStatus.refused, refused
            assert f"store {sid} is locked by operation {winner}" in refused.reason, refused.reason
            assert current[sid] == release[winner]
            assert sid not in reached.get(loser, {}), f"{loser} reached a BMC of {sid}, which {winner} held"
            assert any(e["kind"] == "lock_refused" for e in ledger.events(loser, store=sid))
            winners[sid] = winner
        print(f"\noverlapping stores reimaged by: {winners}")
        for op, only in ((a.id, set(A_STORES) - set(B_STORES)), (b.id, set(B_STORES) - set(A_STORES))):
            for sid in only:
                assert runs[op][sid].status is RunStatus.succeeded, runs[op][sid]
                assert current[sid] == release[op]
                assert sid in reached.get(op, {})
        # the loser ends failed ("refused"), naming how many; the winner succeeded on all of its stores
        for rec, op in ((ra, a.id), (rb, b.id)):
            lost = [s for s, win in winners.items() if win != op]
            if lost:
                assert rec.status is RolloutStatus.failed and f"{len(lost)} failed or refused" in rec.reason, rec
            else:
                assert rec.status is RolloutStatus.succeeded, rec

        assert (await get_json(f"{w.url}/sim/violations"))["total"] == 0
        log = await get_json(f"{w.url}/sim/events?since={since}&limit=100000")
        touched: dict[str, set[str | None]] = {}
        for e in log["events"]:
            if e["kind"] in MUTATING:
                touched.setdefault(e["node"], set()).add(e["operation"])
        both = {n: ops_ for n, ops_ in touched.items() if len(ops_) > 1}
        assert not both, both
        for sid, store in w.fleet.stores.items():
            expect = winners.get(sid) or (a.id if sid in A_STORES else b.id)
            assert {op for n in store.nodes for op in touched.get(n.name, set())} == {expect}, sid
        assert ledger.locks_held_by(a.id) == ledger.locks_held_by(b.id) == []
        await ledger_matches_sim(w.url, ledger, w.fleet)

    run_world(tmp_path, body, monkeypatch)
