"""A state store's schema against this edgefleet's head revision (alembic).

The alembic script directory is package data (``edgefleet/state/migrations``); the ``Config`` is
built here, so no alembic.ini is needed at run time. ``migrate`` decides, under a lock:

- a store at head: nothing to do (read only, no lock);
- a fresh store (none of edgefleet's tables): ``create_all``, then stamp head (alembic's cookbook
  "building an up to date database from scratch"); every command may do this;
- a store behind head: a revision this edgefleet knows but older than head, or a store written
  before migrations existed (the tables, no ``alembic_version``): refused (``SchemaOutOfDate``,
  naming the store, its revision, the head and ``edgefleet db upgrade``) unless ``upgrade`` is
  true, which only that command passes. Then a pre-migration store is stamped at the baseline
  revision ``0001``, which describes that schema, and upgraded to head. An upgrade is a deliberate
  step (a person backs up a production ledger first), never a side effect of ``rollout status``;
- a store ahead of head (a revision this edgefleet does not know: a newer edgefleet wrote it):
  refused, always.

The lock makes two processes migrating the same store at once migrate it once: SQLite takes its
write lock first (``BEGIN IMMEDIATE``; the other waits up to the busy timeout), PostgreSQL a
transaction-scoped advisory lock. Every step runs in that one transaction, and the second process
re-reads the revision after the first committed.
"""

from __future__ import annotations

from enum import StrEnum

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, MetaData, inspect, text

from edgefleet.errors import SchemaOutOfDate

__all__ = ["BASELINE", "UPGRADE_COMMAND", "Migrated", "SchemaState", "current_revision", "head_revision", "migrate",
           "schema_state", "script_config", "store_name"]

BASELINE = "0001"
"""The revision describing every store written before migrations existed."""
UPGRADE_COMMAND = "edgefleet db upgrade"
"""The command that brings a store behind head to head (named by every refusal)."""
_ADVISORY_KEY = 0x656467656C6565  # "edgelee": PostgreSQL advisory lock id of the migration


class SchemaState(StrEnum):
    """Where a store's schema stands against this edgefleet's head (``edgefleet db status``)."""

    empty = "empty"
    """No edgefleet table yet: the first command creates them at head."""
    current = "current"
    """At head."""
    behind = "behind"
    """An older revision, or written before revisions existed: ``edgefleet db upgrade``."""
    ahead = "ahead"
    """A revision this edgefleet does not know: written by a newer edgefleet."""


class Migrated(StrEnum):
    current = "current"
    """Already at head: nothing done."""
    created = "created"
    """A fresh store: tables created, stamped at head."""
    adopted = "adopted"
    """Written before migrations existed: stamped at the baseline, then upgraded."""
    upgraded = "upgraded"
    """Upgraded from an older revision."""


def script_config() -> Config:
    """Alembic's configuration for the state store's migrations, without an ini file."""
    cfg = Config()
    cfg.set_main_option("script_location", "edgefleet.state:migrations")
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(script_config()).get_current_head()
    assert head is not None
    return head


def store_name(engine: Engine) -> str:
    """The store's URL for messages, without its password."""
    return engine.url.render_as_string(hide_password=True)


def current_revision(conn: Connection) -> str | None:
    """The store's schema revision (None: no ``alembic_version``, i.e. fresh or pre-migration)."""
    return MigrationContext.configure(conn).get_current_revision()


def schema_state(engine: Engine, metadata: MetaData) -> tuple[str | None, SchemaState]:
    """The store's revision and where it stands against head (reads only)."""
    script = ScriptDirectory.from_config(script_config())
    with engine.connect() as conn:
        current = current_revision(conn)
        tables = set(inspect(conn).get_table_names())
    if current == script.get_current_head():
        return current, SchemaState.current
    if current is None:
        return None, SchemaState.behind if tables & set(metadata.tables) else SchemaState.empty
    known = {s.revision for s in script.walk_revisions()}
    return current, SchemaState.behind if current in known else SchemaState.ahead


def _refuse_behind(engine: Engine, current: str | None, head: str) -> SchemaOutOfDate:
    what = (f"at schema revision {current}" if current is not None
            else "written before schema revisions existed (no alembic_version table)")
    return SchemaOutOfDate(
        f"the state store {store_name(engine)} is {what}; this edgefleet needs revision {head}. Back the store up, "
        f"then run `{UPGRADE_COMMAND}` (with the same EDGEFLEET_STATE_URL / EDGEFLEET_HOME) to upgrade it",
        store=store_name(engine), revision=current, head=head)


def _refuse_ahead(engine: Engine, current: str, head: str) -> SchemaOutOfDate:
    return SchemaOutOfDate(
        f"the state store {store_name(engine)} is at schema revision {current}, which this edgefleet does not know "
        f"(its newest is {head}): it was written by a newer edgefleet; use that version",
        store=store_name(engine), revision=current, head=head)


def _lock(conn: Connection) -> None:
    backend = conn.engine.dialect.name
    if backend == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif backend == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_KEY})


def migrate(engine: Engine, metadata: MetaData, *, upgrade: bool = False) -> Migrated:
    """Bring the store behind ``engine`` to the head revision, or refuse (see the module docstring);
    ``metadata`` holds every table at head. ``upgrade``: a store behind head may be upgraded (only
    ``edgefleet db upgrade`` passes it); otherwise it raises SchemaOutOfDate."""
    cfg = script_config()
    script = ScriptDirectory.from_config(cfg)
    head = script.get_current_head()
    assert head is not None
    known = {s.revision for s in script.walk_revisions()}
    with engine.connect() as conn:
        current = current_revision(conn)
        if current == head:
            return Migrated.current
        if current is not None and current not in known:
            raise _refuse_ahead(engine, current, head)
        if current is not None and not upgrade:  # behind: refused without taking the lock
            raise _refuse_behind(engine, current, head)
        conn.rollback()
        _lock(conn)
        current = current_revision(conn)  # again, under the lock: another process may have migrated it
        if current == head:
            conn.commit()
            return Migrated.current
        if current is not None and current not in known:
            raise _refuse_ahead(engine, current, head)
        fresh = current is None and not set(inspect(conn).get_table_names()) & set(metadata.tables)
        if not fresh and not upgrade:
            raise _refuse_behind(engine, current, head)
        cfg.attributes["connection"] = conn
        if fresh:
            metadata.create_all(conn)
            command.stamp(cfg, "head")
            done = Migrated.created
        else:
            if current is None:
                command.stamp(cfg, BASELINE)
            command.upgrade(cfg, "head")
            done = Migrated.adopted if current is None else Migrated.upgraded
        conn.commit()
        return done
