"""Simulator scenarios: which faults the fleet simulator injects, how long boots take, which safety
caps its oracle enforces. Pure: parsing and merging only (the CLI reads the file).

A scenario file is YAML; every key is optional::

    seed: 7                       # same seed, same faults for the same request order
    boot_seconds: 120             # simulated seconds a boot takes (divided by --time-scale)
    bmc_error_rate: 0.01          # share of BMC requests answered 500 with a Redfish error body
    bmc_timeout_rate: 0.001       # share of BMC requests that hang, then get 503 ...
    bmc_timeout_seconds: 45       # ... after this many real seconds (bounded: at most 300)
    bmc_reset_rate: 0.001         # share of BMC requests whose connection is closed mid-response
    image_fetch_fail_rate: 0.02   # share of InsertMedia calls that fail as if the download failed
    bmc_bursts:                   # runs of 500s on one BMC: the next `count` requests of `method`
      - {node: dk-0001-n1, method: GET, path: Systems/1, count: 4, after: reset}
                                  # whose path ends in `path`; `after: reset`: only once the node was reset
    k8s_bursts: [{store: dk-0002, count: 2}]   # the store's next `count` node-list reads answer 500
    slow_boot: {nodes: [dk-0001-n1], rate: 0.05, factor: 4}   # these nodes / this share boot 4x slower
    never_ready: [dk-0002-n2]     # nodes that are never Ready (before or after a reimage)
    never_ready_on: {r2026.11: [dk-0003-n2]}   # nodes never Ready while they run that release
    flapping: [se-0001-n1]        # nodes whose readiness flips every flap_seconds (simulated)
    flap_seconds: 60
    offline_stores: [no-0003]     # the store's Kubernetes API and BMCs answer 503
    strict_pdbs: [dk-0002]        # the store's PodDisruptionBudget allows no disruption (drain blocks)
    new_nodes: [dk-0001-w3]       # machines racked but never installed: off, blank disk, no etcd member
    replaced_nodes: [dk-0001-n2]  # new hardware in a dead node's place: as new_nodes, but the old
                                  # machine's etcd member (a control plane's) is still registered, down
    caps: {global: 500, per_region: 100, per_country: 50}  # max nodes rebooting at once
    enforce_maintenance: true     # record reimages outside windows / inside freezes as violations
    initial_release: r2026.10     # what every node runs when the simulator starts
    initial_talos_version: v1.12.6

Rates are probabilities per request in [0, 1]. ``POST /sim/scenario`` takes the same keys as JSON
and changes only the keys it names.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefleet.errors import InputError

__all__ = ["BmcBurst", "Caps", "KubeBurst", "Scenario", "SlowBoot", "check_names", "parse_scenario", "update_scenario"]

Rate = float


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SlowBoot(_Model):
    """Nodes that boot ``factor`` times slower: named ones, plus a deterministic ``rate`` share."""

    nodes: list[str] = Field(default_factory=list)
    rate: Rate = Field(default=0.0, ge=0, le=1)
    factor: float = Field(default=3.0, ge=1, le=1000)


class BmcBurst(_Model):
    """A run of HTTP 500s on one node's BMC: its next ``count`` requests of ``method`` whose Redfish
    path ends in ``path`` fail; with ``after: reset`` the run starts only once the node was reset
    (a power-state read failing while the node boots). A reproducible fault where the rates are
    random."""

    node: str
    method: str = Field(default="GET", pattern="^(GET|POST|PATCH|DELETE)$")
    path: str = ""
    count: int = Field(ge=1, le=1_000_000)
    after: str | None = Field(default=None, pattern="^reset$")


class KubeBurst(_Model):
    """A run of HTTP 500s on one store's Kubernetes API: its next ``count`` node-list reads fail."""

    store: str
    count: int = Field(ge=1, le=1_000_000)


class Caps(_Model):
    """Concurrency caps: at most this many nodes rebooting (off or booting) at once."""

    global_: int | None = Field(default=None, alias="global", ge=1)
    per_region: int | None = Field(default=None, ge=1)
    per_country: int | None = Field(default=None, ge=1)


class Scenario(_Model):
    seed: int = 0
    boot_seconds: float = Field(default=120.0, ge=0, le=86_400)
    bmc_error_rate: Rate = Field(default=0.0, ge=0, le=1)
    bmc_timeout_rate: Rate = Field(default=0.0, ge=0, le=1)
    bmc_timeout_seconds: float = Field(default=45.0, ge=0, le=300)
    bmc_reset_rate: Rate = Field(default=0.0, ge=0, le=1)
    image_fetch_fail_rate: Rate = Field(default=0.0, ge=0, le=1)
    bmc_bursts: list[BmcBurst] = Field(default_factory=list)
    k8s_bursts: list[KubeBurst] = Field(default_factory=list)
    slow_boot: SlowBoot = Field(default_factory=SlowBoot)
    never_ready: list[str] = Field(default_factory=list)
    never_ready_on: dict[str, list[str]] = Field(default_factory=dict)
    flapping: list[str] = Field(default_factory=list)
    flap_seconds: float = Field(default=60.0, gt=0)
    offline_stores: list[str] = Field(default_factory=list)
    strict_pdbs: list[str] = Field(default_factory=list)
    new_nodes: list[str] = Field(default_factory=list)
    replaced_nodes: list[str] = Field(default_factory=list)
    caps: Caps = Field(default_factory=Caps)
    enforce_maintenance: bool = True
    initial_release: str = "initial"
    initial_talos_version: str = "v1.12.6"

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def _problems(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '<top>'}: {err['msg']}" for err in e.errors())


def parse_scenario(data: Any, *, source: str = "<scenario>") -> Scenario:
    """A scenario from parsed YAML/JSON (None or empty: all defaults)."""
    if data is None:
        return Scenario()
    if not isinstance(data, dict):
        raise InputError(f"{source}: a scenario is a mapping of settings (seed, bmc_error_rate, ...), "
                         f"got {type(data).__name__}")
    try:
        return Scenario.model_validate(data)
    except ValidationError as e:
        raise InputError(f"{source}: {_problems(e)}") from None


def update_scenario(current: Scenario, changes: Any, *, source: str = "POST /sim/scenario") -> Scenario:
    """``current`` with the top-level keys in ``changes`` replaced (nested mappings replace whole)."""
    if not isinstance(changes, dict):
        raise InputError(f"{source}: send a JSON object of scenario settings")
    return parse_scenario({**current.dump(), **changes}, source=source)


def check_names(scenario: Scenario, nodes: Collection[str], stores: Collection[str], *,
                source: str = "scenario") -> None:
    """InputError naming every node or store the scenario names that the simulated fleet does not
    have (a typo would otherwise make a fault that never happens, and a test that cannot fail)."""
    named_nodes = {*scenario.never_ready, *scenario.flapping, *scenario.slow_boot.nodes,
                   *(n for ns in scenario.never_ready_on.values() for n in ns),
                   *(b.node for b in scenario.bmc_bursts), *scenario.new_nodes, *scenario.replaced_nodes}
    named_stores = {*scenario.offline_stores, *(b.store for b in scenario.k8s_bursts), *scenario.strict_pdbs}
    bad = [f"node {n!r}" for n in sorted(named_nodes - set(nodes))]
    bad += [f"store {s!r}" for s in sorted(named_stores - set(stores))]
    if bad:
        raise InputError(f"{source}: no {', no '.join(bad)} in the simulated fleet")
