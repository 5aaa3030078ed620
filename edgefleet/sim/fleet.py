"""The simulated fleet: every node's power, boot override, virtual media, boots and readiness, the
simulated clock, the event log and the oracle's violations.

The HTTP layers (``edgefleet.sim.redfish``, ``edgefleet.sim.k8s``, ``edgefleet.sim.server``) call
the actions here (``insert_media``, ``eject_media``, ``set_boot``, ``reset``); each action records
events and asks the oracle (``edgefleet.sim.oracle``) about the rules. Boots finish on an asyncio
timer after ``boot_seconds / time_scale`` real seconds. Readiness is computed when asked (the
flapping phase comes from the simulated clock), so 10,200 idle nodes cost no timers at all.

Node state is kept in ``__slots__`` objects and media as small facts, so a fleet of 3,400 stores
stays far below 1 GiB.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import random
import sys
from collections import Counter, deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edgefleet.errors import EdgefleetError
from edgefleet.inventory.model import CredentialsRef, Fleet
from edgefleet.sim.boot import ReleaseFacts, SeedFacts, evaluate_join
from edgefleet.sim.clock import SimClock
from edgefleet.sim.media import Media, MediaFetcher
from edgefleet.sim.node import (
    BOOT_ENABLED,
    BOOT_TARGETS,
    POWER_OFF,
    POWER_ON,
    RESET_TYPES,
    SLOT_IDS,
    ActionError,
    NodeState,
)
from edgefleet.sim.oracle import (
    ControlPlaneDowns,
    Finding,
    NodeFacts,
    Violation,
    check_caps,
    check_concurrent_operations,
    check_schedule,
    disruptive_boot_override,
)
from edgefleet.sim.oracle_trains import StoreFacts, TrainOracle
from edgefleet.sim.passwords import resolve_passwords
from edgefleet.sim.scenario import Scenario, check_names
from edgefleet.sim.workloads import Workloads

# NodeState, ActionError and the BMC's values live in sim/node.py, SimClock in sim/clock.py,
# resolve_passwords in sim/passwords.py and Violation in sim/oracle.py; the simulator's modules
# import them from here too.
__all__ = ["BOOT_ENABLED", "BOOT_TARGETS", "POWER_OFF", "POWER_ON", "RESET_TYPES", "SLOT_IDS", "ActionError",
           "NodeState", "SimClock", "SimFleet", "Violation", "resolve_passwords"]

MAX_EVENTS = 100_000
MAX_VIOLATIONS = 100_000


def _fraction(seed: int, key: str) -> float:
    d = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(d, "big") / 2**64


class SimFleet:
    """The whole simulated fleet. Not thread-safe: it lives on one asyncio loop."""

    def __init__(self, fleet: Fleet, scenario: Scenario, clock: SimClock, fetcher: MediaFetcher, *,
                 home: Path | None, passwords: Mapping[CredentialsRef, str]):
        self.fleet = fleet
        self.clock = clock
        self.fetcher = fetcher
        self.home = home
        self.scenario = scenario
        self.rng = random.Random(scenario.seed)
        self.nodes: dict[str, NodeState] = {}
        self.store_nodes: dict[str, list[NodeState]] = {}
        for s in fleet.stores.values():
            lst = []
            for n in s.nodes:
                if n.bmc is None:
                    user, pw = "", ""
                else:
                    user, pw = n.bmc.credentials.username, passwords[n.bmc.credentials]
                ns = NodeState(n, s, sys.intern(user), pw, scenario.initial_release, scenario.initial_talos_version)
                self.nodes[n.name] = ns
                lst.append(ns)
            self.store_nodes[s.id] = lst
        self.rebooting: set[str] = set()
        self.mid_reimage: dict[str, dict[str, str]] = {}  # store -> node -> operation
        self.control_planes_down = ControlPlaneDowns()
        self.trains = TrainOracle(known_good=scenario.initial_release, canary_stores=[
            s.id for s in fleet.stores.values() if s.canary or s.ring == "canary"])
        self._ca: dict[str, bytes | str] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self.event_seq = 0
        self.event_counts: Counter[str] = Counter()
        self.violations: list[Violation] = []
        self.violation_counts: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        # BMC requests per (operation, store), by the X-Edgefleet-Operation header: proves which
        # operations reached a store's BMCs at all (a refused operation must reach none).
        self.operation_requests: Counter[tuple[str, str]] = Counter()
        # Requests per (node, kind) that targeted one node ("bmc POST", "talos Reset", "k8s evict"):
        # which nodes an operation touched at all (``edgefleet.sim.views.node_request_counts``).
        self.node_requests: Counter[tuple[str, str]] = Counter()
        self.faults: Counter[str] = Counter()
        self.boots = Counter[str]()
        self._timers: set[asyncio.TimerHandle] = set()
        # Whether a store's cluster has formed (etcd bootstrapped). Without the simulated Talos API
        # every cluster counts as formed; with it (sim.talos_wiring) a wiped store needs Bootstrap.
        self.cluster_formed: Callable[[str], bool] = lambda _store_id: True
        # Network seeds (edgefleet.sim.netseed): node -> its registered nocloud-net URL, and the hook
        # that makes a node waiting for its seed fetch it again (set while the Talos API is served).
        self.net_seed_urls: dict[str, str] = {}
        self.net_seed_retry: Callable[[NodeState], bool] = lambda _ns: False
        check_names(scenario, self.nodes, self.fleet.stores)
        self._apply_scenario_sets()
        for name in (*scenario.new_nodes, *scenario.replaced_nodes):  # racked, never installed
            ns = self.nodes[name]
            ns.power, ns.joined, ns.reason = POWER_OFF, False, "blank disk: never installed"
        self.workloads = Workloads({sid: [(ns.name, ns.is_control_plane) for ns in nodes]
                                    for sid, nodes in self.store_nodes.items()}, scenario.strict_pdbs,
                                   ready=lambda n: self.readiness(self.nodes[n], flaps=False)[0])

    # -- scenario -----------------------------------------------------------------------------

    def _apply_scenario_sets(self) -> None:
        sc = self.scenario
        self.never_ready = frozenset(sc.never_ready)
        self.never_ready_on = {release: frozenset(nodes) for release, nodes in sc.never_ready_on.items()}
        self.flapping = frozenset(sc.flapping)
        self.offline = frozenset(sc.offline_stores)
        self.slow = frozenset(sc.slow_boot.nodes)
        # per burst: requests left to fail, and whether it has started (``after: reset``: not yet)
        self.bursts = [[b.count, b.after is None] for b in sc.bmc_bursts]
        self.kube_bursts = [b.count for b in sc.k8s_bursts]

    def kube_burst_fault(self, store: str) -> bool:
        """Whether this node-list read of ``store`` falls in a run of 500s (``Scenario.k8s_bursts``)."""
        for i, burst in enumerate(self.scenario.k8s_bursts):
            if burst.store == store and self.kube_bursts[i] > 0:
                self.kube_bursts[i] -= 1
                return True
        return False

    def burst_fault(self, node: str, method: str, path: str) -> bool:
        """Whether this BMC request falls in a started run of 500s (``Scenario.bmc_bursts``); counts it."""
        for burst, state in zip(self.scenario.bmc_bursts, self.bursts, strict=True):
            if (state[1] and state[0] > 0 and burst.node == node and burst.method == method
                    and path.endswith(burst.path)):
                state[0] -= 1
                return True
        return False

    def set_scenario(self, scenario: Scenario) -> None:
        check_names(scenario, self.nodes, self.fleet.stores)
        if scenario.seed != self.scenario.seed:
            self.rng = random.Random(scenario.seed)
        self.scenario = scenario
        self._apply_scenario_sets()
        self.event("scenario", detail=scenario.dump())

    def roll(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    def boot_factor(self, node: str) -> float:
        sb = self.scenario.slow_boot
        if node in self.slow or (sb.rate > 0 and _fraction(self.scenario.seed, node) < sb.rate):
            return sb.factor
        return 1.0

    # -- records --------------------------------------------------------------------------------

    def event(self, kind: str, *, node: NodeState | None = None, store: str | None = None,
              operation: str | None = None, detail: Any = None) -> None:
        self.event_seq += 1
        self.event_counts[kind] += 1
        self.events.append({"seq": self.event_seq, "time": self.clock.now().isoformat(), "kind": kind,
                            "store": node.store.id if node else store, "node": node.name if node else None,
                            "operation": operation, "detail": detail})

    def _record(self, ns: NodeState, findings: list[Finding], operation: str | None) -> None:
        for f in findings:
            self.violation_counts[f.rule] += 1
            v = Violation(seq=self.event_seq + 1, time=self.clock.now().isoformat(), store=ns.store.id, node=ns.name,
                          rule=f.rule, operation=operation, detail=f.detail)
            if len(self.violations) < MAX_VIOLATIONS:
                self.violations.append(v)
            self.event("violation", node=ns, operation=operation, detail=v.as_dict())

    def record_finding(self, ns: NodeState, rule: str, detail: str) -> None:
        """Record a violation of ``rule`` found outside the BMC actions (the Talos API's wiring)."""
        self._record(ns, [Finding(rule, detail)], ns.operation)

    def _touch(self, ns: NodeState, operation: str | None) -> None:
        """Oracle: another operation mid-reimage in this store?"""
        self._record(ns, check_concurrent_operations(operation, ns.store.id,
                                                     self.mid_reimage.get(ns.store.id, {})), operation)

    def _schedule(self, ns: NodeState, operation: str | None, action: str) -> None:
        if self.scenario.enforce_maintenance:
            self._record(ns, check_schedule(ns.store, self.fleet.freezes, self.clock.now(), action), operation)

    def _facts(self, ns: NodeState) -> NodeFacts:
        ready, why = self.readiness(ns)
        return NodeFacts(ready=ready, why=why, media=bool(ns.media), booting=ns.booting)

    def disruptive_request(self, ns: NodeState, operation: str | None, action: str) -> None:
        """Oracle: a request that changes what ``ns`` runs or will boot (``edgefleet.sim.oracle``),
        also one the BMC failed. Checks the other operations, the window, the freezes and the
        store's other control planes."""
        self._touch(ns, operation)
        self._schedule(ns, operation, action)
        self._record(ns, self.trains.disrupt(ns.store.id, ns.name, action, self.clock.now(), self.train_facts),
                     operation)
        if ns.is_control_plane:
            others = {o.name: self._facts(o) for o in self.store_nodes[ns.store.id]
                      if o is not ns and o.is_control_plane}
            self._record(ns, self.control_planes_down.disrupt(
                ns.name, f"{action} at {self.clock.now().isoformat()}", self._facts(ns), others), operation)

    def _start_reimage(self, ns: NodeState, operation: str | None) -> None:
        if operation is not None:
            ns.operation = operation
            self.mid_reimage.setdefault(ns.store.id, {})[ns.name] = operation

    def _settle(self, ns: NodeState) -> None:
        """A node with no media, no override and no boot under way is no longer mid-reimage (so a
        reimage lasts until its media are ejected, not until its boot is done)."""
        if not ns.media and not ns.booting and ns.boot_enabled == "Disabled":
            self._end_reimage(ns)

    def _end_reimage(self, ns: NodeState) -> None:
        ns.operation = None
        ops = self.mid_reimage.get(ns.store.id)
        if ops is not None:
            ops.pop(ns.name, None)
            if not ops:
                del self.mid_reimage[ns.store.id]

    # -- readiness ------------------------------------------------------------------------------

    def readiness(self, ns: NodeState, *, flaps: bool = True) -> tuple[bool, str]:
        """Whether ``ns`` is Ready and why; ``flaps=False``: a flapping node counts as Ready."""
        if ns.store.id in self.offline:
            return False, "the store is offline (scenario)"
        if ns.power != POWER_ON:
            return False, "powered off"
        if ns.booting:
            return False, "booting"
        if not ns.joined:
            return False, ns.reason
        if ns.name in self.never_ready:
            return False, "kubelet never becomes ready (scenario never_ready)"
        if ns.name in self.never_ready_on.get(ns.release, ()):
            return False, f"kubelet never becomes ready on release {ns.release} (scenario never_ready_on)"
        if flaps and ns.name in self.flapping:
            period = self.scenario.flap_seconds
            phase = int(self.clock.now().timestamp() / period + _fraction(self.scenario.seed, ns.name) * 2)
            if phase % 2:
                return False, "kubelet readiness is flapping (scenario flapping)"
        return True, "kubelet is posting ready status"

    def train_facts(self, store_id: str, release: str) -> StoreFacts:
        """The train oracle's view of a store (``edgefleet.sim.oracle_trains.StoreView``)."""
        nodes = self.store_nodes[store_id]
        return StoreFacts(settled=store_id not in self.mid_reimage and not any(ns.booting for ns in nodes),
                          on_release=all(ns.release == release and self.readiness(ns, flaps=False)[0] for ns in nodes),
                          nodes=tuple(ns.name for ns in nodes))

    def came_up(self, ns: NodeState, installed: str | None, operation: str | None) -> None:
        """``ns`` booted or read its seed (``installed``: the release its boot installed, if any)."""
        self._record(ns, self.trains.came_up(ns.store.id, ns.name, installed, self.clock.now(), self.train_facts),
                     operation)

    def store_up(self, store_id: str) -> bool:
        """Whether any control plane of the store serves the Kubernetes API."""
        if store_id in self.offline:
            return False
        if not self.cluster_formed(store_id):
            return False
        for ns in self.store_nodes[store_id]:
            if ns.is_control_plane and ns.power == POWER_ON and not ns.booting and ns.joined:
                return True
        return False

    # -- the store's CA -------------------------------------------------------------------------

    def store_ca(self, store_id: str) -> bytes | str:
        """The store's Kubernetes CA PEM from its secrets, or why it is unknown (cached)."""
        got = self._ca.get(store_id)
        if got is not None:
            return got
        if self.home is None:
            got = "no edgefleet home was given to the simulator (--home or EDGEFLEET_HOME)"
        else:
            from edgefleet.secrets import load_secrets

            try:
                crt = load_secrets(self.home, store_id).certs.k8s.crt
                got = base64.b64decode(crt, validate=True)
            except EdgefleetError as e:
                got = str(e)
            except (binascii.Error, ValueError):
                got = f"store {store_id}: certs.k8s.crt in its secrets is not base64"
        self._ca[store_id] = got
        return got

    # -- BMC actions ----------------------------------------------------------------------------

    def _changed(self, ns: NodeState) -> None:
        ns.generation += 1

    async def insert_media(self, ns: NodeState, slot: str, image: str, operation: str | None) -> Media:
        if slot not in SLOT_IDS:
            raise ActionError(f"no virtual media slot {slot!r}", status=404, message_id="Base.1.8.ResourceMissingAtURI")
        self.disruptive_request(ns, operation, f"InsertMedia {slot} on {ns.name}")
        if slot in ns.media:
            raise ActionError(f"virtual media {slot} already holds {ns.media[slot].url}; eject it first", status=409,
                              message_id="Base.1.8.ResourceInUse")
        self._start_reimage(ns, operation)
        if self.roll(self.scenario.image_fetch_fail_rate):
            self.faults["image_fetch_fail"] += 1
            self.event("insert_failed", node=ns, operation=operation,
                       detail={"slot": slot, "image": image, "error": "simulated image fetch failure"})
            self._settle(ns)
            raise ActionError(f"could not fetch {image} (simulated fetch failure)", status=500,
                              message_id="Base.1.8.InternalError")
        from edgefleet.sim.media import MediaError

        try:
            media = await self.fetcher.fetch(image)
        except MediaError as e:
            self.event("insert_failed", node=ns, operation=operation, detail={"slot": slot, "image": image,
                                                                              "error": str(e)})
            self._settle(ns)
            raise ActionError(str(e), status=e.status, message_id=e.message_id) from None
        if slot in ns.media:  # a concurrent insert won while we downloaded
            raise ActionError(f"virtual media {slot} already holds {ns.media[slot].url}", status=409,
                              message_id="Base.1.8.ResourceInUse")
        ns.media[slot] = media
        self._changed(ns)
        self.event("insert", node=ns, operation=operation,
                   detail={"slot": slot, "image": image, "sha256": media.sha256, "kind": media.kind,
                           "release": media.release.release if media.release else None, "note": media.note or None})
        return media

    def eject_media(self, ns: NodeState, slot: str, operation: str | None) -> None:
        if slot not in SLOT_IDS:
            raise ActionError(f"no virtual media slot {slot!r}", status=404, message_id="Base.1.8.ResourceMissingAtURI")
        self._touch(ns, operation)
        gone = ns.media.pop(slot, None)
        self._changed(ns)
        self.event("eject", node=ns, operation=operation, detail={"slot": slot, "image": gone.url if gone else None})
        self._settle(ns)

    def set_boot(self, ns: NodeState, target: str | None, enabled: str | None, operation: str | None) -> None:
        new_target = ns.boot_target if target is None else target
        new_enabled = ns.boot_enabled if enabled is None else enabled
        if disruptive_boot_override(new_target, new_enabled):
            self.disruptive_request(ns, operation, f"boot override {new_target} ({new_enabled}) on {ns.name}")
        else:
            self._touch(ns, operation)
        ns.boot_target, ns.boot_enabled = new_target, new_enabled
        self._changed(ns)
        if ns.boot_target in ("Cd", "Usb") and ns.boot_enabled != "Disabled":
            self._start_reimage(ns, operation)
        self.event("boot_override", node=ns, operation=operation,
                   detail={"target": ns.boot_target, "enabled": ns.boot_enabled})
        self._settle(ns)

    def reset(self, ns: NodeState, reset_type: str, operation: str | None) -> None:
        if reset_type not in RESET_TYPES:
            raise ActionError(f"ResetType {reset_type!r} is not supported; use one of {', '.join(RESET_TYPES)}",
                              message_id="Base.1.8.ActionParameterNotSupported")
        self.event("reset", node=ns, operation=operation, detail={"type": reset_type, "power": ns.power})
        for burst, state in zip(self.scenario.bmc_bursts, self.bursts, strict=True):
            if burst.after == "reset" and burst.node == ns.name:
                state[1] = True
        if reset_type == "Nmi" or (reset_type == "On" and ns.power == POWER_ON):
            return
        if reset_type in ("ForceOff", "GracefulShutdown") and ns.power == POWER_OFF:
            return
        self.disruptive_request(ns, operation, f"Reset {reset_type} of {ns.name}")
        if not ns.rebooting:
            self.rebooting.add(ns.name)
            self._check_caps(ns, operation)
        if reset_type in ("ForceOff", "GracefulShutdown"):
            ns.power = POWER_OFF
            ns.booting = False
            ns.boot_gen += 1
            self._changed(ns)
            self.event("power_off", node=ns, operation=operation)
            return
        self._start_boot(ns, operation)

    def _check_caps(self, ns: NodeState, operation: str | None) -> None:
        caps = self.scenario.caps
        if caps.global_ is None and caps.per_region is None and caps.per_country is None:
            return
        region = country = 0
        for name in self.rebooting:
            s = self.nodes[name].store
            region += s.region == ns.store.region
            country += s.country == ns.store.country
        self._record(ns, check_caps(caps, len(self.rebooting), region, country, ns.store.region, ns.store.country),
                     operation)

    def _bootable(self, ns: NodeState) -> tuple[ReleaseFacts | None, str]:
        if ns.boot_enabled == "Disabled" or ns.boot_target not in ("Cd", "Usb"):
            return None, "no boot override: booting the installed system from disk"
        media = ns.media.get(ns.boot_target)
        if media is None:
            return None, f"boot override {ns.boot_target} but no media inserted there: booting from disk"
        if media.release is None:
            return None, (f"boot override {ns.boot_target} but {media.url} is not a bootable release image "
                          f"({media.kind}{': ' + media.note if media.note else ''}): booting from disk")
        return media.release, f"booting release {media.release.release} from virtual {ns.boot_target}"

    def _start_boot(self, ns: NodeState, operation: str | None) -> None:
        release, why = self._bootable(ns)
        seed: SeedFacts | None = None
        if release is not None:
            seed = next((m.seed for m in ns.media.values() if m.seed is not None), None)
            self._start_reimage(ns, operation)
        if ns.boot_enabled == "Once":  # the BMC clears a one-time override when the machine boots
            ns.boot_enabled, ns.boot_target = "Disabled", "None"
        ns.power = POWER_ON
        ns.booting = True
        ns.boot_from_media = release is not None
        ns.boot_gen += 1
        self._changed(ns)
        factor = self.boot_factor(ns.name)
        sim_s = self.scenario.boot_seconds * factor
        self.event("boot_start", node=ns, operation=operation,
                   detail={"source": "media" if release else "disk", "why": why, "sim_seconds": sim_s})
        gen = ns.boot_gen
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def done() -> None:
            self._timers.discard(handle)
            self._finish_boot(ns, gen, release, seed, operation)

        handle = loop.call_later(self.clock.real_seconds(sim_s), done)
        self._timers.add(handle)

    def _finish_boot(self, ns: NodeState, gen: int, release: ReleaseFacts | None, seed: SeedFacts | None,
                     operation: str | None) -> None:
        if gen != ns.boot_gen or not ns.booting:
            return  # reset again or powered off meanwhile
        ns.booting = False
        self.rebooting.discard(ns.name)
        self.control_planes_down.booted(ns.name)
        self._changed(ns)
        self.came_up(ns, release.release if release else None, operation)
        if release is None:
            self.boots["disk"] += 1
            ready, why = self.readiness(ns)
            self.event("boot_done", node=ns, operation=operation,
                       detail={"source": "disk", "release": ns.release, "ready": ready, "reason": why})
            self._settle(ns)
            return
        ca = self.store_ca(ns.store.id)
        verdict = evaluate_join(ns.node, release, seed, ca if isinstance(ca, bytes) else None,
                                store_ca_problem=ca if isinstance(ca, str) else "")
        ns.release = release.release
        ns.talos_version = release.talos_version
        ns.kubelet_version = "v" + release.kubernetes_version.lstrip("v")
        ns.seed_instance_id = seed.instance_id if seed else None
        ns.joined = verdict.joined
        ns.reason = verdict.reason
        if verdict.joined and seed is not None:
            ns.labels = dict(seed.node_labels)
        self.boots["media_joined" if verdict.joined else "media_not_joined"] += 1
        self._settle(ns)  # mid-reimage until its media are ejected
        ready, why = self.readiness(ns)
        self.event("boot_done", node=ns, operation=operation,
                   detail={"source": "media", "release": release.release, "joined": verdict.joined, "ready": ready,
                           "reason": verdict.reason if not verdict.joined else why,
                           "seed_instance_id": ns.seed_instance_id})

    def close(self) -> None:
        for h in list(self._timers):
            h.cancel()
        self._timers.clear()
