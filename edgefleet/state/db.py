"""The state store's engine, sessions and declarative ``Base``.

``open_state(url)`` returns an engine whose schema is at this edgefleet's head revision: a fresh
store is created, an older one migrated (``edgefleet.state.migrate``, alembic). A SQLite URL (the
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
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from edgefleet.errors import OutputPathError, StateError
from edgefleet.state.migrate import migrate

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


def create_state_engine(url: str) -> Engine:
    """A new engine for ``url`` with the schema at head. Prefer ``open_state`` (cached per URL)."""
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
    try:
        migrate(engine, Base.metadata)
    except StateError:
        engine.dispose()
        raise
    except SQLAlchemyError as e:
        engine.dispose()
        raise StateError(f"cannot create or migrate the tables of state store "
                         f"{parsed.render_as_string(hide_password=True)}: {e}") from e
    return engine


def open_state(url: str) -> Engine:
    """The engine for ``url`` (one per URL per process), migrated to head on first open."""
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
