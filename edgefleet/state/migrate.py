"""Bring a state store's schema to this edgefleet's head revision (alembic, run by ``open_state``).

The alembic script directory is package data (``edgefleet/state/migrations``); the ``Config`` is
built here, so no alembic.ini is needed at run time. Three cases, decided under a lock:

- a fresh store (none of edgefleet's tables): ``create_all``, then stamp head (alembic's cookbook
  "building an up to date database from scratch");
- a store written before migrations existed (the tables, no ``alembic_version``): stamp the
  baseline revision ``0001``, which describes that schema, then upgrade to head;
- a store with a revision: upgrade to head (nothing when it is there already).

The lock makes two processes opening the same store at once migrate it once: SQLite takes its
write lock first (``BEGIN IMMEDIATE``; the other waits up to the busy timeout), PostgreSQL a
transaction-scoped advisory lock. Every step runs in that one transaction, and the second process
re-reads the revision after the first committed. A store already at head is only read, no lock.
"""

from __future__ import annotations

from enum import StrEnum

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, MetaData, inspect, text

from edgefleet.errors import StateError

__all__ = ["BASELINE", "Migrated", "head_revision", "migrate", "script_config"]

BASELINE = "0001"
"""The revision describing every store written before migrations existed."""
_ADVISORY_KEY = 0x656467656C6565  # "edgelee": PostgreSQL advisory lock id of the migration


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


def _revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _lock(conn: Connection) -> None:
    backend = conn.engine.dialect.name
    if backend == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif backend == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_KEY})


def migrate(engine: Engine, metadata: MetaData) -> Migrated:
    """Bring the store behind ``engine`` to the head revision (see the module docstring);
    ``metadata`` holds every table at head. Raises StateError for a revision this edgefleet does not know."""
    cfg = script_config()
    script = ScriptDirectory.from_config(cfg)
    head = script.get_current_head()
    with engine.connect() as conn:
        if _revision(conn) == head:
            return Migrated.current
        conn.rollback()
        _lock(conn)
        current = _revision(conn)  # again, under the lock: another process may have migrated it
        if current == head:
            conn.commit()
            return Migrated.current
        if current is not None and current not in {s.revision for s in script.walk_revisions()}:
            raise StateError(f"the state store is at schema revision {current}, which this edgefleet does not know "
                             f"(its newest is {head}): it was written by a newer edgefleet; use that version")
        cfg.attributes["connection"] = conn
        if current is None and not set(inspect(conn).get_table_names()) & set(metadata.tables):
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
