"""A resumed operation runs with exactly the engine settings it was started with: every field of
``EngineSettings`` set to a value other than its default, the operation interrupted mid-reimage
against the fleet simulator, then resumed from the ledger alone (no settings passed). Each
execution records the settings it runs with (``execution_started``); both must equal those of the
start, compared whole. ``seed_public_url`` must also take effect after the resume: it names a
forwarder on 127.0.0.1 in front of the run's seed server, and the simulator's BMCs fetch the
resumed run's media through it."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from edgefleet.rollout import operations as ops
from edgefleet.rollout.executor import EngineSettings
from edgefleet.rollout.ledger import Ledger, RolloutStatus, RunStatus
from tests.contract.rollout_world import (
    PASSWORD,
    PASSWORD_ENV,
    ledger_matches_sim,
    make_inventory,
    release_home,
    running_world,
)
from tests.helpers import require_tool

pytestmark = [pytest.mark.slow, pytest.mark.clock]  # secrets, Talos API mTLS and seed tokens on the real clock

START = datetime(2026, 11, 3, 21, 30, tzinfo=UTC)  # 22:30 in Copenhagen: inside the 22:00-05:00 window
STORE = "dk-0003"  # a control plane and a worker


class SeedForwarder:
    """A TCP forwarder on 127.0.0.1 (what ``seed_public_url`` names: a reverse proxy or VPN address in
    front of the seed server). It forwards each connection to the seed server of the operation's
    latest execution, as that execution recorded it in the ledger, and counts them per execution."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        self.rollout = ""
        self.by_execution: dict[int, int] = {}
        self.port = 0

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started = self.ledger.events(self.rollout, kind="execution_started")
        host, port = started[-1]["detail"]["seed_server"].rsplit(":", 1)
        self.by_execution[len(started)] = self.by_execution.get(len(started), 0) + 1
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @contextlib.asynccontextmanager
    async def serving(self) -> contextlib.AbstractAsyncContextManager[None]:  # type: ignore[misc]
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        async with server:
            yield


def custom_settings(tmp: Path, seed_url: str) -> EngineSettings:
    pre, post = tmp / "pre.yml", tmp / "post.yml"
    for path in (pre, post):
        path.write_text("- hosts: all\n  gather_facts: false\n  tasks:\n    - debug:\n"
                        "        msg: \"{{ edgefleet_hook_store }} {{ edgefleet_hook_release }}\"\n"
                        "      run_once: true\n")
    return EngineSettings(
        max_concurrent=3, max_per_region=2, max_per_country=2, node_duration=timedelta(minutes=11),
        soak=timedelta(seconds=42), wave_soak=timedelta(minutes=3), node_ready_timeout_s=30.0, quorum_timeout_s=31.0,
        store_gate_timeout_s=32.0, window_wait_max_s=20.0, poll_s=0.05, power_deadline_s=9.5, heartbeat_s=0.75,
        seed_public_url=seed_url, seed_token_ttl_s=1234.0, step_margin=timedelta(minutes=4), pre_hook=str(pre),
        post_hook=str(post), hook_timeout_s=120.0, bmc_attempts=3, bmc_backoff_s=0.125, reimage_attempts=2,
        inband_deadline_s=99.0)


def test_a_resume_runs_with_exactly_the_settings_of_the_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    require_tool(shutil.which("packer"), "packer (Debian package `packer`)")
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    fleet = make_inventory(tmp_path / "inventory")
    home, engine = release_home(tmp_path, ["v1"])
    ledger = Ledger(engine)
    forwarder = SeedForwarder(ledger)

    async def main() -> None:
        async with forwarder.serving(), running_world(fleet, home, boot_seconds=60, time_scale=120, clock=START,
                                                      ca_out=tmp_path / "talos-ca.pem") as (url, ep):
            start = custom_settings(tmp_path, f"http://127.0.0.1:{forwarder.port}")
            default = EngineSettings()
            assert [f for f in EngineSettings.model_fields if getattr(start, f) == getattr(default, f)] == []
            made = ops.create_provision(fleet, engine, home, STORE, "v1", ep.clock(), settings=start, operator="test")
            rid = forwarder.rollout = made.record.id
            task = asyncio.create_task(ops.run(fleet, home, engine, ep, rid, settings=start))
            for _ in range(1500):  # interrupted once its first node is booting from the media
                await asyncio.sleep(0.02)
                if ledger.events(rid, kind="reimage_booting") or task.done():
                    break
            assert not task.done(), task
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert ledger.rollout(rid).status is RolloutStatus.running
            assert forwarder.by_execution.get(1, 0) >= 1  # the first node's media came through it

            rec = await ops.resume(fleet, home, engine, ep, rid)  # settings from the ledger alone
            assert rec.status is RolloutStatus.succeeded, ops.status(engine, rid)
            assert [r.status for r in ledger.runs(rid)] == [RunStatus.succeeded]
            executions = ledger.events(rid, kind="execution_started")
            assert len(executions) == 2 and executions[1]["detail"]["resumed"]
            for e in executions:
                assert EngineSettings.model_validate(e["detail"]["settings"]) == start
                assert e["detail"]["settings"] == start.to_json()
            # the resumed execution's seed URLs named the forwarder too: its BMC fetched through it
            assert forwarder.by_execution.get(2, 0) >= 1, forwarder.by_execution
            assert {e["kind"] for e in ledger.events(rid, store=STORE)} >= {"pre_hook_passed", "post_hook_passed"}
            async with httpx.AsyncClient(trust_env=False) as c:
                assert (await c.get(f"{url}/sim/violations")).json()["total"] == 0
            await ledger_matches_sim(url, ledger, fleet.model_copy(update={"stores": {STORE: fleet.stores[STORE]}}))

    try:
        asyncio.run(asyncio.wait_for(main(), 240))
    finally:
        engine.dispose()
