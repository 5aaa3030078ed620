"""The names release trains use on a Prefect server: a work pool and a deployment per inventory
region, and the tags of each child run (``edgefleet.trains.prefect_deploy``; no server here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from edgefleet.errors import InputError
from edgefleet.inventory.load import load_fleet
from edgefleet.trains.prefect_deploy import operation_deployment, pool_name, regions_of, run_tags
from tests.helpers import SAMPLE_INVENTORY


def test_a_pool_and_a_deployment_per_region_of_the_sample_inventory() -> None:
    fleet = load_fleet(SAMPLE_INVENTORY)
    regions = regions_of(fleet)
    assert regions == sorted({s.region for s in fleet.stores.values()}) and len(regions) >= 2
    assert [pool_name(r) for r in regions] == [f"edgefleet-{r}" for r in regions]
    assert operation_deployment("emea") == "run-operation/rollout-emea"
    assert run_tags("tr-1", "emea", "ro-2") == ["edgefleet-train", "edgefleet-train:tr-1", "edgefleet-region:emea",
                                                "edgefleet-rollout:ro-2"]


def test_a_region_that_cannot_name_a_pool_is_refused_naming_the_store(sample_copy: Path) -> None:
    path = next(p for p in sorted((sample_copy / "stores").rglob("*.yml")) if "stores" in (yaml.safe_load(
        p.read_text()) or {}))
    data = yaml.safe_load(path.read_text())
    sid = data["stores"][0]["id"]
    data["stores"][0]["region"] = "north europe/west"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(InputError, match=rf"store {sid}: region 'north europe/west' cannot name a Prefect work pool"):
        regions_of(load_fleet(sample_copy))


def test_naming_pools_does_not_import_prefect() -> None:
    import subprocess

    code = ("import sys; from edgefleet.trains import prefect_deploy; from edgefleet.cli import train_deploy; "
            "print('prefect' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
