"""The state store's engine, sessions and declarative ``Base``.

``open_state(url)`` returns an engine whose schema is at this edgefleet's head revision: a fresh
store is created at head; a store behind head is refused (``SchemaOutOfDate``, naming
``edgefleet db upgrade``), and so is one ahead of it (``edgefleet.state.migrate``, alembic).
``upgrade_state(url)`` is that command: it migrates a store to head; ``state_schema(url)`` says
where a store stands without creating or changing anything. A SQLite URL (the
default, a file in EDGEFLEET_HOME) gets WAL journaling and a busy timeout so a CLI command and a
running flow can share the file; any other URL (``postgresql+psycopg://...``) is passed to
SQLAlchemy unchanged.

Changing the schema: declare tables on ``Base`` in their own module (listed in ``TABLE_MODULES``),
and add a revision under ``edgefleet/state/migrations/versions`` that makes the same change, so
stores written by an earlier edgefleet are brought along (``tests/contract/test_state_migrations.py``
checks that the migrations and the declarations agree).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from edgefleet.errors import OutputPathError, StateError
from edgefleet.state.migrate import Migrated, SchemaState, head_revision, migrate, schema_state, store_name

SQLITE_BUSY_TIMEOUT_MS = 10_000

# Modules that declare tables on Base; imported by open_state before it migrates.
TABLE_MODULES: tuple[str, ...] = ("edgefleet.releases.catalog", "edgefleet.rollout.ledger", "edgefleet.trains.store")


class Base(DeclarativeBase):
    """Declarative base shared by every table of the state store."""


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _new_engine(url: str) -> Engine:
    """An engine for ``url`` (SQLite pragmas set, the table modules imported), schema untouched."""
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise StateError(f"state store URL {url!r} is not a SQLAlchemy URL: {e} "
                         "(set EDGEFLEET_STATE_URL, e.g. sqlite:///path/edgefleet.db)") from e
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            parent = Path(parsed.database).parent
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:  # EDGEFLEET_HOME is a file, or under one, or read-only
                from edgefleet.outpaths import check_output_dir

                check_output_dir(parent, "state store directory (EDGEFLEET_HOME / EDGEFLEET_STATE_URL)")
                raise OutputPathError(f"state store directory {parent}: {e.strerror or e}") from None
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    else:
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(parsed, **kwargs)
    except (ArgumentError, ImportError) as e:
        raise StateError(f"cannot open state store {parsed.render_as_string(hide_password=True)}: {e}") from e
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    for module in TABLE_MODULES:
        importlib.import_module(module)
    return engine


def _migrated(engine: Engine, *, upgrade: bool) -> Migrated:
    try:
        return migrate(engine, Base.metadata, upgrade=upgrade)
    except StateError:
        engine.dispose()
        raise
    except SQLAlchemyError as e:
        engine.dispose()
        raise StateError(f"cannot create or migrate the tables of state store {store_name(engine)}: {e}") from e


def create_state_engine(url: str) -> Engine:
    """A new engine for ``url`` with the schema at head: a fresh store is created, one behind or
    ahead of head refused (SchemaOutOfDate). Prefer ``open_state`` (cached per URL)."""
    engine = _new_engine(url)
    _migrated(engine, upgrade=False)
    return engine


@dataclass(frozen=True, slots=True)
class SchemaReport:
    """Where a state store's schema stands (``edgefleet db status``), or what an upgrade did."""

    store: str
    """The store's URL, without its password."""
    revision: str | None
    """Its revision (before the upgrade, for an upgrade); None: none recorded."""
    head: str
    state: SchemaState
    done: Migrated | None = None
    """What ``upgrade_state`` did; None for a status."""

    def to_json(self) -> dict[str, str | None]:
        return {"store": self.store, "revision": self.revision, "head": self.head, "state": self.state.value,
                "done": self.done.value if self.done else None}


def _sqlite_missing(url: str) -> bool:
    try:
        parsed = make_url(url)
    except ArgumentError:
        return False  # _new_engine names a bad URL with the fix
    db = parsed.database
    return parsed.get_backend_name() == "sqlite" and db not in (None, "", ":memory:") and not Path(str(db)).exists()


def _locked(e: BaseException) -> bool:
    return isinstance(e, OperationalError) and "database is locked" in str(e)


def state_schema(url: str) -> SchemaReport:
    """Where the store at ``url`` stands against head; creates and changes nothing (a SQLite file
    that does not exist is reported ``empty``, not created)."""
    if _sqlite_missing(url):
        return SchemaReport(make_url(url).render_as_string(hide_password=True), None, head_revision(),
                            SchemaState.empty)
    engine = _new_engine(url)
    try:
        # Another process may be migrating this SQLite store right now: its write lock can make this
        # read fail at once ("database is locked") instead of waiting; read again for a while.
        revision, state = Retrying(stop=stop_after_delay(SQLITE_BUSY_TIMEOUT_MS / 1000), reraise=True,
                                   wait=wait_exponential(multiplier=0.05, max=1.0),
                                   retry=retry_if_exception(_locked))(schema_state, engine, Base.metadata)
        return SchemaReport(store_name(engine), revision, head_revision(), state)
    except SQLAlchemyError as e:
        raise StateError(f"cannot read the schema revision of state store {store_name(engine)}: {e}") from e
    finally:
        engine.dispose()


def upgrade_state(url: str) -> SchemaReport:
    """``edgefleet db upgrade``: bring the store at ``url`` to head (create it when fresh); a store
    ahead of head is refused. Two processes upgrading one store at once migrate it once."""
    before = state_schema(url)
    engine = _new_engine(url)
    try:
        done = _migrated(engine, upgrade=True)
    finally:
        engine.dispose()
    return SchemaReport(before.store, before.revision, head_revision(), before.state, done)


def open_state(url: str) -> Engine:
    """The engine for ``url`` (one per URL per process), its schema checked on first open: created
    at head when fresh, refused when behind or ahead (see ``create_state_engine``)."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = create_state_engine(url)
            _engines[url] = engine
        return engine


def close_all() -> None:
    """Dispose every cached engine (tests, and processes that fork)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on any exception."""
    session = sessionmaker(engine, expire_on_commit=False)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
