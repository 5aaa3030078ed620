"""What a scheduled rollout run loads as its inventory: a scheduled run's parameters carry no
inventory path, so the flow falls back to the worker's EDGEFLEET_INVENTORY (not the ``inventory``
directory of the checkout it runs in)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest

from edgefleet.errors import InventoryError
from tests.helpers import REPO, SAMPLE_INVENTORY


def _flows() -> ModuleType:
    spec = importlib.util.spec_from_file_location("edgefleet_flows_rollout_unit", REPO / "flows" / "rollout.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rollout_flow_reads_the_workers_inventory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flows = _flows()
    inv = tmp_path / "worker-inventory"
    shutil.copytree(SAMPLE_INVENTORY, inv)
    monkeypatch.chdir(tmp_path)  # no ./inventory here: only the variable can find it
    monkeypatch.setenv("EDGEFLEET_INVENTORY", str(inv))
    assert flows._fleet(None).source == str(inv.resolve())
    assert flows._fleet(str(SAMPLE_INVENTORY)).source == str(SAMPLE_INVENTORY.resolve())  # a parameter wins
    monkeypatch.delenv("EDGEFLEET_INVENTORY")
    with pytest.raises(InventoryError, match=r"inventory directory inventory does not exist"):
        flows._fleet(None)
