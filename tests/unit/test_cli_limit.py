"""``--limit PATTERN`` (``-l``), the one store selector, on every command that acts on or lists
stores, and its older spellings (``--store``, ``--canary-stores``, seed build's ``--all``, provision's
STORE argument) resolved by the same pattern function. What runs a fleet (rollout start, provision,
rollback on the simulator) is in tests/contract/test_cli_limit_sim.py; here: plans, seeds, reads,
and the refusals that must come before anything is recorded or revoked."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edgefleet.inventory.load import load_fleet
from edgefleet.inventory.patterns import select
from edgefleet.releases.catalog import ReleaseCatalog, ReleaseState
from edgefleet.rollout import operations as ops
from edgefleet.rollout.ledger import Ledger
from edgefleet.rollout.plan import RolloutPolicy
from edgefleet.state.db import close_all, open_state
from tests.helpers import SAMPLE_INVENTORY, record_release
from tests.unit.test_release_fuzz import run_cli

INV = ["-i", str(SAMPLE_INVENTORY)]
FLEET = load_fleet(SAMPLE_INVENTORY)
NOW = "2026-12-07T00:00:00Z"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home whose state store holds release v1 (stable) and no rollout."""
    h = tmp_path / "home"
    record_release(h, "v1")  # stable
    close_all()
    return h


def _json(args: list[str], home: Path) -> Any:
    code, text = run_cli([*args, "--json"], home)
    assert code == 0, text
    return json.loads(text)


def _planned(plan: dict[str, Any]) -> set[str]:
    return {s["store"] for w in plan["waves"] for s in w["stores"]}


# --- rollout plan (and the selector's rules, which every command shares) ----------------------------

@pytest.mark.parametrize("pattern", ["country_dk:&ring_ring2:!dk-003", "dk-*,no-001", "~(pl|vn)-00[12]",
                                     "region_nordics:!ring_canary"])
def test_plan_limit_plans_exactly_the_selected_stores(home: Path, pattern: str) -> None:
    plan = _json(["rollout", "plan", "--release", "v1", "--limit", pattern, "--canary", "0", "--now", NOW, *INV],
                 home)
    assert _planned(plan) | {s["store"] for s in plan["skipped"]} == set(select(FLEET, pattern))


def test_store_is_an_alias_of_limit(home: Path) -> None:
    by_store = _json(["rollout", "plan", "-r", "v1", "--store", "dk-001", "--store", "no-002", "--now", NOW, *INV],
                     home)
    by_limit = _json(["rollout", "plan", "-r", "v1", "-l", "dk-001,no-002", "--now", NOW, *INV], home)
    assert by_store == by_limit and _planned(by_limit) == {"dk-001", "no-002"}
    # --store takes patterns too: each value is a part
    by_glob = _json(["rollout", "plan", "-r", "v1", "--store", "dk-00[12]*", "--store", "!dk-002", "--now", NOW,
                     *INV], home)
    assert _planned(by_glob) == {"dk-001"}


def test_canary_stores_is_a_pattern(home: Path) -> None:
    plan = _json(["rollout", "plan", "-r", "v1", "-l", "region_nordics", "--canary-stores", "ring_canary",
                  "--now", NOW, *INV], home)
    assert {s["store"] for s in plan["waves"][0]["stores"]} == {"dk-002"}
    assert _planned(plan) == set(select(FLEET, "region_nordics"))


@pytest.mark.parametrize(("args", "says"), [
    (["-l", "ring1"], f"--limit: 'ring1' in pattern 'ring1': no group or store 'ring1' in the inventory "
                      f"{SAMPLE_INVENTORY}; did you mean 'ring_ring1'?"),
    (["-l", "country_dk:&country_no"], "--limit 'country_dk:&country_no' selects no store"),
    (["-l", "dk-001", "--store", "dk-002"], "give one store selector, not --limit and --store"),
    (["--store", "zz-999"], "--store: 'zz-999' in pattern 'zz-999': no group or store 'zz-999'"),
    (["--canary-stores", "canry"], "--canary-stores: 'canry' in pattern 'canry'"),
    (["-l", "controlplane"], "groups nodes by role"),
])
def test_plan_refuses_bad_selectors(home: Path, args: list[str], says: str) -> None:
    code, text = run_cli(["rollout", "plan", "-r", "v1", *args, "--now", NOW, *INV], home)
    assert code == 2 and says in text and "Traceback" not in text, text


