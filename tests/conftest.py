"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import SAMPLE_INVENTORY

# Keep Prefect and Packer from phoning home or writing into the user's home during tests.
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("CHECKPOINT_DISABLE", "1")


@pytest.fixture
def sample_copy(tmp_path: Path) -> Path:
    """A private copy of the sample inventory that a test may edit."""
    dst = tmp_path / "inventory"
    shutil.copytree(SAMPLE_INVENTORY, dst)
    return dst
