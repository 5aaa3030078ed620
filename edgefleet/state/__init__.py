"""The state store: one SQLAlchemy database (SQLite file by default, PostgreSQL by URL) holding the
release catalog and, later, the rollout ledger. ``edgefleet.state.db`` owns the engine and the
declarative ``Base``; each area declares its tables in its own module listed in
``edgefleet.state.db.TABLE_MODULES``."""
