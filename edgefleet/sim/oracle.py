"""The simulator's safety oracle: the rules a rollout must never break, and their verdicts.

Pure: each check takes the facts of one moment (the simulated clock, the store, counts) and
returns the violations it finds; ``edgefleet.sim.fleet`` calls them on every disruptive request
and records what they return. The rules are those an independent replay of the simulator's event
log checks.

A *disruptive request* is one that changes what a node runs or will boot: ``InsertMedia``, a PATCH
that leaves a boot override enabled (``disruptive_boot_override``), and a ``Reset`` that changes
the power state (every type except ``Nmi``, ``On`` on a node that is on and ``ForceOff`` or
``GracefulShutdown`` on a node that is off); a Talos API reset or reboot is one too. A request the BMC failed
(a simulated 5xx, hang or cut connection) counts as well: it was sent, and a real BMC may have
acted on it. Ejecting media is not disruptive (it is how a reimage ends, also after a window
closed).

``outside_window``
    a disruptive request to a node outside its store's maintenance window;
``freeze``
    the same inside a change freeze covering the store;
``control_planes_down``
    a control plane taken down while another control plane of the same store is down. A control
    plane is taken down by its first disruptive request, and counts as down from then until it is
    Ready again (``ControlPlaneDowns``); a control plane that is not Ready counts as down too;
``concurrent_operations``
    a change to a store's node by operation B while a node of that store is mid-reimage for
    operation A (operations are named by the ``X-Edgefleet-Operation`` request header; requests
    without it are not attributed). A node is mid-reimage from its operation's first disruptive
    request until its media are ejected (and no boot or boot override is pending);
``concurrency_cap``
    more nodes rebooting (off or booting) at once than a scenario cap allows (global, per region,
    per country).

Release trains (``TrainOracle``; a train is declared to the simulator, see below):

``stage_order``
    a disruptive request to a store of stage N+1 of a declared train before stage N passed (and
    every stage before it). A stage passes when every one of its stores is settled (no node of it
    mid-reimage or booting), every node of its stores is Ready on the train's release (a flapping
    node counts as Ready) but for at most ``failure_budget`` stores, and the stage's soak has
    elapsed (simulator time) since the last of its nodes came up on the release. A stage whose
    stores were all on the release before the simulator saw any of them come up passes at once.
    Once passed, a stage stays passed (a later rollback of its stores does not lock it again);
``release_state``
    a node outside the canary stage coming up on a release that was not stable when the
    disruptive request that reimaged it was sent (its last one). Canary stores: the first stage
    of a declared train of that release, and the inventory's canary stores (``canary: true`` or
    ring ``canary``), as the release reach rule counts them.

Which releases are stable is derived where the simulator can see it and told where it cannot:
the release every node runs at start (the scenario's ``initial_release``) is the fleet's known
good; a declared train's release becomes stable when its first stage passes as above (the
moment a train promotes it; a train with manual promotion promotes later, so the oracle is
lenient there and never stricter than the catalog); any other state change is told
(``TrainOracle.tell``: a release promoted outside a train, or revoked). The ``release_state``
rule is enforced from the first train or release state the simulator is given: before that
any release may go anywhere (plain rollouts without trains).

The simulator's API takes them (``edgefleet.sim.routes``)::

    POST /sim/oracle/train    {"release": "v2", "soak_s": 86400,
                               "stages": [["dk-0002", "us-0002"],
                                          {"name": "ring1", "stores": [...], "soak_s": 3600,
                                           "failure_budget": "10%"}]}
    POST /sim/oracle/release  {"release": "v3", "state": "stable"}   (or built, canary, revoked)
    GET  /sim/oracle          the declared trains with each stage's verdict now, release states

A stage is a list of store ids, or an object with ``stores`` and optionally ``name``, ``soak_s``
(else the train's) and ``failure_budget`` (a count or ``N%`` of the stage, floored as the
rollout planner does; default 0). Declaring a release's train again replaces it; a store
belongs to the train declared last that holds it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from edgefleet.errors import InputError
from edgefleet.inventory.model import Freeze, Store
from edgefleet.rollout.plan import budget_allowed
from edgefleet.schedule.windows import freeze_at, in_window
from edgefleet.sim.scenario import Caps

__all__ = [
    "DISRUPTIVE_BOOT_TARGETS",
    "RULES",
    "ControlPlaneDowns",
    "Finding",
    "NodeFacts",
    "StageDecl",
    "StageVerdict",
    "StoreFacts",
    "TrainDecl",
    "TrainOracle",
    "Violation",
    "check_caps",
    "check_concurrent_operations",
    "check_control_planes",
    "check_schedule",
    "disruptive_boot_override",
    "parse_train",
]

RULES = ("outside_window", "freeze", "control_planes_down", "concurrent_operations", "concurrency_cap",
         "stage_order", "release_state")


@dataclass(frozen=True, slots=True)
class Finding:
    rule: str
    detail: str


@dataclass(frozen=True, slots=True)
class Violation:
    """A finding as recorded in the simulator's report: when, where and under which operation."""

    seq: int
    time: str
    store: str
    node: str
    rule: str
    operation: str | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": self.time, "store": self.store, "node": self.node, "rule": self.rule,
                "operation": self.operation, "detail": self.detail}


