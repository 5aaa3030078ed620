"""What one rollout request holds: ``RolloutRequest``, the planner's policy and the engine's
settings in one validated model.

It is built once at the edge (``rollout start``/``rollback``/``provision`` on the command line, or
a flow's parameters), saved whole with the operation in the ledger (``rollouts.policy``) and read
back whole on resume, so a resumed operation runs with exactly what it was asked to, and nothing
downstream merges or re-derives it:

- the planner's ``RolloutPolicy`` comes from ``policy()``: the caps and durations are the engine
  settings' own (recorded once), the wave shape is the request's;
- the engine runs with ``settings`` (timeouts, retry budgets, soak, hooks, seed URL, caps);
- ``stores`` limits a rollout to those stores (None: the whole fleet).

A request saved by an earlier edgefleet (``{"settings": {...}, "canary": ..., "waves": ...}`` or the
flat field list before that) loads through ``from_saved``; keys this version does not know are
refused (``StateError``) rather than dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgefleet.errors import EdgefleetError, InputError, StateError
from edgefleet.rollout.plan import RolloutPolicy
from edgefleet.rollout.settings import EngineSettings

__all__ = ["OVERRIDABLE", "RolloutRequest", "Serial"]

Serial = int | str
RequestKind = Literal["rollout", "rollback", "provision"]

OVERRIDABLE = ("node_ready_timeout_s", "quorum_timeout_s", "store_gate_timeout_s", "soak", "poll_s", "bmc_attempts",
               "reimage_attempts", "seed_public_url")
"""The settings ``rollout resume`` may override (options of the same names as ``rollout start``)."""

_PLAN_KEYS = ("canary", "waves", "wave_groups", "failure_budget")


class RolloutRequest(BaseModel):
    """One operation as asked for: which release, where, in which waves, with which engine settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: RequestKind = "rollout"
    release: str = Field(min_length=1)
    stores: tuple[str, ...] | None = None
    """Only these stores (``rollout start --store``); None: every store of the inventory."""
    canary: int | tuple[str, ...] = 1
    """A count taken from the canary ring/group, or the canary stores by id."""
    waves: tuple[Serial, ...] = (1, 5, "20%", "100%")
    wave_groups: tuple[str, ...] = ()
    failure_budget: int | str = "10%"
    horizon: timedelta = timedelta(days=60)
    settings: EngineSettings = Field(default_factory=EngineSettings)

    @model_validator(mode="after")
    def _plannable(self) -> RolloutRequest:
        if self.stores is not None and not self.stores:
            raise ValueError("stores: give at least one store, or none to mean the whole fleet")
        if isinstance(self.canary, int) and self.canary < 0:
            raise ValueError("canary: a count must not be negative")
        try:
            self.policy()
        except EdgefleetError as e:
            raise ValueError(str(e)) from None
        return self

    @classmethod
    def of(cls, kind: RequestKind, release: str, policy: RolloutPolicy | None = None,
           settings: EngineSettings | None = None, *, stores: Sequence[str] | None = None) -> RolloutRequest:
        """A request from a planner policy and engine settings: the one place they are merged. The
        policy's caps and durations win over those of ``settings`` (they were asked for with it)."""
        pol = policy or RolloutPolicy()
        base = settings or EngineSettings()
        merged = base.model_copy(update={"max_concurrent": pol.max_concurrent, "max_per_region": pol.max_per_region,
                                         "max_per_country": pol.max_per_country, "node_duration": pol.node_duration,
                                         "wave_soak": pol.wave_soak})
        canary: int | tuple[str, ...] = pol.canary if isinstance(pol.canary, int) else tuple(pol.canary)
        return cls.build(kind=kind, release=release, stores=tuple(stores) if stores is not None else None,
                         canary=canary, waves=tuple(pol.waves), wave_groups=tuple(pol.wave_groups),
                         failure_budget=pol.failure_budget, horizon=pol.horizon, settings=merged)

    @classmethod
    def build(cls, **fields: Any) -> RolloutRequest:
        """Validate ``fields`` (the edge's input); InputError naming each bad field."""
        try:
            return cls.model_validate(fields)
        except ValidationError as e:
            raise InputError(f"rollout request: {_validation_text(e)}") from None

    def policy(self) -> RolloutPolicy:
        """The planner's policy: the wave shape of the request, the caps and durations of its settings."""
        s = self.settings
        return RolloutPolicy(canary=self.canary, waves=self.waves, wave_groups=self.wave_groups,
                             max_concurrent=s.max_concurrent, max_per_region=s.max_per_region,
                             max_per_country=s.max_per_country, node_duration=s.node_duration,
                             wave_soak=s.wave_soak, failure_budget=self.failure_budget, horizon=self.horizon)

    def with_settings(self, **override: Any) -> RolloutRequest:
        """The same request with some settings replaced (None values are ignored); InputError if invalid."""
        values = {k: v for k, v in override.items() if v is not None}
        if not values:
            return self
        try:
            settings = EngineSettings.model_validate({**self.settings.model_dump(), **values})
        except ValidationError as e:
            raise InputError(f"engine settings: {_validation_text(e)}") from None
        return self.model_copy(update={"settings": settings})

    def to_json(self) -> dict[str, Any]:
        """The whole request as JSON (what the ledger saves); ``from_saved`` reads it back."""
        return self.model_dump(mode="json")

    @classmethod
    def from_saved(cls, kind: str, release: str, data: Mapping[str, Any], **override: Any) -> RolloutRequest:
        """The request saved with an operation (``RolloutRecord.policy``), with settings ``override``
        (None values ignored). Reads what earlier versions saved too: the engine settings beside the
        plan's keys, without kind, release or stores. StateError when it cannot be honoured."""
        if "release" in data:
            raw = dict(data)
            raw["settings"] = EngineSettings.from_json(raw, **override).to_json()  # unknown keys: StateError
        else:
            raw = {"kind": kind, "release": release, "settings": EngineSettings.from_json(dict(data), **override)}
            raw.update({k: data[k] for k in _PLAN_KEYS if k in data})
            if kind != "rollout":  # the plan's keys of a rollback were the policy's; a provision had none
                raw["canary"] = data.get("canary", 0)
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise StateError(f"the saved rollout request is invalid: {_validation_text(e)}") from None


def _validation_text(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'request'}: {err['msg']}" for err in e.errors())
