"""The train oracle's verdicts (``edgefleet.sim.oracle_trains``), pure: stores described by the
facts the simulator would give at each moment, the clock passed in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from edgefleet.errors import InputError
from edgefleet.sim.oracle_trains import StoreFacts, TrainOracle, parse_train

T0 = datetime(2026, 12, 7, 22, 0, tzinfo=UTC)
STORES = {"c1": ("c1-n1",), "c2": ("c2-n1",), "r1": ("r1-n1", "r1-n2"), "r2": ("r2-n1",), "x": ("x-n1",)}


class Fleet:
    """What each store runs now: release, settled or not (the simulator's ``train_facts``)."""

    def __init__(self) -> None:
        self.on: dict[str, str] = dict.fromkeys(STORES, "v1")
        self.busy: set[str] = set()

    def facts(self, store: str, release: str) -> StoreFacts:
        return StoreFacts(settled=store not in self.busy, on_release=self.on[store] == release, nodes=STORES[store])


def _oracle() -> TrainOracle:
    return TrainOracle(known_good="v0", canary_stores=["x"])


def _reimage(o: TrainOracle, fleet: Fleet, store: str, release: str, at: datetime) -> list[str]:
    """A reimage of every node of ``store`` to ``release``: the rules' findings."""
    out = [f.rule for n in STORES[store] for f in o.disrupt(store, n, f"Reset of {n}", at, fleet.facts)]
    fleet.on[store] = release
    out += [f.rule for n in STORES[store] for f in o.came_up(store, n, release, at + timedelta(minutes=5),
                                                              fleet.facts)]
    return out


def test_parse_train_reads_stages_budgets_and_soaks() -> None:
    t = parse_train({"release": "v2", "soak_s": 60, "stages": [["c1", "c2"], {"name": "ring1", "stores": ["r1", "r2"],
                                                                              "failure_budget": "50%",
                                                                              "soak_s": 5}]}, STORES)
    assert [(s.name, s.stores, s.soak, s.failure_budget) for s in t.stages] == [
        ("canary", ("c1", "c2"), timedelta(seconds=60), 0), ("ring1", ("r1", "r2"), timedelta(seconds=5), 1)]
    for bad, said in [({"release": "v2", "stages": [["c1"]], "extra": 1}, "send"),
                      ({"release": "v2", "stages": [{"stores": ["c1"], "budget": 1}]}, r"stages\[0\] must be"),
                      ({"release": "v2", "stages": [[]]}, "non-empty list of store ids"),
                      ({"release": "v2", "stages": [["c1"]], "soak_s": True}, "soak_s must be")]:
        with pytest.raises(InputError, match=said):
            parse_train(bad, STORES)


def test_a_stage_passes_within_its_budget_after_its_soak_and_stays_passed() -> None:
    o, fleet = _oracle(), Fleet()
    o.declare(parse_train({"release": "v2", "soak_s": 3600, "stages": [
        {"stores": ["c1", "c2"], "failure_budget": 1}, ["r1"], ["r2"]]}, STORES), running={"v1"})
    assert _reimage(o, fleet, "c1", "v2", T0) == []  # canary stage: no precondition, v2 may go there
    fleet.busy.add("c2")  # c2 is mid-reimage: even within the budget the stage has not finished
    assert _reimage(o, fleet, "r1", "v2", T0 + timedelta(hours=2)) == ["stage_order"] * 2 + ["release_state"] * 2
    fleet.busy.clear()  # c2 ended off the release: one failure, within the budget
    fleet.on["r1"] = "v1"
    soak_end = T0 + timedelta(minutes=5, hours=1)
    assert o.stage(o.trains["v2"], 0, soak_end - timedelta(seconds=1), fleet.facts).why.startswith(
        "its soak runs until " + soak_end.isoformat())
    assert _reimage(o, fleet, "r1", "v2", soak_end) == []  # passed: v2 is stable from soak_end on (derived)
    assert o.stable_at("v2", soak_end) and not o.stable_at("v2", soak_end - timedelta(seconds=1))
    # stage 1 (r1) soaks the train's hour too: r2 may start an hour after r1 came up on v2
    later = soak_end + timedelta(hours=2)
    assert _reimage(o, fleet, "r2", "v2", later) == []
    # a rollback of the canaries afterwards does not lock the passed stages again
    assert _reimage(o, fleet, "c1", "v1", later) == []
    assert _reimage(o, fleet, "r1", "v1", later) == []


def test_a_stage_past_its_budget_never_passes_and_a_new_declaration_starts_over() -> None:
    o, fleet = _oracle(), Fleet()
    decl = parse_train({"release": "v2", "stages": [["c1", "c2"], ["r1"]]}, STORES)
    o.declare(decl)
    _reimage(o, fleet, "c1", "v2", T0)
    verdict = o.stage(decl, 0, T0 + timedelta(days=9), fleet.facts)
    assert verdict.passed_at is None and verdict.why == "c2 not Ready on v2 (the stage may have 0 such stores)"
    _reimage(o, fleet, "c2", "v2", T0)
    assert o.stage(decl, 0, T0 + timedelta(hours=1), fleet.facts).passed_at == T0 + timedelta(minutes=5)
    o.declare(parse_train({"release": "v2", "soak_s": 86400, "stages": [["c1", "c2"], ["r1"]]}, STORES))
    assert o.stage(o.trains["v2"], 0, T0 + timedelta(hours=1), fleet.facts).passed_at is None  # latch dropped


def test_release_state_judges_at_the_disruptive_request_and_follows_what_it_is_told() -> None:
    o, fleet = _oracle(), Fleet()
    assert _reimage(o, fleet, "r2", "v9", T0) == []  # not enforced yet: plain rollouts go anywhere
    o.tell("v3", "canary", T0, running={"v1", "v9"})
    assert o.stable_at("v1", T0) and o.stable_at("v9", T0) and o.stable_at("v0", T0)  # the fleet's own
    assert _reimage(o, fleet, "x", "v3", T0) == []  # an inventory canary store
    o.disrupt("r1", "r1-n1", "Reset", T0, fleet.facts)
    o.tell("v3", "stable", T0 + timedelta(minutes=1))
    # told stable after the request that reimaged it, before it came up: still a violation
    assert [f.rule for f in o.came_up("r1", "r1-n1", "v3", T0 + timedelta(minutes=5), fleet.facts)] == [
        "release_state"]
    assert _reimage(o, fleet, "r1", "v3", T0 + timedelta(minutes=10)) == []
    o.tell("v3", "revoked", T0 + timedelta(hours=1))
    found = o.came_up("r2", "r2-n1", "v3", T0 + timedelta(hours=2), fleet.facts)
    assert [f.rule for f in found] == ["release_state"] and "told revoked" in found[0].detail
    assert o.came_up("r2", "r2-n1", None, T0 + timedelta(hours=2), fleet.facts) == []  # a disk boot installs nothing
    with pytest.raises(InputError, match="golden"):
        o.tell("v3", "golden", T0)
