"""Building a release end to end, as plain functions (the Prefect flow and the CLI are thin over this).

``build_release`` does, in order, and stops at the first problem:

1. check the spec (pure ``check_spec``), then the values against the template's variables and their
   validation rules (python-hcl2 + ``template.check_validations``) -> ReleaseInputError;
2. refuse a name already in the catalog or on disk -> ReleaseInputError;
3. find packer -> ToolMissing; fetch/verify the upstream ISO -> ArtifactError;
4. ``packer validate`` then ``packer build`` into a temporary directory next to the final one;
5. verify the image against packer's checksum file and its embedded manifest against the spec;
6. move the directory into place (``<home>/releases/<name>/``), then record it in the catalog.

Any failure removes the temporary directory, so no catalog row and no half-written artifact remain.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgefleet.atomic import publish_dir
from edgefleet.errors import ArtifactError, PackerError, ReleaseInputError
from edgefleet.releases import packer as packer_runner
from edgefleet.releases.catalog import Release, ReleaseCatalog, ReleaseState
from edgefleet.releases.image import REQUIRED_KERNEL_ARG, read_release_manifest
from edgefleet.releases.reproducible import DEFAULT_EPOCH
from edgefleet.releases.template import (
    TemplateVariable,
    check_validations,
    check_values,
    load_template_variables,
    template_hash,
)
from edgefleet.releases.upstream import SHA256_RE, TALOS_VERSION_RE, fetch_upstream, sha256_file

RELEASE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
K8S_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
# An OCI image reference: [registry[:port]/]repository[:tag][@sha256:digest], repository in lower case.
IMAGE_REF_RE = re.compile(r"^[a-z0-9][a-z0-9._/-]*(?::[0-9]+/[a-z0-9][a-z0-9._/-]*)?"
                          r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$")
DEFAULT_KUBERNETES_VERSION = "1.35.0"
DEFAULT_TIMEOUT_S = 600.0

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ReleaseSpec:
    """What to build. ``upstream_iso`` is a path or an http(s) URL; its sha256 is required."""

    name: str
    talos_version: str
    upstream_iso: str
    upstream_sha256: str
    installer_image: str = ""
    kubernetes_version: str = DEFAULT_KUBERNETES_VERSION
    kernel_args: tuple[str, ...] = (REQUIRED_KERNEL_ARG,)
    extensions: tuple[str, ...] = field(default_factory=tuple)


def default_template_dir() -> Path:
    """``packer/release`` of the source tree (override with EDGEFLEET_PACKER_TEMPLATE)."""
    env = os.environ.get("EDGEFLEET_PACKER_TEMPLATE")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "packer" / "release"


def default_installer_image(talos_version: str, extensions: Sequence[str]) -> str:
    """The vanilla installer when there are no extensions; with extensions the Image Factory
    schematic id cannot be guessed, so the user must pass it."""
    if extensions:
        raise ReleaseInputError("a release with system extensions needs --installer-image "
                                "factory.talos.dev/installer/<schematic id>:" + talos_version +
                                " (the schematic id the Talos Image Factory returned for those extensions)")
    return f"ghcr.io/siderolabs/installer:{talos_version}"


def check_spec(spec: ReleaseSpec) -> ReleaseSpec:
    """The spec with defaults filled in; ReleaseInputError listing every problem. Pure."""
    problems: list[str] = []
    if not RELEASE_NAME_RE.fullmatch(spec.name):
        problems.append(f"name {spec.name!r}: use 1-63 of a-z 0-9 . _ - starting with a letter or digit")
    if not TALOS_VERSION_RE.fullmatch(spec.talos_version):
        problems.append(f"talos_version {spec.talos_version!r}: must look like v1.12.6")
    if not K8S_VERSION_RE.fullmatch(spec.kubernetes_version):
        problems.append(f"kubernetes_version {spec.kubernetes_version!r}: must look like 1.35.0")
    if not SHA256_RE.fullmatch(spec.upstream_sha256.strip().lower()):
        problems.append(f"upstream_sha256 {spec.upstream_sha256!r}: 64 hex digits required "
                        "(the checksum published next to the ISO)")
    if not spec.upstream_iso:
        problems.append("upstream_iso: a path or an http(s) URL is required")
    if REQUIRED_KERNEL_ARG not in spec.kernel_args:
        problems.append(f"kernel_args {list(spec.kernel_args)}: must include {REQUIRED_KERNEL_ARG} "
                        "(stores boot from NoCloud seeds)")
    for arg in spec.kernel_args:
        if not arg or any(c.isspace() for c in arg):
            problems.append(f"kernel argument {arg!r}: empty or contains whitespace")
    if len(set(spec.kernel_args)) != len(spec.kernel_args):
        problems.append(f"kernel_args {list(spec.kernel_args)}: duplicates")
    for ext in spec.extensions:
        if not ext or any(c.isspace() for c in ext) or "," in ext:
            problems.append(f"extension {ext!r}: must be one name like siderolabs/iscsi-tools")
    if spec.installer_image and (len(spec.installer_image) > 255 or not IMAGE_REF_RE.fullmatch(spec.installer_image)):
        problems.append(f"installer_image {spec.installer_image!r}: must be an image reference like "
                        "ghcr.io/siderolabs/installer:v1.12.6")
    if problems:
        raise ReleaseInputError(f"release {spec.name!r} has bad input:\n" + "\n".join("  " + p for p in problems))
    installer = spec.installer_image or default_installer_image(spec.talos_version, spec.extensions)
    return ReleaseSpec(name=spec.name, talos_version=spec.talos_version, upstream_iso=spec.upstream_iso,
                       upstream_sha256=spec.upstream_sha256.strip().lower(), installer_image=installer,
                       kubernetes_version=spec.kubernetes_version, kernel_args=tuple(spec.kernel_args),
                       extensions=tuple(spec.extensions))


def packer_variables(spec: ReleaseSpec, *, upstream_iso: str, output_dir: Path, cache_dir: Path,
                     python: str, epoch: int = DEFAULT_EPOCH) -> dict[str, Any]:
    """The template's variable values for ``spec``. Pure."""
    return {"release_name": spec.name, "talos_version": spec.talos_version,
            "kubernetes_version": spec.kubernetes_version, "upstream_iso": upstream_iso,
            "upstream_sha256": spec.upstream_sha256, "kernel_args": list(spec.kernel_args),
            "extensions": list(spec.extensions), "installer_image": spec.installer_image,
            "output_dir": str(output_dir), "cache_dir": str(cache_dir), "python": python,
            "source_date_epoch": epoch}


