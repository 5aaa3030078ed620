"""Alembic's environment for the state store: migrations run on the connection (and inside the
transaction) that ``edgefleet.state.db`` passes as ``config.attributes["connection"]``; there is no
alembic.ini and no URL here."""

from __future__ import annotations

import importlib

from alembic import context

from edgefleet.state.db import TABLE_MODULES, Base

for _module in TABLE_MODULES:
    importlib.import_module(_module)

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only edgefleet.state.db runs these migrations
    raise RuntimeError("the state store's migrations run through edgefleet.state.db.open_state")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
