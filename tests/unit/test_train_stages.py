"""Stage options and the assignment of stores to a train's stages (pure): defaults from the
inventory's rings, named stages, percentages of what is left, per-stage policies, every bad input
refused naming the option and the value; hypothesis: every store in at most one stage, percentages
of the stores left, stage order kept."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.errors import InputError
from edgefleet.inventory.load import load_fleet
from edgefleet.inventory.model import Fleet
from edgefleet.schedule.windows import freeze_at, window_at
from edgefleet.trains.model import StagePolicy, StageSpec
from edgefleet.trains.stages import (
    StageOptions,
    assign,
    duration_text,
    parse_duration,
    parse_stages,
    percent_size,
    plan_stages,
)
from tests.helpers import SAMPLE_INVENTORY

SAMPLE = load_fleet(SAMPLE_INVENTORY)
CANARIES = ["de-003", "dk-002", "us-002"]
MONDAY = datetime(2026, 12, 7, tzinfo=UTC)


def test_default_stages_are_the_rings_canary_first() -> None:
    stages = parse_stages(SAMPLE, StageOptions())
    assert [(s.name, s.selector) for s in stages] == [("canary", "canary"), ("ring1", "ring1"), ("ring2", "ring2")]
    a = assign(SAMPLE, stages)
    assert a.stage_names == ("canary", "ring1", "ring2") and a.notes == ()
    assert sorted(a.members(0)) == CANARIES
    assert sorted(a.members(1)) == ["ca-002", "dk-001", "no-001", "pl-002"]
    assert set(a.stores) == set(SAMPLE.stores)


def test_a_canary_flag_or_ring_puts_a_store_in_the_canary_stage() -> None:
    stores = dict(SAMPLE.stores)
    stores["dk-001"] = stores["dk-001"].model_copy(update={"canary": True})  # ring1, flagged canary
    fleet = SAMPLE.model_copy(update={"stores": stores})
    a = assign(fleet, parse_stages(fleet, StageOptions()))
    assert sorted(a.members(0)) == sorted([*CANARIES, "dk-001"])
    assert "dk-001" not in a.members(1)


def test_policies_per_stage() -> None:
    stages = parse_stages(SAMPLE, StageOptions(
        soak="24h", stage_soak=["canary=12h"], failure_budget="10%", stage_budget=["ring1=2"],
        approve_stages="ring2", max_concurrent=5, max_per_region=2, max_per_country=1))
    by = {s.name: s.policy for s in stages}
    assert by["canary"] == StagePolicy(failure_budget="10%", soak=timedelta(hours=12), approve=False,
                                       max_concurrent=5, max_per_region=2, max_per_country=1)
    assert by["ring1"].failure_budget == 2 and by["ring1"].soak == timedelta(hours=24)
    assert by["ring2"].approve and not by["ring1"].approve


def test_named_stages_patterns_and_percentages() -> None:
    stages = parse_stages(SAMPLE, StageOptions(stage=["canary", "dk=country_dk", "25%", "rest=100%"]))
    assert [(s.name, s.selector) for s in stages] == [("canary", "canary"), ("dk", "country_dk"), ("25%", "25%"),
                                                      ("rest", "100%")]
    a = assign(SAMPLE, stages)
    assert sorted(a.members(1)) == ["dk-001", "dk-003", "dk-004", "dk-005"]  # dk-002 went to canary
    left = len(SAMPLE.stores) - 3 - 4
    assert len(a.members(2)) == percent_size(25, left) == 4
    assert len({SAMPLE.stores[s].region for s in a.members(2)}) == 4  # a percentage samples the regions
    assert len(a.members(3)) == left - 4


def test_pattern_stages_and_a_pattern_limit() -> None:
    stages = parse_stages(SAMPLE, StageOptions(stage=["canary", "nordic1=region_nordics:&ring_ring1", "dk-*",
                                                      "rest=all"]))
    a = assign(SAMPLE, stages, limit="all:!country_vn")
    assert a.members(1) == ["dk-001", "no-001"]
    assert a.members(2) == ["dk-003", "dk-004", "dk-005"]  # dk-002 went to canary, dk-001 to nordic1
    assert "vn-001" not in a.stores and len(a.stores) == len(SAMPLE.stores) - 2
    with pytest.raises(InputError, match=r"^--stage 'region_nordics:&rign_ring1': .*did you mean"):
        parse_stages(SAMPLE, StageOptions(stage=["region_nordics:&rign_ring1"]))


def test_empty_stages_are_dropped_with_a_note_and_stores_no_stage_takes_are_named() -> None:
    a = assign(SAMPLE, parse_stages(SAMPLE, StageOptions(stages="canary,ring1")), limit="country_dk")
    assert a.stage_names == ("canary", "ring1")
    a = assign(SAMPLE, parse_stages(SAMPLE, StageOptions(stages="canary,region_americas,ring1")),
               limit="country_dk")
    assert a.stage_names == ("canary", "ring1")
    assert a.notes[0] == "stage region_americas (region_americas) takes no store: dropped"
    assert a.notes[1].startswith("3 store(s) need the release but no stage takes them (dk-003, dk-004, dk-005)")


def test_stores_on_the_release_are_done_and_percentages_count_what_is_left_to_do() -> None:
    current = {"ae-001": "v2", "ae-002": "v2", "ca-001": "v1"}
    a = assign(SAMPLE, parse_stages(SAMPLE, StageOptions(stage=["canary", "10%", "100%"])), current=current,
               release="v2")
    assert a.done == {"ae-001", "ae-002"}
    need = len(SAMPLE.stores) - 3 - 2
    assert len(a.members(1)) == percent_size(10, need) and not set(a.members(1)) & a.done
    assert {"ae-001", "ae-002"} <= set(a.members(2))


@pytest.mark.parametrize(("options", "message"), [
    (StageOptions(stages="canary,rign1"), r"^--stages 'rign1': no ring, group or store .* did you mean ring1"),
    (StageOptions(stage=["contry_dk"]), r"^--stage 'contry_dk': .* did you mean country_dk"),
    (StageOptions(stages="canary,,ring1"), r"^--stages 'canary,,ring1': an empty name"),
    (StageOptions(stages="canary", stage=["ring1"]), r"not both"),
    (StageOptions(stages="canary,25%"), r"^--stages 'canary,25%': '25%' is not a plain group"),
    (StageOptions(stage=["0%"]), r"^--stage '0%': a percentage must be"),
    (StageOptions(stage=["x%"]), r"^--stage 'x%': a percentage must be"),
    (StageOptions(stage=["150%"]), r"^--stage '150%': a percentage must be"),
    (StageOptions(stage=["ring1", "ring1"]), r"stage name 'ring1' given twice"),
    (StageOptions(soak="24x"), r"^--soak '24x' is not a duration"),
    (StageOptions(soak="-1h"), r"^--soak '-1h' is not a duration"),
    (StageOptions(stage_soak=["ring3=1h"]), r"^--stage-soak 'ring3=1h': no stage named 'ring3'.*did you mean"),
    (StageOptions(stage_soak=["canary"]), r"^--stage-soak 'canary': write NAME=VALUE"),
    (StageOptions(stage_soak=["canary=soon"]), r"^--stage-soak 'soon' is not a duration"),
    (StageOptions(failure_budget="120%"), r"^--failure-budget '120%' is not a count"),
    (StageOptions(failure_budget="-1"), r"^--failure-budget '-1' is not a count"),
    (StageOptions(stage_budget=["canary=lots"]), r"^--stage-budget 'lots' is not a count"),
    (StageOptions(approve_stages="canary,rng2"), r"^--approve-stages 'canary,rng2': no stage named 'rng2'"),
    (StageOptions(max_per_region=0), r"^--max-per-region 0: give at least 1"),
])
def test_bad_input_names_the_option_and_the_value(options: StageOptions, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_stages(SAMPLE, options)


def test_a_limit_that_selects_nothing_or_an_unknown_name_is_refused() -> None:
    with pytest.raises(InputError, match=r"^--limit 'country_xx': .*did you mean"):
        assign(SAMPLE, parse_stages(SAMPLE, StageOptions()), limit="country_xx")


@pytest.mark.parametrize(("text", "seconds"), [("24h", 86400), ("90m", 5400), ("1h30m", 5400), ("2d", 172800),
                                               ("45s", 45), ("0", 0), ("1w", 604800), ("1.5h", 5400)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text, "--soak") == timedelta(seconds=seconds)


def test_the_plan_puts_the_canaries_first_and_alone_on_their_night() -> None:
    a = assign(SAMPLE, parse_stages(SAMPLE, StageOptions(soak="24h")))
    plan = plan_stages(SAMPLE, a, MONDAY, node_duration=timedelta(minutes=20))
    canary, ring1, ring2 = plan
    assert sorted(p.store for p in canary.stores) == CANARIES
    assert canary.end is not None and ring1.unlocks == canary.end + timedelta(hours=24)
    assert ring1.end is not None and ring2.unlocks == ring1.end + timedelta(hours=24)
    for stage in plan:
        for p in stage.stores:
            store = SAMPLE.stores[p.store]
            assert p.start is not None and p.end is not None and p.start >= stage.unlocks
            occ = window_at(store, p.start)
            assert occ is not None and p.end <= occ[1], p
            assert freeze_at(SAMPLE.freezes, store, p.start) is None
    first_later = min(p.start for st_ in (ring1, ring2) for p in st_.stores if p.start)
    assert first_later >= max(p.end for p in canary.stores if p.end) + timedelta(hours=24)


# -- properties --------------------------------------------------------------------------------------

REGIONS = ["nordics", "dach", "americas", "asia"]
RINGS = ["canary", "ring1", "ring2", "ring3"]


@st.composite
def fleets(draw: st.DrawFn) -> Fleet:
    ids = sorted(SAMPLE.stores)
    chosen = draw(st.lists(st.sampled_from(ids), min_size=1, max_size=len(ids), unique=True))
    stores = {}
    for sid in chosen:
        stores[sid] = SAMPLE.stores[sid].model_copy(update={
            "ring": draw(st.sampled_from(RINGS)), "canary": draw(st.booleans()),
            "region": draw(st.sampled_from(REGIONS))})
    return SAMPLE.model_copy(update={"stores": stores})


selectors = st.one_of(st.sampled_from([*RINGS, "country_dk", "region_nordics", "region_asia", "all",
                                       "country_dk:country_no", "all:!country_dk", "dk-*"]),
                      st.integers(1, 100).map(lambda n: f"{n}%"))


@settings(max_examples=200, deadline=None)
@given(fleets(), st.lists(selectors, min_size=1, max_size=6, unique=True),
       st.sets(st.sampled_from(sorted(SAMPLE.stores))))
def test_each_store_in_at_most_one_stage_percentages_of_what_is_left_order_kept(
        fleet: Fleet, chosen: list[str], on_release: set[str]) -> None:
    stages = [StageSpec(name=s, selector=s) for s in chosen]
    current = {s: "v2" for s in on_release}
    try:
        a = assign(fleet, stages, current=current, release="v2")
    except InputError as e:
        known = {"canary", "all", *fleet.groups(), *(s.ring for s in fleet.stores.values())}
        unknown = [s for s in chosen if not s.endswith("%") and s not in known and ":" not in s and "*" not in s]
        assert ("no stage takes any store" in str(e) or (unknown and f"'{unknown[0]}': no ring, group" in str(e))
                or "matches no group or store" in str(e) or "no group or store 'country_" in str(e)), str(e)
        return
    # order kept: the kept stages are the given ones, in order, minus those that took nothing
    kept = iter(stages)
    assert all(any(k == s for k in kept) for s in a.stages)
    assert all(a.members(i) for i in range(len(a.stages)))
    assert set(a.stores) <= set(fleet.stores)  # each store in one stage (a dict: at most one)
    left = list(fleet.stores)
    for stage in stages:
        index = a.stages.index(stage) if stage in a.stages else None
        members = a.members(index) if index is not None else []
        assert set(members) <= set(left)
        if stage.selector.endswith("%"):
            pct = float(stage.selector[:-1])
            need = [s for s in left if s not in on_release]
            assert len([m for m in members if m not in on_release]) == percent_size(pct, len(need))
            assert all(m not in on_release for m in members) or pct == 100
        else:
            everyone = {"all": set(fleet.stores), "dk-*": {s for s in fleet.stores if s.startswith("dk-")},
                        "country_dk:country_no": {s.id for s in fleet.stores.values() if s.country in ("DK", "NO")},
                        "all:!country_dk": {s.id for s in fleet.stores.values() if s.country != "DK"},
                        }.get(stage.selector)
            if everyone is None:
                everyone = {s.id for s in fleet.stores.values() if stage.selector in s.all_groups
                            or stage.selector == s.ring or (stage.selector == "canary" and s.canary)}
            assert set(members) == everyone & set(left)
        left = [s for s in left if s not in members]
    assert a.done == {s for s in a.stores if s in on_release}


@settings(max_examples=60, deadline=None)
@given(fleets(), st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)),
       st.sampled_from([0, 1, 24, 72]), st.sampled_from([5, 20, 45]))
def test_the_plan_keeps_every_store_in_its_window_and_every_stage_after_the_previous_soak(
        fleet: Fleet, now: datetime, soak_h: int, node_minutes: int) -> None:
    stages = parse_stages(fleet, StageOptions(soak=f"{soak_h}h"))
    plan = plan_stages(fleet, assign(fleet, stages), now, node_duration=timedelta(minutes=node_minutes))
    assert plan[0].unlocks == now
    for prev, nxt in itertools.pairwise(plan):
        assert nxt.unlocks == max(prev.unlocks, prev.end or prev.unlocks) + timedelta(hours=soak_h)
    for stage in plan:
        for p in stage.stores:
            store = fleet.stores[p.store]
            if p.start is None:
                continue  # no window free of freezes within the horizon (a long freeze)
            assert p.start >= stage.unlocks and p.end == p.start + timedelta(minutes=node_minutes) * len(store.nodes)
            occ = window_at(store, p.start)
            assert occ is not None and p.end is not None and p.end <= occ[1], p
            for t in (p.start, p.end - timedelta(seconds=1)):
                assert freeze_at(fleet.freezes, store, t) is None, (p, t)


@given(st.integers(min_value=0, max_value=365 * 86400))
def test_a_duration_prints_as_it_is_read(seconds: int) -> None:
    """``train start``'s plan shows soaks as ``--soak`` takes them (12h, not 12:00:00)."""
    value = timedelta(seconds=seconds)
    assert parse_duration(duration_text(value), "--soak") == value
    assert ":" not in duration_text(value)
