"""Constants and helpers shared by tests (import as ``tests.helpers``)."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edgefleet.releases.catalog import Release, ReleaseCatalog, ReleaseState
from edgefleet.state.db import open_state

REPO = Path(__file__).resolve().parent.parent
SAMPLE_INVENTORY = REPO / "inventory"
# Upstream Talos test data the project carries (see tests/data/talos-v1.12.6/README.md).
TALOS_TESTDATA = REPO / "tests" / "data" / "talos-v1.12.6"
VENV_BIN = REPO / ".venv" / "bin"


STABLE_NOTE = "stable for a test that is not about the release lifecycle"


def make_stable(catalog: ReleaseCatalog, name: str, *, note: str = STABLE_NOTE) -> Release:
    """Promote a built release ``built -> canary -> stable`` (with ``note``), as a train would after
    its canary stage: for tests that roll releases out to whole fleets and are not about the
    lifecycle (only a stable release reaches non-canary stores)."""
    now = datetime.now(UTC)
    catalog.promote(name, ReleaseState.canary, now=now, note=note)
    return catalog.promote(name, ReleaseState.stable, now=now, note=note)


def record_release(home: Path, name: str = "talos-v1.12.6-r1", *, talos_version: str = "v1.12.6",
                   kubernetes_version: str = "1.35.0", installer_image: str | None = None,
                   stable: bool = True) -> Release:
    """Record a release in the catalog of ``home``'s SQLite state store, as ``release build`` would
    after a Packer build (a small stand-in artifact: seed builds never read it); ``stable``: then
    promote it to stable (``make_stable``), else leave it built."""
    artifact = home / "releases" / f"{name}.iso"
    artifact.parent.mkdir(parents=True, exist_ok=True)
    artifact.write_bytes(f"stand-in image of {name}".encode())
    now = datetime.now(UTC)
    catalog = ReleaseCatalog(open_state(f"sqlite:///{home / 'edgefleet.db'}"))
    release = catalog.add(Release(
        name=name, artifact_path=artifact, sha256=hashlib.sha256(artifact.read_bytes()).hexdigest(),
        size=artifact.stat().st_size, talos_version=talos_version, kubernetes_version=kubernetes_version,
        installer_image=installer_image or f"ghcr.io/siderolabs/installer:{talos_version}", extensions=(),
        kernel_args=(), upstream_sha256="0" * 64, template_hash="0" * 64, build_seconds=0.0,
        state=ReleaseState.built, created_at=now, state_changed_at=now))
    return make_stable(catalog, name) if stable else release


def require_tool(path: Path | str | None, what: str) -> None:
    """Skip when an outside tool is absent, but fail under CI, where `make test` must have installed it."""
    if path is not None and Path(path).exists():
        return
    msg = f"{what} is not available ({path}); `make test` installs it"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)
