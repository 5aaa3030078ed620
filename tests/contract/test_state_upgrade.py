"""``edgefleet db upgrade`` and the refusal of a store behind head, on a real SQLite file and a real
PostgreSQL 15 server (started privately on 127.0.0.1).

``tests/data/state_ledger_0002.json`` is a ledger written by edgefleet at schema revision 0002 (the
last release before release trains) through real operations against the fleet simulator: every
store provisioned on v1, a rollout of v2 that left one store split and locked, a fleet rollback of
v2, and a rollout of v3 recorded but not started. It holds every row of every table and, under
``expected``, what that edgefleet read back from it (each operation's status, the catalog, the
stores' releases). Here it is loaded into a store at revision 0002, upgraded to this edgefleet's
head (whatever that is: each new migration runs against it) and read again.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import multiprocessing
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from alembic import command
from sqlalchemy import Boolean, DateTime, Engine, Integer, MetaData, insert, text

from edgefleet.errors import SchemaOutOfDate
from edgefleet.releases.catalog import ReleaseCatalog
from edgefleet.rollout import operations as ops
from edgefleet.rollout.ledger import Ledger, RolloutStatus
from edgefleet.rollout.request import RolloutRequest
from edgefleet.state.db import close_all, create_state_engine, state_schema, upgrade_state
from edgefleet.state.migrate import BASELINE, Migrated, SchemaState, head_revision, script_config
from tests.contract.rollout_world import make_inventory
from tests.contract.test_state_migrations import _differences, _legacy_store, _raw, _revision
from tests.pg import Postgres, start_postgres

LEDGER = Path(__file__).resolve().parents[1] / "data" / "state_ledger_0002.json"
RELEASED = "0002"  # the schema revision of the ledger above
SPLIT_ROLLOUT = "ro-20261103T231145-5b575f"
PLANNED_ROLLOUT = "ro-20261104T084743-9aa070"
_db_names = itertools.count()


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
    name = f"u{os.getpid()}_{next(_db_names)}"
    pg.createdb(name)
    return pg.url(name)


def _at(url: str, revision: str) -> Engine:
    """A store of ``url`` built by the migrations up to ``revision`` (what that edgefleet made)."""
    engine = _raw(url)
    cfg = script_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return engine


def _value(column: Any, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(column.type, DateTime):
        when = datetime.fromisoformat(value)
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when  # the ledger writes UTC only
    if isinstance(column.type, Boolean):
        return bool(value)
    return value


def _store_of_the_released_edgefleet(url: str) -> dict[str, Any]:
    """The ledger file loaded into a store at revision 0002; returns what that edgefleet read from it."""
    data = json.loads(LEDGER.read_text())
    assert data["revision"] == RELEASED
    engine = _at(url, RELEASED)
    meta = MetaData()
    meta.reflect(engine)
    with engine.begin() as conn:
        for name, rows in data["tables"].items():
            table = meta.tables[name]
            if rows:
                conn.execute(insert(table), [{k: _value(table.c[k], v) for k, v in row.items()} for row in rows])
            serial = "id" in table.c and isinstance(table.c.id.type, Integer)
            if engine.dialect.name == "postgresql" and serial and rows:
                # rows were inserted with their ids: move the sequence past them, as the inserts
                # of the edgefleet that wrote them did
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                                  f"(SELECT max(id) FROM {name}))"))
    engine.dispose()
    expected: dict[str, Any] = data["expected"]
    return expected


def _contains(actual: Any, expected: Any, where: str = "") -> None:
    """``actual`` holds everything ``expected`` does (a newer edgefleet may add keys, never lose one)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        for k, v in expected.items():
            assert k in actual, f"{where}.{k} missing"
            _contains(actual[k], v, f"{where}.{k}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _contains(a, e, f"{where}[{i}]")
    else:
        assert json.loads(json.dumps(actual, default=str)) == expected, f"{where}: {actual!r} != {expected!r}"


def _cli(args: list[str], url: str, tmp: Path) -> tuple[int, str]:
    """``edgefleet ARGS`` in process on the store at ``url``: (exit code, stdout + stderr)."""
    from edgefleet.cli import main

    out, err = io.StringIO(), io.StringIO()
    env = {"EDGEFLEET_HOME": str(tmp / "home"), "EDGEFLEET_STATE_URL": url, "COLUMNS": "400"}
    with mock.patch.object(sys, "argv", ["edgefleet", *args]), mock.patch.dict(os.environ, env), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue() + err.getvalue()


def test_a_ledger_of_the_released_edgefleet_upgrades_and_its_history_still_reads(url: str, tmp_path: Path) -> None:
    expected = _store_of_the_released_edgefleet(url)
    head = head_revision()
    before = state_schema(url)
    assert before.revision == RELEASED
    assert before.state is (SchemaState.current if head == RELEASED else SchemaState.behind)
    if head != RELEASED:  # every command refuses the store until it is upgraded
        with pytest.raises(SchemaOutOfDate, match=rf"revision {RELEASED}; this edgefleet needs revision {head}"):
            create_state_engine(url)
        code, out = _cli(["rollout", "status"], url, tmp_path)
        assert code == 1 and "edgefleet db upgrade" in out, out

    code, out = _cli(["db", "upgrade", "--json"], url, tmp_path)
    assert code == 0, out
    report = json.loads(out)
    assert (report["revision"], report["head"]) == (RELEASED, head)
    assert report["done"] == ("current" if head == RELEASED else "upgraded")
    assert _revision(_raw(url)) == head

    engine = create_state_engine(url)
    try:
        assert _differences(engine) == []
        ledger = Ledger(engine)
        assert sorted(r.id for r in ledger.rollouts(limit=100)) == sorted(expected["rollouts"])
        for rid, status in expected["rollouts"].items():
            _contains(ops.status(engine, rid), status, rid)
        _contains([r.to_json() for r in ReleaseCatalog(engine).list()], expected["releases"], "releases")
        assert {s: list(v) for s, v in ledger.store_releases().items()} == expected["store_releases"]
        assert len(ledger.events(limit=1_000_000)) == expected["events"]
        assert ledger.split_runs(SPLIT_ROLLOUT)  # the split store is still locked by its rollout
        # and the ledger goes on: the planned rollout is aborted, a new one is recorded
        now = datetime(2026, 11, 5, 21, 30, tzinfo=UTC)
        assert ops.abort(engine, PLANNED_ROLLOUT, now).status is RolloutStatus.aborted
        fleet = make_inventory(tmp_path / "inventory")
        made = ops.record_rollout(fleet, engine, RolloutRequest.build(release="v3", stores=("dk-0001",), canary=0,
                                                                      waves=("100%",)), now, operator="dave")
        assert [r.store for r in ledger.runs(made.record.id)] == ["dk-0001"]
        assert len(ledger.events(limit=1_000_000)) > expected["events"]
    finally:
        engine.dispose()
        close_all()


@pytest.mark.parametrize("legacy", [False, True], ids=["revision-0001", "before-revisions"])
def test_an_old_schema_is_refused_naming_the_store_the_revisions_and_the_command(
        url: str, tmp_path: Path, legacy: bool) -> None:
    if legacy:
        _legacy_store(url)
    else:
        _at(url, BASELINE).dispose()
    head = head_revision()
    with pytest.raises(SchemaOutOfDate) as err:
        create_state_engine(url)
    e = err.value
    assert (e.revision, e.head) == (None if legacy else BASELINE, head) and e.exit_code == 1
    text_ = str(e)
    assert url in text_ and f"needs revision {head}" in text_ and "`edgefleet db upgrade`" in text_
    assert ("written before schema revisions existed" if legacy else f"at schema revision {BASELINE}") in text_
    for args in (["rollout", "status"], ["release", "list"], ["db", "status"]):
        code, out = _cli(args, url, tmp_path)
        assert code == 1 and "edgefleet db upgrade" in out and "Traceback" not in out, (args, out)
    assert _revision(_raw(url)) == (None if legacy else BASELINE)  # refusing changed nothing
    assert upgrade_state(url).done is (Migrated.adopted if legacy else Migrated.upgraded)
    code, out = _cli(["db", "status"], url, tmp_path)
    assert code == 0 and f"revision {head}, head {head}: is at head" in out, out
    close_all()


def test_a_store_of_a_newer_edgefleet_is_refused_by_the_upgrade_too(url: str, tmp_path: Path) -> None:
    create_state_engine(url).dispose()
    engine = _raw(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(SchemaOutOfDate, match=r"schema revision 9999.*newer edgefleet; use that version"):
        upgrade_state(url)
    code, out = _cli(["db", "status"], url, tmp_path)
    assert code == 1 and "written by a newer edgefleet" in out, out
    assert _revision(_raw(url)) == "9999"


def test_db_status_creates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "none" / "edgefleet.db"
    code, out = _cli(["db", "status"], f"sqlite:///{db}", tmp_path)
    assert code == 0 and "has no edgefleet tables yet" in out, out
    assert not db.exists() and not db.parent.exists()


def _upgrade_slowly(url: str, barrier: Any, out: Any) -> None:
    """In a child process: ``edgefleet db upgrade``'s work, with each alembic upgrade slowed down so
    that two processes that both decided to upgrade would overlap."""
    real = command.upgrade

    def slow(*a: Any, **kw: Any) -> None:
        import time

        time.sleep(0.5)
        real(*a, **kw)

    command.upgrade = slow  # type: ignore[assignment]
    barrier.wait()
    try:
        report = upgrade_state(url)
        out.put(report.done.value if report.done else "none")
    except Exception as e:
        out.put(f"error: {e}")


@pytest.mark.parametrize("legacy", [False, True], ids=["revision-0001", "before-revisions"])
def test_two_processes_upgrading_one_store_at_once_migrate_it_once(url: str, legacy: bool) -> None:
    if legacy:
        _legacy_store(url)
    else:
        _at(url, BASELINE).dispose()
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_upgrade_slowly, args=(url, barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert results == sorted(["current", "adopted" if legacy else "upgraded"])
    engine = _raw(url)
    with engine.connect() as conn:
        assert list(conn.execute(text("SELECT version_num FROM alembic_version"))) == [(head_revision(),)]
    assert _differences(engine) == []
    if legacy:  # its rows kept, once each
        assert [r.store for r in Ledger(engine).runs("ro-old")] == ["s1", "s2", "s3"]
    engine.dispose()