def check_schedule(store: Store, freezes: Sequence[Freeze], now: datetime, action: str) -> list[Finding]:
    out = []
    if not in_window(store, now):
        out.append(Finding("outside_window", f"{action} at {now.isoformat()} is outside every maintenance window "
                                             f"of store {store.id} ({store.timezone})"))
    f = freeze_at(freezes, store, now)
    if f is not None:
        out.append(Finding("freeze", f"{action} at {now.isoformat()} is inside freeze {f.name!r}"
                                     + (f" ({f.reason})" if f.reason else "")))
    return out


def check_control_planes(node: str, other_control_planes_down: Iterable[str]) -> list[Finding]:
    """``other_control_planes_down``: the other control planes of the store that are down, each
    named with why (e.g. ``n2 (not Ready: booting)``)."""
    down = sorted(other_control_planes_down)
    if not down:
        return []
    return [Finding("control_planes_down", f"control plane {node} taken down while {', '.join(down)} "
                                           f"{'is' if len(down) == 1 else 'are'} down")]


# Boot override targets that make the next boot something other than the installed system.
DISRUPTIVE_BOOT_TARGETS = frozenset({"Cd", "Usb", "Pxe", "BiosSetup"})


def disruptive_boot_override(target: str, enabled: str) -> bool:
    """Whether a boot override left at ``target``/``enabled`` changes the node's next boot."""
    return enabled != "Disabled" and target in DISRUPTIVE_BOOT_TARGETS


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What the oracle needs to know of a node at one moment."""

    ready: bool
    why: str  # the readiness reason
    media: bool  # any virtual media inserted
    booting: bool


@dataclass(slots=True)
class _Down:
    since: str  # the disruptive request that took the node down
    booted: bool = False  # a boot finished since that request


class ControlPlaneDowns:
    """Which control planes are down: from a control plane's first disruptive request until it
    is Ready again. Ready again means Ready after a boot that finished since its last disruptive
    request, or Ready with no media inserted and no boot under way (a reimage given up before its
    reset, e.g. because the window was closing). A control plane that is not Ready is down anyway.

    Checked lazily: the simulator asks when a control plane of the store is disrupted, so idle
    nodes cost nothing."""

    def __init__(self) -> None:
        self._marks: dict[str, _Down] = {}

    def _marked(self, node: str, facts: NodeFacts) -> _Down | None:
        mark = self._marks.get(node)
        if mark is not None and facts.ready and (mark.booted or (not facts.media and not facts.booting)):
            del self._marks[node]  # Ready again
            return None
        return mark

    def down(self, node: str, facts: NodeFacts) -> str | None:
        """Why ``node`` is down now, or None when it is up."""
        mark = self._marked(node, facts)
        if mark is not None:
            return f"{node} ({mark.since}; not Ready again since: {facts.why})"
        if not facts.ready:
            return f"{node} (not Ready: {facts.why})"
        return None

    def booted(self, node: str) -> None:
        """A boot of ``node`` finished."""
        mark = self._marks.get(node)
        if mark is not None:
            mark.booted = True

    def disrupt(self, node: str, action: str, facts: NodeFacts, others: Mapping[str, NodeFacts]) -> list[Finding]:
        """A disruptive request ``action`` to control plane ``node``; ``others``: the store's
        other control planes. A violation when it takes ``node`` down (it was up) while another
        one is down; a node already down (being repaired, or in the middle of its own reimage) is
        not taken down again."""
        prev = self._marked(node, facts)
        self._marks[node] = _Down(since=prev.since if prev is not None else action)  # a boot must follow it
        if prev is not None:
            return []
        down = [why for name, f in others.items() if (why := self.down(name, f)) is not None]
        return check_control_planes(node, down)


def check_concurrent_operations(operation: str | None, store_id: str,
                                mid_reimage: Mapping[str, str]) -> list[Finding]:
    """``mid_reimage``: node name -> operation id of the store's nodes mid-reimage."""
    if operation is None:
        return []
    others = sorted({f"{op} ({n})" for n, op in mid_reimage.items() if op != operation})
    if not others:
        return []
    return [Finding("concurrent_operations", f"operation {operation} touches store {store_id} while "
                                             f"{', '.join(others)} is mid-reimage")]


