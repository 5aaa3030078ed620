"""``--limit`` on the commands that act on stores, run against the fleet simulator (127.0.0.1):
``provision PATTERN`` provisions the stores it selects one after another (or ``--max-concurrent``
at once), one provision per store; ``rollout start --limit`` touches only the selected stores;
``rollout status --limit`` lists them; ``rollback --limit`` brings back only the selected stores
(the release is revoked all the same). After each step the simulator's oracle reports no
violation and the ledger agrees with what the simulator saw."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from edgefleet.cli import app
from edgefleet.errors import EdgefleetError
from edgefleet.releases.catalog import ReleaseCatalog, ReleaseState
from edgefleet.rollout.endpoints import Endpoints
from edgefleet.rollout.ledger import Ledger, RolloutRecord, RolloutStatus, RunStatus
from tests.contract.rollout_world import get_json, ledger_matches_sim
from tests.contract.test_rollout_sim import World, run_world

pytestmark = pytest.mark.slow


def _cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, list(args))
    if isinstance(r.exception, EdgefleetError):
        return r.exception.exit_code, str(r.exception)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r.exit_code, r.output


def _stores(ledger: Ledger, rec: RolloutRecord) -> list[str]:
    return sorted(r.store for r in ledger.runs(rec.id))


def _new(ledger: Ledger, seen: set[str]) -> list[RolloutRecord]:
    """The operations recorded since ``seen`` (which it then includes), oldest first."""
    fresh = sorted((r for r in ledger.rollouts(100) if r.id not in seen), key=lambda r: (r.created_at, r.id))
    seen.update(r.id for r in fresh)
    return fresh


async def _checked(w: World, ledger: Ledger) -> None:
    assert (await get_json(f"{w.url}/sim/violations"))["total"] == 0
    await ledger_matches_sim(w.url, ledger, w.fleet)


def test_limit_selects_the_stores_provision_rollout_and_rollback_act_on(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EDGEFLEET_STATE_URL", raising=False)

    async def body(w: World, ep: Endpoints, engine: Any) -> None:
        ledger = Ledger(engine)
        seen: set[str] = set()
        catalog = ReleaseCatalog(engine)
        assert catalog.get("v1").state is catalog.get("v2").state is ReleaseState.stable  # they reach any store
        fast = ["--sim", w.url, "-i", str(tmp_path / "inventory"), "--poll", "0.05", "--node-timeout", "4",
                "--quorum-timeout", "10", "--gate-timeout", "6"]

        # provision a pattern: two stores, one after another (the second starts when the first is done)
        code, out = await asyncio.to_thread(_cli, "provision", "country_dk:!dk-0001", "-r", "v1", *fast)
        assert code == 0, out
        first, second = _new(ledger, seen)
        assert [(r.kind.value, r.status, _stores(ledger, r)) for r in (first, second)] == [
            ("provision", RolloutStatus.succeeded, ["dk-0002"]), ("provision", RolloutStatus.succeeded, ["dk-0003"])]
        assert second.created_at >= first.updated_at
        # the other three at once (--limit, --max-concurrent 3): all started before any finished
        code, out = await asyncio.to_thread(_cli, "provision", "-l", "dk-0001,no-*", "--max-concurrent", "3",
                                            "-r", "v1", *fast)
        assert code == 0, out
        rest = _new(ledger, seen)
        assert sorted(s for r in rest for s in _stores(ledger, r)) == ["dk-0001", "no-0001", "no-0002"]
        assert all(r.status is RolloutStatus.succeeded for r in rest)
        assert max(r.created_at for r in rest) < min(r.updated_at for r in rest)
        assert {s: c for s, (c, _l) in ledger.store_releases().items()} == {s: "v1" for s in w.fleet.stores}
        await _checked(w, ledger)

        # rollout start --limit: v2 on the DK stores but dk-0001, nothing else touched
        code, out = await asyncio.to_thread(_cli, "rollout", "start", "-r", "v2", "-l", "country_dk:!dk-0001",
                                            "--canary", "0", "--waves", "100%", *fast, "--json")
        assert code == 0, out
        (rollout,) = _new(ledger, seen)
        assert rollout.status is RolloutStatus.succeeded and _stores(ledger, rollout) == ["dk-0002", "dk-0003"]
        releases = {s: c for s, (c, _l) in ledger.store_releases().items()}
        assert releases == {"dk-0001": "v1", "dk-0002": "v2", "dk-0003": "v2", "no-0001": "v1", "no-0002": "v1"}
        await _checked(w, ledger)

        # rollout status --limit lists the selected stores only
        code, out = await asyncio.to_thread(_cli, "rollout", "status", rollout.id, "-l", "*-0003", "-i",
                                            str(tmp_path / "inventory"), "--json")
        assert code == 0, out
        assert '"store": "dk-0003"' in out and '"store": "dk-0002"' not in out, out

        # rollback --limit: only dk-0003 goes back to v1; v2 is revoked, dk-0002 stays on it
        code, out = await asyncio.to_thread(_cli, "rollback", "-r", "v2", "-l", "dk-0003", "--reason", "test", *fast)
        assert code == 0, out
        (rollback,) = _new(ledger, seen)
        assert rollback.kind.value == "rollback" and rollback.status is RolloutStatus.succeeded
        assert [(r.store, r.status) for r in ledger.runs(rollback.id)] == [("dk-0003", RunStatus.succeeded)]
        releases = {s: c for s, (c, _l) in ledger.store_releases().items()}
        assert releases == {"dk-0001": "v1", "dk-0002": "v2", "dk-0003": "v1", "no-0001": "v1", "no-0002": "v1"}
        assert catalog.get("v2").state is ReleaseState.revoked
        await _checked(w, ledger)

    run_world(tmp_path, body, monkeypatch)
