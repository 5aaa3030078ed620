"""The state store's schema migrations (alembic): ``env.py`` runs them on the connection that
``edgefleet.state.db.open_state`` hands it; ``versions/`` holds one revision per schema change, the
first (``0001``) describing the schema of every store written before migrations existed."""