def check_caps(caps: Caps, rebooting_total: int, rebooting_region: int, rebooting_country: int, region: str,
               country: str) -> list[Finding]:
    """Counts include the node being reset now."""
    out = []
    if caps.global_ is not None and rebooting_total > caps.global_:
        out.append(Finding("concurrency_cap", f"{rebooting_total} nodes rebooting at once, global cap {caps.global_}"))
    if caps.per_region is not None and rebooting_region > caps.per_region:
        out.append(Finding("concurrency_cap", f"{rebooting_region} nodes rebooting at once in region {region}, "
                                              f"cap {caps.per_region}"))
    if caps.per_country is not None and rebooting_country > caps.per_country:
        out.append(Finding("concurrency_cap", f"{rebooting_country} nodes rebooting at once in country {country}, "
                                              f"cap {caps.per_country}"))
    return out


# --- release trains --------------------------------------------------------------------------------

CATALOG_STATES = ("built", "canary", "stable", "revoked")
_ALWAYS = datetime.min.replace(tzinfo=UTC)  # a stage that had nothing to do passed "always"


@dataclass(frozen=True, slots=True)
class StageDecl:
    name: str
    stores: tuple[str, ...]
    soak: timedelta
    failure_budget: int
    """Stores of the stage that may end off the release (failed, rolled back) without failing it."""


@dataclass(frozen=True, slots=True)
class TrainDecl:
    """A train as declared to the simulator: its release and its stages in order."""

    release: str
    stages: tuple[StageDecl, ...]


