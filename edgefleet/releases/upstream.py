"""Upstream Talos boot ISOs: fetch one (path or URL) against its sha256, or generate a Talos-like one.

A real ISO from the Talos Image Factory and the generated one take the same path: ``fetch_upstream``
returns a local file whose sha256 matched, downloading URLs into a cache directory first (named by
the sha256, so a cached copy is reused only when it still matches).

``write_fake_upstream`` writes a small ISO with the layout of a Talos boot ISO, for tests, the demo
and the fleet simulator: placeholder kernel and initramfs bytes (``/boot/vmlinuz``,
``/boot/initramfs.xz``), ``/boot/grub/grub.cfg`` with a ``linux /boot/vmlinuz talos.platform=metal
...`` line, and a version file ``/talos-version``. Its bytes depend only on the Talos version.
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import httpx
import pycdlib

from edgefleet.atomic import atomic_file
from edgefleet.errors import ArtifactError, ReleaseInputError
from edgefleet.releases.reproducible import DEFAULT_EPOCH, write_reproducible

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
TALOS_VERSION_RE = re.compile(r"^v\d+\.\d+\.\d+(-[0-9A-Za-z.]+)?$")
VERSION_FILE_RR_PATH = "/talos-version"
KERNEL_SIZE = 256 * 1024
INITRAMFS_SIZE = 512 * 1024
DOWNLOAD_TIMEOUT_S = 60.0
# What a Talos metal ISO boots with (Talos 1.x grub.cfg), minus nothing the release cares about.
UPSTREAM_KERNEL_ARGS = ("talos.platform=metal", "console=ttyS0", "console=tty0", "init_on_alloc=1",
                        "slab_nomerge", "pti=on", "consoleblank=0", "nvme_core.io_timeout=4294967295",
                        "printk.devkmsg=on", "ima_template=ima-ng", "ima_appraise=fix", "ima_hash=sha512")


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _placeholder(label: str, size: int) -> bytes:
    """Deterministic, incompressible-looking bytes that say what they are in their first line."""
    head = f"EDGEFLEET PLACEHOLDER {label}: not a real Linux image\n".encode()
    out = bytearray(head)
    block = hashlib.sha256(head).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def fake_upstream_grub_cfg(kernel_args: tuple[str, ...] = UPSTREAM_KERNEL_ARGS) -> str:
    return "\n".join([
        "set default=0",
        "set timeout=3",
        "insmod all_video",
        'menuentry "Talos ISO" {',
        "set gfxmode=auto",
        "set gfxpayload=text",
        "linux /boot/vmlinuz " + " ".join(kernel_args),
        "initrd /boot/initramfs.xz",
        "}",
        "",
    ])


def write_fake_upstream(out: Path, talos_version: str) -> str:
    """Write a Talos-like upstream boot ISO to ``out`` and return its sha256."""
    if not TALOS_VERSION_RE.match(talos_version):
        raise ReleaseInputError(f"Talos version {talos_version!r} must look like v1.12.6")
    files: list[tuple[str, str, str, str, bytes]] = [
        # (iso dir, iso name, rr name, joliet path, content)
        ("/BOOT", "VMLINUZ.;1", "vmlinuz", "/boot/vmlinuz", _placeholder(f"KERNEL talos {talos_version}",
                                                                        KERNEL_SIZE)),
        ("/BOOT", "INITRAMF.XZ;1", "initramfs.xz", "/boot/initramfs.xz",
         _placeholder(f"INITRAMFS talos {talos_version}", INITRAMFS_SIZE)),
        ("/BOOT/GRUB", "GRUB.CFG;1", "grub.cfg", "/boot/grub/grub.cfg", fake_upstream_grub_cfg().encode()),
        ("", "TALOS_VE.;1", "talos-version", VERSION_FILE_RR_PATH, f"{talos_version}\n".encode()),
    ]
    iso = pycdlib.PyCdlib()
    try:
        iso.new(interchange_level=3, vol_ident="TALOS_" + talos_version.replace(".", "_").upper()[:26],
                joliet=3, rock_ridge="1.09")
        iso.add_directory("/BOOT", rr_name="boot", joliet_path="/boot")
        iso.add_directory("/BOOT/GRUB", rr_name="grub", joliet_path="/boot/grub")
        for iso_dir, iso_name, rr_name, joliet_path, content in files:
            iso.add_fp(io.BytesIO(content), len(content), iso_path=f"{iso_dir}/{iso_name}", rr_name=rr_name,
                       joliet_path=joliet_path)
        write_reproducible(iso, out, DEFAULT_EPOCH)
    finally:
        iso.close()
    return sha256_file(out)


def _check_sha256(expected: str) -> str:
    expected = expected.strip().lower()
    if not SHA256_RE.match(expected):
        raise ReleaseInputError(f"upstream sha256 {expected!r} is not 64 hex digits: give the checksum "
                                "published next to the ISO (a sha256 is required)")
    return expected


def fetch_upstream(source: str, sha256: str, cache_dir: Path, *, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """A local upstream ISO whose sha256 is ``sha256``: ``source`` itself when it is a path, else a copy
    downloaded into ``cache_dir``. Raises ArtifactError on a missing file, a failed download or a
    checksum mismatch (a mismatching download is deleted)."""
    expected = _check_sha256(sha256)
    if not source.startswith(("http://", "https://")):
        path = Path(source.removeprefix("file://"))
        if not path.is_file():
            raise ArtifactError(f"upstream ISO {path} does not exist")
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactError(f"upstream ISO {path}: sha256 is {actual}, expected {expected}; "
                                "wrong file or wrong checksum")
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = cache_dir / f"{expected}.iso"
    if cached.is_file() and sha256_file(cached) == expected:
        return cached
    try:
        h = hashlib.sha256()
        # Renamed into the cache only once complete and verified: a failed download caches nothing.
        with atomic_file(cached, mode=0o600, fsync=False) as f, \
                httpx.stream("GET", source, timeout=timeout, follow_redirects=True) as r:
            if r.status_code != 200:
                raise ArtifactError(f"download of upstream ISO {source} failed: HTTP {r.status_code}")
            for chunk in r.iter_bytes(1 << 20):
                h.update(chunk)
                f.write(chunk)
            actual = h.hexdigest()
            if actual != expected:
                raise ArtifactError(f"upstream ISO {source}: downloaded sha256 is {actual}, expected {expected}; "
                                    "wrong URL or wrong checksum (nothing was cached)")
        return cached
    except httpx.HTTPError as e:
        raise ArtifactError(f"download of upstream ISO {source} failed: {e}") from e
