"""Constants and helpers shared by tests (import as ``tests.helpers``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE_INVENTORY = REPO / "inventory"
CONFORMANCE = REPO.parent / "shared" / "conformance"
VENV_BIN = REPO / ".venv" / "bin"


def require_tool(path: Path | str | None, what: str) -> None:
    """Skip when an outside tool is absent, but fail under CI, where `make test` must have installed it."""
    if path is not None and Path(path).exists():
        return
    msg = f"{what} is not available ({path}); `make test` installs it"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)
