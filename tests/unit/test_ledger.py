"""The rollout ledger on a real SQLite file: records, store locks (conditional updates, races
between two engines), the group-committing journal, fleet-rollback queries."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert

from edgefleet.errors import LockHeld, StateError, UnknownRollout
from edgefleet.rollout.ledger import (
    EventRow,
    Journal,
    Kind,
    Ledger,
    RolloutStatus,
    RunStatus,
    stmt_event,
    stmt_node,
    stmt_run,
    stmt_store_release,
)
from edgefleet.state.db import create_state_engine

NOW = datetime(2026, 11, 3, 22, 0, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = create_state_engine(f"sqlite:///{tmp_path / 'edgefleet.db'}")
    yield e
    e.dispose()


def _create(ledger: Ledger, rid: str = "ro-1") -> None:
    ledger.create_rollout(rollout_id=rid, kind=Kind.rollout, release="v2", now=NOW, policy={"max_concurrent": 3},
                          plan={"waves": []}, operator="alice", waves=[(0, "canary", 0), (1, "wave 1", 1)],
                          runs=[("s1", 0, "v1", "v2"), ("s2", 1, "v1", "v2"), ("s3", 1, None, "v2")])


def test_rollout_records_round_trip(engine: Engine) -> None:
    ledger = Ledger(engine)
    _create(ledger)
    rec = ledger.rollout("ro-1")
    assert (rec.kind, rec.release, rec.status, rec.operator) == (Kind.rollout, "v2", RolloutStatus.planned, "alice")
    assert rec.created_at.tzinfo is not None and rec.policy == {"max_concurrent": 3}
    assert [(w.index, w.name, w.budget) for w in ledger.waves("ro-1")] == [(0, "canary", 0), (1, "wave 1", 1)]
    runs = ledger.runs("ro-1")
    assert [(r.store, r.wave, r.status) for r in runs] == [("s1", 0, RunStatus.pending), ("s2", 1, RunStatus.pending),
                                                           ("s3", 1, RunStatus.pending)]
    ledger.write(stmt_run("ro-1", "s1", status=RunStatus.running, step="forward:s1-n1:reimage",
                          detail={"before": {"s1-n1": {"release": "v1", "ready": True}}}))
    r1 = ledger.runs("ro-1")[0]
    assert r1.step == "forward:s1-n1:reimage" and r1.detail["before"]["s1-n1"]["release"] == "v1"
    with pytest.raises(UnknownRollout, match=r"no rollout 'ro-x'.*ro-1") as ei:
        ledger.rollout("ro-x")
    assert ei.value.exit_code == 2
    assert [e["kind"] for e in ledger.events("ro-1")] == ["rollout_planned"]


def test_lock_is_exclusive_names_the_holder_and_only_the_same_rollout_takes_it_over(engine: Engine) -> None:
    ledger = Ledger(engine)
    ledger.acquire_lock("s1", "ro-a", NOW)
    with pytest.raises(LockHeld, match="store s1 is locked by operation ro-a") as e:
        ledger.acquire_lock("s1", "ro-b", NOW)
    assert e.value.exit_code == 1
    ledger.acquire_lock("s1", "ro-a", NOW)  # a resume of ro-a takes its own lock again
    assert ledger.lock_holder("s1") == "ro-a"
    assert not ledger.release_lock("s1", "ro-b")  # only the holder releases
    assert ledger.lock_holder("s1") == "ro-a"
    assert ledger.release_lock("s1", "ro-a")
    ledger.acquire_lock("s1", "ro-b", NOW)  # the row exists, holder NULL: the conditional UPDATE wins
    assert ledger.lock_holder("s1") == "ro-b" and ledger.locks_held_by("ro-b") == ["s1"]


def test_two_engines_racing_for_the_same_stores_get_each_store_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'race.db'}"
    engines = [create_state_engine(url), create_state_engine(url)]
    stores = [f"s{i}" for i in range(40)]
    won: dict[str, list[str]] = {"ro-a": [], "ro-b": []}
    refused: dict[str, list[str]] = {"ro-a": [], "ro-b": []}
    start = threading.Barrier(2)

    def grab(holder: str, engine: Engine) -> None:
        ledger = Ledger(engine)
        start.wait()
        for s in stores:
            try:
                ledger.acquire_lock(s, holder, NOW)
                won[holder].append(s)
            except LockHeld as e:
                other = "ro-b" if holder == "ro-a" else "ro-a"
                assert other in str(e)
                refused[holder].append(s)

    threads = [threading.Thread(target=grab, args=(h, e)) for h, e in zip(("ro-a", "ro-b"), engines, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert sorted(won["ro-a"] + won["ro-b"]) == sorted(stores)  # every store exactly once
        assert not set(won["ro-a"]) & set(won["ro-b"])
        assert sorted(refused["ro-a"]) == sorted(won["ro-b"]) and sorted(refused["ro-b"]) == sorted(won["ro-a"])
        ledger = Ledger(engines[0])
        assert all(ledger.lock_holder(s) in ("ro-a", "ro-b") for s in stores)
    finally:
        for e in engines:
            e.dispose()


def test_journal_group_commits_concurrent_writers(engine: Engine) -> None:
    ledger = Ledger(engine)
    _create(ledger)

    async def main() -> Journal:
        async with Journal(engine) as j:
            async def writer(i: int) -> None:
                for k in range(5):
                    await j.write(stmt_event(NOW, "step", rollout="ro-1", store=f"s{i}", detail={"k": k}))
            await asyncio.gather(*(writer(i) for i in range(50)))
            return j

    j = asyncio.run(main())
    assert j.statements == 250
    assert j.commits < 250 / 5  # writers of one loop tick share a transaction
    assert len(ledger.events("ro-1", kind="step")) == 250


def test_journal_failure_reaches_every_writer_of_the_batch(engine: Engine) -> None:
    async def main() -> None:
        async with Journal(engine) as j:
            bad = insert(EventRow).values(id=1, ts=NOW, kind="x", reason="", detail="{}")
            await j.write(bad)
            with pytest.raises(StateError, match="ledger refused a write"):
                await j.write(bad)  # the same primary key again
    asyncio.run(main())


def test_stores_on_a_release_wholly_or_partly(engine: Engine) -> None:
    ledger = Ledger(engine)
    ledger.write(*stmt_store_release("s1", "v2", "v1", NOW), *stmt_store_release("s2", "v1", "v1", NOW),
                 *stmt_node("s3-n1", "s3", "v2", True, NOW), *stmt_node("s3-n2", "s3", "v1", False, NOW))
    assert ledger.stores_on("v2") == ["s1", "s3"]
    ledger.write(*stmt_node("s3-n1", "s3", "v1", True, NOW))  # observed again: replaces the old row
    assert ledger.stores_on("v2") == ["s1"]
    assert ledger.node_states("s3") == {"s3-n1": ("s3", "v1", True), "s3-n2": ("s3", "v1", False)}
    assert ledger.store_releases(["s1"]) == {"s1": ("v2", "v1")}
    assert ledger.seen_store("s3") and ledger.seen_store("s1") and not ledger.seen_store("s9")


def test_abort_of_a_rollout_with_no_live_executor(engine: Engine) -> None:
    from edgefleet.rollout.operations import abort, status

    ledger = Ledger(engine)
    _create(ledger)
    ledger.write(stmt_run("ro-1", "s1", status=RunStatus.running, step="forward:s1-n2:booting"))
    ledger.acquire_lock("s1", "ro-1", NOW)
    ledger.set_rollout("ro-1", NOW, status=RolloutStatus.running.value, heartbeat_at=datetime(2026, 1, 1, tzinfo=UTC))
    rec = abort(engine, "ro-1", NOW)  # its heartbeat is stale: the executor is gone
    assert rec.status is RolloutStatus.aborted and rec.abort_requested
    runs = {r.store: r for r in ledger.runs("ro-1")}
    assert runs["s1"].status is RunStatus.failed and "forward:s1-n2:booting" in runs["s1"].reason
    assert runs["s2"].status is runs["s3"].status is RunStatus.skipped
    assert ledger.lock_holder("s1") is None
    assert status(engine)["counts"] == {"failed": 1, "skipped": 2}
    with pytest.raises(StateError, match="already aborted"):
        abort(engine, "ro-1", NOW)


def test_abort_of_a_live_rollout_only_asks(engine: Engine) -> None:
    from edgefleet.rollout.operations import abort

    ledger = Ledger(engine)
    _create(ledger)
    ledger.set_rollout("ro-1", NOW, status=RolloutStatus.running.value, heartbeat_at=datetime.now(UTC))
    rec = abort(engine, "ro-1", NOW)
    assert rec.status is RolloutStatus.running and rec.abort_requested  # the executor stops starting stores
    assert all(r.status is RunStatus.pending for r in ledger.runs("ro-1"))


def test_seed_url_tokens_never_reach_the_ledger() -> None:
    from edgefleet.rollout.executor import redact
    from edgefleet.seeds.server import mint_token

    token = mint_token(b"k" * 32, "releases/v1/talos.iso", "dk-0001-n1", 1_790_000_000)
    text = f"InsertMedia: could not fetch http://127.0.0.1:4444/{token}/releases/v1/talos.iso (HTTP 500)"
    assert redact(text) == "InsertMedia: could not fetch http://127.0.0.1:4444/<token>/releases/v1/talos.iso (HTTP 500)"
    assert token not in redact(text)


def test_advance_moves_only_along_the_state_table(engine: Engine) -> None:
    from edgefleet.errors import IllegalTransition
    from edgefleet.rollout.states import RunEvent

    ledger = Ledger(engine)
    _create(ledger)
    s1 = next(r for r in ledger.runs("ro-1") if r.store == "s1")
    with pytest.raises(IllegalTransition, match="pending cannot succeed"):
        ledger.advance(s1, RunEvent.succeed, rollout="ro-1")
    assert ledger.runs("ro-1")[0].status is RunStatus.pending  # nothing written
    assert ledger.advance(s1, RunEvent.start, rollout="ro-1", step="start") is RunStatus.running
    s1 = next(r for r in ledger.runs("ro-1") if r.store == "s1")
    assert ledger.advance(s1, RunEvent.split_, rollout="ro-1", reason="n2 on v2") is RunStatus.split_
    assert [(rid, r.store) for rid, r in ledger.split_runs()] == [("ro-1", "s1")]
    with pytest.raises(StateError, match="needs its rollout id"):
        ledger.advance(s1, RunEvent.start)


def test_reserve_releases_the_lock_on_every_way_out(engine: Engine) -> None:
    from edgefleet.rollout.journal import stmt_advance
    from edgefleet.rollout.states import RunEvent

    ledger = Ledger(engine)
    _create(ledger)

    async def main() -> None:
        async with ledger.reserve("s1", "ro-1", now=NOW) as run:  # a normal end
            assert (run.store, run.state, ledger.lock_holder("s1")) == ("s1", RunStatus.pending, "ro-1")
        assert ledger.lock_holder("s1") is None
        with pytest.raises(RuntimeError):
            async with ledger.reserve("s1", "ro-1", now=NOW):
                raise RuntimeError("a bug in the store's run")
        assert ledger.lock_holder("s1") is None

        async def held_forever() -> None:
            async with ledger.reserve("s2", "ro-1", now=NOW):
                await asyncio.sleep(3600)

        task = asyncio.create_task(held_forever())
        for _ in range(100):
            await asyncio.sleep(0)
            if ledger.lock_holder("s2") == "ro-1":
                break
        task.cancel()  # Ctrl-C, a Prefect cancellation, a shutdown
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ledger.lock_holder("s2") is None
        ledger.acquire_lock("s3", "ro-other", NOW)
        with pytest.raises(LockHeld, match="ro-other"):
            async with ledger.reserve("s3", "ro-1", now=NOW):
                pass
        assert ledger.lock_holder("s3") == "ro-other"  # not released by the one it refused
        # A run that ends split keeps its store locked until a person continues the repair.
        async with ledger.reserve("s1", "ro-1", now=NOW) as run:
            ledger.write(stmt_advance(run, RunEvent.start), stmt_advance(run, RunEvent.split_))
        assert ledger.lock_holder("s1") == "ro-1"

    asyncio.run(main())
    from edgefleet.errors import StoreSplit

    with pytest.raises(StoreSplit, match="edgefleet rollout resume ro-1") as e:
        ledger.acquire_lock("s1", "ro-2", NOW)
    assert isinstance(e.value, LockHeld)
    ledger.acquire_lock("s1", "ro-1", NOW)  # the same rollout (its resume) takes it
