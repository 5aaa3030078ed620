"""Release reach through every path that puts a release on stores, on a real SQLite state store and
the sample inventory: ``rollout start`` / ``ops.record_rollout`` and ``provision`` /
``ops.create_provision`` refuse a release that is not stable on non-canary stores (exit 2, naming
the stores, nothing written), allow it on canary stores, and record a forced run
(``release_forced``); a rollback to the last known-good release is not subject to the rule.
Operations are recorded, not run (running them is the rollout tests' business)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine

from edgefleet.errors import ReleaseNotStable
from edgefleet.inventory.load import load_fleet
from edgefleet.rollout import operations as ops
from edgefleet.rollout.journal import stmt_store_release
from edgefleet.rollout.ledger import Ledger
from edgefleet.rollout.request import RolloutRequest
from edgefleet.state.db import close_all, open_state
from tests.helpers import SAMPLE_INVENTORY, record_release
from tests.unit.test_release_fuzz import run_cli

NOW = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)
FLEET = load_fleet(SAMPLE_INVENTORY)
CANARIES = ("de-003", "dk-002", "us-002")
INV = ["-i", str(SAMPLE_INVENTORY)]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A home whose catalog holds v1 (stable) and v2 (only built)."""
    h = tmp_path / "home"
    record_release(h, "v1")
    record_release(h, "v2", stable=False)
    yield h
    close_all()


def _engine(home: Path) -> Engine:
    return open_state(f"sqlite:///{home / 'edgefleet.db'}")


def _files(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if not p.name.startswith("edgefleet.db"))


def test_a_built_release_to_the_whole_fleet_is_refused_and_nothing_is_recorded(home: Path) -> None:
    engine = _engine(home)
    with pytest.raises(ReleaseNotStable) as err:
        ops.record_rollout(FLEET, engine, RolloutRequest.build(release="v2"), NOW, operator="alice")
    assert err.value.exit_code == 2
    assert set(err.value.stores) == set(FLEET.stores) - set(CANARIES)
    assert Ledger(engine).rollouts() == [] and Ledger(engine).events() == []
    ops.record_rollout(FLEET, engine, RolloutRequest.build(release="v1"), NOW)  # stable: the whole fleet


def test_rollout_start_refuses_with_exit_2_naming_the_stores_and_the_fix(home: Path) -> None:
    code, text = run_cli(["rollout", "start", "--release", "v2", "--store", "dk-002", "--store", "dk-001",
                          "--store", "no-001", "--canary", "0", *INV], home)
    assert code == 2, text
    assert "release v2 is built, not stable" in text and "2 non-canary stores (dk-001, no-001)" in text, text
    assert "--force --reason TEXT" in text and "edgefleet train start --release v2" in text
    assert "Traceback" not in text
    assert Ledger(_engine(home)).rollouts() == []


@pytest.mark.parametrize(("args", "says"), [
    (["--force"], "--force needs --reason TEXT"),
    (["--force", "--reason", "  "], "--force needs --reason TEXT"),
    (["--reason", "hotfix"], "--reason goes with --force"),
])
@pytest.mark.parametrize("command", [["rollout", "start", "--release", "v2"],
                                     ["provision", "dk-001", "--release", "v2"]])
def test_force_and_reason_go_together(home: Path, command: list[str], args: list[str], says: str) -> None:
    code, text = run_cli([*command, *args, *INV], home)
    assert code == 2 and says in text and "Traceback" not in text, text
    assert Ledger(_engine(home)).rollouts() == []


def test_a_built_release_on_canary_stores_only_is_allowed(home: Path) -> None:
    engine = _engine(home)
    request = RolloutRequest.build(release="v2", stores=CANARIES, canary=0, waves=("100%",))
    made = ops.record_rollout(FLEET, engine, request, NOW, operator="alice")
    assert sorted(r.store for r in Ledger(engine).runs(made.record.id)) == list(CANARIES)
    assert Ledger(engine).events(kind="release_forced") == []


