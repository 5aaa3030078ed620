"""The inventory CLI as a user runs it: exit codes, stderr, JSON output, nothing written on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from edgefleet.cli import app
from edgefleet.inventory.generate import generate_fleet, plan_synthetic_fleet
from edgefleet.inventory.load import load_fleet
from tests.helpers import SAMPLE_INVENTORY

runner = CliRunner()


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgefleet.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=60, env={**os.environ, "COLUMNS": "200"})


def test_validate_sample_ok_and_json() -> None:
    r = runner.invoke(app, ["inventory", "validate", str(SAMPLE_INVENTORY), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["stores"] == 25 and data["countries"] >= 6


def test_validate_bad_inventory_exits_2_with_errors_on_stderr_and_writes_nothing(sample_copy: Path) -> None:
    f = sample_copy / "stores" / "dk.yml"
    f.write_text(f.read_text().replace("ip: 10.20.1.12", "ip: 10.99.1.12"))
    before = sorted(str(p) for p in sample_copy.parent.rglob("*"))
    r = _run("inventory", "validate", str(sample_copy), cwd=sample_copy.parent)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "inventory/stores/dk.yml:" in r.stderr and "store dk-001 node dk-001-n2" in r.stderr
    assert "outside subnet 10.20.1.0/24" in r.stderr
    assert r.stdout == ""
    assert sorted(str(p) for p in sample_copy.parent.rglob("*")) == before


@settings(max_examples=8, deadline=None)
@given(st.sampled_from(["{", "stores: 3", "stores: [1, 2]", "a: b: c", "stores:\n - id: [x]", "\t"]))
def test_cli_broken_yaml_is_exit_2_never_a_traceback(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    inv = tmp_path_factory.mktemp("inv")
    (inv / "stores").mkdir()
    (inv / "fleet.yml").write_text("fleet: {name: x}\n")
    (inv / "stores" / "a.yml").write_text(text)
    r = runner.invoke(app, ["inventory", "validate", str(inv)])
    assert r.exit_code != 0
    assert isinstance(r.exception, SystemExit) or r.exception is None or "InventoryError" in type(r.exception).__name__


def test_show_graph_and_unknown_store() -> None:
    r = _run("inventory", "show", "us-001", "-i", str(SAMPLE_INVENTORY))
    assert r.returncode == 0 and "us-001-n1" in r.stdout and "America/New_York" in r.stdout
    assert "10.24.1.11 fd00:20:4:1::b" in r.stdout  # a dual-stack node's two addresses
    # IPv6-only: bracketed URLs are printed as they are, not eaten as console markup
    r = _run("inventory", "show", "vn-002", "-i", str(SAMPLE_INVENTORY))
    assert r.returncode == 0 and "endpoint https://[fd00:27:2::10]:6443" in r.stdout, r.stdout
    assert "https://[fd00:27:2::101]" in r.stdout and "fd00:27:2::11" in r.stdout
    r = _run("inventory", "show", "zz-999", "-i", str(SAMPLE_INVENTORY))
    assert r.returncode == 2 and "no store 'zz-999'" in r.stderr
    r = _run("inventory", "graph", "-i", str(SAMPLE_INVENTORY), "--json")
    tree = json.loads(r.stdout)
    assert set(tree) >= {"DK", "US", "AE"} and "region nordics" not in tree
    assert any("us-003" in s for s in tree["US"]["americas"]["ring2"])


def test_usage_error_is_exit_2() -> None:
    r = _run("inventory", "generate", "--stores", "0", "--out", "x")
    assert r.returncode == 2


def test_generate_is_valid_deterministic_and_refuses_to_overwrite(tmp_path: Path) -> None:
    a = generate_fleet(tmp_path / "a", 150, seed=7)
    b = generate_fleet(tmp_path / "b", 150, seed=7)
    for f in sorted(a.rglob("*.yml")):
        assert f.read_bytes() == (b / f.relative_to(a)).read_bytes()
    fleet = load_fleet(a)
    assert len(fleet.stores) == 150
    assert len({s.country for s in fleet.stores.values()}) == 48
    assert {len(s.nodes) for s in fleet.stores.values()} >= {1, 3}
    assert any(s.ring == "canary" for s in fleet.stores.values())
    r = _run("inventory", "generate", "--stores", "5", "--out", str(a))
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr


def test_generated_zones_are_real_and_every_country_has_one() -> None:
    from zoneinfo import available_timezones

    _fleet_doc, gv, by_country = plan_synthetic_fleet(100, seed=3)
    zones = {v["timezone"] for k, v in gv.items() if k.startswith("country_")}
    assert zones <= available_timezones()
    assert len([k for k in gv if k.startswith("country_")]) == 48
    explicit = {s["timezone"] for sts in by_country.values() for s in sts if "timezone" in s}
    assert explicit <= available_timezones()
    assert explicit & {"America/Vancouver", "America/Chicago"}  # multi-zone countries spread their stores
