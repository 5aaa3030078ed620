"""The environment (``edgefleet.settings``): one ``Settings`` read by the CLI and by the flows, with
the same defaults, read anew on each call."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from edgefleet.cli._common import default_inventory, default_state_url, edgefleet_home
from edgefleet.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
VARS = ("EDGEFLEET_HOME", "EDGEFLEET_INVENTORY", "EDGEFLEET_STATE_URL")


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for v in VARS:
        monkeypatch.delenv(v, raising=False)


def test_defaults() -> None:
    s = load_settings()
    assert (s.home, s.inventory, s.state_url) == (Path(".edgefleet"), Path("inventory"), None)
    assert s.state_store_url == "sqlite:///.edgefleet/edgefleet.db"
    assert (edgefleet_home(), default_inventory(), default_state_url()) == (s.home, s.inventory, s.state_store_url)


def test_the_environment_is_read_on_each_call(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGEFLEET_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("EDGEFLEET_INVENTORY", str(tmp_path / "inv"))
    assert load_settings().home == tmp_path / "h" and default_inventory() == tmp_path / "inv"
    assert default_state_url() == f"sqlite:///{tmp_path / 'h' / 'edgefleet.db'}"
    monkeypatch.setenv("EDGEFLEET_STATE_URL", "postgresql+pg8000://u@127.0.0.1:5/x")
    assert default_state_url() == load_settings().state_store_url == "postgresql+pg8000://u@127.0.0.1:5/x"
    monkeypatch.setenv("EDGEFLEET_STATE_URL", "")  # empty: the default, as before
    assert default_state_url() == f"sqlite:///{tmp_path / 'h' / 'edgefleet.db'}"


def test_other_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_SOMETHING_ELSE", "x")
    assert load_settings() == Settings()


def test_the_flows_and_the_cli_use_the_same_settings() -> None:
    """The flows import ``edgefleet.settings`` (not the CLI's plumbing) for every default they read."""
    for name in ("rollout.py", "build_release.py"):
        tree = ast.parse((ROOT / "flows" / name).read_text(encoding="utf-8"))
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "edgefleet.settings" in modules and not any(m and m.startswith("edgefleet.cli") for m in modules)
