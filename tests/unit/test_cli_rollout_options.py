"""The rollout commands' timeout and retry-budget options: on ``rollout start`` (and rollback,
provision) with their defaults, on ``rollout resume`` as overrides; ``rollout start --store``
refuses a store the inventory does not have, naming it, before anything is recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet.cli import app
from edgefleet.errors import EdgefleetError
from tests.contract.rollout_world import make_inventory

OPTIONS = ["--node-timeout", "--quorum-timeout", "--gate-timeout", "--soak", "--bmc-attempts", "--reimage-attempts"]


def _run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, list(args))
    if isinstance(r.exception, EdgefleetError):
        return r.exception.exit_code, str(r.exception)
    return r.exit_code, r.output


@pytest.mark.parametrize("command", [["rollout", "start"], ["rollout", "resume"]])
def test_the_timeouts_and_retry_budgets_are_options(command: list[str]) -> None:
    code, out = _run(*command, "--help")
    assert code == 0, out
    assert [o for o in OPTIONS if o not in out] == []


def test_start_takes_stores() -> None:
    code, out = _run("rollout", "start", "--help")
    assert code == 0 and "--store" in out, out


@pytest.mark.parametrize("command", [["rollback"], ["provision"]])
def test_rollback_and_provision_take_the_quorum_and_gate_timeouts(command: list[str]) -> None:
    code, out = _run(*command, "--help")
    assert code == 0 and "--quorum-timeout" in out and "--gate-timeout" in out, out


def test_an_unknown_store_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_inventory(tmp_path / "inv")
    monkeypatch.setenv("EDGEFLEET_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EDGEFLEET_STATE_URL", raising=False)
    code, out = _run("rollout", "start", "--release", "v1", "-i", str(tmp_path / "inv"), "--store", "dk-0001",
                     "--store", "se-0404")
    assert code == 2, out
    assert out.startswith("--store: 'se-0404' in pattern 'dk-0001,se-0404': no group or store 'se-0404' in the "
                          "inventory") and "its stores: dk-0001, dk-0002" in out, out


@pytest.mark.parametrize(("flag", "value"), [("--quorum-timeout", "0"), ("--bmc-attempts", "0"),
                                             ("--reimage-attempts", "-1"), ("--gate-timeout", "x")])
def test_bad_values_are_bad_input(flag: str, value: str) -> None:
    code, out = _run("rollout", "start", "--release", "v1", flag, value)
    assert code == 2 and flag in out, out