def test_stores_a_train_names_as_its_canary_stage_may_receive_it(home: Path) -> None:
    engine = _engine(home)
    request = RolloutRequest.build(release="v2", stores=("dk-001", "dk-002"), canary=0, waves=("100%",))
    with pytest.raises(ReleaseNotStable, match=r"\(dk-001\)"):
        ops.record_rollout(FLEET, engine, request, NOW)
    made = ops.record_rollout(FLEET, engine, request, NOW, canary_stores=("dk-001",))
    assert len(Ledger(engine).runs(made.record.id)) == 2


def test_a_forced_rollout_is_recorded_with_operator_reason_and_stores(home: Path) -> None:
    engine = _engine(home)
    made = ops.record_rollout(FLEET, engine, RolloutRequest.build(release="v2"), NOW, operator="alice",
                              force_reason="CVE-2026-1234 fix cannot wait for a train")
    (event,) = Ledger(engine).events(kind="release_forced")
    assert event["rollout"] == made.record.id and event["reason"] == "CVE-2026-1234 fix cannot wait for a train"
    assert event["detail"]["operator"] == "alice" and event["detail"]["release_state"] == "built"
    assert event["detail"]["stores"] == sorted(set(FLEET.stores) - set(CANARIES))
    assert len(Ledger(engine).runs(made.record.id)) == len(FLEET.stores)


def test_a_forced_rollout_of_a_stable_release_records_no_override(home: Path) -> None:
    engine = _engine(home)
    ops.record_rollout(FLEET, engine, RolloutRequest.build(release="v1"), NOW, force_reason="habit")
    assert Ledger(engine).events(kind="release_forced") == []


def test_provision_of_a_non_canary_store_on_a_built_release_is_refused_before_anything_is_written(
        home: Path) -> None:
    before = _files(home)
    with pytest.raises(ReleaseNotStable, match=r"release v2 is built.*\(dk-001\)"):
        ops.create_provision(FLEET, _engine(home), home, "dk-001", "v2", NOW, operator="alice")
    code, text = run_cli(["provision", "dk-001", "--release", "v2", *INV], home)
    assert code == 2 and "1 non-canary store (dk-001)" in text and "--force --reason TEXT" in text, text
    assert _files(home) == before  # no secrets minted, no seed
    assert Ledger(_engine(home)).rollouts() == []


def test_provision_of_a_pattern_is_refused_whole_when_one_store_is_outside_the_reach(home: Path) -> None:
    """dk-002 (a canary) and dk-001 (not): neither is provisioned, the message names dk-001."""
    before = _files(home)
    code, text = run_cli(["provision", "dk-001,dk-002", "--release", "v2", *INV], home)
    assert code == 2 and "1 non-canary store (dk-001)" in text and "Traceback" not in text, text
    assert _files(home) == before and Ledger(_engine(home)).rollouts() == []


@pytest.mark.clock  # the store's secrets are minted on the real clock
def test_provision_of_a_canary_store_or_a_forced_one_is_allowed(home: Path) -> None:
    engine = _engine(home)
    made = ops.create_provision(FLEET, engine, home, "dk-002", "v2", NOW, operator="alice")
    assert [r.store for r in Ledger(engine).runs(made.record.id)] == ["dk-002"]
    assert Ledger(engine).events(kind="release_forced") == []
    forced = ops.create_provision(FLEET, engine, home, "dk-001", "v2", NOW, operator="bob",
                                  force_reason="replacement hardware for a store that must open today")
    (event,) = Ledger(engine).events(kind="release_forced")
    assert event["rollout"] == forced.record.id and event["detail"]["stores"] == ["dk-001"]
    assert event["detail"]["operator"] == "bob"


def test_a_rollback_to_the_last_known_good_release_is_not_subject_to_reach(home: Path) -> None:
    """Stores on v3 (only canary) go back to v2, their last known-good release, which never became
    stable in this catalog: a rollback target was good on those stores, so it is not refused."""
    engine = _engine(home)
    record_release(home, "v3", stable=False)
    ledger = Ledger(engine)
    for sid in ("dk-001", "no-001"):
        ledger.write(*stmt_store_release(sid, "v3", "v2", NOW))
    made = ops.create_rollback(FLEET, engine, "v3", NOW, reason="bad release", operator="alice")
    assert sorted((r.store, r.to_release) for r in ledger.runs(made.record.id)) == [("dk-001", "v2"),
                                                                                    ("no-001", "v2")]
