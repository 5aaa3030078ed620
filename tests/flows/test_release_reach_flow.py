"""The scheduled-run path (the ``rollout`` flow) keeps the release lifecycle: a release that is not
stable, scheduled onto non-canary stores, fails the run at once, naming the stores, before the run
waits for any window, and records nothing."""

from __future__ import annotations

import asyncio
import importlib.util
import time
from pathlib import Path
from types import ModuleType

import pytest

from edgefleet.rollout.ledger import Ledger
from edgefleet.state.db import close_all, open_state
from tests.contract.rollout_world import make_inventory
from tests.helpers import REPO, record_release


def _flows() -> ModuleType:
    spec = importlib.util.spec_from_file_location("edgefleet_flows_rollout_reach", REPO / "flows" / "rollout.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_scheduled_run_of_a_built_release_fails_before_waiting_for_its_window(
        tmp_path: Path, prefect_harness: Path) -> None:
    inv = tmp_path / "inventory"
    make_inventory(inv)  # no canary store
    home = tmp_path / "home"
    record_release(home, "v2", stable=False)
    url = f"sqlite:///{home / 'edgefleet.db'}"
    flows = _flows()
    t0 = time.monotonic()
    # A short wait: without the check the run would end Cancelled ("skipped": window not open) or
    # start the rollout, never Failed for the release's state.
    state = asyncio.run(flows.rollout(release="v2", stores=["dk-0001", "no-0002"], canary=0, waves=["100%"],
                                      gate_on_window=True, max_wait_hours=0.001, inventory=str(inv),
                                      home=str(home), state_url=url, return_state=True))
    assert state.is_failed(), state
    with pytest.raises(Exception, match=r"release v2 is built, not stable.*2 non-canary stores \(dk-0001, no-0002\)"):
        state.result()
    assert time.monotonic() - t0 < 120
    assert Ledger(open_state(url)).rollouts() == []
    close_all()
