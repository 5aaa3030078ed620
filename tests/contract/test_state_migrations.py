"""The state store's migrations on a real SQLite file and a real PostgreSQL server (started
privately on 127.0.0.1): a fresh store is created and stamped at head, a store written before
migrations existed is refused until ``edgefleet db upgrade`` adopts it (stamped at the baseline,
then upgraded), the migrations and the table declarations agree, a revision from a newer edgefleet
is refused, and two processes opening one store at once create it once."""

from __future__ import annotations

import asyncio
import importlib
import itertools
import json
import multiprocessing
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, text

from edgefleet.errors import SchemaOutOfDate, StateError
from edgefleet.rollout import operations as ops
from edgefleet.rollout.executor import EngineSettings
from edgefleet.rollout.ledger import Ledger, RolloutStatus, RunStatus
from edgefleet.state.db import TABLE_MODULES, Base, close_all, create_state_engine, upgrade_state
from edgefleet.state.migrate import BASELINE, Migrated, head_revision, migrate, script_config
from tests.contract.rollout_world import (
    PASSWORD,
    PASSWORD_ENV,
    get_json,
    ledger_matches_sim,
    ledger_url,
    make_inventory,
    release_home,
    running_world,
)
from tests.helpers import require_tool
from tests.pg import Postgres, start_postgres

START = datetime(2026, 11, 3, 21, 30, tzinfo=UTC)  # 22:30 in Copenhagen: inside the 22:00-05:00 window
DATA = Path(__file__).resolve().parents[1] / "data"
SCHEMA_0001 = DATA / "state_schema_0001.sql"  # what create_all made before migrations existed
_db_names = itertools.count()

for _m in TABLE_MODULES:
    importlib.import_module(_m)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with start_postgres() as pg:
        yield pg


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'edgefleet.db'}"
    pg: Postgres = request.getfixturevalue("postgres")
    name = f"m{os.getpid()}_{next(_db_names)}"
    pg.createdb(name)
    return pg.url(name)


def _raw(url: str) -> Engine:
    """An engine with nothing created or migrated (to build a store by hand)."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return create_engine(url)


def _revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _differences(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


def _legacy_store(url: str) -> None:
    """A store as the last edgefleet without migrations left it: its schema (the SQLite dump of that
    version; on PostgreSQL the baseline revision, checked against the dump below), no alembic_version,
    and a rollout in flight with its policy in that version's shape."""
    engine = _raw(url)
    if engine.dialect.name == "sqlite":
        with engine.begin() as conn:
            for stmt in SCHEMA_0001.read_text().split(";"):
                body = "\n".join(line for line in stmt.splitlines() if not line.startswith("--")).strip()
                if body:
                    conn.exec_driver_sql(body)
    else:
        cfg = script_config()
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, BASELINE)
            conn.execute(text("DROP TABLE alembic_version"))
    policy = {"settings": {"max_concurrent": 2, "node_ready_timeout_s": 90.0, "poll_s": 0.5},
              "canary": 1, "waves": ["1", "100%"], "wave_groups": [], "failure_budget": "10%"}
    now = "2026-11-03 21:30:00+00:00"
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO rollouts (id, kind, release, status, reason, policy, plan, operator, "
                          "created_at, updated_at, heartbeat_at, abort_requested, decision) VALUES "
                          "('ro-old', 'rollout', 'v2', 'running', '', :policy, :plan, 'alice', :now, :now, :now, "
                          "false, '')"),
                     {"policy": json.dumps(policy), "plan": json.dumps({"release": "v2", "waves": []}), "now": now})
        conn.execute(text("INSERT INTO waves (rollout, \"index\", name, status, budget, failures, reason) VALUES "
                          "('ro-old', 0, 'canary', 'passed', 0, 0, ''), ('ro-old', 1, 'wave 1', 'running', 1, 0, '')"))
        for store, wave, status, step in (("s1", 0, "succeeded", "done"), ("s2", 1, "running", "forward:s2-n1:boot"),
                                          ("s3", 1, "pending", "")):
            conn.execute(text("INSERT INTO store_runs (rollout, store, wave, status, from_release, to_release, step, "
                              "reason, detail) VALUES ('ro-old', :s, :w, :st, 'v1', 'v2', :step, '', '{}')"),
                         {"s": store, "w": wave, "st": status, "step": step})
        conn.execute(text("INSERT INTO store_release (store, current, last_known_good, updated_at) VALUES "
                          "('s1', 'v2', 'v1', :now), ('s2', 'v1', 'v1', :now), ('s3', 'v1', 'v1', :now)"), {"now": now})
    engine.dispose()


