"""Where edgefleet keeps its files, from the environment: one ``Settings`` (pydantic-settings) that
the CLI and the Prefect flows both read, so a flow on a worker finds what the CLI on that machine
would.

* ``EDGEFLEET_HOME``: the working directory for secrets, seeds and the ledger (default
  ``./.edgefleet``);
* ``EDGEFLEET_INVENTORY``: the inventory directory (default ``./inventory``);
* ``EDGEFLEET_STATE_URL``: the state store's SQLAlchemy URL (default, also when empty: the SQLite
  file ``edgefleet.db`` in the home).

``load_settings()`` reads the environment anew on each call (a test or a long-lived worker that
changes it is seen); every command option and flow parameter overrides the value it names.
"""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["STATE_DB_NAME", "Settings", "load_settings"]

STATE_DB_NAME = "edgefleet.db"


class Settings(BaseSettings):
    """The environment edgefleet runs in (see the module docstring)."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_", extra="ignore", frozen=True)

    home: Path = Path(".edgefleet")
    inventory: Path = Path("inventory")
    state_url: str | None = None

    @property
    def state_store_url(self) -> str:
        """The state store in use: ``EDGEFLEET_STATE_URL`` when set, else SQLite in the home."""
        return self.state_url or f"sqlite:///{self.home / STATE_DB_NAME}"


def load_settings() -> Settings:
    """The settings from the current environment."""
    return Settings()
