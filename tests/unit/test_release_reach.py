"""Release reach (``edgefleet.releases.reach``): a release that is not stable reaches only canary
stores, unless forced with a reason. Pure: the sample inventory and hypothesis, no state store."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.errors import InputError, ReleaseInputError, ReleaseNotStable
from edgefleet.inventory.load import load_fleet
from edgefleet.inventory.model import Fleet
from edgefleet.releases.reach import NAMED_STORES, check_reach, is_canary_store, outside_reach
from tests.helpers import SAMPLE_INVENTORY

FLEET: Fleet = load_fleet(SAMPLE_INVENTORY)
CANARIES = ["de-003", "dk-002", "us-002"]  # ring canary in the sample inventory
STATES = ["built", "canary", "stable", "revoked"]


def test_the_sample_inventorys_canary_stores_are_its_canary_ring() -> None:
    assert sorted(s for s, store in FLEET.stores.items() if is_canary_store(store)) == CANARIES


def test_a_built_release_on_the_whole_fleet_is_refused_naming_the_release_its_state_and_stores() -> None:
    others = sorted(set(FLEET.stores) - set(CANARIES))
    with pytest.raises(ReleaseNotStable) as err:
        check_reach(FLEET, "v2", "built", list(FLEET.stores))
    e = err.value
    assert isinstance(e, InputError) and e.exit_code == 2
    assert (e.release, e.state, e.stores) == ("v2", "built", tuple(others))
    text = str(e)
    assert "release v2 is built, not stable" in text and f"{len(others)} non-canary stores" in text
    assert ", ".join(others[:NAMED_STORES]) in text and f"and {len(others) - NAMED_STORES} more" in text
    assert others[NAMED_STORES] not in text  # the first few by name, the rest as a count
    assert "edgefleet train start --release v2" in text and "--force --reason TEXT" in text


def test_a_canary_release_on_one_non_canary_store_is_refused() -> None:
    with pytest.raises(ReleaseNotStable, match=r"release v2 is canary.*on 1 non-canary store \(dk-001\)"):
        check_reach(FLEET, "v2", "canary", ["dk-002", "dk-001"])


@pytest.mark.parametrize("state", ["built", "canary"])
def test_canary_stores_may_receive_a_release_that_is_not_stable(state: str) -> None:
    check_reach(FLEET, "v2", state, CANARIES)
    check_reach(FLEET, "v2", state, [])


def test_stores_named_as_canaries_by_the_caller_count_as_canary_stores() -> None:
    """A train passes its first stage's stores (e.g. a pattern that picked dk-001)."""
    check_reach(FLEET, "v2", "built", ["dk-001", "dk-002"], canary_stores={"dk-001"})
    with pytest.raises(ReleaseNotStable, match="de-001"):
        check_reach(FLEET, "v2", "built", ["dk-001", "de-001"], canary_stores={"dk-001"})


def test_a_stable_release_reaches_every_store() -> None:
    check_reach(FLEET, "v1", "stable", list(FLEET.stores))
    assert outside_reach(FLEET, "stable", list(FLEET.stores)) == []


def test_a_forced_reach_needs_a_reason_that_is_not_blank() -> None:
    check_reach(FLEET, "v2", "built", list(FLEET.stores), force_reason="hotfix for the payment outage")
    for blank in ("", "   "):
        with pytest.raises(ReleaseInputError, match="needs a reason: give --reason TEXT") as err:
            check_reach(FLEET, "v2", "built", ["dk-001"], force_reason=blank)
        assert not isinstance(err.value, ReleaseNotStable)


@given(st.lists(st.sampled_from(sorted(FLEET.stores)), max_size=12), st.sampled_from(STATES),
       st.sets(st.sampled_from(sorted(FLEET.stores)), max_size=4))
def test_refused_exactly_when_a_non_stable_release_would_reach_a_non_canary_store(
        stores: list[str], state: str, extra: set[str]) -> None:
    outside = {s for s in stores if s not in CANARIES and s not in extra} if state != "stable" else set()
    assert outside_reach(FLEET, state, stores, canary_stores=extra) == sorted(outside)
    if outside:
        with pytest.raises(ReleaseNotStable) as err:
            check_reach(FLEET, "r", state, stores, canary_stores=extra)
        assert set(err.value.stores) == outside
    else:
        check_reach(FLEET, "r", state, stores, canary_stores=extra)
    check_reach(FLEET, "r", state, stores, canary_stores=extra, force_reason="why")  # never refused when forced