def test_a_fresh_store_is_created_and_stamped_at_head(url: str) -> None:
    engine = _raw(url)
    assert migrate(engine, Base.metadata) is Migrated.created
    assert _revision(engine) == head_revision()
    assert _differences(engine) == []
    assert migrate(engine, Base.metadata) is Migrated.current
    engine.dispose()


def test_the_migrations_from_nothing_equal_the_declarations(url: str) -> None:
    """Every revision applied in order builds exactly the tables the code declares: a revision that
    forgets a column (or a declaration that forgets its revision) fails here."""
    engine = _raw(url)
    cfg = script_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    assert _revision(engine) == head_revision()
    assert _differences(engine) == []
    engine.dispose()


def _shape(engine: Engine) -> dict[str, Any]:
    insp = inspect(engine)
    return {t: {"columns": [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(t)],
                "pk": insp.get_pk_constraint(t)["constrained_columns"],
                "indexes": sorted((i["name"], tuple(i["column_names"])) for i in insp.get_indexes(t)),
                "unique": sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(t))}
            for t in sorted(insp.get_table_names()) if t != "alembic_version"}


def test_the_baseline_revision_is_the_schema_before_migrations(tmp_path: Path) -> None:
    old = f"sqlite:///{tmp_path / 'old.db'}"
    _legacy_store(old)
    base = _raw(f"sqlite:///{tmp_path / 'base.db'}")
    cfg = script_config()
    with base.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, BASELINE)
    assert _shape(create_engine(old)) == _shape(base)


def test_a_store_from_before_migrations_is_adopted_and_keeps_its_rows(url: str) -> None:
    _legacy_store(url)
    with pytest.raises(SchemaOutOfDate, match=r"written before schema revisions existed.*`edgefleet db upgrade`"):
        create_state_engine(url)  # what every command does first: open_state
    assert upgrade_state(url).done is Migrated.adopted  # edgefleet db upgrade
    engine = create_state_engine(url)
    assert _revision(engine) == head_revision()
    assert _differences(engine) == []
    ledger = Ledger(engine)
    rec = ledger.rollout("ro-old")
    assert (rec.status, rec.release, rec.operator) == (RolloutStatus.running, "v2", "alice")
    assert [(r.store, r.status, r.step) for r in ledger.runs("ro-old")] == [
        ("s1", RunStatus.succeeded, "done"), ("s2", RunStatus.running, "forward:s2-n1:boot"),
        ("s3", RunStatus.pending, "")]
    assert [w.status for w in ledger.waves("ro-old")] == ["passed", "running"]
    assert ledger.store_releases()["s1"] == ("v2", "v1")
    assert [r.earliest_start for r in ledger.runs("ro-old")] == [None, None, None]  # not planned in time then
    request = ops.saved_request(rec)  # the request as that version saved it, read whole
    assert (request.kind, request.release, request.canary, request.waves) == ("rollout", "v2", 1, ("1", "100%"))
    assert (request.settings.max_concurrent, request.settings.node_ready_timeout_s) == (2, 90.0)
    engine.dispose()
    again = _raw(url)
    assert migrate(again, Base.metadata) is Migrated.current
    again.dispose()