def _few(names: Sequence[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _seconds(value: Any, where: str) -> timedelta:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 10**9:
        raise InputError(f"train: {where} must be a number of seconds >= 0, not {value!r}")
    return timedelta(seconds=value)


def _parse_stage(i: int, raw: Any, soak: timedelta, known: Collection[str]) -> StageDecl:
    where = f"stages[{i}]"
    if isinstance(raw, list):
        raw = {"stores": raw}
    if not isinstance(raw, dict) or not set(raw) <= {"name", "stores", "soak_s", "failure_budget"}:
        raise InputError(f"train: {where} must be a list of store ids or an object with stores and optionally "
                         f"name, soak_s, failure_budget; got {raw!r}")
    stores = raw.get("stores")
    if not isinstance(stores, list) or not stores or not all(isinstance(s, str) for s in stores):
        raise InputError(f"train: {where}.stores must be a non-empty list of store ids")
    unknown = [s for s in stores if s not in known]
    if unknown:
        raise InputError(f"train: {where} names stores the simulator does not have: {_few(unknown)}")
    budget = raw.get("failure_budget", 0)
    if not isinstance(budget, int | str) or isinstance(budget, bool):
        raise InputError(f"train: {where}.failure_budget must be a count or 'N%', not {budget!r}")
    return StageDecl(name=str(raw.get("name") or ("canary" if i == 0 else f"stage{i}")), stores=tuple(stores),
                     soak=_seconds(raw["soak_s"], f"{where}.soak_s") if "soak_s" in raw else soak,
                     failure_budget=budget_allowed(budget, len(stores)))


def parse_train(data: Any, known_stores: Collection[str]) -> TrainDecl:
    """A train as ``POST /sim/oracle/train`` takes it (see the module docstring); ``InputError``
    names what is wrong."""
    if not isinstance(data, dict) or not set(data) <= {"release", "stages", "soak_s"}:
        raise InputError(f'train: send {{"release": R, "stages": [[store, ...], ...], "soak_s": S}}, not {data!r}')
    release, stages = data.get("release"), data.get("stages")
    if not isinstance(release, str) or not release:
        raise InputError("train: release must be a release name")
    if not isinstance(stages, list) or not stages:
        raise InputError("train: stages must be a non-empty list (the canary stage first)")
    soak = _seconds(data.get("soak_s", 0), "soak_s")
    decl = TrainDecl(release, tuple(_parse_stage(i, raw, soak, known_stores) for i, raw in enumerate(stages)))
    seen: dict[str, str] = {}
    for st in decl.stages:
        for s in st.stores:
            if s in seen:
                raise InputError(f"train: store {s} is in two stages ({seen[s]} and {st.name})")
            seen[s] = st.name
    return decl


@dataclass(frozen=True, slots=True)
class StoreFacts:
    """One store of a declared stage at one moment, as the simulator sees it."""

    settled: bool
    """No node of it mid-reimage or booting."""
    on_release: bool
    """Every node Ready on the train's release (a flapping node counts as Ready)."""
    nodes: tuple[str, ...]


StoreView = Callable[[str, str], StoreFacts]
"""(store id, release) -> the store's facts now."""


@dataclass(frozen=True, slots=True)
class StageVerdict:
    passed_at: datetime | None
    why: str = ""
    """Why it has not passed (empty when it has)."""


class TrainOracle:
    """The two train rules over the declared trains and release states (module docstring). Pure:
    the simulator passes the clock's ``now`` and a ``StoreView`` of its nodes, and records what
    ``disrupt`` and ``came_up`` return."""

    def __init__(self, *, known_good: str, canary_stores: Collection[str]):
        self.known_good = known_good
        self.canary_stores = frozenset(canary_stores)
        self.trains: dict[str, TrainDecl] = {}
        self.stage_of: dict[str, tuple[str, int]] = {}  # store -> (release, stage index)
        self.passed: dict[tuple[str, int], datetime] = {}  # latched: (release, stage) -> when it passed
        self.states: dict[str, list[tuple[datetime, bool, str]]] = {}  # release -> (since, stable, how)
        self.enforced = False
        self.up: dict[str, datetime] = {}  # node -> when it last came up (booted, or read its seed)
        self.disrupted: dict[str, datetime] = {}  # node -> its last disruptive request

    def declare(self, train: TrainDecl) -> None:
        old = self.trains.pop(train.release, None)
        if old is not None:
            self.stage_of = {s: held for s, held in self.stage_of.items() if held[0] != train.release}
            self.passed = {k: t for k, t in self.passed.items() if k[0] != train.release}
        self.trains[train.release] = train
        for i, st in enumerate(train.stages):
            for s in st.stores:
                self.stage_of[s] = (train.release, i)
        self.enforced = True

    def tell(self, release: str, state: str, now: datetime) -> None:
        """The release is in catalog ``state`` from ``now`` on (only ``stable`` lets it leave the canaries)."""
        if state not in CATALOG_STATES:
            raise InputError(f"release state {state!r} is not one of {', '.join(CATALOG_STATES)}")
        self._note(release, now, state == "stable", f"told {state}")
        self.enforced = True

    def _note(self, release: str, since: datetime, stable: bool, how: str) -> None:
        self.states.setdefault(release, []).append((since, stable, how))
        self.states[release].sort(key=lambda e: e[0])

    def stable_at(self, release: str, when: datetime) -> bool:
        state = release == self.known_good
        for since, stable, _ in self.states.get(release, ()):
            if since > when:
                break
            state = stable
        return state

    def stage(self, train: TrainDecl, index: int, now: datetime, view: StoreView) -> StageVerdict:
        """Whether stage ``index`` of ``train`` has passed by ``now`` (latched once it has; the first
        stage's pass makes the release stable)."""
        key = (train.release, index)
        if key in self.passed:
            return StageVerdict(self.passed[key])
        st = train.stages[index]
        busy: list[str] = []
        off: list[str] = []
        last: datetime | None = None
        for s in st.stores:
            f = view(s, train.release)
            if not f.settled:
                busy.append(s)
            elif not f.on_release:
                off.append(s)
            else:
                last = max([t for t in (last, *(self.up.get(n) for n in f.nodes)) if t is not None], default=None)
        if busy:
            return StageVerdict(None, f"{_few(busy)} still being reimaged")
        if len(off) > st.failure_budget:
            return StageVerdict(None, f"{_few(off)} not Ready on {train.release} (the stage may have "
                                      f"{st.failure_budget} such store{'s' if st.failure_budget != 1 else ''})")
        until = last + st.soak if last is not None else _ALWAYS
        if now < until:
            return StageVerdict(None, f"its soak runs until {until.isoformat()} (its last node came up on "
                                      f"{train.release} at {last.isoformat() if last else '?'})")
        self.passed[key] = until
        if index == 0:
            self._note(train.release, until, True, f"its train's stage {st.name} passed")
        return StageVerdict(until)

    def disrupt(self, store: str, node: str, action: str, now: datetime, view: StoreView) -> list[Finding]:
        """Rule ``stage_order`` for a disruptive request ``action`` to ``node`` of ``store``."""
        self.disrupted[node] = now
        held = self.stage_of.get(store)
        if held is None or held[1] == 0:
            return []
        train = self.trains[held[0]]
        for i in range(held[1]):
            verdict = self.stage(train, i, now, view)
            if verdict.passed_at is None:
                return [Finding("stage_order", f"{action} at {now.isoformat()}: store {store} is in stage "
                                               f"{train.stages[held[1]].name} of the {train.release} train, but "
                                               f"stage {train.stages[i].name} has not passed: {verdict.why}")]
        return []

    def came_up(self, store: str, node: str, installed: str | None, now: datetime,
                view: StoreView) -> list[Finding]:
        """``node`` booted or read its seed; ``installed``: the release it came up on when the boot
        installed one. Rule ``release_state``."""
        self.up[node] = now
        if installed is None or not self.enforced or store in self.canary_stores:
            return []
        train = self.trains.get(installed)
        if train is not None:
            if store in train.stages[0].stores:
                return []
            self.stage(train, 0, now, view)  # derives its stability if the canary stage has passed
        when = self.disrupted.get(node, now)
        if self.stable_at(installed, when):
            return []
        return [Finding("release_state", f"{node} came up on release {installed}, which was not stable when it "
                                         f"was reimaged at {when.isoformat()} ({self._said(installed)}); store "
                                         f"{store} is not a canary store")]

    def _said(self, release: str) -> str:
        states = self.states.get(release)
        if not states:
            return "no train of it passed its canary stage and it was never told stable"
        since, stable, how = states[-1]
        return f"{'stable' if stable else 'not stable'} since {since.isoformat()}: {how}"

    def view(self, now: datetime, facts: StoreView) -> dict[str, Any]:
        """What ``GET /sim/oracle`` shows."""
        trains = []
        for t in self.trains.values():
            stages = []
            for i, st in enumerate(t.stages):
                v = self.stage(t, i, now, facts)
                stages.append({"name": st.name, "stores": list(st.stores), "soak_s": st.soak.total_seconds(),
                               "failure_budget": st.failure_budget,
                               "passed_at": None if v.passed_at is None else
                               ("at once" if v.passed_at == _ALWAYS else v.passed_at.isoformat()),
                               "waiting": v.why or None})
            trains.append({"release": t.release, "stages": stages})
        return {"enforced": self.enforced, "known_good": self.known_good, "trains": trains,
                "releases": {r: [{"since": "always" if s == _ALWAYS else s.isoformat(), "stable": ok, "how": how}
                                 for s, ok, how in e] for r, e in self.states.items()}}