# --- acting commands: a bad selector is refused before anything is recorded or revoked --------------

@pytest.mark.parametrize("args", [
    ["rollout", "start", "-r", "v1", "-l", "country_dk:&rng_ring1"],
    ["rollback", "-r", "v1", "-l", "country_dk:&rng_ring1", "--reason", "test"],
    ["provision", "-r", "v1", "country_dk:&rng_ring1"],
    ["provision", "-r", "v1", "-l", "country_dk:&rng_ring1"],
])
def test_acting_commands_refuse_a_typo_before_acting(home: Path, args: list[str]) -> None:
    code, text = run_cli([*args, *INV], home)
    assert code == 2 and "'rng_ring1'" in text and "did you mean 'ring_ring1'" in text, text
    engine = open_state(f"sqlite:///{home / 'edgefleet.db'}")
    assert Ledger(engine).rollouts(10) == []
    assert ReleaseCatalog(engine).get("v1").state is ReleaseState.stable  # rollback did not revoke it
    assert not (home / "secrets").exists()  # provision generated nothing
    close_all()


@pytest.mark.timeout(60)
def test_provision_of_several_stores_checks_the_release_reach_of_all_first(home: Path) -> None:
    """A release that is not stable yet, on canary stores and one that is not: refused before the
    first store is provisioned (the canary ones come first in inventory order)."""
    record_release(home, "v0", stable=False)  # built: canary stores only
    code, text = run_cli(["provision", "-r", "v0", "-l", "ring_canary,us-001", *INV], home)
    assert code == 2 and "release v0 is built, not stable" in text and "(us-001)" in text, text
    engine = open_state(f"sqlite:///{home / 'edgefleet.db'}")
    assert Ledger(engine).rollouts(10) == []
    assert not (home / "secrets").exists()
    close_all()


@pytest.mark.parametrize(("args", "says"), [
    (["provision", "-r", "v1"], "give the stores to provision"),
    (["provision", "-r", "v1", "dk-001", "-l", "dk-002"], "give one store selector, not --limit and STORE"),
    (["provision", "-r", "v1", "zz-999"], "STORE: 'zz-999' in pattern 'zz-999': no group or store 'zz-999'"),
])
def test_provision_needs_one_selector(home: Path, args: list[str], says: str) -> None:
    code, text = run_cli([*args, *INV], home)
    assert code == 2 and says in text, text


@pytest.mark.parametrize("command", [["rollout", "plan"], ["rollout", "start"], ["rollout", "status"], ["rollback"],
                                     ["provision"], ["seed", "build"], ["inventory", "graph"], ["report"]])
def test_every_store_command_takes_limit(command: list[str], tmp_path: Path) -> None:
    code, text = run_cli([*command, "--help"], tmp_path)
    assert code == 0 and re.search(r"--limit\s+-l\s", text), text


# --- seed build ---------------------------------------------------------------------------------------