def releases_dir(home: Path) -> Path:
    return home / "releases"


def _read_checksum_file(path: Path, image_name: str) -> str:
    try:
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("*") == image_name and SHA256_RE.match(parts[0]):
                return parts[0]
    except FileNotFoundError as e:
        raise ArtifactError(f"packer wrote no checksum file {path}") from e
    raise ArtifactError(f"checksum file {path} has no sha256 line for {image_name}")


def _verify_output(spec: ReleaseSpec, out: Path) -> tuple[Path, str, int]:
    """Check what packer produced; returns (image, sha256, size)."""
    image = out / f"{spec.name}.iso"
    manifest = packer_runner.parse_manifest(out / "packer-manifest.json")
    files = dict(manifest.files)
    if image.name not in files:
        raise ArtifactError(f"packer manifest lists {sorted(files)}, not the image {image.name}")
    recorded = _read_checksum_file(out / f"{image.name}.sha256", image.name)
    actual = sha256_file(image)
    if actual != recorded:
        raise ArtifactError(f"release {spec.name}: image {image.name} has sha256 {actual} but packer's checksum "
                            f"post-processor recorded {recorded}; the image changed during the build")
    embedded = read_release_manifest(image)
    expected = {"release": spec.name, "talos_version": spec.talos_version,
                "kubernetes_version": spec.kubernetes_version, "installer_image": spec.installer_image,
                "extensions": tuple(spec.extensions), "upstream_sha256": spec.upstream_sha256}
    wrong = [k for k, v in expected.items() if getattr(embedded, k) != v]
    missing_args = [a for a in spec.kernel_args if a not in embedded.kernel_args]
    if wrong or missing_args:
        raise ArtifactError(f"release {spec.name}: the image's embedded manifest disagrees with the spec "
                            f"on {wrong + ['kernel_args'] * bool(missing_args)}")
    return image, actual, image.stat().st_size


