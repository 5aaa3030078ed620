"""The state store: one SQLAlchemy database (SQLite by default, PostgreSQL by URL) holding the release
catalog and the rollout ledger. ``db`` owns the engine and the declarative ``Base``; each area
declares its tables in its own module, listed in ``db.TABLE_MODULES``."""