def test_seed_build_limit(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "seeds"
    report = _json(["seed", "build", "-r", "v1", "-l", "region_nordics:&ring_ring2:!dk-004", "--out", str(out),
                    *INV], home)
    assert {p.name for p in out.iterdir() if p.is_dir()} == {"dk-003", "dk-005", "no-002", "no-003"}
    assert report["nodes"] == sum(len(FLEET.stores[s].nodes) for s in ("dk-003", "dk-005", "no-002", "no-003"))
    # the older spellings: --store (repeat) and --all; not two of them at once
    report = _json(["seed", "build", "-r", "v1", "--store", "dk-003", "--store", "no-002", "--out", str(out), *INV],
                   home)
    assert report["nodes"] == 2 and report["written"] == []  # up to date
    code, text = run_cli(["seed", "build", "-r", "v1", "--all", "-l", "dk-003", "--out", str(out), *INV], home)
    assert code == 2 and "give one store selector, not --limit and --all" in text, text
    code, text = run_cli(["seed", "build", "-r", "v1", "--out", str(out), *INV], home)
    assert code == 2 and "--limit PATTERN" in text, text


# --- reads that list stores -----------------------------------------------------------------------------

def test_inventory_graph_limit(home: Path) -> None:
    tree = _json(["inventory", "graph", "-l", "ring_canary", *INV], home)
    assert tree == {"DE": {"central": {"canary": ["de-003 (1 node)"]}},
                    "DK": {"nordics": {"canary": ["dk-002 (3 nodes)"]}},
                    "US": {"americas": {"canary": ["us-002 (1 node)"]}}}
    code, text = run_cli(["inventory", "graph", "-l", "country_dk:&ring_ring2:!dk-003", *INV], home)
    assert code == 0 and "2 stores, 4 nodes" in text and "dk-004 (" in text and "dk-003 (" not in text, text


def test_rollout_status_limit_lists_only_the_selected_stores(home: Path) -> None:
    engine = open_state(f"sqlite:///{home / 'edgefleet.db'}")
    made = ops.create_rollout(FLEET, engine, "v1", RolloutPolicy(canary=0, waves=("100%",)),
                              datetime(2026, 12, 7, tzinfo=UTC), stores=select(FLEET, "country_dk"))
    close_all()
    rid = made.record.id
    whole = _json(["rollout", "status", rid], home)
    assert {s["store"] for s in whole["stores"]} == set(select(FLEET, "country_dk"))
    some = _json(["rollout", "status", rid, "-l", "dk-00[12]*", *INV], home)
    assert [s["store"] for s in some["stores"]] == ["dk-001", "dk-002"]
    assert some["counts"] == whole["counts"]  # counts stay those of the whole rollout
    none = _json(["rollout", "status", rid, "-l", "country_no", *INV], home)
    assert none["stores"] == []  # a read may come out empty
    code, text = run_cli(["rollout", "status", rid, "-l", "contry_no", *INV], home)
    assert code == 2 and "did you mean 'country_no'" in text, text


# --- the report -------------------------------------------------------------------------------------------

def test_report_of_some_stores(tmp_path: Path) -> None:
    from edgefleet.report import collect_report
    from edgefleet.state.db import create_state_engine
    from tests.unit.test_report import _fleet_story

    engine = create_state_engine(f"sqlite:///{tmp_path / 'edgefleet.db'}")
    ledger = Ledger(engine)
    _fleet_story(ledger)
    data = collect_report(engine, stores={"s3", "s4"})
    assert [o.id for o in data.operations] == ["pr-s3", "pr-s4", "ro-v2"]  # not pr-s1, pr-s2, nor rb-v2
    ro = data.operations[-1]
    assert dict(ro.counts) == {"failed": 1, "rolled_back": 1} and ro.waves[0].stores == 2
    assert {p.store for p in ro.problems} == {"s3", "s4"}
    assert {c.store for c in data.changes} == {"s3", "s4"} and set(data.current) == {"s3", "s4"}
    assert data.events and {e.store for e in data.events} == {"s3", "s4"}
    assert data.events_total == len([e for e in ledger.events() if e["store"] in ("s3", "s4")])
    # with operation ids too: both filters hold
    assert [o.id for o in collect_report(engine, rollout_ids=["rb-v2", "ro-v2"], stores={"s2"}).operations] == [
        "ro-v2", "rb-v2"]
    assert collect_report(engine, rollout_ids=["rb-v2"], stores={"s3"}).events == ()
    engine.dispose()


def test_report_limit(home: Path, tmp_path: Path) -> None:
    engine = open_state(f"sqlite:///{home / 'edgefleet.db'}")
    ops.create_rollout(FLEET, engine, "v1", RolloutPolicy(canary=0, waves=("100%",)), datetime(2026, 12, 7, tzinfo=UTC),
                       stores=select(FLEET, "country_dk"))
    close_all()
    out = str(tmp_path / "r.html")
    code, text = run_cli(["report", "--out", out, "-l", "dk-00[12]*", *INV], home)
    assert code == 0 and ": 1 operation(s)" in text, text
    code, text = run_cli(["report", "--out", out, "-l", "country_no", *INV], home)
    assert code == 0 and ": 0 operation(s)" in text, text
    code, text = run_cli(["report", "--out", out, "-l", "contry_no", *INV], home)
    assert code == 2 and "did you mean 'country_no'" in text, text