def build_release(spec: ReleaseSpec, *, home: Path, catalog: ReleaseCatalog, template_dir: Path | None = None,
                  packer: str = "packer", python: str | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                  progress: Progress | None = None, cancel: threading.Event | None = None,
                  now: datetime | None = None) -> Release:
    """Build, verify and record one release; see the module docstring for the steps."""
    t0 = time.monotonic()
    say: Progress = progress or (lambda _msg: None)
    template_dir = template_dir or default_template_dir()
    spec = check_spec(spec)
    variables = load_template_variables(template_dir)
    if catalog.find(spec.name) is not None:
        raise ReleaseInputError(f"release {spec.name} already exists in the catalog; pick a new name")
    root = releases_dir(home).resolve()
    final = root / spec.name
    if final.exists():
        raise ReleaseInputError(f"release directory {final} exists but the catalog has no {spec.name}: "
                                "remove the directory or pick a new name")
    packer_runner.find_packer(packer)
    cache_dir = (home / "cache" / "upstream").resolve()
    say(f"verifying upstream ISO {spec.upstream_iso}")
    upstream = fetch_upstream(spec.upstream_iso, spec.upstream_sha256, cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".building-{spec.name}-", dir=root))
    try:
        out = work / "out"
        out.mkdir()
        var_file = _run_packer(spec, template_dir, variables, upstream, cache_dir, work, out, packer=packer,
                               python=python, deadline=t0 + timeout, say=say, cancel=cancel)
        image, sha256, size = _verify_output(spec, out)
        shutil.copy2(var_file, out / var_file.name)
        try:
            publish_dir(out, final)  # same filesystem: atomic; the release appears whole or not at all
        except OSError as e:
            raise ReleaseInputError(f"release directory {final} appeared during the build (a concurrent build "
                                    f"of {spec.name}?): {e}") from e
        release = _record(spec, final / image.name, sha256, size, catalog, template_dir,
                          created=now or datetime.now(UTC), build_seconds=time.monotonic() - t0)
        say(f"release {spec.name} built: {release.artifact_path} sha256 {sha256} ({size} bytes, "
            f"{release.build_seconds:.1f} s)")
        return release
    except PackerError as e:
        raise type(e)(f"release {spec.name}: {e}") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_packer(spec: ReleaseSpec, template_dir: Path, variables: Mapping[str, TemplateVariable], upstream: Path,
                cache_dir: Path, work: Path, out: Path, *, packer: str, python: str | None, deadline: float,
                say: Progress, cancel: threading.Event | None) -> Path:
    """Check the template's variables, then ``packer validate`` and ``packer build`` into ``out``
    (its log kept as ``out/packer.log``) within what is left until ``deadline`` (monotonic);
    returns the variables file."""
    values = packer_variables(spec, upstream_iso=str(upstream.resolve()), output_dir=out, cache_dir=cache_dir,
                              python=python or sys.executable)
    check_values(variables, values, template=f"template {template_dir}")
    check_validations(variables, values, template=f"template {template_dir}")
    var_file = work / "release.pkrvars.json"
    var_file.write_text(json.dumps(values, indent=2) + "\n")
    say(f"packer validate {template_dir}")
    packer_runner.validate(template_dir, var_file, packer=packer)
    log_lines: list[str] = []

    def on_event(ev: packer_runner.PackerEvent) -> None:
        log_lines.append(f"{ev.timestamp} {ev.target} {ev.type} {ev.text}")
        if ev.type == "ui" and ev.text.strip():
            say(ev.text.strip())

    say(f"packer build {spec.name}")
    remaining = max(1.0, deadline - time.monotonic())
    try:
        packer_runner.build(template_dir, var_file, packer=packer, timeout=remaining, on_event=on_event,
                            cancel=cancel)
    finally:
        (out / "packer.log").write_text("\n".join(log_lines) + "\n")
    return var_file


def _record(spec: ReleaseSpec, artifact: Path, sha256: str, size: int, catalog: ReleaseCatalog, template_dir: Path,
            *, created: datetime, build_seconds: float) -> Release:
    """Add the built release (its image already in place at ``artifact``) to the catalog; when that
    fails, remove its directory again."""
    release = Release(name=spec.name, artifact_path=artifact, sha256=sha256, size=size,
                      talos_version=spec.talos_version, kubernetes_version=spec.kubernetes_version,
                      installer_image=spec.installer_image, extensions=spec.extensions,
                      kernel_args=read_release_manifest(artifact).kernel_args,
                      upstream_sha256=spec.upstream_sha256, template_hash=template_hash(template_dir),
                      build_seconds=build_seconds, state=ReleaseState.built, created_at=created,
                      state_changed_at=created)
    try:
        catalog.add(release)
    except BaseException:
        shutil.rmtree(artifact.parent, ignore_errors=True)
        raise
    return release
