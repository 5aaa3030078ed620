"""``EngineSettings`` as recorded with a rollout and read back on resume: every field survives, a
record written by an older edgefleet (flat, durations in seconds, fewer fields) still loads with
defaults for what it lacks, and what this version cannot honour is refused rather than dropped."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from pydantic import ValidationError

from edgefleet.errors import StateError
from edgefleet.rollout.executor import EngineSettings
from edgefleet.rollout.request import RolloutRequest

# A value unlike the default for every field (checked below, so a new field cannot be forgotten).
CUSTOM = EngineSettings(
    max_concurrent=7, max_per_region=3, max_per_country=2, node_duration=timedelta(minutes=11, seconds=30),
    soak=timedelta(seconds=42), wave_soak=timedelta(minutes=3), node_ready_timeout_s=61.5, quorum_timeout_s=62.5,
    store_gate_timeout_s=63.5, window_wait_max_s=64.5, poll_s=0.07, power_deadline_s=9.5, heartbeat_s=0.75,
    seed_public_url="https://seeds.example.net:8443/edge", seed_token_ttl_s=1234.0,
    step_margin=timedelta(minutes=4), pre_hook="/srv/hooks/pre.yml", post_hook="/srv/hooks/post.yml",
    hook_timeout_s=77.0, bmc_attempts=5, bmc_backoff_s=0.125, reimage_attempts=4, inband_deadline_s=99.0)

# What the previous edgefleet recorded (its hand-written field list, flat, beside the plan's keys).
LEGACY = {"max_concurrent": 5, "max_per_region": None, "max_per_country": 2, "node_duration_s": 600.0,
          "soak_s": 30.0, "wave_soak_s": 1200.0, "node_ready_timeout_s": 4.0, "quorum_timeout_s": 10.0,
          "store_gate_timeout_s": 6.0, "window_wait_max_s": 5.0, "poll_s": 0.05, "bmc_attempts": 2,
          "bmc_backoff_s": 0.05, "reimage_attempts": 3, "step_margin_s": 300.0, "pre_hook": None,
          "post_hook": "/srv/post.yml", "hook_timeout_s": 300.0, "inband_deadline_s": 120.0,
          "canary": ["dk-0002"], "waves": ["2", "100%"], "wave_groups": [], "failure_budget": "1"}


def test_every_field_differs_from_its_default() -> None:
    default = EngineSettings()
    same = [name for name in EngineSettings.model_fields if getattr(CUSTOM, name) == getattr(default, name)]
    assert same == []


def _saved(settings: EngineSettings) -> dict[str, object]:
    """What the previous edgefleet saved for a provision: the settings whole, nothing beside them."""
    return {"settings": settings.to_json()}


def test_recorded_settings_come_back_whole() -> None:
    request = RolloutRequest.build(release="v2", canary=("dk-0002",), waves=(2, "100%"), failure_budget=1,
                                   settings=CUSTOM)
    recorded = json.loads(json.dumps(request.to_json()))  # as the ledger stores it
    assert EngineSettings.from_json(recorded) == CUSTOM
    assert EngineSettings.from_json(json.loads(json.dumps(_saved(CUSTOM)))) == CUSTOM
    assert EngineSettings.from_json(CUSTOM.to_json()) == CUSTOM  # the bare dump too
    assert set(CUSTOM.to_json()) == set(EngineSettings.model_fields)


def test_a_record_of_the_previous_field_list_still_loads() -> None:
    got = EngineSettings.from_json(LEGACY)
    assert (got.node_duration, got.soak, got.wave_soak, got.step_margin) == (
        timedelta(minutes=10), timedelta(seconds=30), timedelta(minutes=20), timedelta(minutes=5))
    assert (got.max_concurrent, got.max_per_country, got.post_hook, got.bmc_attempts) == (5, 2, "/srv/post.yml", 2)
    default = EngineSettings()  # the fields that list never saved take their defaults
    assert (got.seed_public_url, got.power_deadline_s, got.heartbeat_s, got.seed_token_ttl_s) == (
        default.seed_public_url, default.power_deadline_s, default.heartbeat_s, default.seed_token_ttl_s)


def test_overrides_replace_recorded_values_and_none_keeps_them() -> None:
    got = EngineSettings.from_json(_saved(CUSTOM), node_ready_timeout_s=900.0, poll_s=None,
                                   seed_public_url="http://10.0.0.5:8080")
    assert got == CUSTOM.model_copy(update={"node_ready_timeout_s": 900.0, "seed_public_url": "http://10.0.0.5:8080"})


def test_unknown_keys_are_refused_naming_them() -> None:
    newer = _saved(CUSTOM)
    newer["settings"]["drain_timeout_s"] = 30
    with pytest.raises(StateError, match=r"drain_timeout_s.*newer edgefleet"):
        EngineSettings.from_json(newer)
    with pytest.raises(StateError, match="warp_factor"):
        EngineSettings.from_json({**LEGACY, "warp_factor": 9})


def test_invalid_values_are_refused() -> None:
    with pytest.raises(StateError, match="max_concurrent"):
        EngineSettings.from_json({"settings": {"max_concurrent": 0}})
    with pytest.raises(StateError, match="seed_public_url"):
        EngineSettings.from_json({"settings": {"seed_public_url": "seeds.example.net"}})
    with pytest.raises(ValidationError):
        EngineSettings(soak=timedelta(seconds=-1))
    with pytest.raises(ValidationError):
        EngineSettings(seed_public_url="ftp://x")
