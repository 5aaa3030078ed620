"""The states of a rollout, its waves, its store runs and a store run's step, and how they move.

Pure (after OpenStack Ironic's ``states.py``): each state is an enum member with a one-line
docstring, every allowed move is one row of ``TRANSITIONS`` (machine, from, event) -> to, and
``next_state`` refuses any other move with ``IllegalTransition``. The ledger stores the values as
strings (``status`` columns), so a ledger written before these enums existed reads back as is.

A store run::

    pending --start--> running --succeed--> succeeded
       |                  |----roll_back--> rolled_back
       |                  |----fail-------> failed
       |                  '----split------> split --start--> running   (a person continues the repair)
       '--skip / refuse / fail--> skipped / refused / failed

``split``: the store could be brought neither to the target nor back; its nodes run different
releases (recorded per node), the store's current release is not claimed, and the rollout keeps
the store's lock until a person continues the repair (``edgefleet rollout resume <id>``).

Where a store run is inside its work is its ``Step`` (``phase:node:stage``; ``start``, ``done``,
``rollback:start``, ``rollback:done``), stored as that string and read back only through
``Step.parse``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from edgefleet.errors import IllegalTransition, StateError

__all__ = [
    "FINISHED",
    "RUN_DONE",
    "RUN_FINAL",
    "TRANSITIONS",
    "Machine",
    "Operation",
    "Outcome",
    "Phase",
    "RolloutEvent",
    "RolloutState",
    "RunEvent",
    "RunState",
    "SkipCause",
    "Stage",
    "Step",
    "WaveEvent",
    "WaveState",
    "next_state",
]


class Operation(StrEnum):
    """What a rollout record does."""

    rollout = "rollout"
    """Move stores to a new release (rolled back per store when its gate fails)."""
    rollback = "rollback"
    """Move stores back to a previous release (not rolled back again when it fails)."""
    provision = "provision"
    """Install stores that run nothing yet."""
    node_add = "node_add"
    """Install a new worker in a running store (``edgefleet node add``); no other node is touched."""
    node_replace = "node_replace"
    """Install replacement hardware under a node's name (``edgefleet node replace``)."""
    node_remove = "node_remove"
    """Drain, leave etcd and wipe one node of a running store (``edgefleet node remove``)."""


class RolloutState(StrEnum):
    planned = "planned"
    """Recorded, not started."""
    running = "running"
    """An executor is working on it (see heartbeat)."""
    paused = "paused"
    """A wave was inconclusive: waiting for a person (``rollout resume --approve|--reject``)."""
    halted = "halted"
    """A wave exceeded its failure budget (or a person rejected): nothing more is started."""
    succeeded = "succeeded"
    """Every store ended on the target (or was already there)."""
    failed = "failed"
    """Some stores failed, were refused or were left split, within the budget."""
    aborted = "aborted"
    """A person aborted it."""


FINISHED = frozenset({RolloutState.halted, RolloutState.succeeded, RolloutState.failed, RolloutState.aborted})


class WaveState(StrEnum):
    pending = "pending"
    """Not started."""
    running = "running"
    """Its stores are being worked on."""
    passed = "passed"
    """Within its failure budget (or approved by a person)."""
    halted = "halted"
    """Over its budget, rejected or aborted: the rollout stops."""
    paused = "paused"
    """Inconclusive stores could tip it over its budget: waiting for a person."""


class RunState(StrEnum):
    pending = "pending"
    """Not started."""
    running = "running"
    """Being worked on (or interrupted while it was: resume continues it)."""
    succeeded = "succeeded"
    """On the target release, its gate passed."""
    failed = "failed"
    """Failed, and its nodes are not on different releases (or it was aborted mid-store)."""
    rolled_back = "rolled_back"
    """Failed its gate and was reimaged back to its previous release."""
    skipped = "skipped"
    """Nothing to do (already on the target) or not started (aborted, halted, window never opened)."""
    refused = "refused"
    """Another operation holds the store's lock."""
    split_ = "split"
    """Could be brought neither forward nor back: nodes on different releases; locked until a person acts."""


RUN_FINAL = frozenset({RunState.succeeded, RunState.failed, RunState.rolled_back, RunState.skipped, RunState.refused})
"""Store runs that are over: nothing of the store is held any more."""
RUN_DONE = RUN_FINAL | {RunState.split_}
"""Store runs the wave loop does not start again (a split one waits for a person)."""


class Outcome(StrEnum):
    """What one store's task tells its wave (``inconclusive``: the outcome could not be determined)."""

    succeeded = "succeeded"
    failed = "failed"
    rolled_back = "rolled_back"
    skipped = "skipped"
    refused = "refused"
    split_ = "split"
    inconclusive = "inconclusive"


class SkipCause(StrEnum):
    """Why a store run was skipped, kept in its ``detail`` as ``skipped`` (not read from its reason)."""

    window = "window"
    """Its maintenance window did not open (outside freezes) within the wait bound: not done."""
    aborted = "aborted"
    """The rollout was aborted before the store started."""
    halted = "halted"
    """Its wave or an earlier one halted the rollout (or a person rejected it)."""


class Machine(StrEnum):
    rollout = "rollout"
    wave = "wave"
    run = "run"


class RolloutEvent(StrEnum):
    start = "start"
    pause = "pause"
    halt = "halt"
    succeed = "succeed"
    fail = "fail"
    abort = "abort"
    repair = "repair"
    """A person continues the repair of a split store of a finished rollout."""


class WaveEvent(StrEnum):
    start = "start"
    pass_ = "pass"
    halt = "halt"
    pause = "pause"


