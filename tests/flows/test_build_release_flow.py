"""The ``build_release`` Prefect flow: the same build as the library, recorded as a flow run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgefleet.errors import ReleaseInputError
from edgefleet.releases.catalog import ReleaseCatalog, ReleaseState, verify_artifact
from edgefleet.releases.upstream import write_fake_upstream
from edgefleet.state.db import create_state_engine
from tests.helpers import require_tool

pytestmark = pytest.mark.slow


def test_build_release_flow(prefect_harness: Path, tmp_path: Path) -> None:
    require_tool(shutil.which("packer"), "packer (Debian package `packer`)")
    from flows.build_release import build_release

    upstream = tmp_path / "up.iso"
    sha = write_fake_upstream(upstream, "v1.12.6")
    home = tmp_path / "home"
    url = f"sqlite:///{tmp_path / 'state.db'}"
    out = build_release(name="flow-r1", talos_version="v1.12.6", upstream_iso=str(upstream),
                        upstream_sha256=sha, kernel_args=["talos.platform=nocloud"], home=str(home), state_url=url)
    assert out["name"] == "flow-r1" and out["state"] == "built"
    engine = create_state_engine(url)
    try:
        catalog = ReleaseCatalog(engine)
        release = catalog.get("flow-r1")
        assert release.state is ReleaseState.built
        assert verify_artifact(release) == Path(str(out["artifact_path"]))
        with pytest.raises(ReleaseInputError, match=r"talos.platform=nocloud"):
            build_release(name="flow-bad", talos_version="v1.12.6", upstream_iso=str(upstream),
                          upstream_sha256=sha, kernel_args=["talos.platform=metal"], home=str(home), state_url=url)
        assert [r.name for r in catalog.list()] == ["flow-r1"]
        assert sorted(p.name for p in (home / "releases").iterdir()) == ["flow-r1"]
    finally:
        engine.dispose()
