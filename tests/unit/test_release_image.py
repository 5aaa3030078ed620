"""Release images: kernel-argument merging, grub.cfg, the embedded manifest, reproducible bytes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.errors import ArtifactError, ReleaseInputError
from edgefleet.releases.image import (
    LINUX_LINE_PREFIX,
    ReleaseManifest,
    kernel_args_from_grub_cfg,
    merge_kernel_args,
    parse_grub_cfg,
    read_kernel_args,
    read_release_manifest,
    remaster,
    render_grub_cfg,
)
from edgefleet.releases.upstream import UPSTREAM_KERNEL_ARGS, fake_upstream_grub_cfg, write_fake_upstream


def test_merge_replaces_upstream_platform_and_appends_release_args() -> None:
    merged = merge_kernel_args(["talos.platform=metal", "console=tty0", "pti=on"],
                               ["talos.platform=nocloud", "net.ifnames=0"])
    assert merged == ["console=tty0", "pti=on", "talos.platform=nocloud", "net.ifnames=0"]


def test_merge_refuses_without_nocloud() -> None:
    with pytest.raises(ReleaseInputError, match=r"talos.platform=nocloud"):
        merge_kernel_args(["talos.platform=metal"], ["console=ttyS0"])


@pytest.mark.parametrize("bad", ["", "a b", "x\ty"])
def test_merge_refuses_whitespace_args(bad: str) -> None:
    with pytest.raises(ReleaseInputError, match=r"whitespace"):
        merge_kernel_args([], ["talos.platform=nocloud", bad])


def test_parse_upstream_grub_cfg() -> None:
    args, initrd = parse_grub_cfg(fake_upstream_grub_cfg())
    assert args == list(UPSTREAM_KERNEL_ARGS)
    assert initrd == "/boot/initramfs.xz"
    with pytest.raises(ArtifactError, match=r"not a Talos boot ISO"):
        parse_grub_cfg("set timeout=3\n")


def _manifest(**over: object) -> ReleaseManifest:
    base: dict[str, object] = dict(release="r1", talos_version="v1.12.6", kubernetes_version="1.35.0",
                                   installer_image="ghcr.io/siderolabs/installer:v1.12.6", extensions=(),
                                   kernel_args=("pti=on", "talos.platform=nocloud"), upstream_sha256="a" * 64)
    base.update(over)
    return ReleaseManifest.model_validate(base)


def test_rendered_grub_cfg_has_exactly_one_linux_line() -> None:
    cfg = render_grub_cfg(_manifest(), "/boot/initramfs.xz")
    assert [ln for ln in cfg.splitlines() if ln.startswith(LINUX_LINE_PREFIX)] == [
        "linux /boot/vmlinuz pti=on talos.platform=nocloud"]
    assert kernel_args_from_grub_cfg(cfg) == ["pti=on", "talos.platform=nocloud"]
    with pytest.raises(ArtifactError, match=r"exactly one"):
        kernel_args_from_grub_cfg(cfg + cfg)


def _remaster(tmp: Path, up: Path, sha: str, out_name: str = "rel.iso") -> tuple[Path, ReleaseManifest]:
    out = tmp / out_name
    m = remaster(up, out, release="r1", talos_version="v1.12.6", kubernetes_version="1.35.0",
                 installer_image="factory.talos.dev/installer/abc:v1.12.6", extensions=["siderolabs/iscsi-tools"],
                 kernel_args=["talos.platform=nocloud", "console=ttyS0,115200"], upstream_sha256=sha)
    return out, m


def test_remaster_embeds_manifest_and_args_and_keeps_upstream_files(tmp_path: Path) -> None:
    up = tmp_path / "up.iso"
    sha = write_fake_upstream(up, "v1.12.6")
    out, m = _remaster(tmp_path, up, sha)
    back = read_release_manifest(out)
    assert back == m == read_release_manifest(out.read_bytes())
    assert back.extensions == ("siderolabs/iscsi-tools",)
    assert back.upstream_sha256 == sha
    assert "talos.platform=nocloud" in back.kernel_args and "talos.platform=metal" not in back.kernel_args
    assert read_kernel_args(out) == list(back.kernel_args)
    import io

    import pycdlib

    def files(p: Path) -> dict[str, bytes]:
        iso = pycdlib.PyCdlib()
        iso.open(str(p))
        got = {}
        for rr in ("/boot/vmlinuz", "/boot/initramfs.xz", "/talos-version"):
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path=rr)
            got[rr] = buf.getvalue()
        if p == out:
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, iso_path="/EDGEFLEET/RELEASE.JSON;1")
            got["iso9660-manifest"] = buf.getvalue()
        iso.close()
        return got

    up_files, rel_files = files(up), files(out)
    for rr in ("/boot/vmlinuz", "/boot/initramfs.xz", "/talos-version"):
        assert rel_files[rr] == up_files[rr], rr
    assert rel_files["/talos-version"] == b"v1.12.6\n"
    assert ReleaseManifest.model_validate_json(rel_files["iso9660-manifest"]) == m


def test_not_an_iso_is_an_artifact_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.iso"
    junk.write_bytes(b"x" * 4096)
    with pytest.raises(ArtifactError, match=r"not a readable ISO9660"):
        read_release_manifest(junk)
    up = tmp_path / "up.iso"
    write_fake_upstream(up, "v1.12.6")
    with pytest.raises(ArtifactError, match=r"/edgefleet/release.json"):
        read_release_manifest(up)  # an upstream ISO has no release manifest


def _hashes_in_tz(tmp: Path, tz: str) -> str:
    code = ("import hashlib,sys; from pathlib import Path;"
            "from edgefleet.releases.upstream import write_fake_upstream;"
            "from edgefleet.releases.image import remaster;"
            "d=Path(sys.argv[1]); s=write_fake_upstream(d/'up.iso','v1.12.6');"
            "remaster(d/'up.iso', d/'rel.iso', release='r1', talos_version='v1.12.6', kubernetes_version='1.35.0',"
            "installer_image='i', extensions=[], kernel_args=['talos.platform=nocloud'], upstream_sha256=s);"
            "print(s, hashlib.sha256((d/'rel.iso').read_bytes()).hexdigest())")
    d = tmp / tz.replace("/", "_")
    d.mkdir()
    env = dict(os.environ, TZ=tz)
    return subprocess.run([sys.executable, "-c", code, str(d)], env=env, capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()


def test_images_are_reproducible_across_time_zones(tmp_path: Path) -> None:
    results = {tz: _hashes_in_tz(tmp_path, tz) for tz in ("UTC", "Asia/Kolkata", "America/St_Johns")}
    assert len(set(results.values())) == 1, results


def test_same_inputs_same_bytes_in_process(tmp_path: Path) -> None:
    up = tmp_path / "up.iso"
    sha = write_fake_upstream(up, "v1.12.6")
    a, _ = _remaster(tmp_path, up, sha, "a.iso")
    b, _ = _remaster(tmp_path, up, sha, "b.iso")
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    assert not list(tmp_path.glob("*.partial"))


def test_image_module_cli_prints_manifest(tmp_path: Path) -> None:
    up = tmp_path / "up.iso"
    sha = write_fake_upstream(up, "v1.12.6")
    out, m = _remaster(tmp_path, up, sha)
    proc = subprocess.run([sys.executable, "-m", "edgefleet.releases.image", "manifest", str(out)],
                          capture_output=True, text=True, timeout=60, check=True)
    assert ReleaseManifest.model_validate_json(proc.stdout) == m


def test_remaster_keeps_el_torito_of_an_xorriso_built_iso(tmp_path: Path) -> None:
    """Talos ISOs are made by xorriso (lowercase ISO9660 names, El Torito, two grub entries)."""
    import shutil

    from tests.helpers import require_tool

    xorriso = shutil.which("xorriso")
    require_tool(xorriso, "xorriso (Debian package xorriso)")
    assert xorriso is not None
    tree = tmp_path / "tree"
    (tree / "boot" / "grub").mkdir(parents=True)
    (tree / "boot" / "vmlinuz").write_bytes(b"k" * 70_000)
    (tree / "boot" / "initramfs.xz").write_bytes(b"i" * 90_000)
    (tree / "boot" / "grub" / "eltorito.img").write_bytes(b"\0" * 2048)
    (tree / "boot" / "grub" / "grub.cfg").write_text(
        'menuentry "Talos ISO" {\n  linux /boot/vmlinuz talos.platform=metal console=tty0\n'
        '  initrd /boot/initramfs.xz\n}\nmenuentry "Reset Talos installation" {\n'
        '  linux /boot/vmlinuz talos.platform=metal talos.experimental.wipe=system\n'
        '  initrd /boot/initramfs.xz\n}\n')
    up = tmp_path / "upstream.iso"
    subprocess.run([xorriso, "-as", "mkisofs", "-R", "-J", "-V", "TALOS", "-b", "boot/grub/eltorito.img",
                    "-no-emul-boot", "-boot-load-size", "4", "-o", str(up), str(tree)],
                   check=True, capture_output=True, timeout=60)
    out = tmp_path / "rel.iso"
    remaster(up, out, release="r1", talos_version="v1.12.6", kubernetes_version="1.35.0", installer_image="i",
             extensions=[], kernel_args=["talos.platform=nocloud"], upstream_sha256="0" * 64)
    assert read_kernel_args(out) == ["console=tty0", "talos.platform=nocloud"]
    assert read_release_manifest(out).release == "r1"
    report = subprocess.run([xorriso, "-indev", str(out), "-report_el_torito", "plain"], capture_output=True,
                            text=True, timeout=60, check=True).stdout
    assert "El Torito img path :   1  /boot/grub/eltorito.img" in report
    extracted = tmp_path / "x"
    subprocess.run([xorriso, "-osirrox", "on", "-indev", str(out), "-extract", "/", str(extracted)],
                   check=True, capture_output=True, timeout=60)
    assert (extracted / "boot" / "vmlinuz").read_bytes() == b"k" * 70_000
    assert (extracted / "edgefleet" / "release.json").is_file()