class RunEvent(StrEnum):
    start = "start"
    succeed = "succeed"
    fail = "fail"
    roll_back = "roll_back"
    split_ = "split"
    skip = "skip"
    refuse = "refuse"


_R, _W, _S = RolloutState, WaveState, RunState
_RE, _WE, _SE = RolloutEvent, WaveEvent, RunEvent

# (machine, from, event) -> to: every move the engine may make, nothing else.
TRANSITIONS: dict[tuple[Machine, str, str], str] = {
    # a rollout
    (Machine.rollout, _R.planned, _RE.start): _R.running,
    (Machine.rollout, _R.running, _RE.start): _R.running,  # resumed after its executor died
    (Machine.rollout, _R.paused, _RE.start): _R.running,  # a person approved or rejected
    (Machine.rollout, _R.running, _RE.pause): _R.paused,
    (Machine.rollout, _R.running, _RE.halt): _R.halted,
    (Machine.rollout, _R.running, _RE.succeed): _R.succeeded,
    (Machine.rollout, _R.running, _RE.fail): _R.failed,
    (Machine.rollout, _R.running, _RE.abort): _R.aborted,
    (Machine.rollout, _R.planned, _RE.abort): _R.aborted,
    (Machine.rollout, _R.paused, _RE.abort): _R.aborted,
    (Machine.rollout, _R.failed, _RE.repair): _R.running,
    (Machine.rollout, _R.halted, _RE.repair): _R.running,
    (Machine.rollout, _R.aborted, _RE.repair): _R.running,
    # a wave
    (Machine.wave, _W.pending, _WE.start): _W.running,
    (Machine.wave, _W.running, _WE.start): _W.running,  # resumed
    (Machine.wave, _W.running, _WE.pass_): _W.passed,
    (Machine.wave, _W.running, _WE.halt): _W.halted,
    (Machine.wave, _W.running, _WE.pause): _W.paused,
    (Machine.wave, _W.paused, _WE.pass_): _W.passed,  # approved
    (Machine.wave, _W.paused, _WE.halt): _W.halted,  # rejected
    # a store run
    (Machine.run, _S.pending, _SE.start): _S.running,
    (Machine.run, _S.running, _SE.start): _S.running,  # resumed
    (Machine.run, _S.split_, _SE.start): _S.running,  # a person continues the repair
    (Machine.run, _S.running, _SE.succeed): _S.succeeded,
    (Machine.run, _S.running, _SE.roll_back): _S.rolled_back,
    (Machine.run, _S.running, _SE.fail): _S.failed,
    (Machine.run, _S.pending, _SE.fail): _S.failed,  # its store left the inventory
    (Machine.run, _S.running, _SE.split_): _S.split_,
    (Machine.run, _S.pending, _SE.skip): _S.skipped,
    (Machine.run, _S.running, _SE.skip): _S.skipped,  # resumed after an abort or a halt
    (Machine.run, _S.pending, _SE.refuse): _S.refused,
    (Machine.run, _S.running, _SE.refuse): _S.refused,  # resumed, and another operation took the store
}


def next_state(machine: Machine, current: str, event: str) -> str:
    """The state ``event`` moves ``current`` to; ``IllegalTransition`` when the table has no such move."""
    to = TRANSITIONS.get((machine, str(current), str(event)))
    if to is None:
        allowed = sorted(str(e) for (m, f, e) in TRANSITIONS if m is machine and f == current)
        raise IllegalTransition(f"a {machine.value} in state {current!s} cannot {event!s} (allowed from "
                                f"{current!s}: {', '.join(allowed) or 'nothing, it is final'})")
    return to


class Phase(StrEnum):
    forward = "forward"
    """Towards the run's target release."""
    rollback = "rollback"
    """Back to the store's previous release (or repairing a split store)."""


class Stage(StrEnum):
    start = "start"
    """The phase began; no node touched yet."""
    reimage = "reimage"
    """The node's disruptive steps are being sent."""
    booting = "booting"
    """The node was reset (or wiped in band) and boots the release."""
    bootstrap = "bootstrap"
    """Its etcd is being bootstrapped."""
    done = "done"
    """The phase is over."""


@dataclass(frozen=True, slots=True)
class Step:
    """Where a store run is: ``phase:node:stage`` for a node, ``start``/``done`` (forward) and
    ``rollback:start``/``rollback:done`` for the phase itself."""

    phase: Phase
    stage: Stage
    node: str | None = None

    def __str__(self) -> str:
        if self.node is not None:
            return f"{self.phase}:{self.node}:{self.stage}"
        return str(self.stage) if self.phase is Phase.forward else f"{self.phase}:{self.stage}"

    @classmethod
    def parse(cls, text: str) -> Step | None:
        """The step recorded as ``text``; None for the empty string (never started)."""
        if not text:
            return None
        parts = text.split(":")
        try:
            if len(parts) == 1:
                return cls(Phase.forward, Stage(parts[0]))
            if len(parts) == 2:
                return cls(Phase(parts[0]), Stage(parts[1]))
            return cls(Phase(parts[0]), Stage(parts[-1]), ":".join(parts[1:-1]))
        except ValueError:
            raise StateError(f"the ledger records step {text!r}, which this edgefleet does not know: it was "
                             "written by a newer edgefleet; resume the rollout with that version") from None

    def at(self, node: str, phase: Phase) -> Stage | None:
        """This step's stage when it names ``node`` in ``phase``, else None."""
        return self.stage if self.node == node and self.phase is phase else None
