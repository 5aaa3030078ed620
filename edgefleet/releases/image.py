"""The release boot image: remaster an upstream Talos ISO and read a release's manifest back.

A release image is the upstream ISO opened and modified in place with pycdlib (so a real Talos ISO
keeps its El Torito boot records and every other file byte for byte), with two changes:

* ``/boot/grub/grub.cfg`` is replaced by one menu entry whose single ``linux /boot/vmlinuz ...`` line
  carries the release's kernel arguments (upstream arguments, minus those the release overrides by
  key, plus the release's own; ``talos.platform=nocloud`` is required);
* ``/edgefleet/release.json`` (ISO9660 ``/EDGEFLEET/RELEASE.JSON;1``) holds the release manifest.

Both paths are Rock Ridge paths; other tools (the fleet simulator, rollouts) read them through
``read_release_manifest`` and ``read_kernel_args``.

pycdlib stamps ``time.time()`` converted with ``localtime()`` into every new record and offers no way
to fix it; ``write_reproducible`` (``edgefleet.releases.reproducible``) pins every date field
afterwards, so the same inputs give the same image bytes.

``python -m edgefleet.releases.image remaster --spec JSON --out PATH`` is what the Packer template's
shell-local provisioner runs.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException
from pydantic import BaseModel, ConfigDict, ValidationError

from edgefleet.errors import ArtifactError, EdgefleetError, ReleaseInputError
from edgefleet.releases.reproducible import DEFAULT_EPOCH, write_reproducible
from edgefleet.releases.upstream import fetch_upstream

GRUB_CFG_RR_PATH = "/boot/grub/grub.cfg"
KERNEL_RR_PATH = "/boot/vmlinuz"
MANIFEST_RR_PATH = "/edgefleet/release.json"
MANIFEST_ISO_PATH = "/EDGEFLEET/RELEASE.JSON;1"
LINUX_LINE_PREFIX = "linux /boot/vmlinuz "
REQUIRED_KERNEL_ARG = "talos.platform=nocloud"


class ReleaseManifest(BaseModel):
    """The manifest embedded in a release image (``/edgefleet/release.json``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    release: str
    talos_version: str
    kubernetes_version: str
    installer_image: str
    extensions: tuple[str, ...]
    kernel_args: tuple[str, ...]
    upstream_sha256: str

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


# --- pure: kernel arguments and grub.cfg -------------------------------------------------------


def _arg_key(arg: str) -> str:
    return arg.split("=", 1)[0]


def merge_kernel_args(upstream: Sequence[str], extra: Sequence[str]) -> list[str]:
    """Upstream arguments without those the release overrides (same key before ``=``), then the
    release's arguments in their order. Raises ReleaseInputError when the result lacks
    ``talos.platform=nocloud`` or an argument is empty or contains whitespace."""
    for arg in extra:
        if not arg or any(c.isspace() for c in arg):
            raise ReleaseInputError(f"kernel argument {arg!r} is empty or contains whitespace: "
                                    "pass each argument separately")
    overridden = {_arg_key(a) for a in extra}
    merged = [a for a in upstream if _arg_key(a) not in overridden]
    for arg in extra:
        if arg not in merged:
            merged.append(arg)
    if REQUIRED_KERNEL_ARG not in merged:
        raise ReleaseInputError(f"kernel arguments must include {REQUIRED_KERNEL_ARG} (the store seeds are "
                                f"NoCloud ISOs); got: {' '.join(merged)}")
    return merged


def parse_grub_cfg(text: str) -> tuple[list[str], str]:
    """The kernel arguments and the initrd path of the first Talos boot entry in a grub.cfg."""
    args: list[str] | None = None
    initrd = "/boot/initramfs.xz"
    for raw in text.splitlines():
        line = raw.strip()
        if args is None and line.startswith(LINUX_LINE_PREFIX.strip()):
            parts = line.split()
            if len(parts) >= 2 and parts[1] == "/boot/vmlinuz":
                args = parts[2:]
        elif args is not None and line.startswith("initrd "):
            initrd = line.split()[1]
            break
    if args is None:
        raise ArtifactError("upstream grub.cfg has no 'linux /boot/vmlinuz ...' line: not a Talos boot ISO")
    return args, initrd


def render_grub_cfg(manifest: ReleaseManifest, initrd: str) -> str:
    """The release's grub.cfg: one entry, one unindented ``linux /boot/vmlinuz`` line."""
    return "\n".join([
        f"# edgefleet release {manifest.release}: Talos {manifest.talos_version}, "
        f"remastered from upstream sha256 {manifest.upstream_sha256}",
        "set default=0",
        "set timeout=3",
        "insmod all_video",
        f'menuentry "Talos {manifest.talos_version} (edgefleet release {manifest.release})" {{',
        "set gfxmode=auto",
        "set gfxpayload=text",
        LINUX_LINE_PREFIX + " ".join(manifest.kernel_args),
        f"initrd {initrd}",
        "}",
        "",
    ])


def kernel_args_from_grub_cfg(text: str) -> list[str]:
    """The arguments of the one ``linux /boot/vmlinuz`` line of a release grub.cfg."""
    lines = [ln for ln in text.splitlines() if ln.startswith(LINUX_LINE_PREFIX)]
    if len(lines) != 1:
        raise ArtifactError(f"release grub.cfg must have exactly one '{LINUX_LINE_PREFIX.strip()}' line, "
                            f"found {len(lines)}")
    return lines[0][len(LINUX_LINE_PREFIX):].split()


# --- I/O: reading and remastering ISOs -----------------------------------------------------------


def _open_iso(iso: Path | bytes, what: str) -> pycdlib.PyCdlib:
    image = pycdlib.PyCdlib()
    try:
        if isinstance(iso, bytes):
            image.open_fp(io.BytesIO(iso))
        else:
            image.open(str(iso))
    except FileNotFoundError as e:
        raise ArtifactError(f"{what} {iso!s} does not exist") from e
    except (PyCdlibException, OSError) as e:
        label = "<bytes>" if isinstance(iso, bytes) else str(iso)
        raise ArtifactError(f"{what} {label} is not a readable ISO9660 image: {e}") from e
    return image


def _read_rr(image: pycdlib.PyCdlib, rr_path: str, label: str) -> bytes:
    buf = io.BytesIO()
    try:
        image.get_file_from_iso_fp(buf, rr_path=rr_path)
    except PyCdlibException as e:
        raise ArtifactError(f"{label} has no {rr_path} (Rock Ridge): {e}") from e
    return buf.getvalue()


def read_release_manifest(iso: Path | bytes) -> ReleaseManifest:
    """The release manifest embedded in a release image (a path or the image's bytes)."""
    label = "<bytes>" if isinstance(iso, bytes) else str(iso)
    image = _open_iso(iso, "release image")
    try:
        raw = _read_rr(image, MANIFEST_RR_PATH, f"release image {label}")
    finally:
        image.close()
    try:
        return ReleaseManifest.model_validate_json(raw)
    except ValidationError as e:
        raise ArtifactError(f"release image {label}: {MANIFEST_RR_PATH} is not a valid release manifest: {e}") from e


def read_kernel_args(iso: Path | bytes) -> list[str]:
    """The kernel arguments of a release image's one ``linux /boot/vmlinuz`` line."""
    label = "<bytes>" if isinstance(iso, bytes) else str(iso)
    image = _open_iso(iso, "release image")
    try:
        cfg = _read_rr(image, GRUB_CFG_RR_PATH, f"release image {label}").decode("utf-8", "replace")
    finally:
        image.close()
    return kernel_args_from_grub_cfg(cfg)


def remaster(upstream: Path, out: Path, *, release: str, talos_version: str, kubernetes_version: str,
             installer_image: str, extensions: Sequence[str], kernel_args: Sequence[str],
             upstream_sha256: str, epoch: float = DEFAULT_EPOCH) -> ReleaseManifest:
    """Write the release image for ``upstream`` to ``out`` (atomically) and return its manifest.

    ``upstream_sha256`` must already have been verified by the caller (``upstream.fetch_upstream``)."""
    image = _open_iso(upstream, "upstream ISO")
    try:
        if not image.has_rock_ridge():
            raise ArtifactError(f"upstream ISO {upstream} has no Rock Ridge extensions; a Talos ISO has them")
        _read_rr(image, KERNEL_RR_PATH, f"upstream ISO {upstream}")  # is it a Talos boot ISO at all?
        old_cfg = _read_rr(image, GRUB_CFG_RR_PATH, f"upstream ISO {upstream}").decode("utf-8", "replace")
        upstream_args, initrd = parse_grub_cfg(old_cfg)
        manifest = ReleaseManifest(
            release=release, talos_version=talos_version, kubernetes_version=kubernetes_version,
            installer_image=installer_image, extensions=tuple(extensions),
            kernel_args=tuple(merge_kernel_args(upstream_args, kernel_args)), upstream_sha256=upstream_sha256)
        cfg = render_grub_cfg(manifest, initrd).encode()
        body = manifest.to_json().encode()
        joliet = image.has_joliet()
        try:
            rec = image.get_record(rr_path=GRUB_CFG_RR_PATH)
            cfg_iso_path = image.full_path_from_dirrecord(rec, rockridge=False)
            image.rm_file(iso_path=cfg_iso_path)
            # xorriso (which builds Talos ISOs) writes lowercase ISO9660 names that pycdlib will not
            # create; the replacement gets a compliant name in the same directory.
            new_cfg_iso_path = cfg_iso_path.rsplit("/", 1)[0] + "/GRUB.CFG;1"
            image.add_fp(io.BytesIO(cfg), len(cfg), iso_path=new_cfg_iso_path, rr_name="grub.cfg",
                         joliet_path=GRUB_CFG_RR_PATH if joliet else None)
            image.add_directory(iso_path="/EDGEFLEET", rr_name="edgefleet",
                                joliet_path="/edgefleet" if joliet else None)
            image.add_fp(io.BytesIO(body), len(body), iso_path=MANIFEST_ISO_PATH, rr_name="release.json",
                         joliet_path=MANIFEST_RR_PATH if joliet else None)
            write_reproducible(image, out, epoch)
        except PyCdlibException as e:
            raise ArtifactError(f"cannot remaster upstream ISO {upstream}: {e}") from e
        return manifest
    finally:
        image.close()


def _remaster_from_spec(spec_json: str, out: Path) -> ReleaseManifest:
    """The Packer provisioner's entry: ``spec_json`` is the template's jsonencode() of its variables."""
    try:
        spec = json.loads(spec_json)
        if not isinstance(spec, dict):
            raise TypeError(f"expected a JSON object of the template's variables, got {type(spec).__name__}")

        def text(key: str) -> str:
            value = spec[key]
            if not isinstance(value, str):
                raise TypeError(f"{key} must be a string, got {type(value).__name__}")
            return value

        def texts(key: str) -> list[str]:
            value = spec[key]
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                raise TypeError(f"{key} must be a list of strings, got {value!r}")
            return value

        # Every value is checked before anything is fetched or written.
        epoch = spec.get("source_date_epoch", DEFAULT_EPOCH)
        if isinstance(epoch, bool) or not isinstance(epoch, int | float) or not 0 <= epoch < 2**32:
            raise ValueError(f"source_date_epoch {epoch!r}: seconds since 1970, before 2106")
        cache = spec.get("cache_dir")
        if cache is not None and not isinstance(cache, str):
            raise TypeError(f"cache_dir must be a string, got {type(cache).__name__}")
        sha256, upstream_ref = text("upstream_sha256"), text("upstream_iso")
        release, talos, k8s = text("release_name"), text("talos_version"), text("kubernetes_version")
        installer, extensions, kernel_args = text("installer_image"), texts("extensions"), texts("kernel_args")
        upstream = fetch_upstream(upstream_ref, sha256, Path(cache or out.parent / ".cache"))
        return remaster(upstream, out, release=release, talos_version=talos, kubernetes_version=k8s,
                        installer_image=installer, extensions=extensions, kernel_args=kernel_args,
                        upstream_sha256=sha256, epoch=float(epoch))
    except (KeyError, TypeError, ValueError) as e:
        raise ReleaseInputError(f"remaster spec is incomplete or malformed: {e!r}") from e


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgefleet.releases.image",
                                     description="Release boot images: remaster an upstream ISO, show a manifest.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    rem = sub.add_parser("remaster", help="remaster an upstream ISO (what the Packer template runs)")
    rem.add_argument("--spec", required=True, help="JSON object of the template's variables")
    rem.add_argument("--out", required=True, type=Path, help="the release image to write")
    show = sub.add_parser("manifest", help="print the release manifest embedded in an image")
    show.add_argument("iso", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "remaster":
            t0 = time.perf_counter()
            manifest = _remaster_from_spec(args.spec, args.out)
            print(f"remastered {manifest.release}: {args.out} ({args.out.stat().st_size} bytes, "
                  f"{time.perf_counter() - t0:.2f} s); kernel args: {' '.join(manifest.kernel_args)}")
        else:
            sys.stdout.write(read_release_manifest(args.iso).to_json())
    except EdgefleetError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
