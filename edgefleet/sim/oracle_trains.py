"""The simulator's oracle for release trains: two rules beside those of ``edgefleet.sim.oracle``
(``TrainOracle``; a train is declared to the simulator, see below), recorded and counted in
``/sim/violations`` like them:

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

* the release every node runs at start (the scenario's ``initial_release``) is the fleet's known
  good, and so is every release some node runs when the oracle is first given a train or a
  release state (what the fleet runs before any train is what it runs in production, e.g. a
  release provisioned by plain rollouts; the train's or the told release itself excepted);
* a declared train's release becomes stable when its first stage passes as above (the moment a
  train promotes it; a train with manual promotion promotes later, so the oracle is lenient
  there, never stricter than the catalog);
* any other state change is told (``TrainOracle.tell``: a release promoted outside a train, or
  revoked: from then on it may not leave the canaries again).

The ``release_state`` rule is enforced from the first train or release state the simulator is
given: before that any release may go anywhere (plain rollouts without trains).

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

Pure: the simulator (``edgefleet.sim.fleet``) passes the clock's ``now`` and a ``StoreView`` of its
nodes, and records the findings returned.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from edgefleet.errors import InputError
from edgefleet.rollout.plan import budget_allowed
from edgefleet.sim.oracle import Finding

__all__ = ["CATALOG_STATES", "StageDecl", "StageVerdict", "StoreFacts", "StoreView", "TrainDecl", "TrainOracle",
           "parse_train"]


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

    def _enforce(self, running: Collection[str], but: str) -> None:
        """From now on rule ``release_state`` holds; the releases ``running`` in the fleet now
        (``but`` excepted) count as stable since always."""
        if not self.enforced:
            for r in sorted(set(running) - {but, self.known_good}):
                self._note(r, _ALWAYS, True, "in the fleet before the oracle was told of trains or release states")
        self.enforced = True

    def declare(self, train: TrainDecl, running: Collection[str] = ()) -> None:
        """Watch ``train`` (replacing an earlier train of its release); ``running``: the releases
        the fleet's nodes run now."""
        old = self.trains.pop(train.release, None)
        if old is not None:
            self.stage_of = {s: held for s, held in self.stage_of.items() if held[0] != train.release}
            self.passed = {k: t for k, t in self.passed.items() if k[0] != train.release}
        self.trains[train.release] = train
        for i, st in enumerate(train.stages):
            for s in st.stores:
                self.stage_of[s] = (train.release, i)
        self._enforce(running, train.release)

    def tell(self, release: str, state: str, now: datetime, running: Collection[str] = ()) -> None:
        """The release is in catalog ``state`` from ``now`` on (only ``stable`` lets it leave the
        canaries); ``running`` as for ``declare``."""
        if state not in CATALOG_STATES:
            raise InputError(f"release state {state!r} is not one of {', '.join(CATALOG_STATES)}")
        self._enforce(running, release)
        self._note(release, now, state == "stable", f"told {state}")

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
