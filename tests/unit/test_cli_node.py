"""``edgefleet node add|replace|remove``: dry runs and the refusals that touch nothing (exit 2),
in process, against the sample inventory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import SAMPLE_INVENTORY
from tests.unit.test_release_fuzz import run_cli

INV = ["-i", str(SAMPLE_INVENTORY)]


def test_dry_run_of_a_control_plane_removal_lists_its_steps(tmp_path: Path) -> None:
    code, out = run_cli(["node", "remove", "us-003", "us-003-n2", "--dry-run", "--json", *INV], tmp_path)
    assert code == 0, out
    data = json.loads(out)
    assert data["dry_run"] and data["role"] == "controlplane"
    assert data["steps"][:3] == ["window open", "etcd quorum holds without it",
                                 "drain us-003-n2 (cordon, evictions respecting PodDisruptionBudgets)"]
    assert "us-003-n2 leaves etcd" in data["steps"]
    assert not (tmp_path / "edgefleet.db").exists()  # a dry run opens no state store


@pytest.mark.parametrize(("args", "says"), [
    (["node", "remove", "ae-002", "ae-002-n1", "--yes"], "ae-002-n1 is the store's last control plane"),
    (["node", "remove", "us-003", "us-003-n9", "--yes"], "has no node 'us-003-n9'"),
    (["node", "add", "us-003", "us-003-n1"], "`node add` adds workers"),
    (["node", "replace", "us-003", "us-003-n1"], "without confirmation: not on a terminal; add --yes"),
    (["node", "remove", "zz-999", "zz-999-n1", "--yes"], "no store 'zz-999'"),
])
def test_refusals_exit_2_and_touch_nothing(tmp_path: Path, args: list[str], says: str) -> None:
    code, out = run_cli([*args, *INV], tmp_path)
    assert code == 2, out
    assert says in out
    assert not (tmp_path / "edgefleet.db").exists()
