"""The end-of-run ledger-versus-simulator check (``rollout_world.ledger_mismatches``) on a real
SQLite ledger: it finds each way the ledger can disagree with what the nodes run, and accepts a
store reported ``split`` whose nodes are recorded one by one."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import update

from edgefleet.inventory.model import Fleet, Store
from edgefleet.rollout.ledger import Kind, Ledger, StoreRunRow, stmt_node, stmt_store_release
from edgefleet.state.db import create_state_engine
from tests.contract.rollout_world import SPLIT, ledger_mismatches

NOW = datetime(2026, 11, 3, 22, 0, tzinfo=UTC)


def _fleet() -> Fleet:
    def store(sid: str, index: int) -> Store:
        return Store.model_validate({
            "id": sid, "name": sid, "country": "DK", "region": "nordics", "timezone": "Europe/Copenhagen",
            "maintenance_windows": [{"days": ["daily"], "start": "22:00", "end": "05:00"}],
            "network": {"subnet": f"10.40.{index}.0/24", "gateway": f"10.40.{index}.1", "dns": ["10.0.0.53"]},
            "cluster": {"name": sid, "vip": f"10.40.{index}.9"},
            "nodes": [{"name": f"{sid}-n{k}", "role": "controlplane", "mac": f"02:ef:00:03:{index:02x}:{k:02x}",
                       "ip": f"10.40.{index}.{10 + k}"} for k in (1, 2, 3)]})

    return Fleet(name="check", stores={"a": store("a", 1), "b": store("b", 2), "c": store("c", 3)})


def _sim(releases: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {n: {"release": r, "ready": not n.endswith("n2")} for n, r in releases.items()}


def test_the_check_finds_every_disagreement_and_accepts_a_reported_split(tmp_path: Path) -> None:
    engine = create_state_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger = Ledger(engine)
    fleet = _fleet()
    ledger.create_rollout(rollout_id="ro-1", kind=Kind.rollout, release="v2", now=NOW, policy={}, plan={},
                          operator="t", waves=[(0, "all", 3)], runs=[(s, 0, "v1", "v2") for s in "abc"])
    ledger.write(update(StoreRunRow).values(status="failed", started_at=NOW))
    for sid in "abc":
        ledger.write(*stmt_store_release(sid, "v1", "v1", NOW))
        for k in (1, 2, 3):
            ledger.write(*stmt_node(f"{sid}-n{k}", sid, "v1", True, NOW))
    on_v1 = {f"{s}-n{k}": "v1" for s in "abc" for k in (1, 2, 3)}
    assert ledger_mismatches(_sim(on_v1), ledger, fleet, initial_release="initial") == []

    # a: n1 and n2 went to v2 (rows written), the rollback gave up: the held-out run of issue #20
    ledger.write(*stmt_node("a-n1", "a", "v2", True, NOW), *stmt_node("a-n2", "a", "v2", False, NOW))
    # b: a node runs v2 but its row still says v1
    split = {**on_v1, "a-n1": "v2", "a-n2": "v2", "b-n3": "v2"}
    bad = ledger_mismatches(_sim(split), ledger, fleet, initial_release="initial")
    assert bad[0] == ("a: split across releases and not reported split: nodes a-n1 v2, a-n2 v2 NotReady, a-n3 v1; "
                      "ledger: current v1, last known good v1, last run failed (ro-1)")
    assert bad[1] == "b: node b-n3 runs v2, the ledger's node_state says v1"
    assert bad[2].startswith("b: split across releases and not reported split")
    assert bad[3] == "stores_on('v2') lists ['a'], but the stores with a node on v2 are ['a', 'b']"
    assert len(bad) == 4, bad

    # a reported split: its current release not claimed, every node recorded as it is
    ledger.write(update(StoreRunRow).where(StoreRunRow.store == "a").values(status=SPLIT),
                 *stmt_store_release("a", None, "v1", NOW))
    a_only = Fleet(name="check", stores={"a": fleet.stores["a"]})
    assert ledger_mismatches(_sim(split), ledger, a_only, initial_release="initial") == []
    # ... but not while the ledger still claims a release, or lacks a node's
    ledger.write(*stmt_store_release("a", "v2", "v1", NOW))
    assert ledger_mismatches(_sim(split), ledger, a_only, initial_release="initial") == [
        "a: reported split but its current release is claimed as v2 (nodes: a-n1 v2, a-n2 v2 NotReady, a-n3 v1)"]
    engine.dispose()
