"""The Talos-like upstream ISO generator and local-path fetching (URLs: tests/contract)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.errors import ArtifactError, ReleaseInputError
from edgefleet.releases.image import parse_grub_cfg
from edgefleet.releases.upstream import fetch_upstream, sha256_file, write_fake_upstream


def test_fake_upstream_is_deterministic_per_version(tmp_path: Path) -> None:
    a = write_fake_upstream(tmp_path / "a.iso", "v1.12.6")
    b = write_fake_upstream(tmp_path / "b.iso", "v1.12.6")
    c = write_fake_upstream(tmp_path / "c.iso", "v1.12.7")
    assert a == b == sha256_file(tmp_path / "a.iso")
    assert c != a
    assert 700_000 < (tmp_path / "a.iso").stat().st_size < 2_000_000


def test_fake_upstream_has_talos_layout(tmp_path: Path) -> None:
    import io

    import pycdlib

    write_fake_upstream(tmp_path / "up.iso", "v1.12.6")
    iso = pycdlib.PyCdlib()
    iso.open(str(tmp_path / "up.iso"))
    try:
        def read(rr: str) -> bytes:
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path=rr)
            return buf.getvalue()

        args, initrd = parse_grub_cfg(read("/boot/grub/grub.cfg").decode())
        assert args[0] == "talos.platform=metal"
        assert read(initrd).startswith(b"EDGEFLEET PLACEHOLDER INITRAMFS talos v1.12.6")
        assert read("/boot/vmlinuz").startswith(b"EDGEFLEET PLACEHOLDER KERNEL talos v1.12.6")
        assert read("/talos-version") == b"v1.12.6\n"
    finally:
        iso.close()


def test_bad_talos_version_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ReleaseInputError, match=r"v1.12.6"):
        write_fake_upstream(tmp_path / "x.iso", "1.12")
    assert not list(tmp_path.iterdir())


def test_fetch_local_path_checks_sha256(tmp_path: Path) -> None:
    up = tmp_path / "up.iso"
    sha = write_fake_upstream(up, "v1.12.6")
    assert fetch_upstream(str(up), sha.upper(), tmp_path / "cache") == up
    with pytest.raises(ArtifactError, match=r"expected " + "0" * 64):
        fetch_upstream(str(up), "0" * 64, tmp_path / "cache")
    with pytest.raises(ReleaseInputError, match=r"64 hex digits"):
        fetch_upstream(str(up), "abc", tmp_path / "cache")
    with pytest.raises(ArtifactError, match=r"does not exist"):
        fetch_upstream(str(tmp_path / "nope.iso"), sha, tmp_path / "cache")
