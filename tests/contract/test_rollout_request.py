"""``rollout start``/``rollout resume`` on the fleet simulator: the timeouts and retry budgets given
as options are saved with the rollout (its ``RolloutRequest``) and are what the engine runs with;
``--store`` limits a rollout to those stores and an unknown one is refused by name before anything
is recorded; ``resume`` runs with the saved request unless an option overrides it, and saves the
override."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from edgefleet.cli import app
from edgefleet.errors import EdgefleetError
from edgefleet.rollout import operations as ops
from edgefleet.rollout.endpoints import Endpoints
from edgefleet.rollout.ledger import Ledger, RolloutStatus, RunStatus
from edgefleet.rollout.request import RolloutRequest
from tests.contract.rollout_world import get_json, ledger_matches_sim
from tests.contract.test_rollout_sim import SETTINGS, World, run_world

pytestmark = pytest.mark.slow


def _cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, list(args))
    if isinstance(r.exception, EdgefleetError):
        return r.exception.exit_code, str(r.exception)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r.exit_code, r.output


def _executions(ledger: Ledger, rid: str) -> list[dict[str, Any]]:
    return [e["detail"]["settings"] for e in ledger.events(rid, kind="execution_started")]


def test_start_saves_its_timeouts_and_stores_and_resume_overrides_them(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EDGEFLEET_STATE_URL", raising=False)

    async def body(w: World, ep: Endpoints, engine: Any) -> None:
        ledger = Ledger(engine)
        created = [ops.create_provision(w.fleet, engine, w.home, sid, "v1", ep.clock(), settings=SETTINGS,
                                        operator="test") for sid in sorted(w.fleet.stores)]
        for rec in await asyncio.gather(*(ops.run(w.fleet, w.home, engine, ep, c.record.id) for c in created)):
            assert rec.status is RolloutStatus.succeeded, ops.status(engine, rec.id)
        inv = str(tmp_path / "inventory")
        common = ["--sim", w.url, "-i", inv, "--poll", "0.05", "--json"]

        # an unknown store is refused by name, and nothing is recorded
        before = len(ledger.rollouts(100))
        code, out = await asyncio.to_thread(_cli, "rollout", "start", "--release", "v2", "--store", "dk-0002",
                                            "--store", "xx-9999", *common)
        assert code == 2 and "xx-9999" in out and "dk-0002" not in out.split(":")[0], out
        assert len(ledger.rollouts(100)) == before

        # start: two stores only, every timeout and budget given
        code, out = await asyncio.to_thread(
            _cli, "rollout", "start", "--release", "v2", "--store", "dk-0003", "--store", "dk-0002", "--canary", "0",
            "--waves", "100%", "--node-timeout", "43", "--quorum-timeout", "41", "--gate-timeout", "42",
            "--soak", "1", "--bmc-attempts", "5", "--reimage-attempts", "2", *common)
        assert code == 0, out
        rec = ledger.rollouts(1)[0]
        assert rec.status is RolloutStatus.succeeded and rec.release == "v2"
        assert sorted((r.store, r.status) for r in ledger.runs(rec.id)) == [
            ("dk-0002", RunStatus.succeeded), ("dk-0003", RunStatus.succeeded)]
        assert all(r.earliest_start is not None for r in ledger.runs(rec.id))  # the planned rows
        saved = ops.saved_request(rec)
        assert saved.stores == ("dk-0002", "dk-0003") and saved.canary == 0  # --store is a pattern: inventory order
        s = saved.settings
        assert (s.node_ready_timeout_s, s.quorum_timeout_s, s.store_gate_timeout_s, s.soak.total_seconds(),
                s.bmc_attempts, s.reimage_attempts, s.poll_s) == (43.0, 41.0, 42.0, 1.0, 5, 2, 0.05)
        assert _executions(ledger, rec.id) == [s.to_json()]  # what the engine ran with: the saved request
        releases = ledger.store_releases()
        assert {sid: releases[sid][0] for sid in w.fleet.stores} == {
            "dk-0001": "v1", "dk-0002": "v2", "dk-0003": "v2", "no-0001": "v1", "no-0002": "v1"}
        await ledger_matches_sim(w.url, ledger, w.fleet)

        # resume: the saved request, with what an option overrides (and that override saved)
        request = RolloutRequest.build(release="v3", stores=("no-0002",), canary=0, waves=("100%",),
                                       settings=s.model_copy(update={"poll_s": 0.05}))
        made = ops.record_rollout(w.fleet, engine, request, ep.clock(), operator="test")  # recorded, not run
        code, out = await asyncio.to_thread(_cli, "rollout", "resume", made.record.id, "--quorum-timeout", "7",
                                            "--bmc-attempts", "6", "--sim", w.url, "-i", inv, "--json")
        assert code == 0, out
        after = ledger.rollout(made.record.id)
        assert after.status is RolloutStatus.succeeded
        want = request.settings.model_copy(update={"quorum_timeout_s": 7.0, "bmc_attempts": 6})
        assert _executions(ledger, made.record.id) == [want.to_json()]
        assert ops.saved_request(after) == request.model_copy(update={"settings": want})
        changed = ledger.events(made.record.id, kind="request_changed")
        assert [e["detail"] for e in changed] == [{"bmc_attempts": 6, "quorum_timeout_s": 7.0}]
        assert ledger.store_releases()["no-0002"][0] == "v3"
        assert (await get_json(f"{w.url}/sim/violations"))["total"] == 0
        await ledger_matches_sim(w.url, ledger, w.fleet)

    run_world(tmp_path, body, monkeypatch)
