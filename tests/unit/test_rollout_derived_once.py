"""Recording a rollout derives each fact once: the release row and the stores' current releases are
each read once, the plan is stored as rows (wave, earliest start, from-release) rather than as a
blob read back with every record, and the request is saved whole (real SQLite file; statements
counted with SQLAlchemy's cursor events)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event

from edgefleet.rollout import operations as ops
from edgefleet.rollout.ledger import Ledger, stmt_store_release
from edgefleet.rollout.plan import RolloutPolicy
from edgefleet.rollout.request import RolloutRequest
from edgefleet.state.db import create_state_engine
from tests.contract.rollout_world import make_inventory
from tests.contract.test_catalog import _release
from tests.helpers import make_stable

NOW = datetime(2026, 11, 3, 21, 30, tzinfo=UTC)  # inside the inventory's 22:00-05:00 window (Copenhagen)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = create_state_engine(f"sqlite:///{tmp_path / 'edgefleet.db'}")
    yield e
    e.dispose()


class Reads:
    """SELECTs per table, while counting."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.tables: list[str] = []

    def __enter__(self) -> Reads:
        event.listen(self.engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_a: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            self.tables.extend(re.findall(r"\bFROM (\w+)", statement))

    def count(self, table: str) -> int:
        return self.tables.count(table)


def test_recording_a_rollout_reads_the_release_and_current_releases_once(tmp_path: Path, engine: Engine) -> None:
    from edgefleet.releases.catalog import ReleaseCatalog

    fleet = make_inventory(tmp_path / "inv")
    ReleaseCatalog(engine).add(_release(tmp_path, "v2"))
    make_stable(ReleaseCatalog(engine), "v2")
    ledger = Ledger(engine)
    ledger.write(*stmt_store_release("dk-0001", "v1", "v1", NOW))
    policy = RolloutPolicy(canary=["dk-0002"], waves=(2, "100%"), max_concurrent=2,
                           node_duration=timedelta(minutes=10))
    with Reads(engine) as reads:
        made = ops.create_rollout(fleet, engine, "v2", policy, NOW, operator="test")
    assert reads.count("releases") == 1 and reads.count("store_release") == 1, reads.tables
    assert made.plan is not None and made.request is not None
    # the planned rows: every store of the plan with its wave, earliest start and from-release
    runs = {r.store: r for r in ledger.runs(made.record.id)}
    assert {s: (r.wave, r.earliest_start, r.from_release) for s, r in runs.items()} == {
        ps.store_id: (ps.wave, ps.start, ps.from_release) for ps in made.plan.stores()}
    assert runs["dk-0001"].from_release == "v1"
    # the request whole, not a second copy of the plan
    rec = ledger.rollout(made.record.id)
    assert ops.saved_request(rec) == made.request == RolloutRequest.of("rollout", "v2", policy)
    assert not hasattr(rec, "plan")
    assert ledger.plan_notes(made.record.id) == {"skipped": [], "unschedulable": []}


def test_reading_a_rollout_record_does_not_load_the_plan_notes(tmp_path: Path, engine: Engine) -> None:
    from edgefleet.releases.catalog import ReleaseCatalog

    fleet = make_inventory(tmp_path / "inv")
    ReleaseCatalog(engine).add(_release(tmp_path, "v2"))
    make_stable(ReleaseCatalog(engine), "v2")
    made = ops.create_rollout(fleet, engine, "v2", RolloutPolicy(canary=0, waves=("100%",)), NOW)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _k, st, *_a: statements.append(st))
    Ledger(engine).rollout(made.record.id)
    assert statements and not any("plan" in st for st in statements), statements
