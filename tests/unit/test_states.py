"""The state table: every status a ledger ever wrote maps to an enum, moves outside the table
are refused with a typed error, and a store run's step reads back from its recorded string."""

from __future__ import annotations

import pytest

from edgefleet.errors import IllegalTransition, StateError
from edgefleet.rollout.states import (
    FINISHED,
    RUN_DONE,
    RUN_FINAL,
    TRANSITIONS,
    Machine,
    Operation,
    Phase,
    RolloutEvent,
    RolloutState,
    RunEvent,
    RunState,
    Stage,
    Step,
    WaveEvent,
    WaveState,
    next_state,
)


def test_every_status_string_an_earlier_ledger_wrote_maps_to_an_enum() -> None:
    # The values written by the edgefleet before the state table (strings in the DB columns).
    for v in ("planned", "running", "paused", "halted", "succeeded", "failed", "aborted"):
        assert RolloutState(v).value == v
    for v in ("pending", "running", "passed", "halted", "paused"):
        assert WaveState(v).value == v
    for v in ("pending", "running", "succeeded", "failed", "rolled_back", "skipped", "refused"):
        assert RunState(v).value == v
    for v in ("rollout", "rollback", "provision"):
        assert Operation(v).value == v
    assert RunState("split") is RunState.split_ and RunState.split_ in RUN_DONE and RunState.split_ not in RUN_FINAL


def test_the_table_only_names_states_of_its_machine() -> None:
    kinds = {Machine.rollout: (RolloutState, RolloutEvent), Machine.wave: (WaveState, WaveEvent),
             Machine.run: (RunState, RunEvent)}
    for (machine, frm, event), to in TRANSITIONS.items():
        states, events = kinds[machine]
        assert states(frm) and states(to) and events(event)


def test_moves_outside_the_table_are_refused() -> None:
    assert next_state(Machine.run, RunState.pending, RunEvent.start) == RunState.running
    assert next_state(Machine.run, RunState.running, RunEvent.split_) == RunState.split_
    assert next_state(Machine.run, RunState.split_, RunEvent.start) == RunState.running  # a person repairs
    with pytest.raises(IllegalTransition, match="cannot succeed") as e:
        next_state(Machine.run, RunState.pending, RunEvent.succeed)  # never ran
    assert isinstance(e.value, StateError) and e.value.exit_code == 1
    with pytest.raises(IllegalTransition, match="nothing, it is final"):
        next_state(Machine.run, RunState.succeeded, RunEvent.start)
    with pytest.raises(IllegalTransition):
        next_state(Machine.run, RunState.split_, RunEvent.succeed)  # split is left only through a repair
    with pytest.raises(IllegalTransition):
        next_state(Machine.wave, WaveState.passed, WaveEvent.halt)
    for final in FINISHED:
        with pytest.raises(IllegalTransition):
            next_state(Machine.rollout, final, RolloutEvent.start)  # resumed only to repair split stores
    assert next_state(Machine.rollout, RolloutState.failed, RolloutEvent.repair) == RolloutState.running


@pytest.mark.parametrize("text,step", [
    ("start", Step(Phase.forward, Stage.start)),
    ("done", Step(Phase.forward, Stage.done)),
    ("rollback:start", Step(Phase.rollback, Stage.start)),
    ("rollback:done", Step(Phase.rollback, Stage.done)),
    ("forward:dk-0001-n1:reimage", Step(Phase.forward, Stage.reimage, "dk-0001-n1")),
    ("forward:dk-0102-n1:booting", Step(Phase.forward, Stage.booting, "dk-0102-n1")),
    ("rollback:n2:bootstrap", Step(Phase.rollback, Stage.bootstrap, "n2")),
])
def test_recorded_steps_read_back_and_write_the_same_string(text: str, step: Step) -> None:
    assert Step.parse(text) == step and str(step) == text


def test_a_step_names_a_node_in_one_phase_only() -> None:
    step = Step.parse("forward:n1:booting")
    assert step is not None
    assert step.at("n1", Phase.forward) is Stage.booting
    assert step.at("n1", Phase.rollback) is None and step.at("n10", Phase.forward) is None
    assert Step.parse("") is None
    with pytest.raises(StateError, match="newer edgefleet"):
        Step.parse("forward:n1:teleport")