def test_a_store_from_a_newer_edgefleet_is_refused(url: str) -> None:
    create_state_engine(url).dispose()
    engine = _raw(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(StateError, match=r"schema revision 9999.*newer edgefleet"):
        create_state_engine(url)
    engine.dispose()


def _open_slowly(url: str, barrier: Any, out: Any) -> None:
    """In a child process: open the store, with ``create_all`` slowed down so that two processes
    that both decided to create the tables would overlap."""
    real = Base.metadata.create_all

    def slow(*a: Any, **kw: Any) -> None:
        time.sleep(0.5)
        real(*a, **kw)

    Base.metadata.create_all = slow  # type: ignore[method-assign]
    barrier.wait()
    try:
        out.put(migrate(_raw(url), Base.metadata).value)
    except Exception as e:
        out.put(f"error: {e}")


def test_two_processes_opening_one_store_at_once_migrate_it_once(url: str) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_open_slowly, args=(url, barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert results == ["created", "current"]
    engine = _raw(url)
    with engine.connect() as conn:
        assert list(conn.execute(text("SELECT version_num FROM alembic_version"))) == [(head_revision(),)]
    assert _differences(engine) == []
    engine.dispose()


def _make_legacy(db: Path) -> None:
    """Rewrite the SQLite store ``db`` as the last edgefleet without migrations would have left it:
    that version's schema (the dump), its rows (columns it did not have dropped), each operation's
    saved settings in that version's shape (``{"settings": {...}}``), no alembic_version."""
    legacy = db.with_name("legacy.db")
    src, dst = sqlite3.connect(db), sqlite3.connect(legacy)
    dst.executescript(SCHEMA_0001.read_text())
    for (table,) in list(dst.execute("SELECT name FROM sqlite_master WHERE type = 'table'")):
        cols = ", ".join(f'"{c[1]}"' for c in dst.execute(f'PRAGMA table_info("{table}")'))
        rows = src.execute(f'SELECT {cols} FROM "{table}"').fetchall()
        if rows:
            dst.executemany(f'INSERT INTO "{table}" ({cols}) VALUES ({", ".join("?" * len(rows[0]))})', rows)
    for rid, policy in list(dst.execute("SELECT id, policy FROM rollouts")):
        dst.execute("UPDATE rollouts SET policy = ?, plan = ? WHERE id = ?",
                    (json.dumps({"settings": json.loads(policy)["settings"]}), json.dumps({"stores": []}), rid))
    dst.commit()
    dst.close()
    src.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    os.replace(legacy, db)


@pytest.mark.slow
@pytest.mark.clock  # the store's secrets, Talos API mTLS and seed tokens on the real clock
def test_an_operation_interrupted_under_the_previous_schema_resumes_after_the_migration(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A provision interrupted mid-reimage, its ledger turned into one of the last version without
    migrations, opened (adopted: stamped at the baseline, upgraded), then resumed to success from that
    ledger alone; the simulator's nodes and the ledger agree."""
    require_tool(shutil.which("packer"), "packer (Debian package `packer`)")
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    fleet = make_inventory(tmp_path / "inventory")
    home, engine = release_home(tmp_path, ["v1"])
    url = ledger_url(home)
    store = "dk-0003"  # a control plane and a worker
    settings = EngineSettings(node_ready_timeout_s=30.0, quorum_timeout_s=30.0, store_gate_timeout_s=30.0,
                              window_wait_max_s=10.0, poll_s=0.05, heartbeat_s=0.5, power_deadline_s=5.0)

    async def main() -> None:
        async with running_world(fleet, home, boot_seconds=60, time_scale=120, clock=START,
                                 ca_out=tmp_path / "talos-ca.pem") as (sim, ep):
            made = ops.create_provision(fleet, engine, home, store, "v1", ep.clock(), settings=settings,
                                        operator="test")
            rid = made.record.id
            task = asyncio.create_task(ops.run(fleet, home, engine, ep, rid, settings=settings))
            for _ in range(1500):  # interrupted once its first node is booting from the media
                await asyncio.sleep(0.02)
                if Ledger(engine).events(rid, kind="reimage_booting") or task.done():
                    break
            assert not task.done(), task
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            engine.dispose()
            close_all()
            _make_legacy(home / "edgefleet.db")
            assert _revision(_raw(url)) is None

            assert upgrade_state(url).done is Migrated.adopted  # edgefleet db upgrade
            migrated = create_state_engine(url)
            try:
                assert _revision(migrated) == head_revision() and _differences(migrated) == []
                ledger = Ledger(migrated)
                assert ledger.rollout(rid).status is RolloutStatus.running
                rec = await ops.resume(fleet, home, migrated, ep, rid)  # settings from the old ledger alone
                assert rec.status is RolloutStatus.succeeded, ops.status(migrated, rid)
                started = ledger.events(rid, kind="execution_started")
                assert [e["detail"]["settings"] for e in started] == [settings.to_json()] * 2
                assert ledger.store_releases()[store] == ("v1", "v1")
                assert (await get_json(f"{sim}/sim/violations"))["total"] == 0
                await ledger_matches_sim(sim, ledger, fleet.model_copy(update={"stores": {store: fleet.stores[store]}}))
            finally:
                migrated.dispose()

    try:
        asyncio.run(asyncio.wait_for(main(), 240))
    finally:
        engine.dispose()
