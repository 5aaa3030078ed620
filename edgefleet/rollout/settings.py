"""What one execution of a rollout runs with: ``EngineSettings`` (validated, saved whole with the
rollout, read back on resume), the seed server's persistent key, the nocloud-net URLs of talos-api
nodes, where seeds live, and the redaction of seed-server tokens from anything recorded."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgefleet.errors import StateError
from edgefleet.redact import redact_tokens as redact  # seed-server tokens are never recorded
from edgefleet.seeds.netseed import (  # the seed server key and stable URLs live there (the CLI uses them too)
    NETSEED_EXPIRES,
    SEED_KEY_FILE,
    load_seed_server_key,
    nocloud_urls,
)
from edgefleet.seeds.netseed import stable_nocloud_url as nocloud_url

__all__ = ["NETSEED_EXPIRES", "SEED_KEY_FILE", "SEED_URL_PATTERN", "EngineSettings", "load_seed_server_key",
           "nocloud_url", "nocloud_urls", "redact", "seeds_dir"]

# The names an older edgefleet wrote into a rollout's ``policy`` (one flat dict, durations as
# ``<name>_s`` seconds), and the plan's own keys that sat beside them (``operations._policy_json``).
_LEGACY_SECONDS = {"node_duration_s": "node_duration", "soak_s": "soak", "wave_soak_s": "wave_soak",
                   "step_margin_s": "step_margin"}
SEED_URL_PATTERN = r"^https?://[^\s/?#@]+(/[^\s?#]*)?$"  # an http(s) URL with a host, no query, no userinfo
_POLICY_KEYS = frozenset({"canary", "waves", "wave_groups", "failure_budget"})


class EngineSettings(BaseModel):
    """Knobs of one execution, validated. Durations ending in ``_s`` are real seconds;
    ``node_duration``, ``soak``, ``wave_soak`` and ``step_margin`` are on the rollout's clock
    (simulated time in sim mode).

    Recorded whole with the rollout (``to_json``: every field, ``model_dump(mode="json")``) and read
    back whole on resume (``from_json``), so a resumed rollout runs with exactly the settings it was
    started with. A field missing from a record (one written before the field existed) takes its
    default; a key this version does not know is refused (``StateError`` naming it), rather than
    resuming with a setting silently dropped: it was written by a newer edgefleet."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_concurrent: int = Field(100, ge=1)
    max_per_region: int | None = Field(None, ge=1)
    max_per_country: int | None = Field(None, ge=1)
    node_duration: timedelta = timedelta(minutes=20)
    soak: timedelta = timedelta(0)
    wave_soak: timedelta = timedelta(0)  # between waves, after a wave passed its gate
    node_ready_timeout_s: float = Field(1800.0, gt=0)
    quorum_timeout_s: float = Field(600.0, gt=0)
    store_gate_timeout_s: float = Field(600.0, gt=0)
    window_wait_max_s: float = Field(25 * 3600.0, ge=0)  # the next daily window always opens within this
    poll_s: float = Field(2.0, gt=0)
    power_deadline_s: float | None = Field(None, gt=0)  # None: the BMC vendor's power transition time
    heartbeat_s: float = Field(5.0, gt=0)
    seed_public_url: str | None = Field(None, pattern=SEED_URL_PATTERN)
    seed_token_ttl_s: float = Field(6 * 3600.0, gt=0)
    step_margin: timedelta = timedelta(minutes=5)  # room left in the window before each BMC step
    pre_hook: str | None = None  # Ansible playbook run before a store is touched (edgefleet.rollout.hooks)
    post_hook: str | None = None  # ... and after its store gate passed; failing: the store is rolled back
    hook_timeout_s: float = Field(300.0, gt=0)
    bmc_attempts: int = Field(4, ge=1)
    bmc_backoff_s: float = Field(0.5, ge=0)
    # a node's Redfish sequence, from its start after an action failed transiently
    reimage_attempts: int = Field(3, ge=1)
    inband_deadline_s: float = Field(120.0, gt=0)  # a talos-api node's Version, seed check and Reset, together

    @field_validator("node_duration", "soak", "wave_soak", "step_margin")
    @classmethod
    def _not_negative(cls, v: timedelta) -> timedelta:
        if v < timedelta(0):
            raise ValueError("must not be negative")
        return v

    def to_json(self) -> dict[str, Any]:
        """Every field, as JSON (durations as ISO 8601 durations)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, data: dict[str, Any], **override: Any) -> EngineSettings:
        """The settings recorded in a rollout's ``policy``: ``{"settings": {...}, <plan keys>}`` as
        written now, or the flat dict an older edgefleet wrote (``node_duration_s`` and the other
        ``_s`` durations in seconds, the plan's keys beside them). ``override``: fields to replace
        (None values are ignored). Raises ``StateError`` for unknown keys or invalid values."""
        if isinstance(data.get("settings"), dict):
            known = dict(data["settings"])
        else:
            known = {k: v for k, v in data.items() if k not in _POLICY_KEYS}
            for old, name in _LEGACY_SECONDS.items():
                if old in known and name not in known:
                    known[name] = timedelta(seconds=float(known.pop(old)))
        known.update({k: v for k, v in override.items() if v is not None})
        unknown = sorted(set(known) - set(cls.model_fields))
        if unknown:
            raise StateError(f"the recorded engine settings hold {', '.join(unknown)}, which this edgefleet does not "
                             "know: the rollout was recorded by a newer edgefleet; resume it with that version")
        try:
            return cls.model_validate(known)
        except ValidationError as e:
            raise StateError(f"the recorded engine settings are invalid: {_validation_text(e)}") from None


def _validation_text(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())


def seeds_dir(home: Path, release: str, store_id: str) -> Path:
    """Where the engine keeps a store's seeds for a release (one small incremental index each)."""
    return home / "seeds" / "engine" / release / store_id

