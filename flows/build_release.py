"""Prefect flow ``build_release``: build one release with Packer and record it in the catalog.

Thin over ``edgefleet.releases.build.build_release``: Prefect adds the run record, logs and a
markdown artifact; retries are off because a failed build is rarely fixed by rebuilding the same
inputs (and a bad input never is).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from edgefleet.releases.build import DEFAULT_TIMEOUT_S, ReleaseSpec
from edgefleet.releases.build import build_release as build_release_fn
from edgefleet.releases.catalog import ReleaseCatalog
from edgefleet.settings import load_settings
from edgefleet.state.db import open_state


@flow(name="build_release", log_prints=False, retries=0)
def build_release(name: str, talos_version: str, upstream_iso: str, upstream_sha256: str,
                  kernel_args: list[str] | None = None, extensions: list[str] | None = None,
                  installer_image: str = "", kubernetes_version: str = "1.35.0",
                  home: str | None = None, state_url: str | None = None, template_dir: str | None = None,
                  timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, object]:
    """Build release ``name`` from an upstream Talos ISO; returns the catalog entry as JSON."""
    logger = get_run_logger()
    spec = ReleaseSpec(name=name, talos_version=talos_version, upstream_iso=upstream_iso,
                       upstream_sha256=upstream_sha256, installer_image=installer_image,
                       kubernetes_version=kubernetes_version,
                       kernel_args=tuple(kernel_args or ["talos.platform=nocloud"]),
                       extensions=tuple(extensions or ()))
    catalog = ReleaseCatalog(open_state(state_url or load_settings().state_store_url))
    release = build_release_fn(spec, home=Path(home) if home else load_settings().home, catalog=catalog,
                               template_dir=Path(template_dir) if template_dir else None, timeout=timeout,
                               progress=logger.info)
    create_markdown_artifact(
        key=f"release-{release.name.replace('.', '-').replace('_', '-')}",
        markdown=(f"## Release {release.name}\n\n| field | value |\n|---|---|\n"
                  + "".join(f"| {k} | `{v}` |\n" for k, v in release.to_json().items())),
        description=f"release {release.name} built")
    return release.to_json()
