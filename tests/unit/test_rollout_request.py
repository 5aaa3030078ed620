"""``RolloutRequest``: one validated request (policy + engine settings), saved whole and read back
whole, the planner's policy derived from it in one place, requests saved by earlier versions
still read, overrides of a resume validated."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from edgefleet.errors import InputError, StateError
from edgefleet.rollout.executor import EngineSettings
from edgefleet.rollout.plan import RolloutPolicy
from edgefleet.rollout.request import OVERRIDABLE, RolloutRequest
from tests.unit.test_engine_settings import CUSTOM, LEGACY


def _saved(request: RolloutRequest) -> dict[str, object]:
    return json.loads(json.dumps(request.to_json()))  # as the ledger stores it


def test_a_request_comes_back_whole() -> None:
    request = RolloutRequest.build(kind="rollout", release="v2", stores=("dk-0002", "dk-0003"), canary=("dk-0002",),
                                   waves=(2, "50%", "100%"), wave_groups=(), failure_budget="25%",
                                   horizon=timedelta(days=9), settings=CUSTOM)
    back = RolloutRequest.from_saved("rollout", "v2", _saved(request))
    assert back == request
    default = RolloutRequest(release="v2")
    differ = [f for f in RolloutRequest.model_fields if getattr(request, f) == getattr(default, f)]
    assert differ == ["kind", "release", "wave_groups"]  # every other field went through the round trip changed


def test_the_planner_policy_takes_caps_and_durations_from_the_settings() -> None:
    request = RolloutRequest.build(release="v2", canary=3, waves=(1, "100%"), failure_budget=2, settings=CUSTOM)
    assert request.policy() == RolloutPolicy(canary=3, waves=(1, "100%"), max_concurrent=7, max_per_region=3,
                                             max_per_country=2, node_duration=timedelta(minutes=11, seconds=30),
                                             wave_soak=timedelta(minutes=3), failure_budget=2)


def test_of_merges_a_policy_and_settings_once_the_policy_winning_its_caps() -> None:
    policy = RolloutPolicy(canary=0, waves=("100%",), max_concurrent=3, max_per_country=1,
                           node_duration=timedelta(minutes=5), wave_soak=timedelta(0))
    request = RolloutRequest.of("rollback", "v2", policy, CUSTOM)
    assert request.settings == CUSTOM.model_copy(update={
        "max_concurrent": 3, "max_per_region": None, "max_per_country": 1, "node_duration": timedelta(minutes=5),
        "wave_soak": timedelta(0)})
    assert request.policy().max_concurrent == 3 and request.kind == "rollback"


@pytest.mark.parametrize(("fields", "match"), [
    ({"release": ""}, "release"),
    ({"release": "v2", "stores": []}, "at least one store"),
    ({"release": "v2", "canary": -1}, "canary"),
    ({"release": "v2", "waves": ["0"]}, "wave size 0"),
    ({"release": "v2", "failure_budget": "150%"}, "failure budget"),
    ({"release": "v2", "settings": {"quorum_timeout_s": 0}}, "settings.quorum_timeout_s"),
    ({"release": "v2", "settings": {"bmc_attempts": 0}}, "settings.bmc_attempts"),
    ({"release": "v2", "speed": "ludicrous"}, "speed"),
])
def test_bad_input_is_refused_at_the_edge_naming_the_field(fields: dict[str, object], match: str) -> None:
    with pytest.raises(InputError, match=match):
        RolloutRequest.build(**fields)


def test_requests_saved_by_earlier_versions_still_load() -> None:
    old = RolloutRequest.from_saved("rollout", "v3", LEGACY)  # the flat field list beside the plan's keys
    assert (old.release, old.canary, old.waves, old.failure_budget) == ("v3", ("dk-0002",), ("2", "100%"), "1")
    assert old.settings == EngineSettings.from_json(LEGACY)
    assert old.policy().waves == ("2", "100%")
    provision = RolloutRequest.from_saved("provision", "v1", {"settings": CUSTOM.to_json()})
    assert (provision.kind, provision.release, provision.settings) == ("provision", "v1", CUSTOM)
    rollback = RolloutRequest.from_saved("rollback", "v2", {"settings": CUSTOM.to_json(), "canary": 0,
                                                            "waves": ["100%"], "failure_budget": "10%"})
    assert (rollback.canary, rollback.waves) == (0, ("100%",))


def test_what_this_version_cannot_honour_is_refused() -> None:
    saved = _saved(RolloutRequest.build(release="v2", settings=CUSTOM))
    saved["settings"]["drain_timeout_s"] = 30  # type: ignore[index]
    with pytest.raises(StateError, match=r"drain_timeout_s.*newer edgefleet"):
        RolloutRequest.from_saved("rollout", "v2", saved)
    with pytest.raises(StateError, match="wave_size"):
        RolloutRequest.from_saved("rollout", "v2", {**_saved(RolloutRequest(release="v2")), "wave_size": 3})


def test_overrides_replace_saved_settings_and_none_keeps_them() -> None:
    request = RolloutRequest.build(release="v2", settings=CUSTOM)
    got = request.with_settings(node_ready_timeout_s=900.0, quorum_timeout_s=None, soak=timedelta(seconds=5),
                                bmc_attempts=7, reimage_attempts=1)
    assert got.settings == CUSTOM.model_copy(update={"node_ready_timeout_s": 900.0, "soak": timedelta(seconds=5),
                                                      "bmc_attempts": 7, "reimage_attempts": 1})
    assert (got.release, got.canary) == (request.release, request.canary)
    assert request.with_settings(poll_s=None) is request
    with pytest.raises(InputError, match="store_gate_timeout_s"):
        request.with_settings(store_gate_timeout_s=-1.0)
    saved_then_overridden = RolloutRequest.from_saved("rollout", "v2", _saved(request), quorum_timeout_s=5.0)
    assert saved_then_overridden.settings.quorum_timeout_s == 5.0
    assert set(OVERRIDABLE) <= set(EngineSettings.model_fields)
