"""Schema revisions of the state store, oldest first (``0001_baseline``)."""
